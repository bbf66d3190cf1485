"""Reading a LiteLLM config for what would break the gateway's guarantees (`ext-proc check --litellm-config`).

LiteLLM is configured by its operator, not by us; a setting there can route Anthropic traffic around the egress,
keep a key the egress cannot trust, or drop the handoff. Each finding names the line to change. Errors break a
guarantee; warnings are worth a look.
"""

from __future__ import annotations

import fnmatch
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

OLD_PLACEHOLDER = "placeholder-sealed-by-sidecar"
_ENV = "os.environ/"
# What Claude Code 2.1.332 asks for by default, as recorded from its requests: the first with an API key, the second
# with an OAuth token (a subscription).
CLAUDE_CODE_MODELS = ("claude-opus-5-5", "claude-sonnet-5-5")
_FORWARD = ("litellm_settings", "model_group_settings", "forward_client_headers_to_llm_api")


# `up --litellm-config`'s master key when LITELLM_MASTER_KEY is unset, refused when the ingress listens beyond
# loopback.
DEV_MASTER_KEY = "sk-local-dev-only"
# Master keys anyone has read (LiteLLM's documentation samples; every LiteLLM key in this project's docs and tests,
# which tests/test_litellm_child.py collects): never served beyond loopback by `up`, an error in `check`.
SAMPLE_MASTER_KEYS = frozenset(
    {
        DEV_MASTER_KEY,
        "sk-1234",
        "sk-my_special_key",
        "sk-your-litellm-key",
        "sk-your-litellm-master-key",
        "sk-master-1234",
    }
)

# LiteLLM's defaults, measured on 1.81.14 and 1.108.7: a router call is retried twice, and at most 5 fallbacks.
DEFAULT_NUM_RETRIES = 2
DEFAULT_MAX_FALLBACKS = 5
_FALLBACK_SETTINGS = ("fallbacks", "context_window_fallbacks", "content_policy_fallbacks")
_SECTIONS = ("general_settings", "litellm_settings", "router_settings")


@dataclass(frozen=True, slots=True)
class Attempts:
    """How many calls to Anthropic LiteLLM may make for one client request, each opening its handoff once.

    Measured on both releases with every call failing (tests/e2e/test_litellm.py): (1 + num_retries) calls for
    each model group tried, the requested one and every fallback group reachable from it. The pass-through makes
    one call.
    """

    retries: int
    groups: int

    @property
    def calls(self) -> int:
        return (1 + self.retries) * self.groups

    def __str__(self) -> str:
        return (
            f"LiteLLM may call Anthropic up to {self.calls} times for one request ({1 + self.retries} tries in each "
            f"of {self.groups} model group{'s' if self.groups != 1 else ''}), each opening the request's handoff"
        )


def shape_problem(doc: Mapping[str, Any]) -> str | None:
    """The first part of a LiteLLM config that is not the kind of value LiteLLM reads there (a list where a mapping
    goes...), or None. The readers below take the shape for granted: `check` and `up` refuse such a file first."""

    def wrong(where: str, value: Any, kind: type) -> str | None:
        if value is None or isinstance(value, kind):
            return None
        return f"{where}: expected a {'mapping' if kind is dict else 'list'}, got {type(value).__name__}"

    for name in _SECTIONS:
        if problem := wrong(name, doc.get(name), dict):
            return problem
    groups = (doc.get("litellm_settings") or {}).get("model_group_settings")
    if problem := wrong("litellm_settings.model_group_settings", groups, dict):
        return problem
    models = doc.get("model_list")
    if problem := wrong("model_list", models, list):
        return problem
    for index, model in enumerate(models or []):
        if problem := wrong(f"model_list[{index}]", model, dict):
            return problem
        for section in ("litellm_params", "model_info"):
            if problem := wrong(f"model_list[{index}].{section}", (model or {}).get(section), dict):
                return problem
    return None


