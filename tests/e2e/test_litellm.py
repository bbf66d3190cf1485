"""End to end with real LiteLLM releases from PyPI, real Envoy (via `ext-proc up`) and the recording stand-in.

For each release: the matrix without the gateway ("before") and with it ("after", three LiteLLM setups). Every
"after" case is asserted against the credential rules; both tables must match docs/before-after.md, so the
headline never goes stale (UPDATE_DOCS=1 rewrites the sections after a deliberate change).
"""

from __future__ import annotations

import base64
import difflib
import http.client
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from ext_proc.config import DEFAULT_EGRESS_ALLOWLIST
from ext_proc.envoy import HostPort
from ext_proc.seal import Keyring
from tests.e2e.matrix import (
    CLIENT_KEY,
    CLIENT_OAUTH,
    CLIENTS,
    OAUTH_FLAG,
    PROBES,
    ROUTES,
    SERVER_KEY,
    SIDECAR_KEY,
    Client,
    Route,
    describe,
    table,
)  # fmt: skip
from tests.support import claude_code, litellm_proxy
from tests.support.http import send
from tests.support.litellm_proxy import EGRESS_TOKEN, MASTER_KEY, MODEL, OPENAI_KEY, OPENAI_MODEL, RELEASES, Setup
from tests.support.processes import BIN, SEAL_KEY, Proc, free_port, wait_for
from tests.support.recorder import Received, Recorder

pytestmark = pytest.mark.litellm
DOC = Path(__file__).resolve().parents[2] / "docs" / "before-after.md"
ALLOWED = {n for n in DEFAULT_EGRESS_ALLOWLIST if not n.endswith("*")} | {
    "host", "content-length", "transfer-encoding", "x-api-key", "authorization",
}  # fmt: skip


@dataclass(frozen=True)
class GatewaySetup:
    name: str
    litellm_key: str | None
    sidecar_key: str | None


AFTER = (
    GatewaySetup("egress token in LiteLLM, no server key anywhere", EGRESS_TOKEN, None),
    GatewaySetup("egress token in LiteLLM, server key in the sidecar", EGRESS_TOKEN, SIDECAR_KEY),
)
BEFORE = (("LiteLLM holds the server key", SERVER_KEY), ("no key in LiteLLM", None))
# What the rules would have chosen in each "before" setup, to count the requests that broke them.
RULES_FOR_BEFORE = {key: GatewaySetup(name, key, None) for name, key in BEFORE}


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    with Recorder() as r:
        yield r


@contextmanager
def gateway(
    version: str,
    setup: GatewaySetup,
    recorder: Recorder,
    work: Path,
    forward: bool = True,
    *extra: str,
    openai: Recorder | None = None,
    started: list[Proc] | None = None,
    default_router: bool = False,
    more_groups: tuple[str, ...] = (),
    settings: tuple[tuple[str, dict[str, Any]], ...] = (),
    env: dict[str, str] | None = None,
    deployments: int = 1,
) -> Iterator[HostPort]:
    """`ext-proc up` around a real LiteLLM whose Anthropic base URL is the gateway's egress listener."""
    ingress, egress, litellm_port = free_port(), free_port(), free_port()
    token = work / "egress-token"
    token.write_text(EGRESS_TOKEN + "\n")
    args = [
        "--ingress-listen", f"127.0.0.1:{ingress}", "--egress-listen", f"127.0.0.1:{egress}",
        "--litellm", f"http://127.0.0.1:{litellm_port}", "--egress-token-file", str(token),
        "--anthropic", recorder.url, "--metrics-listen", f"127.0.0.1:{free_port()}", *extra,
    ]  # fmt: skip
    if setup.sidecar_key:
        key_file = work / "server-key"
        key_file.write_text(setup.sidecar_key + "\n")
        args += ["--server-credential-file", str(key_file)]
    if openai is not None:
        args += ["--upstream", f"openai={openai.url}"]
    up = Proc([str(BIN / "ext-proc"), "up", *args], env)
    if started is not None:
        started.append(up)
    try:
        up.wait_line("ready ")
        config = Setup(version, f"http://127.0.0.1:{egress}", setup.litellm_key, forward,
                       default_router=default_router, more_groups=more_groups, settings=settings,
                       deployments=deployments)  # fmt: skip
        if openai is not None:
            # The worst case for other providers: forwarding for every model group.
            base = f"http://127.0.0.1:{egress}/upstreams/openai/v1"
            config = replace(config, openai_base=base, forward_globally=True)
        proxy = litellm_proxy.start(config, work, litellm_port)
        try:
            yield HostPort("127.0.0.1", ingress)
        finally:
            proxy.stop()
    finally:
        up.stop()
        secrets = (MASTER_KEY, SERVER_KEY, SIDECAR_KEY, EGRESS_TOKEN, "FAKEKEY", "FAKEOAUTH")
        leaked = [s for s in secrets if s in up.output]
        assert not leaked, f"credential values in the gateway's output: {leaked}"


