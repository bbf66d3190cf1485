"""Both legs through the real Envoy binary, with real Claude Code header sets; the upstream records what arrived."""

from __future__ import annotations

import hashlib
import http.client
import json
import re
from collections.abc import Iterator

import pytest

from tests.conftest import Legs, running_legs
from tests.support import fixtures
from tests.support.http import send
from tests.support.processes import wait_for
from tests.support.recorder import Recorder, expected_stream

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@pytest.mark.parametrize(
    ("fixture", "credential"),
    [
        (fixtures.CLAUDE_CODE_API_KEY, ("x-api-key", "sk-ant-api03-FAKEKEY")),
        (fixtures.CLAUDE_CODE_OAUTH, ("authorization", "Bearer sk-ant-oat01-FAKEOAUTH")),
    ],
)
def test_claude_code_request_reaches_upstream_exactly(legs: Legs, fixture: str, credential: tuple[str, str]) -> None:
    recorded = fixtures.load(fixture)
    extra = [("Cookie", "session=abc"), ("X-Custom-Probe", "probe1")]
    status, body, _ = send(
        legs.ingress,
        recorded.method,
        recorded.path,
        [*recorded.headers, *extra],
        b"{" + b" " * (recorded.body_len - 2) + b"}",
    )
    assert status == 200, body
    (got,) = legs.recorder.take()
    assert got.method == "POST" and got.path == "/v1/messages?beta=true" and len(got.body) == recorded.body_len

    sent = recorded.without("x-api-key", "authorization", "x-litellm-api-key", "connection", "host", "content-length")
    expected = sorted(
        [(k.lower(), v) for k, v in sent]
        + [credential, ("host", legs.layout.anthropic.authority), ("content-length", str(recorded.body_len))]
    )
    request_ids = got.get("x-request-id")
    assert len(request_ids) == 1 and UUID.match(request_ids[0])
    actual = sorted((k.lower(), v) for k, v in got.headers if k.lower() != "x-request-id")
    assert actual == expected


def test_streamed_10mb_response_unchanged_and_no_body_reaches_server(legs: Legs) -> None:
    before = legs.envoy.stats()
    size = 10 * 1024 * 1024 + 17
    conn = http.client.HTTPConnection(legs.ingress.host, legs.ingress.port, timeout=120)
    # Under /anthropic, a route that carries a client's credential across LiteLLM (rule I7).
    headers = {"x-api-key": "sk-ant-api03-STREAM", "x-litellm-api-key": "k"}
    conn.request("GET", f"/anthropic/bytes/{size}", headers=headers)
    response = conn.getresponse()
    digest, total = hashlib.sha256(), 0
    while chunk := response.read(256 * 1024):
        digest.update(chunk)
        total += len(chunk)
    conn.close()
    assert response.status == 200 and response.getheader("content-type") == "text/event-stream"
    assert total == size and digest.hexdigest() == expected_stream(size)
    (got,) = legs.recorder.take()
    assert got.get("x-api-key") == ["sk-ant-api03-STREAM"] and "x-litellm-api-key" not in got.names

    after = legs.envoy.stats()
    for leg in ("ingress", "egress"):
        sent = f"http.{leg}.ext_proc.stream_msgs_sent"
        assert after[sent] - before.get(sent, 0) == 1, f"{leg}: exactly one message (the request headers)"
        started = f"http.{leg}.ext_proc.streams_started"
        assert after[started] - before.get(started, 0) == 1


def test_conflicting_credentials_answered_by_gateway_never_forwarded(legs: Legs) -> None:
    headers = [("x-api-key", "sk-ant-api03-A"), ("x-api-key", "sk-ant-api03-B"), ("content-type", "application/json")]
    status, body, response = send(legs.ingress, "POST", "/v1/messages", headers, b"{}")
    assert status == 400 and response.getheader("content-type") == "application/json"
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    assert b"sk-ant" not in body
    assert legs.recorder.take() == []


