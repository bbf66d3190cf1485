"""`up --litellm-config`: the derived LiteLLM config and environment, and the refusals, without running LiteLLM."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ext_proc import litellm
from ext_proc.litellm_config import DEV_MASTER_KEY, SAMPLE_MASTER_KEYS
from tests.support.command import Ran, run_cli
from tests.support.processes import BIN, bare_env

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


BEYOND = (
    "not beyond loopback (anyone who guesses it is served on the operator's key); `ext-proc keygen --egress-token` "
)
BEYOND += "prints a random value to base one on"


@pytest.mark.parametrize(
    ("master", "env", "message", "on_loopback"),
    [
        ("os.environ/MY_MASTER", {}, "MY_MASTER is not set and the ingress listens beyond loopback: set a master key "
         "of your own (the development default 'sk-local-dev-only' is only for --ingress-listen 127.0.0.1:PORT)",
         DEV_MASTER_KEY),
        ("os.environ/LITELLM_MASTER_KEY", {"LITELLM_MASTER_KEY": DEV_MASTER_KEY},
         f"LiteLLM's master key is the development default: {BEYOND}", DEV_MASTER_KEY),
        ("sk-1234", {}, f"LiteLLM's master key is a sample key from documentation: {BEYOND}", "sk-1234"),
        ("sk-fifteen-char", {}, f"LiteLLM's master key is shorter than 16 characters: {BEYOND}", "sk-fifteen-char"),
        (None, {}, "the LiteLLM config has no general_settings.master_key: not beyond loopback", None),
    ],
)  # fmt: skip
def test_a_master_key_is_required_beyond_loopback(
    master: str | None, env: dict[str, str], message: str, on_loopback: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond loopback each is refused, saying why; on loopback each is served (the default filled in)."""
    monkeypatch.delenv("LITELLM_MASTER_KEY", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    given = {"general_settings": {"master_key": master}} if master else {}
    with pytest.raises(litellm.LiteLLMError) as refused:
        litellm.environment(given, "egress-token", "127.0.0.1:10000", False)
    assert str(refused.value) == message
    assert litellm.environment(given, "egress-token", "127.0.0.1:10000", True).get("LITELLM_MASTER_KEY") == on_loopback


# A LiteLLM key as written out: `sk-` and lower-case words, not an Anthropic one (`sk-ant-…`), an elided one (`sk-…`)
# or another provider's (OpenAI's `sk-proj-` keys have upper-case letters).
_LITELLM_KEY = re.compile(r"(?<![\w-])sk-(?!ant-)[a-z0-9]+(?:-[a-z0-9]+)*(?![\w-])")


def test_every_litellm_key_this_project_publishes_is_a_sample_never_served_beyond_loopback() -> None:
    """docs/litellm.md: a master key "anyone has read" is refused beyond loopback; those are LiteLLM's documented
    sk-1234 and every LiteLLM key written in this repository's docs, examples, manifests and test helpers (a reader
    copies them)."""
    sources = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "examples").rglob("*.yaml"),
               *(ROOT / "deploy").rglob("*.yaml"), *(ROOT / "tests" / "support").glob("*.py")]  # fmt: skip
    published = {key for path in sources for key in _LITELLM_KEY.findall(path.read_text())}
    assert "sk-your-litellm-key" in published, "the search finds the keys the docs use"
    # LiteLLM's own: its proxy quick start (`master_key: sk-1234`) and its Config.yaml page (`sk-my_special_key`).
    litellm_documented = {"sk-1234", "sk-my_special_key"}
    # The Kubernetes guides of 0.1.0 created LiteLLM's Secret with this one; an operator who followed them has it.
    published_before = {"sk-your-litellm-master-key"}
    assert published | litellm_documented | published_before | {DEV_MASTER_KEY} == SAMPLE_MASTER_KEYS
    for key in sorted(SAMPLE_MASTER_KEYS):
        with pytest.raises(litellm.LiteLLMError, match=r"master key is (a sample key from|the development default)"):
            litellm.environment({"general_settings": {"master_key": key}}, "egress-token", "127.0.0.1:10000", False)


