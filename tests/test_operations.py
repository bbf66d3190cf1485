"""Operations in-process: metrics, audit sampling and format, hot reload of secret files, `ext-proc check`."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import inspect
import io
import json
import logging
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from prometheus_client import generate_latest

from ext_proc.audit import FLUSH_SECONDS, AuditLog, LineFormatter, _AuditLines, configure_logging, format_line
from ext_proc.config import Config
from ext_proc.credentials import ApiKey
from ext_proc.envoy import find_envoy
from ext_proc.headers import HeaderView
from ext_proc.metrics import Metrics
from ext_proc.reload import LiveRules, rule_context
from ext_proc.rules import Audit, Decision, RuleContext, Source, decide
from ext_proc.seal import key_id
from ext_proc.secrets import Secrets
from ext_proc.server import Server
from tests.support.command import Ran, run_cli
from tests.support.extproc import EGRESS, exchange, headers_message, message_stream
from tests.support.http import get_text
from tests.support.processes import BIN, Proc, has_ipv6_loopback, start_server, wait_for

ROOT = Path(__file__).resolve().parent.parent
KEY_A = base64.urlsafe_b64encode(bytes(32)).decode()
KEY_B = base64.urlsafe_b64encode(bytes(range(32))).decode()


def scrape(port: int) -> str:
    return get_text(f"http://127.0.0.1:{port}/metrics")


def test_metrics_by_leg_policy_source_rejection_and_latency(tmp_path: Path) -> None:
    async def scenario() -> str:
        config = Config.load(env={}, overrides={"listen": f"unix:{tmp_path}/m.sock", "metrics_listen": "127.0.0.1:0"})
        server = Server(config)
        await server.start()
        assert server.metrics_at is not None
        try:
            async with grpc.aio.insecure_channel(server.address) as channel:
                stub = pb_grpc.ExternalProcessorStub(channel)
                egress = (("x-ext-proc-leg", "egress"), ("x-ext-proc-policy", "anthropic"))
                cases = [
                    (egress, headers_message(("x-api-key", b"sk-ant-api03-METRICSECRET"))),
                    (egress, headers_message(("authorization", b"Bearer sk-ant-oat01-METRICSECRET"))),
                    (egress, headers_message(("x-credential-handoff", b"v1.junk"))),
                    (
                        (("x-ext-proc-leg", "ingress"),),
                        headers_message(
                            (":method", b"POST"),
                            (":path", b"/v1/messages"),
                            ("x-api-key", b"sk-ant-api03-METRICSECRET"),
                            ("x-litellm-api-key", b"sk-litellm-METRICS"),
                        ),
                    ),
                    ((("x-ext-proc-leg", "sideways"),), headers_message()),
                ]
                for metadata, message in cases:
                    [r async for r in stub.Process(message_stream(message), metadata=metadata)]
            return await asyncio.to_thread(scrape, server.metrics_at.port)
        finally:
            await server.stop()

    text = asyncio.run(scenario())
    assert 'ext_proc_requests_total{leg="egress",policy="anthropic",source="request-x-api-key"} 1.0' in text
    assert 'ext_proc_requests_total{leg="egress",policy="anthropic",source="request-authorization"} 1.0' in text
    assert 'ext_proc_requests_total{leg="ingress",policy="none",source="sealed"} 1.0' in text
    assert 'ext_proc_rejections_total{reason="seal-malformed"} 1.0' in text
    assert 'ext_proc_seal_failures_total{reason="malformed"} 1.0' in text
    assert 'ext_proc_rejections_total{reason="config-leg"} 1.0' in text
    assert 'ext_proc_decision_seconds_count{leg="unknown"} 1.0' in text
    assert 'ext_proc_decision_seconds_count{leg="egress"} 3.0' in text
    assert "METRICSECRET" not in text and "sideways" not in text
    assert "ext_proc_body_bytes_total 0.0" in text


def test_stopping_writes_the_audit_lines_still_waiting_and_closes_the_metrics_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A request answered just before the stop still gets its audit line (here the batch timer would wait an hour),
    and the metrics port is closed with the server, not left answering for a process that is going away."""
    caplog.set_level(logging.INFO, logger="ext_proc.audit")

    async def scenario() -> int:
        config = Config.load(env={}, overrides={"listen": f"unix:{tmp_path}/a.sock", "metrics_listen": "127.0.0.1:0"})
        server = Server(config)
        server.audit.flush_seconds = 3600
        await server.start()
        assert server.metrics_at is not None
        async with grpc.aio.insecure_channel(server.address) as channel:
            message = headers_message(("x-api-key", b"sk-ant-api03-STOPSECRET"))
            [r async for r in pb_grpc.ExternalProcessorStub(channel).Process(message_stream(message), metadata=EGRESS)]
        assert "request-x-api-key" not in capsys.readouterr().err, "still waiting in the batch"
        await server.stop(drain_seconds=0)
        return server.metrics_at.port

    port = asyncio.run(scenario())
    logged = capsys.readouterr().err
    assert "decision" in logged and '"source":"request-x-api-key"' in logged and "STOPSECRET" not in logged
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "metrics still served after stop"


