"""`ext-proc check --litellm-config`: each LiteLLM setting that breaks a guarantee is named, with its line."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from ext_proc.litellm import LiteLLMError, load
from ext_proc.litellm_config import attempts, up_changes
from tests.support.command import Ran, run_cli
from tests.support.processes import BIN, bare_env

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
  master_key: sk-master-of-these-tests-0123
"""
ROOT = Path(__file__).resolve().parent.parent


def check(
    tmp_path: Path, text: str, env: dict[str, str] | None = None, run_by: str = "litellm", *flags: str
) -> tuple[int, str]:
    """`ext-proc check` as an operator runs it for a LiteLLM it runs itself (``run_by``), or for `up`'s: in this
    process (tests/support/command.py), so that mutation testing sees it;
    test_the_check_command_runs_as_installed runs the installed command once."""
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "litellm.yaml").write_text(text)
    argv = ["check", "--egress-token-file", str(tmp_path / "token"), "--litellm-config", str(tmp_path / "litellm.yaml"),
            "--run-by", run_by, *flags]  # fmt: skip
    ran = run_cli(argv, {"HOME": str(tmp_path), **(env or {})})
    return ran.returncode, ran.stdout + ran.stderr


def test_the_check_command_runs_as_installed(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "litellm.yaml").write_text(GOOD)
    result = subprocess.run(
        [str(BIN / "ext-proc"), "check", "--egress-token-file", str(tmp_path / "token"),
         "--litellm-config", str(tmp_path / "litellm.yaml"), "--run-by", "litellm"],
        capture_output=True, text=True, timeout=60, env=bare_env(HOME=str(tmp_path)),
    )  # fmt: skip
    assert (result.returncode, result.stdout + result.stderr) == check(tmp_path, GOOD)


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


@pytest.mark.parametrize("given", ["sk-1234", "os.environ/LITELLM_MASTER_KEY"])
def test_a_master_key_from_the_documentation_is_an_error(tmp_path: Path, given: str) -> None:
    """LiteLLM's quick start's `sk-1234` (here also from the environment LiteLLM reads it from): anyone who reaches
    LiteLLM is its admin; `up` refuses one beyond loopback, `check` for a LiteLLM the operator runs says so."""
    # Not the first key of general_settings: the finding names the master key's own line, not its section's.
    text = GOOD.replace("master_key: sk-master-of-these-tests-0123", f"store_model_in_db: false\n  master_key: {given}")
    code, out = check(tmp_path, text, {"LITELLM_MASTER_KEY": "sk-1234"})
    line = text.splitlines().index(f"  master_key: {given}") + 1
    finding = (
        f"error: line {line}: the master key is one anyone has read (a documentation sample): whoever reaches LiteLLM "
        "can use it as its admin, and through the egress the credentials the gateway attaches; set one of your own "
        "(`ext-proc keygen --egress-token` prints a random value)"
    )
    assert (code, _shown(tmp_path, out)[-2:]) == (1, [finding, "litellm config has 1 error(s): FILE"])


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
    text = GOOD.replace("master_key: sk-master-of-these-tests-0123", "master_key: os.environ/MY_MASTER")
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
    ("content policy fallbacks", {"router_settings": {"content_policy_fallbacks": [{M: ["safe"]}]}}, 6),
    ("the default cap on fallbacks (5 groups after the first)",
     {"router_settings": {"fallbacks": [{M: ["a", "b", "c", "d", "e", "f", "g"]}]}}, 18),
    ("retry policy", {"router_settings": {"retry_policy": {"RateLimitErrorRetries": 7}}}, 8),
    ("per-deployment retries", {"model_list": [{"model_name": M, "litellm_params": {"num_retries": 4}}]}, 5),
    ("retry policy of a model group",
     {"router_settings": {"model_group_retry_policy": {M: {"TimeoutErrorRetries": 6}}}}, 7),
    ("a fallback to itself", {"router_settings": {"fallbacks": [{M: [M]}]}}, 3),
    ("a generic fallback to a group", {"router_settings": {"fallbacks": [{"*": [M]}]}}, 6),
    ("a generic fallback after a group's own",
     {"router_settings": {"fallbacks": [{M: ["backup"]}, {"*": ["other"]}]}}, 9),
    # What LiteLLM would refuse or ignore counts as its default, never as a crash of `check`.
    ("retries that are no number", {"router_settings": {"num_retries": "many"}}, 3),
    ("a retry policy that is no mapping", {"router_settings": {"retry_policy": "often"}}, 3),
    ("a fallback entry that is no mapping", {"router_settings": {"fallbacks": ["backup"]}}, 3),
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
    master = "  master_key: sk-master-of-these-tests-0123\n"
    text = GOOD.replace(master, f"{master}  litellm_key_header_name: X-Corp-Key\n")
    code, out = check(tmp_path, text)
    assert code == 1 and "error: line 12: LiteLLM also reads its callers' keys from x-corp-key" in out, out
    code, out = check(tmp_path, text, {"EXT_PROC_LITELLM_HEADERS": "api-key,x-corp-key"})
    assert code == 0, out
    code, out = check(tmp_path, text, None, "up")
    assert code == 0 and "sets litellm_headers + x-corp-key" in out, out
    keyless = GOOD.replace("general_settings:\n  master_key: sk-master-of-these-tests-0123\n", "general_settings: {}\n")
    code, out = check(tmp_path, keyless)
    assert code == 0 and "warning: line 10: no master_key here" in out, out
    code, out = check(tmp_path, keyless, {"EXT_PROC_LITELLM_REQUIRES_KEY": "false"})
    assert code == 0 and "no master_key" not in out, out
    code, out = check(tmp_path, keyless, None, "up")
    assert "sets litellm_requires_key false (LiteLLM has no master key" in out, out
    argv = ["check", "--egress-token-file", str(tmp_path / "token"), "--litellm-config", str(tmp_path / "litellm.yaml"),
            "--run-by", "nobody"]  # fmt: skip
    assert run_cli(argv, {"HOME": str(tmp_path)}) == Ran(2, "", "ext-proc: --run-by: 'up' or 'litellm', not 'nobody'\n")


