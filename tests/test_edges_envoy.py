"""The credential edges (docs/rules.md E6, E7, I5-I7, O3) through the real Envoy, as clients put them on the wire.

Envoy decides what the server sees: repeated headers arrive as separate values or joined with commas, obs-fold
is joined or refused, a client's request id is replaced. Each case asserts what the recording upstream got.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from ext_proc.envoy import Endpoint, HostPort, Layout, OtherUpstream
from tests.conftest import Legs
from tests.support.http import send
from tests.support.processes import SEAL_KEY, free_port, start_envoy, start_server
from tests.support.recorder import Recorder

OAUTH = "sk-ant-oat01-EDGEOAUTH"
KEY = "sk-ant-api03-EDGEKEY"
LITELLM = "sk-litellm-EDGEVIRTUAL"


def raw_request(at: HostPort, head: bytes) -> tuple[int, bytes]:
    """Bytes exactly as given (repeats, folds), which http.client would not send."""
    with socket.create_connection((at.host, at.port), timeout=30) as conn:
        conn.sendall(head + b"content-length: 2\r\nconnection: close\r\n\r\n{}")
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


REPEATS = [
    ("oauth then litellm bearer", [("Authorization", f"Bearer {OAUTH}"), ("Authorization", f"Bearer {LITELLM}")]),
    ("litellm then oauth bearer", [("Authorization", f"Bearer {LITELLM}"), ("Authorization", f"Bearer {OAUTH}")]),
    ("two oauth tokens", [("Authorization", f"Bearer {OAUTH}"), ("Authorization", "Bearer sk-ant-oat01-SECOND")]),
    ("key and litellm key joined", [("x-api-key", f"{KEY}, {LITELLM}")]),
    ("key and litellm key repeated", [("x-api-key", KEY), ("x-api-key", LITELLM)]),
    ("oauth with a trailing token", [("Authorization", f"Bearer {OAUTH} {LITELLM}")]),
]


@pytest.mark.parametrize("leg", ["ingress", "egress"])
@pytest.mark.parametrize("headers", [r[1] for r in REPEATS], ids=[r[0] for r in REPEATS])
def test_a_credential_header_with_more_than_one_token_is_refused_on_both_legs(
    legs: Legs, leg: str, headers: list[tuple[str, str]]
) -> None:
    at = legs.ingress if leg == "ingress" else legs.egress
    head = b"POST /v1/messages HTTP/1.1\r\nhost: x\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers)
    status, body = raw_request(at, head)
    error = json.loads(body)
    assert status == 400 and error["error"]["type"] == "invalid_request_error"
    header = headers[0][0].lower()
    assert header in error["error"]["message"]
    assert not any(secret in body.decode() for secret in (OAUTH, KEY, LITELLM))
    assert legs.recorder.take() == [], "nothing sealed in part, nothing passed on"


def test_obs_fold_never_carries_a_second_token(legs: Legs) -> None:
    head = f"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: {KEY}\r\n {LITELLM}\r\n".encode()
    status, _ = raw_request(legs.ingress, head)
    assert status == 400, "Envoy refuses obs-fold, or the rules refuse the joined value"
    assert legs.recorder.take() == []


def test_identical_repeats_are_one_credential(legs: Legs) -> None:
    twice = f"Authorization: Bearer {OAUTH}\r\n" * 2
    head = f"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-litellm-api-key: {LITELLM}\r\n{twice}"
    status, _ = raw_request(legs.ingress, head.encode())
    assert status == 200
    (got,) = legs.recorder.take()
    assert got.get("authorization") == [f"Bearer {OAUTH}"]


def test_allowlisted_headers_carry_no_second_credential_upstream(legs: Legs) -> None:
    headers = [("x-api-key", KEY), ("x-stainless-foo", LITELLM), ("x-stainless-lang", "python"),
               ("user-agent", "agent sk-master-1234")]  # fmt: skip
    assert send(legs.egress, "POST", "/v1/messages", headers, b"{}")[0] == 200
    (got,) = legs.recorder.take()
    assert got.get("x-api-key") == [KEY] and got.get("x-stainless-lang") == ["python"]
    assert "x-stainless-foo" not in got.names and "user-agent" not in got.names


def test_an_anthropic_credential_in_another_header_never_reaches_litellm(legs: Legs) -> None:
    headers = [("x-litellm-api-key", LITELLM), ("x-stainless-helper", KEY)]
    status, body, _ = send(legs.ingress, "POST", "/v1/messages", headers, b"{}")
    assert status == 400 and "x-stainless-helper" in json.loads(body)["error"]["message"]
    assert legs.recorder.take() == []


def test_routes_that_drop_the_handoff_are_refused_or_rerouted(legs: Legs) -> None:
    headers = [("x-api-key", KEY), ("x-litellm-api-key", LITELLM)]
    status, body, _ = send(legs.ingress, "GET", "/v1/%73kills", headers)
    error = json.loads(body)["error"]
    assert status == 400 and error["type"] == "invalid_request_error" and "/anthropic/v1/skills" in error["message"]
    assert legs.recorder.take() == []
    status, _, _ = send(legs.ingress, "POST", "/v1/messages/count_tokens?beta=true", headers, b"{}")
    (got,) = legs.recorder.take()
    assert status == 200 and got.path == "/anthropic/v1/messages/count_tokens?beta=true"
    assert got.get("x-api-key") == [KEY]


def test_a_client_request_id_is_replaced_at_the_ingress(legs: Legs) -> None:
    headers = [("x-api-key", KEY), ("x-litellm-api-key", LITELLM), ("x-request-id", "client-chosen-id")]
    assert send(legs.ingress, "POST", "/v1/messages", headers, b"{}")[0] == 200
    (got,) = legs.recorder.take()
    assert got.get("x-request-id") != ["client-chosen-id"] and len(got.get("x-request-id")) == 1
    assert "client-chosen-id" not in legs.envoy.proc.output


@pytest.fixture
def with_openai(tmp_path: Path) -> Iterator[tuple[Recorder, Recorder, HostPort]]:
    """Both legs, the egress also routes /upstreams/openai/ to a second recorder, under policy `other`."""
    keys = tmp_path / "seal-keys"
    keys.write_text(SEAL_KEY + "\n")
    socket_path = tmp_path / "ext-proc.sock"
    server = start_server(socket_path, None, "--seal-key-file", str(keys))
    with Recorder() as anthropic, Recorder() as openai:
        egress = HostPort("127.0.0.1", free_port())
        layout = Layout(
            ingress=HostPort("127.0.0.1", free_port()), egress=egress, litellm=Endpoint("http", "127.0.0.1", 1),
            anthropic=Endpoint.parse(anthropic.url, "stand-in"), server_address=f"unix:{socket_path}",
            admin=HostPort("127.0.0.1", 0), upstreams=(OtherUpstream.parse(f"openai={openai.url}"),),
        )  # fmt: skip
        envoy = start_envoy(layout, tmp_path)
        try:
            yield anthropic, openai, egress
        finally:
            envoy.stop()
            server.stop()


def test_other_providers_go_through_the_egress_under_policy_other(
    with_openai: tuple[Recorder, Recorder, HostPort],
) -> None:
    anthropic, openai, egress = with_openai
    handoff = "v1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    headers = [("authorization", "Bearer sk-proj-OPENAIKEY"), ("x-credential-handoff", handoff),
               ("x-litellm-api-key", LITELLM), ("x-stainless-helper", KEY), ("x-stainless-lang", "python")]  # fmt: skip
    status, _, _ = send(egress, "POST", "/upstreams/openai/v1/chat/completions", headers, b"{}")
    assert status == 200
    (got,) = openai.take()
    assert got.path == "/v1/chat/completions"
    # The provider's own auth, untouched (policy `anthropic` would have removed it); ours and Anthropic's gone.
    assert got.get("authorization") == ["Bearer sk-proj-OPENAIKEY"]
    assert not got.names & {"x-credential-handoff", "x-litellm-api-key", "x-stainless-helper"}
    assert got.get("x-stainless-lang") == ["python"]
    assert anthropic.take() == []
    # Everything else on the egress is still Anthropic's, under policy `anthropic`.
    send(egress, "POST", "/v1/messages", [("authorization", "Bearer sk-proj-OPENAIKEY")], b"{}")
    (got,) = anthropic.take()
    assert "authorization" not in got.names


ENVOY_NAMED = [
    ("x-envoy-foo", "1"),
    ("x-envoy-attempt-count", "1"),  # any Envoy or Istio sidecar in front of a client adds it
    ("X-Envoy-Endpoint-Rq-Timeout-Ms", "1"),
    ("x-envoy-max-retries", "5"),
    ("x-envoy-retry-on", "5xx"),
    ("x-envoy-expected-rq-timeout-ms", "1"),
    ("x-envoy-original-path", "/v1/skills"),
    ("x-envoy-decorator-operation", "x"),
]


@pytest.mark.parametrize(("name", "value"), ENVOY_NAMED)
@pytest.mark.parametrize("credential", [("x-api-key", KEY), ("authorization", f"Bearer {OAUTH}")])
def test_a_client_s_x_envoy_header_neither_fails_the_request_nor_reaches_anthropic(
    legs: Legs, name: str, value: str, credential: tuple[str, str]
) -> None:
    """Envoy refuses an ext_proc filter's removal of x-envoy-* unless allowed; refused, the request failed (503)."""
    status, _, _ = send(legs.ingress, "POST", "/v1/messages", [credential, ("x-litellm-api-key", LITELLM),
                                                                (name, value)], b"{}")  # fmt: skip
    assert status == 200
    (got,) = legs.recorder.take()
    assert got.get(credential[0]) == [credential[1]]
    assert not [n for n in got.names if n.startswith("x-envoy-")], got.names