def _documented_buckets() -> list[float]:
    """docs/operations.md, Metrics: the bucket bounds a latency SLO (`le="0.01"`) or a heatmap is written against."""
    row = next(line for line in (ROOT / "docs" / "operations.md").read_text().splitlines()
               if line.startswith("| `ext_proc_decision_seconds`"))  # fmt: skip
    scale = {"µs": 1e-6, "ms": 1e-3, "s": 1.0}
    groups = row.split("(`le`):")[1].split("|")[0].split(";")
    return [float(n) * scale[unit] for group in groups for *numbers, unit in [group.replace(",", " ").split()]
            for n in numbers]  # fmt: skip


def test_the_latency_histogram_has_each_documented_bucket_and_fills_each() -> None:
    documented = _documented_buckets()
    metrics = Metrics()
    decision = decide("egress", "anthropic", HeaderView.of(("x-api-key", "sk-ant-api03-K")), _ctx(), 0)
    for bound in documented:
        metrics.observe("egress", "anthropic", decision, bound)
    metrics.observe("egress", "anthropic", decision, 5.0)
    family = next(f for f in metrics.registry.collect() if f.name == "ext_proc_decision_seconds")
    buckets = [(s.labels["le"], s.value) for s in family.samples if s.name.endswith("_bucket")]
    assert [float(le) for le, _ in buckets] == pytest.approx([*documented, float("inf")])
    assert [count for _, count in buckets] == list(range(1, len(documented) + 2)), "each bound fills its own bucket"


def test_decision_latency_lands_in_the_right_buckets() -> None:
    metrics = Metrics()
    decision = decide("egress", "anthropic", HeaderView.of(("x-api-key", "sk-ant-api03-K")), _ctx(), 0)
    for seconds in (3e-5, 5e-5, 2.0):
        metrics.observe("egress", "anthropic", decision, seconds)
    sample = metrics.registry.get_sample_value
    bucket = "ext_proc_decision_seconds_bucket"
    assert sample(bucket, {"leg": "egress", "le": "2.5e-05"}) == 0
    assert sample(bucket, {"leg": "egress", "le": "5e-05"}) == 2, "a bucket's bound is inclusive"
    assert sample(bucket, {"leg": "egress", "le": "1.0"}) == 2
    assert sample(bucket, {"leg": "egress", "le": "+Inf"}) == 3
    assert sample("ext_proc_decision_seconds_sum", {"leg": "egress"}) == pytest.approx(2.00008)
    labels = {"leg": "egress", "policy": "anthropic", "source": "request-x-api-key"}
    assert sample("ext_proc_requests_total", labels) == 3