def run_matrix(
    at: HostPort, recorder: Recorder, output: Callable[[], str] = str
) -> dict[tuple[str, str], tuple[int, list[Received]]]:
    """Every client's header set on every route; a request left without an answer names itself and ``output()``'s
    end (what the server said then)."""
    recorder.take()
    results = {}
    for client in CLIENTS:
        for route in ROUTES:
            try:
                status, _, _ = send(at, route.method, route.path, [*client.headers, *PROBES], route.body)
            except (OSError, http.client.HTTPException) as exc:
                raise AssertionError(
                    f"{client.name}, {route.method} {route.path}: {exc!r}; its output ends:\n{output()[-4000:]}"
                ) from exc
            results[(client.name, route.name)] = (status, recorder.take())
    return results


def expected(client: Client, setup: GatewaySetup) -> tuple[str, str] | None:
    """The credential the priority rules choose for this client under this setup."""
    if client.own is not None:
        return client.own
    if setup.litellm_key == SERVER_KEY:
        return ("x-api-key", SERVER_KEY)
    if setup.sidecar_key is not None:
        return ("x-api-key", setup.sidecar_key)
    return None


def violations(client: Client, route: Route, setup: GatewaySetup, status: int, received: list[Received]) -> list[str]:
    """What broke a rule: one call with the chosen credential, or a refusal (I7), or LiteLLM's own answer."""
    want = expected(client, setup)
    if client.own is not None and route.own == "refuse":
        # I7: refused by the gateway, nothing sent; anything else is a credential swapped or lost.
        if received or status != 400:
            return [f"credentials not refused: client got {status}, {len(received)} upstream calls"]
        return []
    if not received and route.local and (200 <= status < 300 or client.own is None):
        return []  # LiteLLM answered (or failed) on its own: nothing went upstream
    if len(received) != 1:
        return [f"expected one upstream call, got {len(received)} (client got {status})"]
    (got,) = received
    problems = []
    # (The stand-in answers every route like /v1/messages, so LiteLLM may fail to read its answer elsewhere.)
    if want is not None and not 200 <= status < 300 and not route.local:
        problems.append(f"client got {status}")
    unexpected = sorted(n for n in got.names if n not in ALLOWED and not n.startswith("x-stainless-"))
    if unexpected:
        problems.append(f"non-allowlisted headers arrived: {unexpected}")
    if any(MASTER_KEY in v or "session=abc" in v for _, v in got.headers):
        problems.append("a LiteLLM key or cookie value arrived")
    creds = [(n, v) for n in ("x-api-key", "authorization") for v in got.get(n)]
    if creds != ([want] if want else []):
        problems.append(f"credentials {[(n, '...' + v[-6:]) for n, v in creds]} != expected {want and want[0]}")
    flags = [f.strip() for v in got.get("anthropic-beta") for f in v.split(",")]
    if (OAUTH_FLAG in flags) != (want is not None and want[0] == "authorization"):
        problems.append(f"oauth beta flag presence wrong: {flags}")
    return problems


def tally(results: dict[tuple[str, str], tuple[int, list[Received]]], setup: GatewaySetup) -> str:
    """How many requests broke a rule, and how: the headline of each table."""
    clients = {c.name: c for c in CLIENTS}
    routes = {r.name: r for r in ROUTES}
    broken = credential = litellm_key = 0
    for (client, route), (status, got) in results.items():
        problems = violations(clients[client], routes[route], setup, status, got)
        broken += bool(problems)
        credential += any(p.startswith(("credentials", "client got", "expected one")) for p in problems)
        litellm_key += any("x-litellm-api-key" in r.names or any(MASTER_KEY in v for _, v in r.headers) for r in got)
    return (
        f"{broken} of {len(results)} requests break a rule ({credential} wrong or missing credential or refused, "
        f"{litellm_key} leak the LiteLLM key)"
    )