DOT_PATHS = [
    # (path as sent, forwarded: LiteLLM (Starlette) routes exactly this path, and the rules decided on it)
    ("/anthropic/../v1/skills", True),  # the pass-through, endpoint "../v1/skills"
    ("/anthropic/v1/./messages", True),
    ("/v1/messages/../skills", False),  # no LiteLLM route: refused, not resolved to /v1/skills
    ("/v1/skills/../messages", False),  # not resolved to /v1/messages either
    ("/v1/%2e%2e/v1/messages", False),
    ("/anthropic%2fv1%2ffiles", False),  # uvicorn decodes it to /anthropic/v1/files, which LiteLLM serves itself
    ("//v1/messages", False),
    ("/anthropic//v1/messages", True),
]


@pytest.mark.parametrize(("path", "forwarded"), DOT_PATHS)
def test_the_path_the_rules_decide_on_is_the_path_litellm_receives(legs: Legs, path: str, forwarded: bool) -> None:
    """Envoy forwards the request target as the ext_proc server saw it: dot segments, doubled slashes and escapes
    reach LiteLLM unresolved, and the route decision is made on that same text."""
    status, body, _ = send(legs.ingress, "POST", path, [("x-api-key", KEY), ("x-litellm-api-key", LITELLM)], b"{}")
    if not forwarded:
        assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error", body
        assert legs.recorder.take() == []
        return
    assert status == 200
    (got,) = legs.recorder.take()
    assert got.path == path and got.get("x-api-key") == [KEY]