def attempts(doc: Mapping[str, Any]) -> Attempts:
    """The most calls one request can cost, from a LiteLLM config (its router and litellm settings)."""
    router = doc.get("router_settings") or {}
    settings = doc.get("litellm_settings") or {}
    models = doc.get("model_list") or []
    retries = [router.get("num_retries"), settings.get("num_retries")]
    retries += [(m.get("litellm_params") or {}).get("num_retries") for m in models]
    for policy in (router.get("retry_policy") or {}, *((router.get("model_group_retry_policy") or {}).values())):
        retries += list((policy or {}).values()) if isinstance(policy, Mapping) else []
    explicit = [int(r) for r in retries if isinstance(r, int | float | str) and str(r).strip().isdigit()]
    most = max(explicit) if explicit else DEFAULT_NUM_RETRIES
    edges: dict[str, set[str]] = {}
    for section in (router, settings):
        for name in _FALLBACK_SETTINGS:
            for entry in section.get(name) or []:
                for source, targets in entry.items() if isinstance(entry, Mapping) else ():
                    edges.setdefault(str(source), set()).update(str(t) for t in targets or [])
    cap = 1 + int(router.get("max_fallbacks", DEFAULT_MAX_FALLBACKS))
    # A group without fallbacks of its own reaches no more than "*" does: the sources are where the widest starts.
    widest = max((_reachable(group, edges) for group in edges), default=1)
    return Attempts(most, min(widest, cap))


def _reachable(start: str, edges: Mapping[str, set[str]]) -> int:
    """The groups one request can be tried in: the requested one, its fallbacks, theirs, each once ("*" for any)."""
    seen = {start}
    todo = [start]
    while todo:
        group = todo.pop()
        for target in edges.get(group, edges.get("*", set())):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return len(seen)


@dataclass(frozen=True, slots=True)
class Finding:
    error: bool
    line: int
    message: str

    def __str__(self) -> str:
        return f"{'error' if self.error else 'warning'}: line {self.line}: {self.message}"


def _lines(node: yaml.Node, path: tuple[str | int, ...]) -> int:
    """1-based line of the value at ``path`` (keys and list indexes), or of the deepest part that exists."""
    for step in path:
        if isinstance(node, yaml.MappingNode):
            found = next((v for k, v in node.value if k.value == step), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int):
            found = node.value[step]  # an index of the same document's list: always there
        else:
            found = None
        if found is None:
            break
        node = found
    return int(node.start_mark.line) + 1