def test_a_client_cannot_grow_the_rejection_label_space() -> None:
    """I6 names the header that held the credential (for the client and the audit), but the header name is the
    client's choice: as a label it would let any client add a series per request to the gateway and to Prometheus."""
    metrics = Metrics()
    for i in range(50):
        decision = decide("ingress", "anthropic", HeaderView.of((f"x-made-up-{i}", "sk-ant-api03-K")), _ctx(), 0)
        assert decision.rejection is not None and decision.rejection.reason == f"misplaced-x-made-up-{i}"
        metrics.observe("ingress", "anthropic", decision, 1e-5)
    path = decide("ingress", "anthropic", HeaderView.of((":path", "/v1/messages?k=sk-ant-api03-K")), _ctx(), 0)
    metrics.observe("ingress", "anthropic", path, 1e-5)
    reasons = {s.labels["reason"]: s.value for m in metrics.registry.collect() if m.name == "ext_proc_rejections"
               for s in m.samples if s.name.endswith("_total")}  # fmt: skip
    assert reasons == {"misplaced-header": 50, "misplaced-path": 1}


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_batched_audit_lines_are_exactly_what_the_log_formatter_writes(
    fmt: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The cached rendering must never serve one decision's line for another: every field takes part."""
    caplog.set_level(logging.INFO, logger="ext_proc.audit")
    base = Audit("egress", "anthropic", "forward", "req-1", Source.SEALED_AUTHORIZATION, "oauth", "oauth:...Q:1a2b",
                 ("authorization=oauth:...Q:1a2b",), ("cookie", "x-litellm-api-key"), None)  # fmt: skip
    others: dict[str, Any] = {
        "leg": "ingress", "policy": "other", "outcome": "forward-ish", "request_id": 'r"\u00e9',
        "source": Source.SERVER, "kind": "api-key", "fingerprint": "api-key:...Z:9f9f", "sealed": (),
        "removed": ("cookie",), "reason": "why", "scrubbed": ("user-agent",),
    }  # fmt: skip
    assert set(others) == {f.name for f in dataclasses.fields(Audit)}, "a new Audit field needs a case here"
    stream = io.StringIO()
    audit = AuditLog(1.0, fmt, stream)
    expected = []
    for record in (base, *(dataclasses.replace(base, **{name: value}) for name, value in others.items()), base):
        audit.record(record)
        expected.append(record)
    audit.flush()
    lines = stream.getvalue().splitlines()
    assert len(lines) == len(expected)
    for line, record in zip(lines, expected, strict=True):
        if fmt == "json":
            doc = json.loads(line)
            assert doc.pop("time") and doc == {"level": "INFO", "logger": "ext_proc.audit", **record.as_dict()}
        else:
            stamp, rest = line[:23], line[24:]
            created = time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")) + int(stamp[20:]) / 1000
            assert line == format_line("text", created, "INFO", "ext_proc.audit", "decision", record.as_dict())
            assert rest.startswith("INFO ext_proc.audit decision {")


def _audit(request_id: str | None, outcome: str = "forward") -> Audit:
    return Audit(leg="egress", policy="anthropic", outcome=outcome, request_id=request_id)


def test_audit_sampling_is_per_request_id_and_rejections_always_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ext_proc.audit")
    stream = io.StringIO()
    sampled = AuditLog(0.25, "text", stream)
    ids = [f"req-{i}" for i in range(2000)]

    def logged() -> list[str]:
        sampled.flush()
        lines = stream.getvalue().splitlines()
        stream.seek(0)
        stream.truncate()
        return [json.loads(line.split(" decision ", 1)[1])["request_id"] for line in lines]

    for rid in ids:
        sampled.record(_audit(rid))
    first = logged()
    assert 350 < len(first) < 650, "about a quarter"
    for rid in ids:
        sampled.record(_audit(rid))
    assert logged() == first, "the same requests again: both legs agree"
    AuditLog(0.0, "text", stream).record(_audit("x", outcome="reject"))
    AuditLog(0.0, "text", stream).record(_audit("y"))
    assert [(r.name, r.levelname, r.getMessage(), r.audit["request_id"]) for r in caplog.records] == [  # type: ignore[attr-defined]
        ("ext_proc.audit", "WARNING", "decision", "x")
    ]
    assert logged() == []


def test_audit_lines_are_batched_and_flushed_by_the_event_loop(caplog: pytest.LogCaptureFixture) -> None:
    """Lines wait for one timer per batch, FLUSH_SECONDS (the 50 ms docs/performance.md states) unless set, and a
    batch after a flush gets a timer of its own."""
    caplog.set_level(logging.INFO, logger="ext_proc.audit")
    stream = io.StringIO()
    audit = AuditLog(1.0, "text", stream)
    assert audit.flush_seconds == FLUSH_SECONDS == 0.05
    assert "(at most 50 ms late)" in (ROOT / "docs" / "performance.md").read_text()
    audit.flush_seconds = 0.001
    flush, flushed = audit.flush, asyncio.Queue[str]()

    def counted() -> None:
        flush()
        flushed.put_nowait(stream.getvalue())

    audit.flush = counted  # type: ignore[method-assign]

    async def scenario() -> list[str]:
        audit.record(_audit("a"))
        audit.record(_audit("b"))
        seen = [stream.getvalue(), await asyncio.wait_for(flushed.get(), 5)]
        audit.record(_audit("c"))
        seen.append(await asyncio.wait_for(flushed.get(), 5))
        return seen

    before, first, second = asyncio.run(scenario())
    assert (before, len(first.splitlines()), len(second.splitlines())) == ("", 2, 3)


def test_json_log_format_merges_the_audit_record() -> None:
    decision = decide("egress", "anthropic", HeaderView.of(("x-api-key", "sk-ant-api03-JSONSECRET")), _ctx(), 0)
    record = logging.LogRecord("ext_proc.audit", logging.INFO, __file__, 1, "decision", (), None)
    record.audit = decision.audit.as_dict()
    line = json.loads(LineFormatter("json").format(record))
    assert line["level"] == "INFO" and line["source"] == "request-x-api-key" and line["leg"] == "egress"
    assert "JSONSECRET" not in json.dumps(line)
    plain = logging.LogRecord("ext_proc.server", logging.WARNING, __file__, 1, "hello %s", ("there",), None)
    assert json.loads(LineFormatter("json").format(plain))["message"] == "hello there"
    assert LineFormatter("text").format(plain).endswith(" WARNING ext_proc.server hello there")


def _ctx() -> RuleContext:
    return LiveRules(Config(seal_keys=(KEY_A,)), Metrics()).current


@pytest.mark.parametrize("files", [(), ("server_credential_file",), ("seal_key_file", "server_credential_file",
                                   "egress_token_file", "litellm_key_file")])  # fmt: skip
def test_secret_files_are_watched_when_any_is_configured_and_only_then(tmp_path: Path, files: tuple[str, ...]) -> None:
    """The server starts its reload watcher exactly when there is a file to watch: every one configured too."""
    contents = {"seal_key_file": KEY_A, "server_credential_file": "sk-ant-api03-WATCHED",
                "egress_token_file": "egress-test-token-0123456789abcdefghij",
                "litellm_key_file": "sk-litellm-WATCHED"}  # fmt: skip
    for name in files:
        (tmp_path / name).write_text(contents[name] + "\n")
    config = Config(seal_keys=(KEY_A,), **{name: tmp_path / name for name in files})  # type: ignore[arg-type]
    assert LiveRules(config, Metrics()).watched is bool(files)


def test_hot_reload_of_server_credential_and_seal_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """What changed is used, what cannot be used keeps the old value; the log says which, by key id and
    fingerprint, never by value."""
    caplog.set_level(logging.INFO, logger="ext_proc.reload")
    cred, keys = tmp_path / "server", tmp_path / "keys"
    cred.write_text("sk-ant-api03-FIRST\n")
    keys.write_text(f"{KEY_A}\n{KEY_B}\n")
    metrics = Metrics()
    live = LiveRules(Config(server_credential_file=cred, seal_key_file=keys), metrics)
    sealed_with_a = live().keyring.seal([("x-api-key", b"sk-ant-api03-C")], 1000)
    (id_a, id_b), first, second = live().keyring.key_ids, ApiKey(b"sk-ant-api03-FIRST"), ApiKey(b"sk-ant-api03-SECOND")

    live.reload_changed()
    assert live().server_credential == first, "nothing changed, nothing reloaded"
    assert _logged(caplog) == [
        ("INFO", f"seal keys loaded: key ids {id_a}, {id_b} (first seals)"),
        ("INFO", f"server credential loaded: {first.fingerprint()}"),
        ("WARNING", "no egress token configured: the egress leg attaches the server credential and sealed "
                    "credentials to whatever reaches it, not only to LiteLLM (docs/rules.md E0)"),
    ]  # fmt: skip

    cred.write_text("sk-ant-api03-SECOND\n")
    keys.write_text(f"{KEY_B}\n{KEY_A}\n")
    live.reload_changed()
    assert live().server_credential == second
    assert live().keyring.open(sealed_with_a.encode(), 1000).entries == (("x-api-key", b"sk-ant-api03-C"),)
    assert live().keyring.key_ids == (id_b, id_a) and id_b != id_a
    assert _logged(caplog) == [
        ("INFO", f"reloaded seal_key_file: Secrets(keyring={(id_b, id_a)}, server_credential={first.fingerprint()}, "
                 "egress_token=None, litellm_keys=0)"),
        ("INFO", f"reloaded server_credential_file: Secrets(keyring={(id_b, id_a)}, "
                 f"server_credential={second.fingerprint()}, egress_token=None, litellm_keys=0)"),
    ]  # fmt: skip

    cred.write_text("sk-master-NOT-ANTHROPIC-BADSECRET\n")
    keys.write_text("not base64 !!\n")
    live.reload_changed()
    assert live().server_credential == second, "a bad file keeps the old value"
    assert live().keyring.open(sealed_with_a.encode(), 1000)
    assert _logged(caplog) == [
        ("ERROR", "seal_key_file changed but cannot be used, keeping the previous value: seal key #1: not base64"),
        ("ERROR", "server_credential_file changed but cannot be used, keeping the previous value: server credential: "
                  "not an Anthropic credential (expected a value starting with 'sk-ant-')"),
    ]  # fmt: skip
    cred.unlink()
    live.reload_changed()
    assert live().server_credential == second, "a vanished file keeps the old value"
    scraped = metrics.registry.get_sample_value
    assert scraped("ext_proc_reloads_total", {"file": "server_credential_file", "result": "ok"}) == 1
    assert scraped("ext_proc_reloads_total", {"file": "server_credential_file", "result": "rejected"}) == 2


def _logged(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    """The records since the last call, as (level, message); then forgotten."""
    records = [(r.levelname, r.getMessage()) for r in caplog.records]
    caplog.clear()
    return records


def test_without_a_seal_key_one_is_generated_and_its_id_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Secrets as the command read them are used as given (never read again): here none, so a key is made."""
    caplog.set_level(logging.INFO, logger="ext_proc.reload")
    token, keys = b"egress-" + b"k" * 40, (b"sk-litellm-one-1", b"sk-litellm-two-2")
    live = LiveRules(Config(seal_keys=(KEY_A,)), Metrics(), Secrets(egress_token=token, litellm_keys=keys))
    generated = live().keyring.key_ids
    assert len(generated) == 1 and live().egress_token == token and live().litellm_keys == keys
    assert _logged(caplog) == [
        ("INFO", f"no seal key configured: generated one for this process (key id {generated[0]}): a handoff opens "
                 "only here, which is right when one process serves both legs (up, the sidecar and mesh forms); "
                 "gateway replicas that open each other's handoffs need a shared seal_key_file"),
        ("INFO", "LiteLLM keys known by value: 2"),
    ]  # fmt: skip


def test_running_server_picks_up_a_new_server_credential(tmp_path: Path) -> None:
    cred = tmp_path / "server"
    cred.write_text("sk-ant-api03-BEFORE\n")

    async def scenario() -> list[bytes]:
        config = Config.load(
            env={},
            overrides={
                "listen": f"unix:{tmp_path}/r.sock", "metrics_listen": "off",
                "server_credential_file": cred, "reload_interval_seconds": 0.05,
            },
        )  # fmt: skip
        server = Server(config)
        await server.start()
        try:
            seen = [server.rules().server_credential.token]  # type: ignore[union-attr]
            cred.write_text("sk-ant-api03-AFTER\n")
            for _ in range(200):
                if server.rules().server_credential.token != seen[0]:  # type: ignore[union-attr]
                    break
                await asyncio.sleep(0.02)
            seen.append(server.rules().server_credential.token)  # type: ignore[union-attr]
            return seen
        finally:
            await server.stop()

    assert asyncio.run(scenario()) == [b"sk-ant-api03-BEFORE", b"sk-ant-api03-AFTER"]
    (response,) = asyncio.run(exchange(tmp_path, [headers_message(("x-api-key", b"placeholder"))]))
    assert response.request_headers.response.header_mutation.remove_headers == ["x-api-key"]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_serve_says_where_its_metrics_are_scraped_and_they_are_there(tmp_path: Path, host: str) -> None:
    """Port 0: the port the OS gave is the one printed; an IPv6 host is printed bracketed, as a URL needs it."""
    if ":" in host and not has_ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback")
    listen = f"[{host}]:0" if ":" in host else f"{host}:0"
    server = Proc([str(BIN / "ext-proc"), "serve", "--listen", f"unix:{tmp_path}/s.sock", "--metrics-listen", listen])
    try:
        ready = server.wait_line("serving ext_proc on")
        at = ready.split(" metrics=")[1]
        assert re.fullmatch(r"\[::1\]:\d+" if ":" in host else r"127\.0\.0\.1:\d+", at), ready
        with urllib.request.urlopen(f"http://{at}/metrics", timeout=10) as scraped:
            assert b"ext_proc_requests_total" in scraped.read()
    finally:
        server.stop()


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_serve_answers_on_either_event_loop(tmp_path: Path, event_loop: str) -> None:
    server = start_server(tmp_path / "s.sock", {"EXT_PROC_EVENT_LOOP": event_loop})
    try:
        with grpc.insecure_channel(f"unix:{tmp_path}/s.sock") as channel:
            answers = list(
                pb_grpc.ExternalProcessorStub(channel).Process(
                    iter([headers_message(("x-api-key", b"sk-ant-api03-LOOP"))]), metadata=EGRESS, timeout=10
                )
            )
        mapped = Path(f"/proc/{server.pid}/maps").read_text()
    finally:
        assert server.stop() == 0
    assert [o.header.raw_value for o in answers[0].request_headers.response.header_mutation.set_headers] == [
        b"sk-ant-api03-LOOP"
    ]
    assert ("uvloop" in mapped) == (event_loop == "uvloop")


def test_event_loop_uvloop_without_the_package_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command's main coroutine is closed, not left to warn "never awaited" after the one line."""
    from ext_proc import cli

    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError

    async def main() -> int:
        return 0

    coroutine = main()
    try:
        with pytest.raises(RuntimeError) as refused:
            cli._run(coroutine, "uvloop")
        assert str(refused.value) == "event_loop 'uvloop' needs the uvloop package; install it or set 'asyncio'"
        assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED
    finally:
        coroutine.close()


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])  # docs/operations.md: either drains
def test_the_health_command_is_ready_only_while_the_server_serves(tmp_path: Path, stop_signal: signal.Signals) -> None:
    """Kubernetes' exec probes (`ext-proc health`): 0 and SERVING while serving, 1 once SIGTERM starts the drain
    (kubelet stops sending new work) and 1 naming the address when nothing answers."""
    address = f"unix:{tmp_path}/s.sock"
    server = start_server(tmp_path / "s.sock", {"EXT_PROC_DRAIN_SECONDS": "60"})
    try:
        assert run_cli(["health", "--address", address], {}) == Ran(0, "SERVING\n", "")
        server.signal(stop_signal)
        wait_for(lambda: run_cli(["health", "--address", address], {}).stdout != "SERVING\n", "the drain")
        assert run_cli(["health", "--address", address], {}) == Ran(1, "NOT_SERVING\n", "")
    finally:
        server.signal(signal.SIGKILL)
        server.stop()
    assert run_cli(["health", "--address", address], {}) == Ran(
        1, "", f"ext-proc: health check of {address} failed: UNAVAILABLE\n"
    )