def _shown(tmp_path: Path, out: str) -> list[str]:
    """`check`'s lines after the first (the settings), without the file's name in front, and FILE for it within."""
    file = f"{tmp_path / 'litellm.yaml'}"
    return [line.removeprefix(f"{file}: ").replace(file, "FILE") for line in out.splitlines()[1:]]


EVERYTHING = f"""model_list:
  - model_name: claude-a
    litellm_params:
      model: anthropic/claude-a
      api_base: https://api.anthropic.com
      api_key: sk-ant-api03-REALKEY
      cooldown_time: 30
  - litellm_params:
      model: anthropic/claude-b
      api_base: http://127.0.0.1:10000
      api_key: os.environ/NOT_IN_THIS_ENVIRONMENT
    model_info: {{cooldown_time: 5}}
  - model_name: gpt
    litellm_params: {{model: openai/gpt-4o}}
  - model_name: claude-c
    litellm_params:
      model: anthropic/claude-c
      api_base: http://127.0.0.1:10000
      api_key: {TOKEN}
      cooldown_time: 1
router_settings:
  fallbacks: [{{claude-a: [claude-c]}}]
general_settings:
  forward_client_headers_to_llm_api: true
  master_key: os.environ/MY_MASTER
  litellm_key_header_name: X-My-Key
"""
COOLDOWN = ("a deployment's own cooldown_time outranks the retry-after: 0 the egress gives LiteLLM when Anthropic "
            "refuses a client's own credential (rule E9), so one client's revoked token would cool this deployment "
            "down for everyone; set router_settings.cooldown_time instead")  # fmt: skip
SIX = ("LiteLLM may call Anthropic up to 6 times for one request (3 tries in each of 2 model groups), each opening "
       "the request's handoff")  # fmt: skip
CLAUDE_CODE = ("no Anthropic model group matches claude-opus-5-5, claude-sonnet-5-5, which Claude Code asks for by "
               "default (LiteLLM answers 400 'Invalid model name'); a claude-* group matches")  # fmt: skip
TO_EVERY = ("client x-* headers, the sealed handoff among them, are forwarded to every provider (gpt); forward per "
            "model group instead, or route those providers through the egress (--upstream)")  # fmt: skip
ENV = {"MY_MASTER": "mk-\u043a\u043b\u044e\u0447-0123456789"}  # a master key outside Latin-1, of no known shape