def check_section(key: str, text: str) -> None:
    """The committed table section must be exactly what this run recorded."""
    begin, end = f"<!-- {key} -->", f"<!-- /{key} -->"
    doc = DOC.read_text() if DOC.exists() else ""
    if os.environ.get("UPDATE_DOCS"):
        block = f"{begin}\n{text.strip()}\n{end}"
        doc = (
            doc[: doc.index(begin)] + block + doc[doc.index(end) + len(end) :]
            if begin in doc
            else doc + "\n" + block + "\n"
        )
        DOC.write_text(doc)
        return
    assert begin in doc and end in doc, f"{DOC.name} has no section {key!r}: run with UPDATE_DOCS=1"
    current = doc[doc.index(begin) + len(begin) : doc.index(end)].strip()
    diff = "\n".join(
        difflib.unified_diff(current.splitlines(), text.strip().splitlines(), "docs", "measured", lineterm="")
    )
    assert current == text.strip(), f"{DOC.name} section {key!r} no longer matches what was measured:\n{diff}"


@pytest.mark.parametrize("version", RELEASES)
@pytest.mark.parametrize(("setup_name", "key"), BEFORE, ids=["server-key", "no-key"])
def test_before(version: str, setup_name: str, key: str | None, recorder: Recorder, tmp_path: Path) -> None:
    proxy = litellm_proxy.start(Setup(version, recorder.url, key), tmp_path)
    try:
        results = run_matrix(HostPort("127.0.0.1", proxy.port), recorder, lambda: proxy.proc.output)
    finally:
        proxy.stop()
    cells = {case: describe(status, received) for case, (status, received) in results.items()}
    title = f"LiteLLM {version} alone, {setup_name}: {tally(results, RULES_FOR_BEFORE[key])}"
    check_section(f"before {version} {setup_name}", table(title, cells))


@pytest.mark.parametrize("version", RELEASES)
@pytest.mark.parametrize("setup", AFTER, ids=["token", "token-sidecar-key"])
def test_after(version: str, setup: GatewaySetup, recorder: Recorder, tmp_path: Path) -> None:
    with gateway(version, setup, recorder, tmp_path) as at:
        results = run_matrix(at, recorder)
    failures = []
    for client in CLIENTS:
        for route in ROUTES:
            status, received = results[(client.name, route.name)]
            problems = violations(client, route, setup, status, received)
            failures += [f"{client.name} / {route.name}: {p}" for p in problems]
    assert not failures, "\n".join(failures)
    cells = {case: describe(status, received) for case, (status, received) in results.items()}
    title = f"LiteLLM {version} behind the gateway, {setup.name}: {tally(results, setup)}"
    check_section(f"after {version} {setup.name}", table(title, cells))


def test_before_after_holds_only_what_the_matrix_measures() -> None:
    """A setup dropped from the matrix must not leave its old table behind."""
    measured = {f"before {v} {name}" for v in RELEASES for name, _ in BEFORE}
    measured |= {f"after {v} {setup.name}" for v in RELEASES for setup in AFTER}
    found = set(re.findall(r"<!-- ((?:before|after) [^>/]*?) -->", DOC.read_text()))
    assert found == measured, f"stale: {sorted(found - measured)}; missing: {sorted(measured - found)}"


def test_flag_off_unified_routes_lose_the_client_credential(recorder: Recorder, tmp_path: Path) -> None:
    """Documented limit: without forward_client_headers_to_llm_api the handoff only crosses pass-through routes."""
    setup = AFTER[0]
    oauth = next(c for c in CLIENTS if c.name.startswith("OAuth"))
    with gateway(RELEASES[-1], setup, recorder, tmp_path, forward=False) as at:
        recorder.take()
        by_route = {}
        for route in ROUTES[:6]:
            send(at, route.method, route.path, [*oauth.headers, *PROBES], route.body)
            (got,) = recorder.take()
            by_route[route.name] = got.get("authorization")
    assert oauth.own is not None
    assert by_route["pass-through"] == [oauth.own[1]]
    assert by_route["/v1/messages"] == [] and by_route["/v1/chat/completions"] == []