def check_text(
    text: str,
    egress_token: bytes | None,
    anthropic_prefix: str,
    env: Mapping[str, str],
    recognises: Callable[[bytes], bool] | None = None,
    seal_max_opens: int | None = None,
    *,
    run_by_up: bool = False,
    key_headers: frozenset[str] | None = None,
    requires_key: bool | None = None,
) -> list[Finding]:
    """Every problem with one LiteLLM config, in file order (`check --litellm-config`; `up --litellm-config` checks
    the copy it derives before starting anything).

    ``recognises`` says whether the egress would find a LiteLLM key in a header (its patterns and the keys it
    knows by value); a master key it would not is an error, since LiteLLM forwards what clients put in headers.
    ``run_by_up``: the config is for `up --litellm-config`, which sets what ``up_changes`` lists (api_base, api_key,
    forwarding, seal_max_opens, the ingress's LiteLLM key settings), so none of those is a problem here.
    ``key_headers`` and ``requires_key`` are the gateway's settings for rule I8, compared with LiteLLM's own.
    """
    doc: Any = yaml.safe_load(text) or {}
    root = yaml.compose(text)
    findings: list[Finding] = []

    def add(error: bool, where: tuple[str | int, ...], message: str) -> None:
        findings.append(Finding(error, _lines(root, where) if root is not None else 1, message))

    models = doc.get("model_list") or []
    general = doc.get("general_settings") or {}
    calls = attempts(doc)
    if not run_by_up and seal_max_opens is not None and calls.calls > seal_max_opens:
        add(True, ("router_settings",), f"{calls}, and the gateway allows {seal_max_opens} (seal_max_opens): the "
            f"later calls would be refused; set seal_max_opens to {calls.calls} (EXT_PROC_SEAL_MAX_OPENS="
            f"{calls.calls}; `up --litellm-config` derives it)")  # fmt: skip
    master = _resolved(general.get("master_key"), env)
    if (
        not run_by_up
        and recognises is not None
        and master is not None
        and not recognises(master.encode("latin-1", "replace"))
    ):
        add(True, ("general_settings", "master_key"), "the master key does not have LiteLLM's key shape (sk-...) "
            "and the gateway does not know it, so the egress could not find it in a header LiteLLM forwards to "
            "Anthropic (rule E7): give it to the gateway (litellm_key_file), or use a master key starting with "
            "sk-")  # fmt: skip
    if not run_by_up and master in SAMPLE_MASTER_KEYS:
        add(True, ("general_settings", "master_key"), "the master key is one anyone has read (a documentation "
            "sample): whoever reaches LiteLLM can use it as its admin, and through the egress the credentials "
            "the gateway attaches; set one of your own (`ext-proc keygen --egress-token` prints a random "
            "value)")  # fmt: skip
    header = key_header(doc)
    if not run_by_up and header and key_headers is not None and header not in key_headers:
        add(True, ("general_settings", "litellm_key_header_name"), f"LiteLLM also reads its callers' keys from "
            f"{header}, which the gateway does not know: a client that sends its LiteLLM key there next to its "
            f"own Anthropic credential is refused at the ingress (rule I8); add it to litellm_headers "
            f"(EXT_PROC_LITELLM_HEADERS)")  # fmt: skip
    if not run_by_up and requires_key and "master_key" not in general:
        add(False, ("general_settings",), "no master_key here: if LiteLLM runs without one (LITELLM_MASTER_KEY unset "
            "in its environment too), it asks callers for no key, while the ingress refuses a client's own Anthropic "
            "credential without a LiteLLM key beside it (rule I8); set litellm_requires_key = false for such a "
            "LiteLLM")  # fmt: skip
    groups_forwarded = set(
        ((doc.get("litellm_settings") or {}).get("model_group_settings") or {}).get("forward_client_headers_to_llm_api")
        or []
    )
    forward_all = general.get("forward_client_headers_to_llm_api") is True
    others: list[str] = []
    anthropic_groups: list[str] = []
    for index, model in enumerate(models):
        params = model.get("litellm_params") or {}
        name = model.get("model_name", f"#{index + 1}")
        at: tuple[str | int, ...] = ("model_list", index, "litellm_params")
        if not str(params.get("model")).startswith("anthropic/"):
            others.append(name)
            continue
        anthropic_groups.append(str(name))
        for section in ("litellm_params", "model_info"):
            cooldown = (model.get(section) or {}).get("cooldown_time")
            if isinstance(cooldown, int | float) and cooldown > 0:
                add(True, ("model_list", index, section, "cooldown_time"), f"{name}: a deployment's own cooldown_time "
                    "outranks the retry-after: 0 the egress gives LiteLLM when Anthropic refuses a client's own "
                    "credential (rule E9), so one client's revoked token would cool this deployment down for "
                    "everyone; set router_settings.cooldown_time instead")  # fmt: skip
        if run_by_up:
            continue
        base = params.get("api_base")
        if not base or "api.anthropic.com" in str(base):
            add(True, (*at, "api_base"), f"{name}: calls Anthropic directly, around the egress; set api_base to "
                "the egress listener (http://127.0.0.1:10000 with `ext-proc up`)")  # fmt: skip
        key = params.get("api_key")
        problem = _key_problem(key, egress_token, anthropic_prefix, env)
        if problem:
            add(True, (*at, "api_key"), f"{name}: {problem}")
        if not forward_all and name not in groups_forwarded:
            add(True, _FORWARD, f"{name}: client headers are not forwarded for this group, so clients' "
                "own credentials are lost on /v1/messages and /v1/chat/completions; add it to litellm_settings."
                "model_group_settings.forward_client_headers_to_llm_api")  # fmt: skip
    missing = [m for m in CLAUDE_CODE_MODELS if not any(fnmatch.fnmatchcase(m, g) for g in anthropic_groups)]
    if anthropic_groups and missing:
        add(False, ("model_list",), f"no Anthropic model group matches {', '.join(missing)}, which Claude Code "
            "asks for by default (LiteLLM answers 400 'Invalid model name'); a claude-* group matches")  # fmt: skip
    if forward_all and others:
        add(False, ("general_settings", "forward_client_headers_to_llm_api"),
            f"client x-* headers, the sealed handoff among them, are forwarded to every provider ({', '.join(others)}"
            "); forward per model group instead, or route those providers through the egress (--upstream)")  # fmt: skip
    return sorted(findings, key=lambda f: f.line)


