"""Faults with the real Envoy: a killed, restarted, frozen or terminated server, and hostile headers.

Fail-closed means: whatever happens to the server, nothing reaches the upstream without the rules applied.
Each test prints the counts it saw (pytest -s shows them).
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ext_proc.envoy import HostPort
from tests.conftest import Legs, running_legs
from tests.support.extproc import headers_message
from tests.support.http import send
from tests.support.processes import BIN, SEAL_KEY, Proc, free_port, start_server, wait_for
from tests.support.recorder import Received, Recorder

LOAD_KEY = "sk-ant-api03-LOADSECRET"
LOAD_OAUTH = "sk-ant-oat01-LOADSECRET"
EGRESS_TOKEN = "egress-test-token-0123456789abcdefghij"
LOAD_HEADERS = [("x-api-key", LOAD_KEY), ("x-litellm-api-key", "sk-litellm-LOADSECRET"), ("cookie", "s=LOADSECRET")]


class Load:
    """A few client threads sending requests until stopped; bounded by count and time."""

    def __init__(self, legs: Legs, threads: int = 4, limit: int = 20000) -> None:
        self.statuses: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._limit = limit
        self._threads = [threading.Thread(target=self._run, args=(legs,), daemon=True) for _ in range(threads)]

    def _run(self, legs: Legs) -> None:
        while not self._stop.is_set() and len(self.statuses) < self._limit:
            try:
                status, _, _ = send(legs.ingress, "POST", "/v1/messages", LOAD_HEADERS, b"{}")
            except OSError:
                status = 0
            with self._lock:
                self.statuses.append(status)

    def count(self, ok: bool = True) -> int:
        with self._lock:
            return sum(1 for s in self.statuses if (200 <= s < 300) == ok)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)


def assert_rules_held(received: list[Received]) -> None:
    for got in received:
        assert got.get("x-api-key") == [LOAD_KEY], got.headers
        assert not got.names & {"x-litellm-api-key", "cookie", "x-credential-handoff", "authorization"}, got.headers


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Legs]:
    with Recorder() as recorder, running_legs(tmp_path, recorder) as legs:
        yield legs


def test_kill_under_load_fails_closed_then_recovers_on_restart(gw: Legs) -> None:
    with Load(gw) as load:
        wait_for(lambda: load.count() >= 100, "traffic before the kill")
        gw.server.signal(signal.SIGKILL)
        assert gw.server.stop() == -signal.SIGKILL
        ok_at_kill = load.count()
        status, body, _ = send(gw.ingress, "POST", "/v1/messages", LOAD_HEADERS, b"{}")
        error = json.loads(body)["error"]
        assert status == 503 and error["type"] == "api_error", body
        assert "ext_proc server is unavailable" in error["message"]
        wait_for(lambda: load.count(ok=False) >= 50, "5xx while the server is down")
        ok_while_down = load.count() - ok_at_kill
        gw.restart_server()
        ok_at_restart = load.count()
        wait_for(lambda: load.count() >= ok_at_restart + 100, "traffic after the restart")
    counts = Counter(load.statuses)
    print(f"\nkill/restart under load: {dict(counts)}; 2xx between kill and restart: {ok_while_down}")
    assert set(counts) <= {200, 503}, counts
    assert_rules_held(gw.recorder.take())
    # Requests that got past the ingress leg just before the kill may finish; none may be forwarded without rules.
    assert ok_while_down <= 8


def test_frozen_server_beyond_message_timeout_gives_5xx_and_nothing_leaks(gw: Legs) -> None:
    gw.server.signal(signal.SIGSTOP)
    try:
        status, body, _ = send(gw.ingress, "POST", "/v1/messages", LOAD_HEADERS, b"{}")
    finally:
        gw.server.signal(signal.SIGCONT)
    print(f"\nfrozen server: client got {status} {body[:120]!r}")
    assert status == 504
    error = json.loads(body)
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert "timeout" in error["error"]["message"]
    assert gw.recorder.take() == []
    assert gw.envoy.stats()["http.ingress.ext_proc.message_timeouts"] >= 1
    recovered, _, _ = send(gw.ingress, "POST", "/v1/messages", LOAD_HEADERS, b"{}")
    assert recovered == 200
    assert_rules_held(gw.recorder.take())


HOSTILE: list[tuple[str, list[tuple[str, str | bytes]], set[int]]] = [
    ("oversized value", [("x-big", "a" * 70_000)], {431}),
    ("too many headers", [(f"x-h{i}", "v") for i in range(150)], {431}),
    ("non-UTF-8 key", [("x-api-key", b"sk-ant-api03-\xff\xfeLOADSECRET")], {400}),
    ("non-UTF-8 junk", [("authorization", b"Bearer \xc3\x28\xa0\xa1"), ("x-junk", b"\x80\x81")], {200}),
    ("long bearer", [("authorization", "Bearer sk-ant-oat01-" + "A" * 8000), ("x-litellm-api-key", "k")], {200}),
    ("many same values", [*[("x-api-key", LOAD_KEY)] * 40, ("x-litellm-api-key", "k")], {200}),
    ("conflicting values", [("x-api-key", LOAD_KEY), ("x-api-key", "sk-ant-api03-OTHER")], {400}),
    ("empty bearer", [("authorization", "Bearer"), ("x-api-key", "")], {200}),
    ("forged handoff", [("x-credential-handoff", "v1." + "A" * 5000)], {200}),
]


@pytest.mark.parametrize(("what", "headers", "expected"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_headers_get_clear_answers_and_server_keeps_serving(
    legs: Legs, what: str, headers: list[tuple[str, str | bytes]], expected: set[int]
) -> None:
    conn = http.client.HTTPConnection(legs.ingress.host, legs.ingress.port, timeout=30)
    conn.putrequest("POST", "/v1/messages")
    for name, value in headers:
        conn.putheader(name, value)
    conn.putheader("Content-Length", "2")
    conn.endheaders(b"{}")
    response = conn.getresponse()
    body = response.read()
    conn.close()
    assert response.status in expected, (what, response.status, body[:200])
    if response.status >= 400:
        assert response.getheader("content-type") == "application/json"
        assert json.loads(body)["error"]["type"] == "invalid_request_error"
    for got in legs.recorder.take():
        assert not got.names & {"x-credential-handoff", "x-junk", "x-big"}
        assert len(got.get("x-api-key")) + len(got.get("authorization")) <= 1
    assert legs.server.poll() is None, "the server must survive"
    status, _, _ = send(legs.ingress, "POST", "/v1/messages", LOAD_HEADERS, b"{}")
    assert status == 200
    assert_rules_held(legs.recorder.take())


def test_sigterm_on_serve_reports_not_serving_finishes_in_flight_and_exits_0(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(SEAL_KEY + "\n")
    socket_path = tmp_path / "s.sock"
    server = start_server(socket_path, {"EXT_PROC_GRACE_SECONDS": "20"}, "--seal-key-file", str(keys))
    channel = grpc.insecure_channel(f"unix:{socket_path}")
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    release = threading.Event()

    def messages() -> Iterator[object]:
        release.wait(30)
        yield headers_message(("x-api-key", b"sk-ant-api03-INFLIGHT"))

    # A stream that is open, its request headers not yet sent, when SIGTERM arrives.
    stream = pb_grpc.ExternalProcessorStub(channel).Process(
        messages(), metadata=(("x-ext-proc-leg", "egress"), ("x-ext-proc-policy", "anthropic"))
    )
    # HTTP/2 frames on one connection are read in order and the server takes calls in order: once a call opened
    # after the stream is answered, the stream is a call on the server.
    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    server.signal(signal.SIGTERM)
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    watch.cancel()
    release.set()
    answer = next(stream)
    sets = answer.request_headers.response.header_mutation.set_headers
    assert [o.header.raw_value for o in sets] == [b"sk-ant-api03-INFLIGHT"]
    assert server.stop() == 0
    channel.close()


def test_a_client_arriving_during_up_s_drain_is_served_and_told_to_close(tmp_path: Path) -> None:
    """docs/operations.md, Shutdown: Envoy drains gracefully; a load balancer that still sends new connections for a
    moment after SIGTERM (Kubernetes' endpoints lag) gets answers with `Connection: close`, not refused connections.
    LiteLLM (one recorder) holds a request through the ingress open, so the drain lasts; new clients use the egress,
    whose Anthropic (another recorder) answers at once."""
    ingress, egress = free_port(), free_port()
    token = tmp_path / "egress-token"
    token.write_text(EGRESS_TOKEN + "\n")
    with Recorder() as litellm, Recorder() as anthropic:
        up = Proc(
            [str(BIN / "ext-proc"), "up", "--ingress-listen", f"127.0.0.1:{ingress}",
             "--egress-listen", f"127.0.0.1:{egress}", "--metrics-listen", "off", "--egress-token-file", str(token),
             "--litellm", litellm.url, "--anthropic", anthropic.url],
        )  # fmt: skip
        try:
            up.wait_line("ready ")
            headers = [("authorization", f"Bearer {LOAD_OAUTH}"), ("x-api-key", EGRESS_TOKEN)]

            def fresh_client() -> str | None:
                """A new connection's answer: its Connection header, or None when refused or not 200."""
                try:
                    status, _, response = send(HostPort("127.0.0.1", egress), "POST", "/v1/messages", headers, b"{}")
                except ConnectionError:
                    return None
                return response.getheader("connection", "") if status == 200 else None

            assert fresh_client() == "", "before the drain a connection stays open"
            litellm.gate.clear()
            held: list[int] = []
            in_flight = threading.Thread(
                target=lambda: held.append(send(HostPort("127.0.0.1", ingress), "POST", "/v1/messages", [], b"{}")[0])
            )
            in_flight.start()
            wait_for(lambda: litellm.count == 1, "a request in flight at LiteLLM")
            up.signal(signal.SIGTERM)
            wait_for(lambda: fresh_client() == "close", "a new client served and told to close: the drain began")
            # Not only the clients that were being accepted when it began: every new one while the drain lasts.
            assert [fresh_client() for _ in range(5)] == ["close"] * 5
            litellm.gate.set()
            in_flight.join(30)
            assert held == [200]
            assert up.wait(30) == 0, up.output
        finally:
            litellm.gate.set()
            up.stop()


@pytest.mark.parametrize("legs", ["both", "ingress", "egress"])
def test_sigterm_on_up_lets_every_started_request_finish(tmp_path: Path, legs: str) -> None:
    """Requests in flight through both legs, or on one leg only (the recorder playing LiteLLM behind the ingress;
    LiteLLM's own call to the egress): the drain waits for the active requests of each."""
    ingress, egress = free_port(), free_port()
    token, key = tmp_path / "egress-token", tmp_path / "server-key"
    token.write_text(EGRESS_TOKEN + "\n")
    key.write_text("sk-ant-api03-DRAINSERVERKEY\n")
    with Recorder() as recorder:
        litellm = recorder.url if legs == "ingress" else f"http://127.0.0.1:{egress}"
        up = Proc(
            [str(BIN / "ext-proc"), "up", "--ingress-listen", f"127.0.0.1:{ingress}",
             "--egress-listen", f"127.0.0.1:{egress}", "--metrics-listen", "off", "--egress-token-file", str(token),
             "--server-credential-file", str(key), "--litellm", litellm, "--anthropic", recorder.url],
        )  # fmt: skip
        up.wait_line("ready ")
        recorder.gate.clear()
        results: list[int] = []
        to = HostPort("127.0.0.1", egress if legs == "egress" else ingress)

        def one() -> None:
            # The ingress forwards straight to the egress: the client plays LiteLLM's part and sends the token.
            headers = [("authorization", f"Bearer {LOAD_OAUTH}"), ("x-api-key", EGRESS_TOKEN)]
            status, _, _ = send(to, "POST", "/v1/messages", headers if legs != "egress" else headers[1:], b"{}")
            results.append(status)

        clients = [threading.Thread(target=one) for _ in range(8)]
        for c in clients:
            c.start()
        wait_for(lambda: recorder.count == 8, "8 requests in flight at the upstream")
        up.signal(signal.SIGTERM)
        wait_for(lambda: "draining Envoy" in up.output, "the gateway to start draining")
        recorder.gate.set()
        for c in clients:
            c.join(30)
        code = up.stop()
        print(f"\nSIGTERM with 8 requests in flight: statuses {Counter(results)}, exit {code}")
        assert results == [200] * 8
        assert code == 0, up.output
        assert "could not drain Envoy" not in up.output and "grace period over" not in up.output, "drained, not cut"
        if legs == "both":
            for got in recorder.take():
                assert got.get("authorization") == [f"Bearer {LOAD_OAUTH}"] and got.get("x-api-key") == []
