"""`up --litellm-config`: the derived LiteLLM config and environment, and the refusals, without running LiteLLM."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ext_proc import litellm
from tests.support.processes import BIN

ROOT = Path(__file__).resolve().parent.parent


def test_derived_config_routes_every_anthropic_deployment_through_the_egress() -> None:
    given: dict[str, Any] = {
        "model_list": [
            {"model_name": "claude-*", "litellm_params": {"model": "anthropic/claude-*", "api_key": "sk-ant-api03-X"}},
            {"model_name": "gpt-4o", "litellm_params": {"model": "openai/gpt-4o", "api_key": "os.environ/OPENAI"}},
        ],
        "litellm_settings": {"model_group_settings": {"forward_client_headers_to_llm_api": ["mine"]}},
        "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"},
    }
    before = yaml.safe_dump(given)
    derived = litellm.derive(given, "127.0.0.1:10000")
    assert yaml.safe_dump(given) == before, "the user's config is never edited"
    claude, gpt = derived["model_list"]
    assert claude["litellm_params"] == {"model": "anthropic/claude-*", "api_key": "os.environ/ANTHROPIC_API_KEY",
                                        "api_base": "http://127.0.0.1:10000"}  # fmt: skip
    assert gpt == given["model_list"][1]
    groups = derived["litellm_settings"]["model_group_settings"]["forward_client_headers_to_llm_api"]
    assert groups == ["mine", "claude-*"]
    assert "forward_client_headers_to_llm_api" not in derived["general_settings"]


def test_the_example_config_derives_and_has_a_claude_wildcard() -> None:
    given = litellm.load(ROOT / "examples" / "litellm.yaml")
    derived = litellm.derive(given, "127.0.0.1:10000")
    assert [m["model_name"] for m in derived["model_list"]] == ["claude-*"]


@pytest.mark.parametrize(
    ("master", "env", "loopback", "message"),
    [
        ("os.environ/LITELLM_MASTER_KEY", {}, False, "is not set and the ingress listens beyond loopback"),
        ("os.environ/LITELLM_MASTER_KEY", {"LITELLM_MASTER_KEY": litellm.DEV_MASTER_KEY}, False, "development"),
        (None, {}, False, "no general_settings.master_key"),
    ],
)
def test_a_master_key_is_required_beyond_loopback(
    master: str | None, env: dict[str, str], loopback: bool, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LITELLM_MASTER_KEY", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    given = {"general_settings": {"master_key": master}} if master else {}
    with pytest.raises(litellm.LiteLLMError, match=message):
        litellm.environment(given, "egress-token", "127.0.0.1:10000", loopback)


def test_on_loopback_the_development_master_key_is_filled_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LITELLM_MASTER_KEY", raising=False)
    given = {"general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"}}
    env = litellm.environment(given, "egress-token", "127.0.0.1:10000", True)
    assert env["LITELLM_MASTER_KEY"] == litellm.DEV_MASTER_KEY
    assert (env["ANTHROPIC_API_KEY"], env["ANTHROPIC_API_BASE"]) == ("egress-token", "http://127.0.0.1:10000")


def test_up_says_when_litellm_is_not_installed(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "ext-proc"), "up", "--litellm-config", str(ROOT / "examples" / "litellm.yaml")],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )  # fmt: skip
    assert (
        result.returncode == 1
        and "LiteLLM not found: install this package's litellm extra (pip install "
        "'.[litellm]' in a clone of the repository"
        in result.stderr
    )


@pytest.mark.parametrize("master", [*sorted(litellm.SAMPLE_MASTER_KEYS), "sk-short-key"])
def test_a_master_key_anyone_has_read_or_can_guess_is_refused_beyond_loopback(
    master: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LITELLM_MASTER_KEY", raising=False)
    for given in ({"general_settings": {"master_key": master}},
                   {"general_settings": {"master_key": "os.environ/MY_KEY"}}):  # fmt: skip
        monkeypatch.setenv("MY_KEY", master)
        with pytest.raises(litellm.LiteLLMError, match="not beyond loopback"):
            litellm.environment(given, "egress-token", "127.0.0.1:10000", False)
        assert litellm.environment(given, "egress-token", "127.0.0.1:10000", True)["LITELLM_MASTER_KEY"] == master


def test_the_derived_config_on_disk_holds_no_master_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """`up` writes the derived config to its private directory, which a SIGKILL leaves behind until the next start:
    the master key goes to LiteLLM through its environment instead."""
    monkeypatch.delenv("LITELLM_MASTER_KEY", raising=False)
    master = "mk-a-Literal-Master-Key-0123456789"
    given = {"model_list": [{"model_name": "c", "litellm_params": {"model": "anthropic/c"}}],
              "general_settings": {"master_key": master}}  # fmt: skip
    derived = yaml.safe_dump(litellm.derive(given, "127.0.0.1:10000"))
    assert master not in derived and "os.environ/LITELLM_MASTER_KEY" in derived
    env = litellm.environment(given, "egress-token", "127.0.0.1:10000", False)
    assert env["LITELLM_MASTER_KEY"] == master


@pytest.mark.parametrize(
    ("general", "environ", "requires", "extra"),
    [
        ({"master_key": "os.environ/LITELLM_MASTER_KEY"}, {}, True, None),  # the development default
        ({"master_key": "sk-a-configured-master-key"}, {}, True, None),
        ({}, {}, False, None),  # LiteLLM serves anyone: no key to ask clients for
        ({}, {"LITELLM_MASTER_KEY": "sk-from-the-environment-0123"}, True, None),  # LiteLLM reads it unasked
        ({"master_key": "sk-a-configured-master-key", "litellm_key_header_name": "X-Corp-Key"}, {}, True,
         "x-corp-key"),
    ],
)  # fmt: skip
def test_up_tells_the_ingress_whether_litellm_asks_for_a_key_and_where_it_reads_one(
    general: dict[str, str], environ: dict[str, str], requires: bool, extra: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Rule I8 follows the LiteLLM that `up` runs: a client's own credential without a LiteLLM key is refused at
    the ingress only when LiteLLM would refuse it, and a key in LiteLLM's own `litellm_key_header_name` counts."""
    from ext_proc.config import DEFAULT_EXTRA_LITELLM_HEADERS, Config
    from ext_proc.secrets import Secrets

    monkeypatch.delenv("LITELLM_MASTER_KEY", raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    given = {"model_list": [{"model_name": "c", "litellm_params": {"model": "anthropic/c"}}],
              "general_settings": general}  # fmt: skip
    env = litellm.environment(given, "egress-token", "127.0.0.1:10000", True)
    config, _ = litellm.Plan(given, "", env, Path("litellm"), Path("c.yaml")).applied(Config(), Secrets())
    assert config.litellm_requires_key is requires
    assert config.litellm_headers == (*DEFAULT_EXTRA_LITELLM_HEADERS, *([extra] if extra else []))


def test_the_master_key_up_reads_stays_known_by_value_when_the_key_file_is_reloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rule E7 searches kept headers for LiteLLM's master key: `up` adds the one LiteLLM's config reads to the
    secrets it loaded, and a reload of litellm_key_file (read by the same loader) keeps it."""
    from ext_proc.config import Config
    from ext_proc.metrics import Metrics
    from ext_proc.reload import LiveRules
    from ext_proc.secrets import load_secrets

    master = "mk-master-of-this-litellm-0123"
    monkeypatch.setenv("LITELLM_MASTER_KEY", master)
    given = {"model_list": [{"model_name": "c", "litellm_params": {"model": "anthropic/c"}}],
              "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"}}  # fmt: skip
    env = litellm.environment(given, "egress-token", "127.0.0.1:10000", True)
    keys = tmp_path / "litellm-keys"
    keys.write_text("mk-first-file-key-0123\n")
    config = Config(litellm_key_file=keys)
    config, secrets = litellm.Plan(given, "", env, Path("litellm"), Path("c.yaml")).applied(
        config, load_secrets(config)
    )
    rules = LiveRules(config, Metrics(), secrets)
    assert set(rules().litellm_keys) == {master.encode(), b"mk-first-file-key-0123"}
    keys.write_text("mk-second-file-key-after-rotation\n")
    rules.reload_changed()
    assert set(rules().litellm_keys) == {master.encode(), b"mk-second-file-key-after-rotation"}
