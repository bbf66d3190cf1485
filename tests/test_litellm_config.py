"""`ext-proc check --litellm-config`: each LiteLLM setting that breaks a guarantee is named, with its line."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from ext_proc.litellm_config import attempts
from tests.support.processes import BIN

TOKEN = "egress-test-token-0123456789abcdefghij"
GOOD = f"""model_list:
  - model_name: claude-sonnet-4-5
    litellm_params:
      model: anthropic/claude-sonnet-4-5
      api_base: http://127.0.0.1:10000
      api_key: {TOKEN}
litellm_settings:
  model_group_settings:
    forward_client_headers_to_llm_api: [claude-sonnet-4-5]
general_settings:
  master_key: sk-master-1234
"""
ROOT = Path(__file__).resolve().parent.parent


def check(
    tmp_path: Path, text: str, env: dict[str, str] | None = None, run_by: str = "litellm", *flags: str
) -> tuple[int, str]:
    """`ext-proc check` as an operator runs it for a LiteLLM it runs itself (``run_by``), or for `up`'s."""
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "litellm.yaml").write_text(text)
    result = subprocess.run(
        [str(BIN / "ext-proc"), "check", "--egress-token-file", str(tmp_path / "token"),
         "--litellm-config", str(tmp_path / "litellm.yaml"), "--run-by", run_by, *flags],
        capture_output=True, text=True, timeout=60, env={"HOME": str(tmp_path), **(env or {})},
    )  # fmt: skip
    return result.returncode, result.stdout + result.stderr


def test_a_config_as_docs_litellm_md_says_is_ok(tmp_path: Path) -> None:
    code, out = check(tmp_path, GOOD)
    assert code == 0 and "litellm config OK" in out, out
    code, out = check(tmp_path, GOOD.replace(TOKEN, "os.environ/ANTHROPIC_API_KEY"), {"ANTHROPIC_API_KEY": TOKEN})
    assert code == 0, out


BROKEN = [
    ("no api_base", GOOD.replace("      api_base: http://127.0.0.1:10000\n", ""), 4, "around the egress"),
    ("direct api_base", GOOD.replace("http://127.0.0.1:10000", "https://api.anthropic.com"), 5, "around the egress"),
    ("old placeholder", GOOD.replace(TOKEN, "placeholder-sealed-by-sidecar"), 6, "old fixed placeholder"),
    ("real key", GOOD.replace(TOKEN, "sk-ant-api03-REALKEY"), 6, "real Anthropic key"),
    ("wrong token", GOOD.replace(TOKEN, "egress-some-other-token-0123456789abcdef"), 6, "not the gateway's egress"),
    ("no key", GOOD.replace(f"      api_key: {TOKEN}\n", ""), 4, "no api_key"),
    ("no forwarding", GOOD.replace("[claude-sonnet-4-5]", "[other-group]"), 9, "not forwarded"),
    (
        "deployment cooldown",
        GOOD.replace("      api_key:", "      cooldown_time: 30\n      api_key:"),
        6,
        "one client's revoked token would cool this deployment down for everyone",
    ),
    (
        "model_info cooldown",
        GOOD.replace("litellm_settings:", "    model_info: {cooldown_time: 5}\nlitellm_settings:"),
        7,
        "outranks the retry-after: 0",
    ),
]