@pytest.mark.parametrize(
    ("run_by", "lines"),
    [
        ("litellm", [
            f"{SIX}; seal_max_opens is 3",
            f"warning: line 2: {CLAUDE_CODE}",
            "error: line 5: claude-a: calls Anthropic directly, around the egress; set api_base to the egress listener "
            "(http://127.0.0.1:10000 with `ext-proc up`)",
            "error: line 6: claude-a: api_key is a real Anthropic key: keep it in the gateway "
            "(--server-credential-file); LiteLLM sends the egress token",
            f"error: line 7: claude-a: {COOLDOWN}",
            f"error: line 12: #2: {COOLDOWN}",
            f"error: line 20: claude-c: {COOLDOWN}",
            f"error: line 22: {SIX}, and the gateway allows 3 (seal_max_opens): the later calls would be refused; set "
            "seal_max_opens to 6 (EXT_PROC_SEAL_MAX_OPENS=6; `up --litellm-config` derives it)",
            f"warning: line 24: {TO_EVERY}",
            "error: line 25: the master key does not have LiteLLM's key shape (sk-...) and the gateway does not know "
            "it, so the egress could not find it in a header LiteLLM forwards to Anthropic (rule E7): give it to the "
            "gateway (litellm_key_file), or use a master key starting with sk-",
            "error: line 26: LiteLLM also reads its callers' keys from x-my-key, which the gateway does not know: a "
            "client that sends its LiteLLM key there next to its own Anthropic credential is refused at the ingress "
            "(rule I8); add it to litellm_headers (EXT_PROC_LITELLM_HEADERS)",
            "litellm config has 8 error(s): FILE",
        ]),
        ("up", [
            "`up --litellm-config` sets api_base http://127.0.0.1:10000 (the egress listener) and api_key the egress "
            "token for claude-a, #2, claude-c",
            f"`up --litellm-config` sets seal_max_opens 6 ({SIX})",
            "`up --litellm-config` sets litellm_requires_key true (LiteLLM has a master key)",
            "`up --litellm-config` sets litellm_headers + x-my-key (LiteLLM's litellm_key_header_name)",
            "(a LiteLLM you run yourself needs the first two in its config: --run-by litellm checks it)",
            f"warning: line 2: {CLAUDE_CODE}",
            f"error: line 7: claude-a: {COOLDOWN}",
            f"error: line 12: #2: {COOLDOWN}",
            f"error: line 20: claude-c: {COOLDOWN}",
            f"warning: line 24: {TO_EVERY}",
            "litellm config has 3 error(s): FILE",
        ]),
    ],
)  # fmt: skip
def test_every_finding_of_one_config_word_for_word(tmp_path: Path, run_by: str, lines: list[str]) -> None:
    """What an operator reads, in file order, for a config with a bit of everything; `up` sets half of it."""
    code, out = check(tmp_path, EVERYTHING, ENV, run_by)
    assert (code, _shown(tmp_path, out)) == (1, lines)
    assert "REALKEY" not in out and ENV["MY_MASTER"] not in out


GROUPS = """model_list:
  - model_name: claude-*
    litellm_params:
      model: anthropic/claude-*
      api_base: http://127.0.0.1:10000
      api_key: placeholder-sealed-by-sidecar
  - model_name: claude-sonnet-5-5
    litellm_params:
      model: anthropic/claude-sonnet-5-5
      api_base: http://127.0.0.1:10000
      api_key: egress-other-token-0123456789abcdefghijkl
  - model_name: gpt
    litellm_params: {model: openai/gpt-4o}
litellm_settings:
  model_group_settings:
    forward_client_headers_to_llm_api: [claude-sonnet-5-5, gpt]
"""