def test_real_claude_code_cli_with_oauth_through_litellm(recorder: Recorder, tmp_path: Path) -> None:
    """Claude Code with a subscription token plus a LiteLLM key: LiteLLM admits it, Anthropic gets only the token."""
    binary = claude_code.install()
    if isinstance(binary, str):
        pytest.skip(binary)
    home = tmp_path / "home"
    home.mkdir()
    with gateway(RELEASES[-1], AFTER[0], recorder, tmp_path) as at:
        recorder.take()
        env = {
            "HOME": str(home),
            "PATH": os.environ.get("PATH", ""),
            "ANTHROPIC_BASE_URL": f"http://{at}",
            "CLAUDE_CODE_OAUTH_TOKEN": CLIENT_OAUTH,
            "ANTHROPIC_CUSTOM_HEADERS": f"x-litellm-api-key: {MASTER_KEY}",
            "ANTHROPIC_MODEL": MODEL,
            "ANTHROPIC_SMALL_FAST_MODEL": MODEL,
            "ANTHROPIC_DEFAULT_HAIKU_MODEL": MODEL,
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        }
        result = subprocess.run(
            [str(binary), "-p", "say ok"], env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path
        )
        received = recorder.take()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok" in result.stdout
    messages = [r for r in received if r.path.startswith("/v1/messages")]
    assert messages, "Claude Code's request never reached the upstream"
    for got in received:
        assert got.get("authorization") == [f"Bearer {CLIENT_OAUTH}"]
        assert got.get("x-api-key") == [] and "x-litellm-api-key" not in got.names
        assert OAUTH_FLAG in got.get("anthropic-beta")[0].split(",")
        assert not any(MASTER_KEY in v for _, v in got.headers)


@pytest.mark.parametrize("version", RELEASES)
def test_other_providers_get_no_handoff_no_anthropic_credential_no_litellm_key(
    version: str, recorder: Recorder, tmp_path: Path
) -> None:
    """An OpenAI deployment routed through the egress (policy `other`), with forwarding on for every group."""
    oauth = next(c for c in CLIENTS if c.name.startswith("OAuth"))
    body = json.dumps({"model": OPENAI_MODEL, "messages": [{"role": "user", "content": "say ok"}]}).encode()
    with Recorder() as openai, gateway(version, AFTER[1], recorder, tmp_path, openai=openai) as at:
        recorder.take()
        send(at, "POST", "/v1/chat/completions", [*oauth.headers, *PROBES], body)
        received = openai.take()
    assert received, "LiteLLM's call to the OpenAI stand-in did not go through the egress"
    assert recorder.take() == []
    # 1.108.7 also asks the provider for its model list, with the provider's key.
    assert "/v1/chat/completions" in {got.path for got in received}
    for got in received:
        assert got.path.startswith("/v1/")
        assert got.get("authorization") == [f"Bearer {OPENAI_KEY}"]
        assert not got.names & {"x-credential-handoff", "x-litellm-api-key", "x-api-key", "cookie"}
        assert not any("sk-ant-" in v or MASTER_KEY in v or EGRESS_TOKEN in v for _, v in got.headers)


def test_without_the_egress_token_no_sealed_credential_is_released(recorder: Recorder, tmp_path: Path) -> None:
    """LiteLLM holding a real key (or an old fixed placeholder) cannot prove itself: clients' own credentials
    are refused at the egress (never swapped), clients with only a LiteLLM key get LiteLLM's key."""
    oauth = next(c for c in CLIENTS if c.name.startswith("OAuth"))
    plain = next(c for c in CLIENTS if c.name == "LiteLLM key as x-litellm-api-key")
    real_key = GatewaySetup("real key in LiteLLM", SERVER_KEY, SIDECAR_KEY)
    messages = next(r for r in ROUTES if r.name == "/v1/messages")
    with gateway(RELEASES[-1], real_key, recorder, tmp_path) as at:
        recorder.take()
        status, _, _ = send(at, "POST", messages.path, [*oauth.headers, *PROBES], messages.body)
        refused = recorder.take()
        send(at, "POST", messages.path, [*plain.headers, *PROBES], messages.body)
        (served,) = recorder.take()
    assert refused == [] and not 200 <= status < 300
    assert served.get("x-api-key") == [SERVER_KEY], "no proof, so not the sidecar's key: LiteLLM's own"