def test_a_master_key_of_16_characters_is_served_beyond_loopback() -> None:
    given = {"general_settings": {"master_key": "sk-sixteen-chars"}}
    assert (
        litellm.environment(given, "egress-token", "127.0.0.1:10000", False)["LITELLM_MASTER_KEY"] == "sk-sixteen-chars"
    )


def test_a_config_without_litellm_settings_or_an_anthropic_deployment() -> None:
    """Forwarding is set where LiteLLM reads it even when the config has no litellm_settings; a deployment without
    litellm_params is left alone; a config with nothing to protect is refused."""
    given: dict[str, Any] = {"model_list": [{"model_name": "c", "litellm_params": {"model": "anthropic/c"}},
                                            {"model_name": "bare"}]}  # fmt: skip
    derived = litellm.derive(given, "127.0.0.1:10000")
    assert derived["litellm_settings"] == {"model_group_settings": {"forward_client_headers_to_llm_api": ["c"]}}
    assert derived["model_list"][1] == {"model_name": "bare", "litellm_params": {}}
    with pytest.raises(litellm.LiteLLMError) as refused:
        litellm.derive({"model_list": [{"model_name": "bare"}]}, "127.0.0.1:10000")
    assert str(refused.value) == "the LiteLLM config has no Anthropic deployment (model: anthropic/...) to protect"


def test_on_loopback_the_development_master_key_is_filled_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LITELLM_MASTER_KEY", raising=False)
    given = {"general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"}}
    env = litellm.environment(given, "egress-token", "127.0.0.1:10000", True)
    assert env["LITELLM_MASTER_KEY"] == DEV_MASTER_KEY
    assert (env["ANTHROPIC_API_KEY"], env["ANTHROPIC_API_BASE"]) == ("egress-token", "http://127.0.0.1:10000")


def test_up_says_when_litellm_is_not_installed(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "ext-proc"), "up", "--litellm-config", str(ROOT / "examples" / "litellm.yaml")],
        capture_output=True, text=True, timeout=60, env=bare_env(PATH="/usr/bin:/bin", HOME=str(tmp_path)),
    )  # fmt: skip
    assert (
        result.returncode == 1
        and "LiteLLM not found: install this package's litellm extra (pip install "
        "'.[litellm]' in a clone of the repository"
        in result.stderr
    )


def test_the_guides_create_secrets_with_fresh_values_not_written_ones() -> None:
    """docs/kubernetes-*.md: a Secret a guide creates gets a value generated there (`"$(...)"`, `"sk-$(...)"`) or an
    elided placeholder the reader must fill (`sk-ant-...`); a literal key in a guide ends up in someone's cluster."""
    docs = "".join(path.read_text() for path in sorted((ROOT / "docs").glob("*.md")))
    literals = re.findall(r"--from-literal=[\w-]+=([^\s`]+)", docs)
    assert len(literals) >= 5, "the search finds the guides' Secrets"
    assert [v for v in literals if not (re.fullmatch(r'"[\w-]*\$\(.*', v) or v.endswith("..."))] == []


# LiteLLM's documented sample master keys and our development default: spelt out, not read from the code's own set.
SAMPLES = ["sk-1234", "sk-12345", "sk-your-litellm-key", "sk-master-1234", "sk-local-dev-only"]


@pytest.mark.parametrize("master", [*SAMPLES, "sk-short-key"])
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


MASTER = "sk-master-of-this-litellm-0123"
GIVEN: dict[str, Any] = {"model_list": [{"model_name": "c", "litellm_params": {"model": "anthropic/c"}}],
                         "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"}}  # fmt: skip


def _plan(env: dict[str, str], given: dict[str, Any] = GIVEN) -> litellm.Plan:
    return litellm.Plan(given, "derived: yes\n", env, Path("/opt/litellm"), Path("c.yaml"))


