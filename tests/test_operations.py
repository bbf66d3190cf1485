"""Operations in-process: metrics, audit sampling and format, hot reload of secret files, `ext-proc check`."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import json
import logging
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from ext_proc.audit import AuditLog, LineFormatter, format_line
from ext_proc.config import Config
from ext_proc.credentials import ApiKey
from ext_proc.headers import HeaderView
from ext_proc.metrics import Metrics
from ext_proc.reload import LiveRules
from ext_proc.rules import Audit, RuleContext, Source, decide
from ext_proc.server import Server
from tests.support.extproc import EGRESS, exchange, headers_message, message_stream
from tests.support.http import get_text
from tests.support.processes import BIN, start_server

KEY_A = base64.urlsafe_b64encode(bytes(32)).decode()
KEY_B = base64.urlsafe_b64encode(bytes(range(32))).decode()


def scrape(port: int) -> str:
    return get_text(f"http://127.0.0.1:{port}/metrics")


def test_metrics_by_leg_policy_source_rejection_and_latency(tmp_path: Path) -> None:
    async def scenario() -> str:
        config = Config.load(env={}, overrides={"listen": f"unix:{tmp_path}/m.sock", "metrics_listen": "127.0.0.1:0"})
        server = Server(config)
        await server.start()
        assert server.metrics_port is not None
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
            return await asyncio.to_thread(scrape, server.metrics_port)
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
    audit = AuditLog(fmt=fmt, stream=stream)
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
    sampled = AuditLog(0.25, stream=stream)
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
    AuditLog(0.0, stream=stream).record(_audit("x", outcome="reject"))
    AuditLog(0.0, stream=stream).record(_audit("y"))
    assert [r.audit["request_id"] for r in caplog.records] == ["x"]  # type: ignore[attr-defined]
    assert logged() == []


def test_audit_lines_are_batched_and_flushed_by_the_event_loop(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ext_proc.audit")
    stream = io.StringIO()
    audit = AuditLog(stream=stream)
    audit.flush_seconds = 0.01

    async def scenario() -> tuple[str, str]:
        audit.record(_audit("a"))
        audit.record(_audit("b"))
        before = stream.getvalue()
        await asyncio.sleep(0.05)
        return before, stream.getvalue()

    before, after = asyncio.run(scenario())
    assert before == "" and len(after.splitlines()) == 2


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


def test_hot_reload_of_server_credential_and_seal_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cred, keys = tmp_path / "server", tmp_path / "keys"
    cred.write_text("sk-ant-api03-FIRST\n")
    keys.write_text(KEY_A + "\n")
    metrics = Metrics()
    live = LiveRules(Config(server_credential_file=cred, seal_key_file=keys), metrics)
    sealed_with_a = live().keyring.seal([("x-api-key", b"sk-ant-api03-C")], 1000)

    live.reload_changed()
    assert live().server_credential == ApiKey(b"sk-ant-api03-FIRST"), "nothing changed, nothing reloaded"

    cred.write_text("sk-ant-api03-SECOND\n")
    keys.write_text(f"{KEY_B}\n{KEY_A}\n")
    live.reload_changed()
    assert live().server_credential == ApiKey(b"sk-ant-api03-SECOND")
    assert live().keyring.open(sealed_with_a.encode(), 1000).entries == (("x-api-key", b"sk-ant-api03-C"),)
    assert live().keyring.key_ids[0] != LiveRules(Config(seal_keys=(KEY_A,)), Metrics()).current.keyring.key_ids[0]

    caplog.set_level(logging.ERROR, logger="ext_proc.reload")
    cred.write_text("sk-master-NOT-ANTHROPIC-BADSECRET\n")
    keys.write_text("not base64 !!\n")
    live.reload_changed()
    assert live().server_credential == ApiKey(b"sk-ant-api03-SECOND"), "a bad file keeps the old value"
    assert live().keyring.open(sealed_with_a.encode(), 1000)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "server_credential_file changed but cannot be used" in messages and "seal_key_file changed" in messages
    assert "BADSECRET" not in messages
    cred.unlink()
    live.reload_changed()
    assert live().server_credential == ApiKey(b"sk-ant-api03-SECOND"), "a vanished file keeps the old value"
    scraped = metrics.registry.get_sample_value
    assert scraped("ext_proc_reloads_total", {"file": "server_credential_file", "result": "ok"}) == 1
    assert scraped("ext_proc_reloads_total", {"file": "server_credential_file", "result": "rejected"}) == 2


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


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "ext-proc"), "check", *args], capture_output=True, text=True, timeout=120, env={})


def test_check_command(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(f'seal_keys = ["{KEY_A}"]\nserver_credential = "sk-ant-api03-CHECKSECRET"\n')
    ok = _check("--config", str(good), "--envoy-config", str(Path(__file__).parent.parent / "deploy" / "envoy.yaml"))
    assert ok.returncode == 0, ok.stderr
    assert "config OK" in ok.stdout and "envoy config OK" in ok.stdout and "CHECKSECRET" not in ok.stdout

    bad = tmp_path / "bad.toml"
    bad.write_text("seal_ttl_seconds = -1\n")
    refused = _check("--config", str(bad))
    assert refused.returncode == 2 and "seal_ttl_seconds must be a positive" in refused.stderr

    broken_envoy = tmp_path / "envoy.yaml"
    broken_envoy.write_text("static_resources: {listeners: [{name: x}]}\n")
    rejected = _check("--config", str(good), "--envoy-config", str(broken_envoy))
    assert rejected.returncode == 1 and "Envoy rejects" in rejected.stderr