@pytest.mark.parametrize("handoff", ["v1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "forged"])
def test_forged_handoff_at_egress_is_400_never_forwarded(legs: Legs, handoff: str) -> None:
    status, body, _ = send(
        legs.egress,
        "POST",
        "/v1/messages",
        [("x-credential-handoff", handoff), ("x-api-key", "sk-ant-api03-SERVER")],
        b"{}",
    )
    assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"
    assert legs.recorder.take() == []


def test_client_handoff_cannot_smuggle_a_credential(legs: Legs) -> None:
    """A handoff header the client made itself is dropped at ingress; LiteLLM's key then applies."""
    status, _, _ = send(
        legs.ingress,
        "POST",
        "/v1/messages",
        [("x-credential-handoff", "v1.forged"), ("x-litellm-api-key", "k")],
        b"{}",
    )
    assert status == 200
    (got,) = legs.recorder.take()
    assert "x-credential-handoff" not in got.names and "x-api-key" not in got.names and "authorization" not in got.names


def test_no_credential_value_in_any_log(legs: Legs) -> None:
    send(
        legs.ingress,
        "POST",
        "/v1/messages",
        [("authorization", "Bearer sk-ant-oat01-LOGSECRET"), ("cookie", "c=COOKIESECRET"),
         ("user-agent", "agent sk-litellm-UASECRET"), ("x-request-id", "id\\u2028FORGEDLINE")],
        b"{}",
    )  # fmt: skip
    legs.recorder.take()
    # Audit lines are written in batches, at most 50 ms after the decision.
    wait_for(lambda: '"source":"sealed-authorization"' in legs.server.output, "the egress audit line")
    logs = legs.server.output + legs.envoy.proc.output
    for secret in ("LOGSECRET", "COOKIESECRET", "FAKEKEY", "FAKEOAUTH", "sk-litellm-1234", "STREAM", "UASECRET",
                   "FORGEDLINE"):  # fmt: skip
        assert secret not in logs


def test_envoy_health_checks_the_server(legs: Legs) -> None:
    wait_for(lambda: legs.envoy.stats().get("cluster.ext_proc.health_check.success", 0) >= 1, "a health check")
    assert legs.envoy.stats().get("cluster.ext_proc.health_check.failure", 0) == 0


CLIENT_TOKEN = "sk-ant-oat01-REFUSEDTOKEN"
SERVER_KEY = "sk-ant-api03-OPERATORKEY"


@pytest.fixture(scope="module")
def with_server_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Legs]:
    work = tmp_path_factory.mktemp("server-key")
    key = work / "server-key"
    key.write_text(SERVER_KEY + "\n")
    with Recorder() as recorder, running_legs(work, recorder, "--server-credential-file", str(key)) as gw:
        yield gw


@pytest.mark.parametrize(
    ("status", "sent", "told"),
    [
        (401, (), [("retry-after", "0")]),
        (404, (), [("retry-after", "0")]),
        (429, (("retry-after", "30"),), [("retry-after", "0"), ("retry-after-ms", "30000")]),
        (
            429,
            (("retry-after", "30"), ("retry-after-ms", "29500")),
            [("retry-after", "0"), ("retry-after-ms", "29500")],
        ),
        (529, (("retry-after", "5"),), [("retry-after", "5")]),
        (500, (), []),
    ],
)
def test_e9_a_clients_own_credential_refused_is_answered_retry_after_0(
    with_server_key: Legs, status: int, sent: tuple[tuple[str, str], ...], told: list[tuple[str, str]]
) -> None:
    """Through the real Envoy: Anthropic's 4xx for a client's own credential reaches LiteLLM with
    ``retry-after: 0`` (its router does not cool the shared deployment down for it) and Anthropic's wait moved
    to retry-after-ms; its 5xx, and any answer on the operator's key, are passed on as they are."""
    legs = with_server_key
    before = legs.envoy.stats()
    legs.recorder.refuse(CLIENT_TOKEN, status, *sent)
    legs.recorder.refuse(SERVER_KEY, status, *sent)
    try:
        got, _, client = send(legs.ingress, "POST", "/v1/messages", [("authorization", f"Bearer {CLIENT_TOKEN}"),
                                                                     ("x-litellm-api-key", "k")], b"{}")  # fmt: skip
        _, _, operator = send(legs.ingress, "POST", "/v1/messages", [("x-litellm-api-key", "k")], b"{}")
    finally:
        legs.recorder.forgive()
    assert got == status
    (to_client, to_operator) = legs.recorder.take()
    assert to_client.get("authorization") == [f"Bearer {CLIENT_TOKEN}"] and to_operator.get("x-api-key") == [SERVER_KEY]
    waits = ("retry-after", "retry-after-ms")
    assert sorted((k, v) for k, v in client.getheaders() if k in waits) == told
    assert sorted((k, v) for k, v in operator.getheaders() if k in waits) == sorted(sent), "the operator's: as sent"
    after = legs.envoy.stats()
    # One answer stream per 4xx answer of the egress (it acts only on the marked one), none for any other status;
    # the request filter's streams still carry one message each.
    started = "http.egress.ext_proc.answer.streams_started"
    assert after.get(started, 0) - before.get(started, 0) == (2 if 400 <= status < 500 else 0)
    assert after["http.egress.ext_proc.answer.failure_mode_allowed"] == 0
    assert after["http.egress.ext_proc.stream_msgs_sent"] - before["http.egress.ext_proc.stream_msgs_sent"] == 2