def key_header(doc: Mapping[str, Any]) -> str:
    """The header LiteLLM also reads its callers' keys from (`general_settings.litellm_key_header_name`), lower
    case as Envoy delivers it; empty when the config names none."""
    return str((doc.get("general_settings") or {}).get("litellm_key_header_name") or "").strip().lower()


def asks_for_key(doc: Mapping[str, Any], env: Mapping[str, str]) -> bool:
    """Whether LiteLLM asks its callers for a key: it has a master key, from its config or from
    LITELLM_MASTER_KEY, which it reads even when the config does not name it (rule I8)."""
    return "master_key" in (doc.get("general_settings") or {}) or bool(env.get("LITELLM_MASTER_KEY"))


def up_changes(doc: Mapping[str, Any], env: Mapping[str, str], seal_max_opens: int, egress: str) -> list[str]:
    """What `up --litellm-config` sets that the config does not say itself (in the copy LiteLLM runs, and in the
    gateway), worded for `check`: a LiteLLM run separately needs the first two in its own config."""
    general = doc.get("general_settings") or {}
    groups = [str(m.get("model_name", f"#{i + 1}")) for i, m in enumerate(doc.get("model_list") or [])
              if str((m.get("litellm_params") or {}).get("model")).startswith("anthropic/")]  # fmt: skip
    if not groups:
        return []
    named = ", ".join(groups)
    changes = [f"api_base http://{egress} (the egress listener) and api_key the egress token for {named}"]
    settings = doc.get("litellm_settings") or {}
    forwarded = set((settings.get("model_group_settings") or {}).get("forward_client_headers_to_llm_api") or [])
    if general.get("forward_client_headers_to_llm_api") is not True and set(groups) - forwarded:
        changes.append(f"client headers forwarded for {', '.join(g for g in groups if g not in forwarded)}")
    calls = attempts(doc)
    if calls.calls > seal_max_opens:
        changes.append(f"seal_max_opens {calls.calls} ({calls})")
    asked = asks_for_key(doc, env)
    changes.append("litellm_requires_key " + ("true (LiteLLM has a master key)" if asked else
                                              "false (LiteLLM has no master key, asks callers for none)"))  # fmt: skip
    header = key_header(doc)
    if header:
        changes.append(f"litellm_headers + {header} (LiteLLM's litellm_key_header_name)")
    return changes


def _resolved(value: Any, env: Mapping[str, str]) -> str | None:
    if value is None:
        return None
    text = str(value)
    return env.get(text.removeprefix(_ENV)) if text.startswith(_ENV) else text


def _key_problem(key: Any, token: bytes | None, prefix: str, env: Mapping[str, str]) -> str | None:
    if key is None:
        return "no api_key: LiteLLM must send the egress token as its Anthropic key (docs/litellm.md)"
    text = str(key)
    if text.startswith(_ENV):
        variable = text.removeprefix(_ENV)
        if variable not in env:
            return None  # LiteLLM's environment is not this one: nothing to compare
        text = env[variable]
    if text == OLD_PLACEHOLDER:
        return (
            "api_key is the old fixed placeholder; the egress releases sealed credentials only to the egress token "
            '(ANTHROPIC_API_KEY="$(cat ~/.config/ext-proc/egress-token)", api_key: os.environ/ANTHROPIC_API_KEY)'
        )
    if text.startswith(prefix):
        return (
            "api_key is a real Anthropic key: keep it in the gateway (--server-credential-file); "
            "LiteLLM sends the egress token"
        )
    if token is not None and not hmac.compare_digest(text.strip().encode(), token):
        return "api_key is not the gateway's egress token"
    return None