@pytest.mark.parametrize("version", RELEASES)
def test_a_handoff_replayed_through_litellm_opens_at_most_three_times_within_a_minute(
    version: str, recorder: Recorder, tmp_path: Path
) -> None:
    """S1: a handoff read from LiteLLM's records and sent again in a body's extra_headers."""
    keys = tmp_path / "seal-keys"
    keys.write_text(SEAL_KEY + "\n")
    keyring = Keyring([base64.urlsafe_b64decode(SEAL_KEY)], 60)
    attacker = [("x-litellm-api-key", MASTER_KEY), ("content-type", "application/json"),
                ("anthropic-version", "2023-06-01")]  # fmt: skip

    def replay(handoff: str) -> None:
        doc = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}],
               "extra_headers": {"x-credential-handoff": handoff}}  # fmt: skip
        send(at, "POST", "/v1/messages", attacker, json.dumps(doc).encode())

    with gateway(version, AFTER[1], recorder, tmp_path, True, "--seal-key-file", str(keys)) as at:
        recorder.take()
        fresh = keyring.seal([("authorization", CLIENT_OAUTH.encode())], time.time())
        for _ in range(5):
            replay(fresh)
        victim = [g for g in recorder.take() if g.get("authorization") == [f"Bearer {CLIENT_OAUTH}"]]
        old = keyring.seal([("authorization", CLIENT_OAUTH.encode())], time.time() - 61)
        replay(old)
        late = [g for g in recorder.take() if g.get("authorization") == [f"Bearer {CLIENT_OAUTH}"]]
    print(f"\nLiteLLM {version}: a replayed handoff reached the upstream {len(victim)} times in 5 tries")
    assert len(victim) == 3, "extra_headers carries the handoff; the bound stops it after three opens"
    assert late == []


OTHER_VIRTUAL_KEY = "sk-Xb3kR9VIRTUALKEYofanotheruser"