@pytest.mark.parametrize(
    ("run_by", "code", "lines"),
    [
        ("litellm", 1, [
            "LiteLLM may call Anthropic up to 3 times for one request (3 tries in each of 1 model group), each "
            "opening the request's handoff; seal_max_opens is 3",
            "warning: line 1: no master_key here: if LiteLLM runs without one (LITELLM_MASTER_KEY unset in its "
            "environment too), it asks callers for no key, while the ingress refuses a client's own Anthropic "
            "credential without a LiteLLM key beside it (rule I8); set litellm_requires_key = false for such a "
            "LiteLLM",
            "error: line 6: claude-*: api_key is the old fixed placeholder; the egress releases sealed credentials "
            'only to the egress token (ANTHROPIC_API_KEY="$(cat ~/.config/ext-proc/egress-token)", api_key: '
            "os.environ/ANTHROPIC_API_KEY)",
            "error: line 11: claude-sonnet-5-5: api_key is not the gateway's egress token",
            "error: line 16: claude-*: client headers are not forwarded for this group, so clients' own credentials "
            "are lost on /v1/messages and /v1/chat/completions; add it to litellm_settings.model_group_settings."
            "forward_client_headers_to_llm_api",
            "litellm config has 3 error(s): FILE",
        ]),
        ("up", 0, [
            "`up --litellm-config` sets api_base http://127.0.0.1:10000 (the egress listener) and api_key the egress "
            "token for claude-*, claude-sonnet-5-5",
            "`up --litellm-config` sets client headers forwarded for claude-*",
            "`up --litellm-config` sets litellm_requires_key false (LiteLLM has no master key, asks callers for none)",
            "(a LiteLLM you run yourself needs the first two in its config: --run-by litellm checks it)",
            "litellm config OK: FILE",
        ]),
    ],
)  # fmt: skip
def test_per_group_forwarding_and_keys_word_for_word(tmp_path: Path, run_by: str, code: int, lines: list[str]) -> None:
    got, out = check(tmp_path, GROUPS, {}, run_by)
    assert (got, _shown(tmp_path, out)) == (code, lines)


def test_a_finding_under_an_empty_section_names_the_section_s_line(tmp_path: Path) -> None:
    """`litellm_settings:` with nothing under it: the forwarding it lacks is pointed at that line."""
    text = GOOD.replace("litellm_settings:\n  model_group_settings:\n    forward_client_headers_to_llm_api: "
                        "[claude-sonnet-4-5]\n", "litellm_settings:\n")  # fmt: skip
    assert text != GOOD
    code, out = check(tmp_path, text)
    assert code == 1 and "error: line 7: claude-sonnet-4-5: client headers are not forwarded for this group" in out


def test_a_missing_group_is_pointed_at_the_forwarded_list_itself(tmp_path: Path) -> None:
    """The list to add the group to, written as a block under its key: the finding names the list's line."""
    text = GOOD.replace("litellm_settings:\n  model_group_settings:\n    forward_client_headers_to_llm_api: "
                        "[claude-sonnet-4-5]\n", "litellm_settings:\n  model_group_settings:\n    "
                        "forward_client_headers_to_llm_api:\n      - claude-haiku-4-5\n")  # fmt: skip
    assert text != GOOD
    line = text.splitlines().index("      - claude-haiku-4-5") + 1
    code, out = check(tmp_path, text)
    assert code == 1 and f"error: line {line}: claude-sonnet-4-5: client headers are not forwarded" in out


@pytest.mark.parametrize(
    ("old", "new", "env", "finding"),
    [
        (f"api_key: {TOKEN}", "api_key: os.environ/ANTHROPIC_API_KEY", {"ANTHROPIC_API_KEY": "egress-" + "w" * 40},
         "error: line 6: claude-sonnet-4-5: api_key is not the gateway's egress token"),
        (f"      api_key: {TOKEN}\n", "", {},
         "error: line 4: claude-sonnet-4-5: no api_key: LiteLLM must send the egress token as its Anthropic key "
         "(docs/litellm.md)"),
        ("master_key: sk-master-of-these-tests-0123", "master_key: mk-literal-NotShaped", {},
         "error: line 11: the master key does not have LiteLLM's key shape (sk-...) and the gateway does not know it, "
         "so the egress could not find it in a header LiteLLM forwards to Anthropic (rule E7): give it to the gateway "
         "(litellm_key_file), or use a master key starting with sk-"),
    ],
)  # fmt: skip
def test_keys_read_from_the_environment_and_given_literally(
    tmp_path: Path, old: str, new: str, env: dict[str, str], finding: str
) -> None:
    code, out = check(tmp_path, GOOD.replace(old, new), env)
    assert (code, [line.split(": ", 1)[1] for line in out.splitlines() if ": error: " in line]) == (1, [finding])