def test_the_health_command_asks_serve_s_default_socket_when_given_no_address(tmp_path: Path) -> None:
    """A probe written as plain `ext-proc health` asks where a plain `ext-proc serve` listens."""
    runtime = {"XDG_RUNTIME_DIR": str(tmp_path)}
    server = Proc([str(BIN / "ext-proc"), "serve", "--metrics-listen", "127.0.0.1:0"], runtime)
    try:
        ready = server.wait_line("serving ext_proc on").split(" metrics=")[0]
        assert ready == f"serving ext_proc on unix:{tmp_path}/ext-proc/ext-proc.sock"
        assert run_cli(["health"], runtime) == Ran(0, "SERVING\n", "")
    finally:
        server.stop()
    assert run_cli(["health"], runtime) == Ran(
        1, "", f"ext-proc: health check of unix:{tmp_path}/ext-proc/ext-proc.sock failed: UNAVAILABLE\n"
    )


def test_the_health_command_gives_up_on_a_server_that_never_answers(tmp_path: Path) -> None:
    """A process that holds the socket and says nothing: the probe fails with its own message at its deadline."""
    with socket.socket(socket.AF_UNIX) as silent:
        silent.bind(str(tmp_path / "silent.sock"))
        silent.listen()
        address = f"unix:{tmp_path}/silent.sock"
        assert run_cli(["health", "--address", address], {}) == Ran(
            1, "", f"ext-proc: health check of {address} failed: DEADLINE_EXCEEDED\n"
        )