@pytest.mark.parametrize("version", RELEASES)
def test_credential_edges_through_litellm(version: str, recorder: Recorder, tmp_path: Path) -> None:
    """Rules I5, I6, E6, E7 with LiteLLM in the chain: each attack is refused, or crosses without what it carried."""
    litellm_key = [("x-litellm-api-key", MASTER_KEY), ("content-type", "application/json"),
                   ("anthropic-version", "2023-06-01")]  # fmt: skip
    body = json.dumps({"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}).encode()
    refused = {
        "OAuth and a LiteLLM key in two Authorization headers": [
            ("authorization", f"Bearer {CLIENT_OAUTH}"), ("authorization", f"Bearer {MASTER_KEY}"),
            ("content-type", "application/json")],
        "a key and a LiteLLM key in one x-api-key": [("x-api-key", f"{CLIENT_KEY}, {MASTER_KEY}"), *litellm_key],
        "an Anthropic key in an allowlisted header": [("x-stainless-helper", CLIENT_KEY), *litellm_key],
    }  # fmt: skip
    processes: list[Proc] = []
    with gateway(version, AFTER[1], recorder, tmp_path, started=processes) as at:
        recorder.take()
        for what, headers in refused.items():
            status, answer, _ = send(at, "POST", "/anthropic/v1/messages", headers, body)
            assert status == 400 and json.loads(answer)["error"]["type"] == "invalid_request_error", what
            assert recorder.take() == [], what
        # A LiteLLM key in an allowlisted header, sent by the client (pass-through forwards x-app; 1.108.7 drops a
        # header holding the caller's own key, so another key of LiteLLM's shape) and by LiteLLM itself from a
        # body's extra_headers: both reach the egress, neither reaches Anthropic.
        send(
            at,
            "POST",
            "/anthropic/v1/messages",
            [("authorization", f"Bearer {CLIENT_OAUTH}"), ("x-app", OTHER_VIRTUAL_KEY), *litellm_key],
            body,
        )
        doc = {**json.loads(body), "extra_headers": {"x-stainless-bar": MASTER_KEY}}
        send(at, "POST", "/v1/messages", [("authorization", f"Bearer {CLIENT_OAUTH}"), *litellm_key],
             json.dumps(doc).encode())  # fmt: skip
        received = recorder.take()
        (up,) = processes
        # The audit line names what the egress removed: both headers did reach it.
        wait_for(lambda: '"scrubbed":["x-stainless-bar"]' in up.output, "the egress to scrub extra_headers")
        egress = [line for line in up.lines if '"leg":"egress"' in line]
        assert any('"scrubbed":["x-app"]' in line for line in egress), egress
    assert len(received) == 2
    for got in received:
        assert got.get("authorization") == [f"Bearer {CLIENT_OAUTH}"]
        assert not got.names & {"x-app", "x-stainless-bar"}
        assert not any(MASTER_KEY in v or EGRESS_TOKEN in v or OTHER_VIRTUAL_KEY in v for _, v in got.headers)


@pytest.mark.parametrize("version", RELEASES)
def test_a_request_the_egress_refuses_fails_only_itself_under_default_router_settings(
    version: str, recorder: Recorder, tmp_path: Path
) -> None:
    """LiteLLM's router cools a deployment down on 401, 402, 404, 408, 429 and 5xx (its group's only one too) and
    then answers everyone 429: a refusal of the egress must not be one of those, or any LiteLLM key holder could
    take the gateway down for all by sending one bad request every few seconds."""
    body = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    # The body's extra_headers replace LiteLLM's own Anthropic key (the egress token): the egress cannot tell the
    # request comes from LiteLLM and refuses to open the handoff (E0).
    attack = json.dumps({**body, "extra_headers": {"x-api-key": MASTER_KEY}}).encode()
    headers = [("x-litellm-api-key", MASTER_KEY), ("content-type", "application/json"),
               ("anthropic-version", "2023-06-01")]  # fmt: skip
    with gateway(version, AFTER[0], recorder, tmp_path, default_router=True) as at:
        recorder.take()
        status, answer, _ = send(at, "POST", "/v1/messages", [("authorization", f"Bearer {CLIENT_OAUTH}"), *headers],
                                 attack)  # fmt: skip
        assert status == 400, answer
        assert recorder.take() == [], "refused at the egress, nothing reached Anthropic"
        for n in range(5):
            status, answer, _ = send(at, "POST", "/v1/messages", [("x-api-key", f"{CLIENT_KEY}{n}"), *headers],
                                     json.dumps(body).encode())  # fmt: skip
            assert status == 200, (n, answer)
        assert [g.get("x-api-key") for g in recorder.take()] == [[f"{CLIENT_KEY}{n}"] for n in range(5)]


REFUSALS_OF_A_CLIENT_CREDENTIAL = {
    # Anthropic's answers about a credential: revoked or mistyped, no access, a model the account cannot see,
    # the account over its rate limit (with the wait Anthropic asks for).
    401: (),
    403: (),
    404: (),
    429: (("retry-after", "30"),),
}


@pytest.mark.parametrize("deployments", [1, 2])
@pytest.mark.parametrize("version", RELEASES)
def test_anthropic_refusing_a_clients_own_credential_fails_only_that_client(
    version: str, deployments: int, recorder: Recorder, tmp_path: Path
) -> None:
    """Anthropic's 401, 404 or 429 for one client's own key or token is about that credential, not about the
    deployment every client shares: LiteLLM's router must not cool the deployment down on it (under its default
    settings it would, and answer everyone else 429 "No deployments available"). The client still gets
    Anthropic's status, so Claude Code asks for /login on a 401 and backs off on a 429."""
    body = json.dumps({"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = [("x-litellm-api-key", MASTER_KEY), ("content-type", "application/json"),
               ("anthropic-version", "2023-06-01")]  # fmt: skip
    with gateway(version, AFTER[1], recorder, tmp_path, default_router=True, deployments=deployments) as at:
        for route in ("/v1/messages", "/v1/chat/completions"):
            for status, sent in REFUSALS_OF_A_CLIENT_CREDENTIAL.items():
                recorder.take()
                recorder.refuse(CLIENT_OAUTH, status, *sent)
                try:
                    got, answer, _ = send(at, "POST", route, [("authorization", f"Bearer {CLIENT_OAUTH}"), *headers],
                                          body)  # fmt: skip
                finally:
                    recorder.forgive()
                # The client acts on 401 (/login) and 429 (back off); LiteLLM maps the others its own way (1.81.14
                # answers a 403 on chat completions as a 500 "APIConnectionError").
                assert got == status if status in (401, 429) else got >= 400, (route, status, answer)
                tried = recorder.take()
                assert tried and all(t.get("authorization") == [f"Bearer {CLIENT_OAUTH}"] for t in tried), status
                for n in range(3):
                    got, answer, _ = send(at, "POST", route, [("x-api-key", f"{CLIENT_KEY}{n}"), *headers], body)
                    assert got == 200, (route, status, n, answer)
                # A client on the operator's key shares the same deployment.
                got, answer, _ = send(at, "POST", route, headers, body)
                assert got == 200, (route, status, answer)
                assert [g.get("x-api-key") for g in recorder.take()] == [
                    *([f"{CLIENT_KEY}{n}"] for n in range(3)),
                    [SIDECAR_KEY],
                ], (route, status)