@pytest.mark.parametrize(("text", "line", "message"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_each_broken_setting_is_an_error_naming_its_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    code, out = check(tmp_path, text)
    assert code == 1, out
    assert f"error: line {line}: claude-sonnet-4-5: " in out and message in out, out
    assert "sk-ant-api03-REALKEY" not in out and TOKEN not in out


def test_a_zero_or_router_wide_cooldown_time_is_fine(tmp_path: Path) -> None:
    """0 turns the deployment's cooldown off; the router's is outranked by the egress's retry-after: 0 (E9)."""
    zero = GOOD.replace("      api_key:", "      cooldown_time: 0\n      api_key:")
    router = GOOD + "router_settings:\n  cooldown_time: 60\n"
    for text in (zero, router):
        code, out = check(tmp_path, text)
        assert code == 0 and "litellm config OK" in out, out


def test_global_forwarding_with_other_providers_is_a_warning(tmp_path: Path) -> None:
    text = GOOD.replace("litellm_settings:\n  model_group_settings:\n    forward_client_headers_to_llm_api: "
                        "[claude-sonnet-4-5]\n", "") + "  forward_client_headers_to_llm_api: true\n"  # fmt: skip
    text = text.replace("model_list:\n", "model_list:\n  - model_name: gpt-4o\n    litellm_params:\n"
                        "      model: openai/gpt-4o\n")  # fmt: skip
    code, out = check(tmp_path, text)
    assert code == 0 and "warning: line 12: client x-* headers" in out and "gpt-4o" in out, out


def test_the_shipped_sidecar_litellm_config_passes(tmp_path: Path) -> None:
    text = (ROOT / "deploy" / "k8s" / "sidecar" / "litellm.yaml").read_text()
    code, out = check(tmp_path, text, {"ANTHROPIC_API_KEY": TOKEN})
    assert code == 0, out


def test_a_config_claude_code_s_models_do_not_match_gets_a_warning(tmp_path: Path) -> None:
    code, out = check(tmp_path, GOOD)
    assert code == 0 and "no Anthropic model group matches claude-opus-5-5, claude-sonnet-5-5" in out, out
    wildcard = GOOD.replace("model_name: claude-sonnet-4-5", "model_name: claude-*").replace(
        "[claude-sonnet-4-5]", '["claude-*"]'
    )
    code, out = check(tmp_path, wildcard)
    assert code == 0 and "warning" not in out, out


def test_a_master_key_the_egress_cannot_recognise_is_an_error_until_the_gateway_knows_it(tmp_path: Path) -> None:
    """LiteLLM accepts a master key of any shape (it compares it before its sk- check); the egress finds LiteLLM
    keys by their sk- shape, or by value."""
    text = GOOD.replace("master_key: sk-master-1234", "master_key: os.environ/MY_MASTER")
    env = {"MY_MASTER": "mk-NotSkShaped-0123456789"}
    code, out = check(tmp_path, text, env)
    assert code == 1 and "line 11: the master key does not have LiteLLM's key shape (sk-...)" in out
    assert "mk-NotSkShaped" not in out
    known = tmp_path / "litellm-keys"
    known.write_text(env["MY_MASTER"] + "\n")
    code, out = check(tmp_path, text, {**env, "EXT_PROC_LITELLM_KEY_FILE": str(known)})
    assert code == 0 and f"litellm config OK: {tmp_path / 'litellm.yaml'}" in out and "master key" not in out


M = "claude-sonnet-4-5"
ATTEMPTS = [
    # (id, config, calls): measured on 1.81.14 and 1.108.7 with every call failing (tests/e2e/test_router.py)
    ("defaults", {}, 3),
    ("litellm num_retries", {"litellm_settings": {"num_retries": 5}}, 6),
    ("router num_retries", {"router_settings": {"num_retries": 4}}, 5),
    ("one fallback group", {"router_settings": {"fallbacks": [{M: ["backup"]}]}}, 6),
    ("two fallback groups", {"router_settings": {"fallbacks": [{M: ["backup", "backup2"]}]}}, 9),
    ("nested fallbacks", {"router_settings": {"fallbacks": [{M: ["backup"]}, {"backup": ["backup2"]}]}}, 9),
    ("fallbacks and retries", {"router_settings": {"fallbacks": [{M: ["backup"]}], "num_retries": 3}}, 8),
    # Not measured one by one; read the same way: each group once, the widest setting wins, the cap holds.
    ("a cycle", {"router_settings": {"fallbacks": [{M: ["backup"]}, {"backup": [M]}]}}, 6),
    ("generic fallback", {"router_settings": {"fallbacks": [{"*": ["backup"]}]}}, 6),
    ("context window fallbacks", {"litellm_settings": {"context_window_fallbacks": [{M: ["big"]}]}}, 6),
    ("retry policy", {"router_settings": {"retry_policy": {"RateLimitErrorRetries": 7}}}, 8),
    ("per-deployment retries", {"model_list": [{"model_name": M, "litellm_params": {"num_retries": 4}}]}, 5),
    ("max_fallbacks caps the groups",
     {"router_settings": {"fallbacks": [{M: ["a", "b", "c", "d"]}], "max_fallbacks": 2}}, 9),
]  # fmt: skip


@pytest.mark.parametrize(("config", "calls"), [a[1:] for a in ATTEMPTS], ids=[a[0] for a in ATTEMPTS])
def test_the_calls_one_request_can_cost_follow_from_litellm_s_config(config: dict[str, Any], calls: int) -> None:
    doc = {"model_list": [{"model_name": M, "litellm_params": {"model": f"anthropic/{M}"}}], **config}
    assert attempts(doc).calls == calls


def test_check_says_what_seal_max_opens_a_config_needs(tmp_path: Path) -> None:
    text = GOOD + "router_settings:\n  fallbacks: [{claude-sonnet-4-5: [backup]}]\n"
    code, out = check(tmp_path, text)
    assert code == 1
    assert (
        "error: line 13: LiteLLM may call Anthropic up to 6 times for one request (3 tries in each of 2 model "
        "groups), each opening the request's handoff, and the gateway allows 3 (seal_max_opens): the later calls "
        "would be refused; set seal_max_opens to 6 (EXT_PROC_SEAL_MAX_OPENS=6; `up --litellm-config` derives it)"
    ) in out.replace(f"{tmp_path / 'litellm.yaml'}: ", "")
    code, out = check(tmp_path, text, {"EXT_PROC_SEAL_MAX_OPENS": "6"})
    assert code == 0 and "up to 6 times" in out and "seal_max_opens is 6" in out


def test_the_readme_s_config_is_judged_as_up_runs_it_and_up_s_changes_are_listed(tmp_path: Path) -> None:
    """`check --litellm-config` on `up`'s input: what `up --litellm-config` derives is no error, and is listed;
    the same file for a LiteLLM run separately lacks exactly that."""
    text = (ROOT / "examples" / "litellm.yaml").read_text()
    code, out = check(tmp_path, text, None, "up")
    assert code == 0 and "litellm config OK" in out, out
    for change in ("sets api_base http://127.0.0.1:10000 (the egress listener) and api_key the egress token for "
                   "claude-*", "sets client headers forwarded for claude-*",
                   "sets litellm_requires_key true (LiteLLM has a master key)"):  # fmt: skip
        assert change in out, out
    code, out = check(tmp_path, text, None, "litellm")
    assert code == 1 and out.count("error: ") == 3 and "around the egress" in out, out
    # A retry policy beyond the gateway's bound is `up`'s to raise; a deployment's own cooldown stays an error.
    code, out = check(tmp_path, text + "router_settings:\n  num_retries: 5\n", None, "up")
    assert code == 0 and "sets seal_max_opens 6" in out, out
    code, out = check(tmp_path, text.replace("model: anthropic/claude-*", "model: anthropic/claude-*\n"
                                             "      cooldown_time: 9"), None, "up")  # fmt: skip
    assert code == 1 and "outranks the retry-after: 0" in out, out


def test_check_compares_litellm_s_key_settings_with_the_ingress_s(tmp_path: Path) -> None:
    """Rule I8: a key header LiteLLM reads that the gateway does not know is an error for a separate LiteLLM
    (clients sending their key there would be refused), and `up` adds it itself; no master key is a warning."""
    text = GOOD.replace("  master_key: sk-master-1234\n", "  master_key: sk-master-1234\n  litellm_key_header_name: "
                        "X-Corp-Key\n")  # fmt: skip
    code, out = check(tmp_path, text)
    assert code == 1 and "error: line 12: LiteLLM also reads its callers' keys from x-corp-key" in out, out
    code, out = check(tmp_path, text, {"EXT_PROC_LITELLM_HEADERS": "api-key,x-corp-key"})
    assert code == 0, out
    code, out = check(tmp_path, text, None, "up")
    assert code == 0 and "sets litellm_headers + x-corp-key" in out, out
    keyless = GOOD.replace("general_settings:\n  master_key: sk-master-1234\n", "general_settings: {}\n")
    code, out = check(tmp_path, keyless)
    assert code == 0 and "warning: line 10: no master_key here" in out, out
    code, out = check(tmp_path, keyless, {"EXT_PROC_LITELLM_REQUIRES_KEY": "false"})
    assert code == 0 and "no master_key" not in out, out
    code, out = check(tmp_path, keyless, None, "up")
    assert "sets litellm_requires_key false (LiteLLM has no master key" in out, out
    code, out = check(tmp_path, GOOD, None, "nobody")
    assert code == 2 and "--run-by: 'up' or 'litellm'" in out, out