def test_an_empty_config_is_judged_at_its_first_line(tmp_path: Path) -> None:
    code, out = check(tmp_path, "")
    warnings = [line.split(": ", 1)[1] for line in out.splitlines() if ": warning: " in line]
    assert (code, warnings) == (0, [
        "warning: line 1: no master_key here: if LiteLLM runs without one (LITELLM_MASTER_KEY unset in its environment "
        "too), it asks callers for no key, while the ingress refuses a client's own Anthropic credential without a "
        "LiteLLM key beside it (rule I8); set litellm_requires_key = false for such a LiteLLM",
    ])  # fmt: skip


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("model_list: [oops]\n", "model_list[0]: expected a mapping, got str"),
        ("model_list: {a: 1}\n", "model_list: expected a list, got dict"),
        ("model_list:\n  - model_name: c\n    litellm_params: [anthropic/c]\n",
         "model_list[0].litellm_params: expected a mapping, got list"),
        ("model_list:\n  - model_name: c\n    model_info: fast\n",
         "model_list[0].model_info: expected a mapping, got str"),
        ("general_settings: open\n", "general_settings: expected a mapping, got str"),
        ("router_settings: [3]\n", "router_settings: expected a mapping, got list"),
        ("litellm_settings: 1\n", "litellm_settings: expected a mapping, got int"),
        ("litellm_settings: {model_group_settings: all}\n",
         "litellm_settings.model_group_settings: expected a mapping, got str"),
    ],
)  # fmt: skip
def test_a_config_of_the_wrong_shape_is_refused_by_check_and_up_never_a_crash(
    tmp_path: Path, text: str, problem: str
) -> None:
    """LiteLLM would refuse these too; `check` and `up` say where, instead of a traceback."""
    code, out = check(tmp_path, text)
    path = tmp_path / "litellm.yaml"
    assert (code, out.splitlines()[-1]) == (2, f"ext-proc: {path}: {problem}")
    with pytest.raises(LiteLLMError) as refused:
        load(path)
    assert str(refused.value) == f"the LiteLLM config {path}: {problem}"


def test_up_names_every_group_it_forwards_client_headers_for() -> None:
    doc = {"model_list": [{"model_name": n, "litellm_params": {"model": f"anthropic/{n}"}} for n in ("a", "b", "c")],
           "litellm_settings": {"model_group_settings": {"forward_client_headers_to_llm_api": ["b"]}}}  # fmt: skip
    assert up_changes(doc, {}, 3, "127.0.0.1:10000")[1] == "client headers forwarded for a, c"


def test_forwarding_everything_names_every_other_provider(tmp_path: Path) -> None:
    text = GOOD.replace("general_settings:\n", "general_settings:\n  forward_client_headers_to_llm_api: true\n")
    text = text.replace(
        "litellm_settings:",
        "  - model_name: gpt\n    litellm_params: {model: openai/gpt-4o}\n"
        "  - model_name: mistral\n    litellm_params: {model: mistral/large}\nlitellm_settings:",
    )
    code, out = check(tmp_path, text)
    assert code == 0 and "are forwarded to every provider (gpt, mistral); forward per model group" in out, out


def test_check_reads_up_s_egress_token_at_its_default_place_when_none_is_named(tmp_path: Path) -> None:
    """`up` keeps its token in the user's config directory; `check` judges LiteLLM's api_key against that one."""
    (tmp_path / "litellm.yaml").write_text(GOOD)
    argv = ["check", "--litellm-config", str(tmp_path / "litellm.yaml"), "--run-by", "litellm"]
    default = tmp_path / ".config" / "ext-proc" / "egress-token"
    default.parent.mkdir(parents=True, mode=0o700)
    for token, code in (("egress-another-token-0123456789abcdefghij", 1), (TOKEN, 0)):
        default.write_text(token + "\n")
        default.chmod(0o600)
        judged = run_cli(argv, {"HOME": str(tmp_path)})
        assert (
            judged
            == run_cli([*argv, "--egress-token-file", str(default)], {"HOME": str(tmp_path)})
            == run_cli(argv, {"HOME": "/", "XDG_CONFIG_HOME": str(tmp_path / ".config")})
        )
        assert judged.returncode == code
        assert ("api_key is not the gateway's egress token" in judged.stdout) == (code == 1)


def test_a_litellm_config_that_is_not_a_mapping_is_refused_on_stderr(tmp_path: Path) -> None:
    (tmp_path / "litellm.yaml").write_text("- model_list\n")
    ran = run_cli(["check", "--litellm-config", str(tmp_path / "litellm.yaml")], {"HOME": str(tmp_path)})
    assert (ran.returncode, ran.stderr) == (2, f"ext-proc: {tmp_path / 'litellm.yaml'}: not a YAML mapping\n")
    assert ran.stdout == "config OK: seal keys none (one is generated at start); server credential none\n"