@pytest.mark.parametrize(
    ("master", "known"),
    [(MASTER, MASTER.encode()), ("sk-8char", b"sk-8char"), ("sk-7chr", None),
     ("sk-\u043a\u043b\u044e\u0447-0123", b"sk-????-0123")],
)  # fmt: skip
def test_up_knows_litellm_s_master_key_by_value_when_it_is_long_enough_to_search_for(
    master: str, known: bytes | None
) -> None:
    """At least LITELLM_KEY_MIN (8) characters; a character outside Latin-1 is searched as Envoy would hand it over
    ('?'), never a crash; a key the secrets already hold is not held twice."""
    from ext_proc.config import Config
    from ext_proc.secrets import Secrets

    plan = _plan({"LITELLM_MASTER_KEY": master})
    assert (plan.given, plan.derived, plan.env, plan.binary, plan.output) == (
        GIVEN,
        "derived: yes\n",
        {"LITELLM_MASTER_KEY": master},
        Path("/opt/litellm"),
        None,
    )
    config, secrets = plan.applied(Config(), Secrets(litellm_keys=(b"sk-from-file-0123", MASTER.encode())))
    expected = (b"sk-from-file-0123", MASTER.encode(), *([known] if known and known != MASTER.encode() else []))
    assert secrets.litellm_keys == expected
    assert config.litellm_keys == ((master,) if known else ())


@pytest.mark.parametrize(("opens", "raised"), [(3, 6), (6, 6), (9, 9)])
def test_up_raises_seal_max_opens_to_the_calls_litellm_may_make(
    opens: int, raised: int, caplog: pytest.LogCaptureFixture
) -> None:
    from ext_proc.config import Config
    from ext_proc.secrets import Secrets

    caplog.set_level("INFO", logger="ext_proc.up")
    given = {**GIVEN, "router_settings": {"fallbacks": [{"c": ["d"]}]}}
    config, _ = _plan({}, given).applied(Config(seal_max_opens=opens), Secrets())
    assert config.seal_max_opens == raised
    assert [r.getMessage() for r in caplog.records] == (
        ["LiteLLM may call Anthropic up to 6 times for one request (3 tries in each of 2 model groups), each opening "
         "the request's handoff: seal_max_opens 6"] if opens < 6 else []
    )  # fmt: skip


def test_a_litellm_config_the_gateway_cannot_follow_names_the_file() -> None:
    from ext_proc.config import Config
    from ext_proc.secrets import Secrets
    from ext_proc.supervise import UpError

    given = {**GIVEN, "general_settings": {"litellm_key_header_name": "Bad Header"}}
    with pytest.raises(UpError) as refused:
        _plan({}, given).applied(Config(), Secrets())
    assert str(refused.value) == (
        "the LiteLLM config c.yaml: header name 'bad header': must be lower case and contain only token characters"
    )


def test_a_litellm_config_that_cannot_be_read_is_refused_by_name(tmp_path: Path) -> None:
    missing, listed = tmp_path / "missing.yaml", tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(litellm.LiteLLMError) as refused:
        litellm.load(missing)
    assert (
        str(refused.value)
        == f"cannot read the LiteLLM config {missing}: [Errno 2] No such file or directory: '{missing}'"
    )
    with pytest.raises(litellm.LiteLLMError) as refused:
        litellm.load(listed)
    assert str(refused.value) == f"the LiteLLM config {listed} is not a YAML mapping"