def test_check_command(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(f'seal_keys = ["{KEY_A}"]\nserver_credential = "sk-ant-api03-CHECKSECRET"\n')
    settings = (f"config OK: seal keys {key_id(bytes(32)).hex()}; server credential "
                f"{ApiKey(b'sk-ant-api03-CHECKSECRET').fingerprint()}\n")  # fmt: skip
    assert settings == "config OK: seal keys 66687aad; server credential api-key:...CRET:ff5fe3fd\n"
    shipped = str(Path(__file__).parent.parent / "deploy" / "envoy.yaml")
    assert run_cli(["check", "--config", str(good), "--envoy-config", shipped], {}) == Ran(
        0, f"{settings}envoy config OK: {shipped}\n", ""
    )
    assert run_cli(["check", "--config", str(good)], {}) == Ran(0, settings, "")

    bad = tmp_path / "bad.toml"
    bad.write_text("seal_ttl_seconds = -1\n")
    assert run_cli(["check", "--config", str(bad)], {}) == Ran(
        2, "", "ext-proc: configuration error: seal_ttl_seconds must be a positive number of seconds\n"
    )

    broken_envoy = tmp_path / "envoy.yaml"
    broken_envoy.write_text("static_resources: {listeners: [{name: x}]}\n")
    rejected = run_cli(["check", "--config", str(good), "--envoy-config", str(broken_envoy)], {})
    assert (rejected.returncode, rejected.stdout) == (1, settings)
    envoy = subprocess.run([str(find_envoy()), "--mode", "validate", "-c", str(broken_envoy)], capture_output=True,
                           text=True)  # fmt: skip
    assert envoy.returncode != 0 and envoy.stderr.strip() != "", "Envoy says why on stderr"
    untimed = re.compile(r"^\[[^]]*\]\[\d+\]", re.MULTILINE)  # each log line's time and thread
    assert untimed.sub("", rejected.stderr) == untimed.sub("", f"ext-proc: Envoy rejects {broken_envoy}:\n"
                                                              f"{envoy.stderr.strip()}\n")  # fmt: skip
    missing = run_cli(["check", "--config", str(good), "--envoy-config", shipped, "--envoy", "/nonexistent/envoy"], {})
    assert missing == Ran(1, settings, "ext-proc: Envoy not found: /nonexistent/envoy is not an executable file\n")

    rotated = tmp_path / "rotated.toml"
    rotated.write_text(f'seal_keys = ["{KEY_A}", "{base64.urlsafe_b64encode(bytes(range(32))).decode()}"]\n')
    assert run_cli(["check", "--config", str(rotated)], {}) == Ran(
        0, f"config OK: seal keys 66687aad, {key_id(bytes(range(32))).hex()}; server credential none\n", ""
    )


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time is UTC for the test, so that a line's time can be spelt out."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


AT = 1765000000.5  # 2025-12-06 05:46:40.500 UTC
REST = ('"leg":"egress","policy":"anthropic","outcome":"forward","reason":null,"source":null,"kind":null,'
        '"fingerprint":null,"sealed":[],"removed":[],"scrubbed":[],"request_id":"r"')  # fmt: skip


@pytest.mark.parametrize(
    ("fmt", "created", "expected"),
    [
        ("text", AT, "2025-12-06 05:46:40,500 INFO ext_proc.audit decision {" + REST + "}"),
        ("text", AT + 0.25, "2025-12-06 05:46:40,750 INFO ext_proc.audit decision {" + REST + "}"),
        ("text", AT + 86400.75, "2025-12-07 05:46:41,250 INFO ext_proc.audit decision {" + REST + "}"),
        ("json", AT, '{"time":"2025-12-06T05:46:40","level":"INFO","logger":"ext_proc.audit",' + REST + "}"),
        ("json", AT + 86400.75, '{"time":"2025-12-07T05:46:41","level":"INFO","logger":"ext_proc.audit",' + REST + "}"),
    ],
)  # fmt: skip
def test_a_log_line_s_time_and_fields_to_the_character(utc: None, fmt: str, created: float, expected: str) -> None:
    """Log shippers parse these lines: local time to the millisecond (text) or second (json), then the fields.

    The batched audit line (one formatter kept across calls, as AuditLog keeps it) is format_line's, byte for byte.
    """
    audit = Audit(leg="egress", policy="anthropic", outcome="forward", request_id="r")
    assert format_line(fmt, created, "INFO", "ext_proc.audit", "decision", audit.as_dict()) == expected
    lines = _AuditLines(fmt)
    assert [lines.line(audit, at) for at in (AT, created, created)] == [lines.line(audit, AT), expected, expected]


def test_a_plain_log_line_and_its_exception(utc: None) -> None:
    record = logging.LogRecord("ext_proc.server", logging.ERROR, __file__, 1, "failed: %s", ("x",), None)
    record.created = AT
    assert LineFormatter("json").format(record) == (
        '{"time":"2025-12-06T05:46:40","level":"ERROR","logger":"ext_proc.server","message":"failed: x"}'
    )
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record.exc_info = sys.exc_info()
    formatter = LineFormatter("text")
    traceback = formatter.formatException(record.exc_info)
    assert "RuntimeError: boom" in traceback
    assert formatter.format(record) == f"2025-12-06 05:46:40,500 ERROR ext_proc.server failed: x\n{traceback}"


def test_requests_without_an_id_are_sampled_by_their_count(caplog: pytest.LogCaptureFixture) -> None:
    """Envoy always sends x-request-id; without one the n-th line is kept as request id "n" would be. The rate
    is set so that request "1" sits exactly on the threshold: kept below it, not on it."""
    caplog.set_level(logging.INFO, logger="ext_proc.audit")
    stream = io.StringIO()
    threshold = zlib.crc32(b"1")
    audit = AuditLog(threshold / 2**32, "text", stream)
    for _ in range(40):
        audit.record(_audit(None))
    audit.flush()
    kept = [json.loads(line.split(" decision ", 1)[1])["request_id"] for line in stream.getvalue().splitlines()]
    expected = [n for n in range(1, 41) if zlib.crc32(str(n).encode()) < threshold]
    assert kept == [None] * len(expected) and 1 not in expected and 5 < len(expected) < 35
    again = AuditLog(threshold / 2**32, "text", stream)
    assert [again._sampled(None) for _ in range(40)] == [n in expected for n in range(1, 41)]


def test_audit_lines_are_written_when_a_batch_reaches_64_kib(caplog: pytest.LogCaptureFixture) -> None:
    """At 65536 bytes of lines the batch is written at once, without waiting for the timer; at 65535 it waits,
    from the start and after a write alike."""
    caplog.set_level(logging.INFO, logger="ext_proc.audit")
    stream = io.StringIO()
    audit = AuditLog(1.0, "text", stream)
    audit.flush_seconds = 3600
    length = len(_AuditLines("text").line(_audit(""), time.time()))

    def batch(total: int) -> list[int]:
        """Lines of exactly ``total`` bytes; the bytes written after each."""
        written = []
        for _ in range(50):
            audit.record(_audit("r" * 1000))
            written.append(len(stream.getvalue()))
        audit.record(_audit("r" * (total - 50 * (length + 1000) - length)))
        return [*written, len(stream.getvalue())]

    async def scenario() -> list[list[int]]:
        waits = batch(65535)
        audit.flush()
        return [waits, batch(65536), batch(65535)]

    waits, full, waits_again = asyncio.run(scenario())
    first = 65535 + 51  # the lines and their newlines
    assert waits == [0] * 51
    assert full == [first] * 50 + [first + 65536 + 51]
    assert waits_again == [first + 65536 + 51] * 51


def test_metric_names_types_and_help_as_scraped() -> None:
    """What a dashboard or an alert is written against: every family, its type and its help."""
    metrics = Metrics()
    metrics.observe("egress", "anthropic", _forward(), 1e-5)
    exposed = [line for line in generate_latest(metrics.registry).decode().splitlines() if line.startswith("# ")]
    assert exposed == [
        "# HELP ext_proc_requests_total Decisions made, by leg, policy and where the credential that left came from.",
        "# TYPE ext_proc_requests_total counter",
        "# HELP ext_proc_decision_seconds Time to decide one request's headers.",
        "# TYPE ext_proc_decision_seconds histogram",
        "# HELP ext_proc_rejections_total Requests answered by the gateway instead of forwarded.",
        "# TYPE ext_proc_rejections_total counter",
        "# HELP ext_proc_seal_failures_total Handoff headers that could not be opened.",
        "# TYPE ext_proc_seal_failures_total counter",
        "# HELP ext_proc_reloads_total Secret file reloads, by file and result.",
        "# TYPE ext_proc_reloads_total counter",
        "# HELP ext_proc_unexpected_messages_total Messages other than request headers.",
        "# TYPE ext_proc_unexpected_messages_total counter",
        "# HELP ext_proc_answers_marked_total Endpoint 4xx answers to a client's own credential marked retry-after: 0 "
        "for LiteLLM's router (E9).",
        "# TYPE ext_proc_answers_marked_total counter",
        "# HELP ext_proc_body_bytes_total Body bytes received (should stay 0).",
        "# TYPE ext_proc_body_bytes_total counter",
        "# HELP ext_proc_body_bytes_created Body bytes received (should stay 0).",
        "# TYPE ext_proc_body_bytes_created gauge",
    ]


def _forward() -> Decision:
    """A forwarded egress decision without a credential source: nothing to attach, nothing sealed."""
    decision = decide("ingress", "anthropic", HeaderView.of((":method", "POST"), (":path", "/v1/messages")), _ctx(), 0)
    assert decision.rejection is None and decision.audit.source is None and not decision.audit.sealed
    return decision


@pytest.mark.parametrize(("policy", "label"), [("anthropic", "anthropic"), ("", "none"), ("made-up", "unknown")])
def test_a_policy_outside_the_known_ones_is_counted_as_unknown(policy: str, label: str) -> None:
    metrics = Metrics()
    metrics.observe("ingress", policy, _forward(), 1e-5)
    labels = {"leg": "ingress", "policy": label, "source": "none"}
    assert metrics.registry.get_sample_value("ext_proc_requests_total", labels) == 1


def test_metrics_listen_on_the_address_given_only_and_close_twice() -> None:
    """127.0.0.2 is loopback too: a listener bound to all addresses would answer on 127.0.0.1 as well."""
    metrics = Metrics()
    port = metrics.serve("127.0.0.2", 0)
    try:
        assert "ext_proc_requests_total" in get_text(f"http://127.0.0.2:{port}/metrics")
        with pytest.raises(OSError):
            get_text(f"http://127.0.0.1:{port}/metrics")
    finally:
        metrics.close()
    metrics.close()


@pytest.mark.parametrize(("level", "fmt", "starts"), [("debug", "json", '{"time":'), ("WARNING", "text", "20")])
def test_logging_is_one_stderr_handler_in_the_level_and_format_set(level: str, fmt: str, starts: str) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(level, fmt)
        (handler,) = root.handlers
        assert isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr
        assert root.level == getattr(logging, level.upper())
        record = logging.LogRecord("ext_proc.server", logging.ERROR, __file__, 1, "x", (), None)
        assert handler.format(record).startswith(starts)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_a_rule_context_is_never_made_without_a_seal_key() -> None:
    """LiveRules generates one when none is configured; a caller that forgets is told, not handed open handoffs."""
    with pytest.raises(ValueError) as refused:
        rule_context(Config(), Secrets())
    assert str(refused.value) == "a rule context needs a seal key (LiveRules generates one when none is configured)"