@pytest.mark.parametrize(
    ("master", "environ", "host", "lines"),
    [
        ("os.environ/LITELLM_MASTER_KEY", {"LITELLM_MASTER_KEY": MASTER}, "0.0.0.0",
         ["export ANTHROPIC_BASE_URL=http://127.0.0.1:8080",
          'export ANTHROPIC_CUSTOM_HEADERS="x-litellm-api-key: $LITELLM_MASTER_KEY"']),
        ("os.environ/LITELLM_MASTER_KEY", {}, "::",  # Envoy listens on `::` for IPv6 only
         ["export ANTHROPIC_BASE_URL=http://[::1]:8080",
          'export ANTHROPIC_CUSTOM_HEADERS="x-litellm-api-key: sk-local-dev-only"']),
        (MASTER, {}, "10.0.0.7",
         ["export ANTHROPIC_BASE_URL=http://10.0.0.7:8080",
          'export ANTHROPIC_CUSTOM_HEADERS="x-litellm-api-key: <your LiteLLM key>"']),
        (MASTER, {}, "fd00::7",
         ["export ANTHROPIC_BASE_URL=http://[fd00::7]:8080",
          'export ANTHROPIC_CUSTOM_HEADERS="x-litellm-api-key: <your LiteLLM key>"']),
    ],
)  # fmt: skip
def test_up_prints_the_two_lines_a_client_needs_never_a_key_s_value(
    master: str, environ: dict[str, str], host: str, lines: list[str],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from ext_proc.envoy import HostPort, Layout

    monkeypatch.delenv("LITELLM_MASTER_KEY", raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    given = {**GIVEN, "general_settings": {"master_key": master}}
    _plan({}, given).print_client_setup(Layout(ingress=HostPort(host, 8080)))
    printed = capsys.readouterr().out
    assert printed.splitlines() == lines and MASTER not in printed


@pytest.mark.parametrize(
    ("up", "looks", "logged"),
    [
        (False, [False, True, True, False, False, True], [
            ("INFO", "LiteLLM at 127.0.0.1:4000 answers"),
            ("WARNING", "LiteLLM at 127.0.0.1:4000 does not answer: the ingress leg answers 503 until it does"),
            ("INFO", "LiteLLM at 127.0.0.1:4000 answers again"),
        ]),
        (True, [True, False, True], [
            ("WARNING", "LiteLLM at 127.0.0.1:4000 does not answer: the ingress leg answers 503 until it does"),
            ("INFO", "LiteLLM at 127.0.0.1:4000 answers again"),
        ]),
    ],
)  # fmt: skip
def test_up_logs_each_change_in_whether_litellm_answers(
    up: bool, looks: list[bool], logged: list[tuple[str, str]],
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """Every CHECK_SECONDS (here 0; docs/operations.md gives it): a change is logged once, a steady state never; an
    answer is "again" once LiteLLM has answered before, at start or since."""
    docs = (Path(__file__).resolve().parent.parent / "docs").glob("*.md")
    said = " ".join(" ".join(path.read_text().split()) for path in docs)
    assert f"it keeps checking every {litellm.CHECK_SECONDS:.0f} s" in said
    assert f"which it is given {litellm.START_SECONDS:.0f} s for" in said
    import asyncio
    import threading

    from ext_proc.envoy import HostPort, Layout

    caplog.set_level("INFO", logger="ext_proc.up")
    seen, looks = threading.Event(), list(looks)  # the parameter's own list is shared by every run of the test

    def answers(at: HostPort) -> bool:
        assert at == HostPort("127.0.0.1", 4000)
        if not looks:  # asked again: the last look has been judged
            seen.set()
            return True
        return looks.pop(0)

    monkeypatch.setattr(litellm, "answers", answers)
    monkeypatch.setattr(litellm, "CHECK_SECONDS", 0)

    async def scenario() -> None:
        watcher = asyncio.create_task(litellm.watch(Layout(), up))
        await asyncio.to_thread(seen.wait, 10)
        watcher.cancel()

    asyncio.run(scenario())
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == logged


def test_up_finds_litellm_beside_its_python_else_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beside this Python only when it is an executable file (the extra installs it there), else on PATH."""
    beside, on_path = tmp_path / "venv" / "bin", tmp_path / "path"
    beside.mkdir(parents=True)
    on_path.mkdir()
    monkeypatch.setattr("sys.executable", str(beside / "python"))
    monkeypatch.setenv("PATH", str(on_path))
    with pytest.raises(litellm.LiteLLMError) as missing:
        litellm.find_litellm()
    assert str(missing.value) == (
        "LiteLLM not found: install this package's litellm extra (pip install '.[litellm]' in a clone of the "
        "repository, 'ext-proc-credentials[litellm]' from a package index) or put litellm on PATH, or run LiteLLM "
        "yourself and give --litellm URL instead of --litellm-config"
    )
    (on_path / "litellm").write_text("#!/bin/sh\n")
    (on_path / "litellm").chmod(0o700)
    (beside / "litellm").write_text("#!/bin/sh\n")
    (beside / "litellm").chmod(0o600)
    assert litellm.find_litellm() == on_path / "litellm", "not executable beside Python: PATH's"
    (beside / "litellm").chmod(0o700)
    assert litellm.find_litellm() == beside / "litellm"


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        ({"layout": {"litellm": "https"}}, "--litellm-config runs LiteLLM on --litellm, which must be an http:// "
         "address here"),
        ({"token": None}, "--litellm-config needs an egress token (egress_token_file)"),
        ({"cooldown": True}, "the LiteLLM config {path} breaks a guarantee (see above)"),
        ({"layout": {"ingress": "0.0.0.0"}}, "LITELLM_MASTER_KEY is not set and the ingress listens beyond loopback: "
         "set a master key of your own (the development default 'sk-local-dev-only' is only for --ingress-listen "
         "127.0.0.1:PORT)"),
        ({}, None),
        ({"layout": {"ingress": "::1"}}, None),
        ({"layout": {"ingress": "localhost"}}, None),
    ],
)  # fmt: skip
def test_up_plans_litellm_from_the_config_or_refuses_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    change: dict[str, Any], refusal: str | None,
) -> None:  # fmt: skip
    from ext_proc.config import Config
    from ext_proc.envoy import Endpoint, HostPort, Layout
    from ext_proc.secrets import Secrets
    from ext_proc.supervise import UpError

    monkeypatch.delenv("LITELLM_MASTER_KEY", raising=False)
    monkeypatch.setattr(litellm, "find_litellm", lambda: Path("/opt/bin/litellm"))
    given: dict[str, Any] = {
        "model_list": [{"model_name": "claude-*", "litellm_params": {"model": "anthropic/claude-*"}}],
        "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"},
    }
    if change.get("cooldown"):
        given["model_list"][0]["litellm_params"]["cooldown_time"] = 30
    path = tmp_path / "litellm.yaml"
    path.write_text(yaml.safe_dump(given))
    places = change.get("layout", {})
    layout = Layout(ingress=HostPort(places.get("ingress", "127.0.0.1"), 8080),
                    litellm=Endpoint(places.get("litellm", "http"), "127.0.0.1", 4000))  # fmt: skip
    token = change.get("token", b"egress-" + b"p" * 40)
    caplog.set_level("WARNING", logger="ext_proc.up")
    if refusal is not None:
        with pytest.raises((UpError, litellm.LiteLLMError)) as refused:
            litellm.Plan.of(path, layout, Config(), Secrets(egress_token=token))
        assert str(refused.value) == refusal.format(path=path)
        cooldown = (f"LiteLLM config {path}: error: line 5: claude-*: a deployment's own cooldown_time outranks the "
                    "retry-after: 0 the egress gives LiteLLM when Anthropic refuses a client's own credential (rule "
                    "E9), so one client's revoked token would cool this deployment down for everyone; set "
                    "router_settings.cooldown_time instead")  # fmt: skip
        assert [r.getMessage() for r in caplog.records] == ([cooldown] if change.get("cooldown") else [])
        return
    plan = litellm.Plan.of(path, layout, Config(), Secrets(egress_token=token))
    assert (plan.given, plan.binary, plan.path) == (given, Path("/opt/bin/litellm"), path)
    assert plan.derived == yaml.safe_dump(litellm.derive(given, "127.0.0.1:10000"), sort_keys=False)
    assert (plan.env["ANTHROPIC_API_KEY"], plan.env["ANTHROPIC_API_BASE"], plan.env["LITELLM_MASTER_KEY"]) == (
        token.decode(),
        "http://127.0.0.1:10000",
        DEV_MASTER_KEY,
    )
    assert caplog.records == []


_NEVER_READY = """import os, pathlib, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
pathlib.Path(sys.argv[0] + ".pid").write_text(str(os.getpid()))
print("loading a very large config", flush=True)
time.sleep(300)
"""
_DIES = """import sys
print("no such model: claude-x", flush=True)
sys.exit(3)
"""


@pytest.mark.parametrize(
    ("script", "said", "refusal"),
    [
        (_NEVER_READY, "loading a very large config", "LiteLLM was not ready after 1s"),
        (_DIES, "no such model: claude-x", "LiteLLM exited during start-up with status 3 (see its log above)"),
    ],
    ids=["never-ready", "dies"],
)
def test_a_litellm_that_does_not_come_up_is_stopped_and_named(
    script: str, said: str, refusal: str,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """`up` waits START_SECONDS for LiteLLM's liveliness (here 1 s), showing its output marked as LiteLLM's; one
    that dies meanwhile is named with its status, one that never answers (and ignores SIGTERM) is killed before
    `up` gives up: never left running without its supervisor. (A stand-in LiteLLM: the real one's start is
    tests/e2e/test_chain.py's.)"""
    import asyncio
    import os
    import sys

    from ext_proc import supervise
    from ext_proc.envoy import Endpoint, Layout
    from ext_proc.supervise import UpError
    from tests.support.processes import free_port

    binary = tmp_path / "litellm"
    binary.write_text(f"#!{sys.executable}\n{script}")
    binary.chmod(0o700)
    monkeypatch.setattr(litellm, "START_SECONDS", 1.0)
    monkeypatch.setattr(supervise, "STOP_SECONDS", 1.0)
    plan = litellm.Plan({}, "model_list: []\n", {}, binary, tmp_path / "given.yaml")
    layout = Layout(litellm=Endpoint("http", "127.0.0.1", free_port()))

    async def start() -> None:
        try:
            await plan.start(tmp_path, layout, asyncio.Event())
        finally:
            if plan.output is not None:  # ends when LiteLLM's output does: with LiteLLM
                await asyncio.wait_for(plan.output, 10)

    try:
        with pytest.raises(UpError) as refused:
            asyncio.run(start())
        assert str(refused.value) == refusal
        assert f"litellm | {said}\n" in capfd.readouterr().err
    finally:
        pid = Path(f"{binary}.pid")
        left = pid.exists() and Path(f"/proc/{pid.read_text()}").exists()
        if left:
            os.kill(int(pid.read_text()), 9)
    assert not left, "LiteLLM was left running"


_STAND_IN = """import http.server, os, pathlib, signal, sys
pathlib.Path(sys.argv[0] + ".pid").write_text(str(os.getpid()))
port = int(sys.argv[sys.argv.index("--port") + 1])
SIGNALS_UP = {signals_up}


class Alive(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.flush()
        if SIGNALS_UP:
            os.kill(os.getppid(), signal.SIGTERM)

    def log_message(self, *args):
        pass


with http.server.HTTPServer(("127.0.0.1", port), Alive) as server:
    if SIGNALS_UP:
        server.serve_forever()
    server.handle_request()
print("crashed after its first request", flush=True)
sys.exit(3)
"""


def _up_with_a_stand_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signals_up: bool, litellm_port: int | None = None
) -> tuple[Ran, int | None]:
    """`ext-proc up --litellm-config` through cli.main in this process, so that the mutation step's mutants of
    `up.run` are in it, with a stand-in LiteLLM; and the stand-in's pid (None when it never started). A SIGTERM after
    60 s ends an `up` that would wait forever (its drain then exits 0)."""
    import os
    import signal
    import sys
    import threading

    from tests.support.processes import free_port

    binary = tmp_path / "litellm"
    binary.write_text(f"#!{sys.executable}\n" + _STAND_IN.format(signals_up=signals_up))
    binary.chmod(0o700)
    monkeypatch.setattr(litellm, "find_litellm", lambda: binary)
    config = tmp_path / "litellm.yaml"
    config.write_text(
        yaml.safe_dump({"model_list": [{"model_name": "claude-*", "litellm_params": {"model": "anthropic/claude-*"}}]})
    )
    token = tmp_path / "egress-token"
    token.write_text("egress-" + "p" * 40 + "\n")
    argv = [
        "up", "--litellm-config", str(config), "--ingress-listen", f"127.0.0.1:{free_port()}",
        "--egress-listen", f"127.0.0.1:{free_port()}", "--litellm", f"http://127.0.0.1:{litellm_port or free_port()}",
        "--anthropic", "http://127.0.0.1:9", "--metrics-listen", "off", "--egress-token-file", str(token),
    ]  # fmt: skip
    deadline = threading.Timer(60, lambda: os.kill(os.getpid(), signal.SIGTERM))
    deadline.start()
    try:
        ran = run_cli(argv, bare_env(PATH=os.environ["PATH"]))
    finally:
        deadline.cancel()
    pid = Path(f"{binary}.pid")
    return ran, int(pid.read_text()) if pid.exists() else None


def test_up_ends_when_the_litellm_it_runs_dies_and_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/operations.md, Shutdown: `up --litellm-config` starts LiteLLM once Envoy is ready and watches it beside
    Envoy: a LiteLLM that dies after its start (a stand-in that answers its liveliness check, then exits 3) ends `up`
    with status 1 and LiteLLM named, so that a service manager restarts the whole, rather than `up` serving a gateway
    without its LiteLLM. Before that, the ready line and the two lines a client needs (README.md), the key as a
    placeholder for a config without a master key of the environment's."""
    ran, _ = _up_with_a_stand_in(tmp_path, monkeypatch, signals_up=False)
    assert ran.returncode == 1, ran
    ready, *setup = ran.stdout.splitlines()
    ingress = ready.split()[1].removeprefix("ingress=")
    assert setup == [
        f"export ANTHROPIC_BASE_URL=http://{ingress}",
        'export ANTHROPIC_CUSTOM_HEADERS="x-litellm-api-key: <your LiteLLM key>"',
    ], ran.stdout
    assert "ext-proc: LiteLLM exited unexpectedly with status 3" in ran.stderr.splitlines(), ran.stderr
    assert "litellm | crashed after its first request" in ran.stderr.splitlines(), ran.stderr


def test_up_stops_the_litellm_it_runs_before_it_returns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/operations.md, Shutdown: on SIGTERM `up` stops LiteLLM (when it runs it), waiting for its exit, before
    Envoy: not left to die with `up`'s process (here the test's process, which lives on). The stand-in sends the
    SIGTERM itself once it has answered its liveliness check."""
    import os
    import signal

    ran, pid = _up_with_a_stand_in(tmp_path, monkeypatch, signals_up=True)
    assert pid is not None, ran
    left = Path(f"/proc/{pid}").exists()
    if left:
        os.kill(pid, signal.SIGKILL)
    assert ran.returncode == 0, ran
    assert not left, "LiteLLM outlived the up that ran it"


def test_up_refuses_a_taken_litellm_port_before_it_starts_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --litellm-config, `up` listens on --litellm's port too (through LiteLLM): a port taken there is refused
    at start, its holder named, as for the other addresses (tests/test_up.py), before Envoy or LiteLLM start."""
    import os
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ran, pid = _up_with_a_stand_in(tmp_path, monkeypatch, signals_up=False, litellm_port=port)
    assert (ran.returncode, pid) == (1, None), ran
    held = f"held by pid {os.getpid()} "
    refusal = f"ext-proc: cannot listen on 127.0.0.1:{port} (LiteLLM): Address already in use; {held}"
    assert any(line.startswith(refusal) for line in ran.stderr.splitlines()), ran.stderr
