"""Tracing (docs/operations.md, Tracing): a span per decision, joined to the request's trace, never a value.

In-process with OpenTelemetry's in-memory exporter for what a span holds and which parent it takes; then the real
Envoy and `ext-proc up --tracing-endpoint` exporting to a recording OTLP collector, for the join between Envoy's
spans and the server's and for everything that leaves for the collector.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import signal
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from ext_proc.config import Config, ConfigError
from ext_proc.credentials import ApiKey
from ext_proc.envoy import HostPort
from ext_proc.headers import HeaderView
from ext_proc.reload import rule_context
from ext_proc.rules import decide
from ext_proc.secrets import Secrets
from ext_proc.tracing import EXPORT_SECONDS, Tracing, encode, otlp_exporter
from tests.conftest import running_legs
from tests.support.collector import Collector, Span
from tests.support.decisions import KEYRING, NOW
from tests.support.extproc import EGRESS, headers_message, message_stream, serving
from tests.support.http import send
from tests.support.processes import free_port
from tests.support.recorder import Recorder
from tests.support.up_command import SERVER_KEY, TOKEN, running_up

OAUTH = "sk-ant-oat01-TRACEDTOKEN"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
ENVOY_PARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


@pytest.fixture
def traced() -> Iterator[tuple[Tracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    tracing = Tracing.start(Config(), exporter)
    assert tracing is not None
    yield tracing, exporter
    tracing.shutdown()


def one_span(
    traced: tuple[Tracing, InMemorySpanExporter],
    leg: str,
    headers: HeaderView,
    metadata: tuple[tuple[str, str], ...] = (),
    policy: str = "anthropic",
) -> ReadableSpan:
    tracing, exporter = traced
    ctx = rule_context(Config(), Secrets(KEYRING, ApiKey(SERVER_KEY.encode()), TOKEN.encode()))
    decision = decide(leg, policy, HeaderView([(":method", b"POST"), (":path", b"/v1/messages"), *headers]), ctx, NOW)
    tracing.record(leg, policy, decision, 1_000, 2_000, metadata, headers)
    tracing._provider.force_flush()
    (span,) = exporter.get_finished_spans()
    return span


def everything_in(span: ReadableSpan) -> str:
    return repr((span.name, dict(span.attributes or {}), span.context, span.parent, span.resource.attributes))


def test_off_by_default_and_costs_one_test_per_request() -> None:
    assert Tracing.start(Config()) is None


def test_a_span_per_decision_says_what_happened_and_holds_no_value(
    traced: tuple[Tracing, InMemorySpanExporter],
) -> None:
    headers = HeaderView.of(("authorization", f"Bearer {OAUTH}"), ("x-litellm-api-key", "sk-litellm-TRACEDKEY"))
    span = one_span(traced, "ingress", headers)
    assert span.name == "ext_proc ingress" and span.kind == SpanKind.SERVER
    assert (span.start_time, span.end_time) == (1_000, 2_000)
    assert dict(span.attributes or {}) == {
        "ext_proc.leg": "ingress", "ext_proc.policy": "anthropic", "ext_proc.outcome": "forward", "ext_proc.sealed": 1,
    }  # fmt: skip
    assert span.resource.attributes["service.name"] == "ext-proc-credentials"
    assert "TRACED" not in everything_in(span)


def test_an_egress_span_names_the_credential_s_source_and_kind(traced: tuple[Tracing, InMemorySpanExporter]) -> None:
    span = one_span(traced, "egress", HeaderView.of(("x-api-key", TOKEN)))
    attributes = dict(span.attributes or {})
    assert attributes["ext_proc.credential.source"] == "server"
    assert attributes["ext_proc.credential.kind"] == "api-key"
    assert SERVER_KEY not in everything_in(span) and TOKEN not in everything_in(span)


def test_a_rejection_carries_its_closed_label_and_only_a_5xx_is_an_error(
    traced: tuple[Tracing, InMemorySpanExporter],
) -> None:
    span = one_span(traced, "ingress", HeaderView.of(("x-client-chosen-name", f"Bearer {OAUTH}")))
    attributes = dict(span.attributes or {})
    assert attributes["ext_proc.reason"] == "misplaced-header" and attributes["http.response.status_code"] == 400
    assert span.status.status_code == StatusCode.UNSET
    assert "x-client-chosen-name" not in everything_in(span) and "TRACED" not in everything_in(span)
    traced[1].clear()
    span = one_span(traced, "sideways", HeaderView.of(("x-api-key", "k")))
    assert span.status.status_code == StatusCode.ERROR


def test_the_parent_is_envoy_s_call_span_else_the_request_s_traceparent(
    traced: tuple[Tracing, InMemorySpanExporter],
) -> None:
    headers = HeaderView.of(("traceparent", PARENT), ("x-api-key", "sk-ant-api03-K"))
    span = one_span(traced, "ingress", headers, metadata=(("traceparent", ENVOY_PARENT),))
    assert span.parent is not None and f"{span.parent.span_id:016x}" == "b7ad6b7169203331"
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    traced[1].clear()
    span = one_span(traced, "ingress", headers)
    assert span.parent is not None and f"{span.parent.span_id:016x}" == "00f067aa0ba902b7"


@pytest.mark.parametrize(
    "headers",
    [
        (("traceparent", PARENT), ("traceparent", ENVOY_PARENT)),  # repeated: neither is the request's context
        (("traceparent", "00-sk-ant-api03-NOTATRACEID-01"),),  # not the W3C shape
        (("traceparent", PARENT), ("tracestate", f"vendor={OAUTH}")),  # tracestate is never read
    ],
)
def test_trace_context_a_client_shapes_cannot_carry_text_into_a_span(
    traced: tuple[Tracing, InMemorySpanExporter], headers: tuple[tuple[str, str], ...]
) -> None:
    span = one_span(traced, "ingress", HeaderView.of(*headers, ("x-api-key", "sk-ant-api03-K")))
    assert "sk-ant-oat" not in everything_in(span) and "NOTATRACEID" not in everything_in(span)
    assert span.context.trace_state is None or not span.context.trace_state


@pytest.mark.parametrize(
    "endpoint",
    ["127.0.0.1:4317", "https://collector:4317", "http://collector", "http://collector:4317/v1/traces",
     "http://:4317", "http://a/b:4317", "http://collector:otlp", "http://collector:", "http://collector:4317X"],
)  # fmt: skip
def test_the_endpoint_is_checked_at_start(endpoint: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Config(tracing_endpoint=endpoint).validated()
    assert str(refused.value) == (
        f"tracing_endpoint {endpoint!r}: expected http://HOST:PORT, an OpenTelemetry collector's OTLP/gRPC port "
        "(4317) next to the gateway; TLS to a remote collector is the local collector's job"
    )


@pytest.mark.parametrize(
    ("endpoint", "address"),
    [("http://otel-collector:4317", ("otel-collector", 4317)), ("http://127.0.0.1:4317/", ("127.0.0.1", 4317)),
     ("http://[::1]:4317", ("::1", 4317)), ("http://[fd00::2]:14317/", ("fd00::2", 14317)),
     ("http://Xray:4317", ("Xray", 4317))],
)  # fmt: skip
def test_the_collector_s_address_is_read_from_the_endpoint(endpoint: str, address: tuple[str, int]) -> None:
    """IPv6 in brackets, as in a URL; one trailing slash tolerated."""
    assert Config(tracing_endpoint=endpoint).validated().tracing_address() == address


def test_without_the_tracing_extra_the_setting_is_refused_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "opentelemetry.sdk" else real(name, *a)
    )
    with pytest.raises(ConfigError) as refused:
        Config(tracing_endpoint="http://127.0.0.1:4317").validated()
    assert str(refused.value) == (
        "tracing_endpoint is set but OpenTelemetry is not installed: pip install 'ext-proc-credentials[tracing]'"
    )


def test_envoy_and_the_server_export_one_joined_trace_and_no_credential(tmp_path: Path) -> None:
    """Real Envoy with its OpenTelemetry tracer (the config `up` renders, rendered in this process), the server with
    its exporter, one recording collector."""
    litellm_key = "sk-litellm-TRACEDLITELLMKEY"
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "key").write_text(SERVER_KEY + "\n")
    secrets = ("--egress-token-file", str(tmp_path / "token"), "--server-credential-file", str(tmp_path / "key"))
    with (
        Collector() as collector,
        Recorder() as recorder,
        running_legs(
            tmp_path,
            recorder,
            "--tracing-endpoint",
            collector.endpoint,
            *secrets,
            tracing=HostPort("localhost", collector.port),  # a name Envoy resolves, as a Service's is
        ) as legs,  # fmt: skip
    ):
        ingress, egress = legs.ingress, legs.egress
        # The LiteLLM key also where Envoy's standard span tags read the client's own text.
        headers = [("authorization", f"Bearer {OAUTH}"), ("x-litellm-api-key", litellm_key),
                   ("user-agent", f"agent {litellm_key}"), ("traceparent", PARENT),
                   ("x-client-trace-id", litellm_key), ("x-envoy-downstream-service-cluster", litellm_key),
                   ("tracestate", f"rt={litellm_key}"), ("baggage", f"k={litellm_key}")]  # fmt: skip
        # The ingress sends to the egress directly here (LiteLLM's part is played by the test: no token, so 400).
        send(ingress, "POST", f"/v1/messages?note={litellm_key}", headers, b"{}")
        # And as LiteLLM would forward a client's trace headers to the egress.
        egress_key = "sk-litellm-EGRESSTRACEKEY"
        send(egress, "POST", "/v1/messages", [("x-api-key", TOKEN), ("traceparent", PARENT),
             ("tracestate", f"rt={egress_key}"), ("baggage", f"k={egress_key}")], b"{}")  # fmt: skip
        server = collector.wait_for(3, "ext-proc-credentials")
        assert {s.trace_id for s in server} == {TRACE_ID}, "every decision joins the client's trace"
        assert sorted(s.attributes["ext_proc.leg"] for s in server) == ["egress", "egress", "ingress"]

        def joined(spans: list[Span]) -> bool:
            envoy = {s.span_id for s in spans if s.service.startswith("ext-proc-envoy-")}
            return all(s.parent_span_id in envoy for s in server)

        # Each decision's parent is Envoy's span for that ext_proc call (exported by Envoy on its own schedule).
        collector.wait_until(joined, "every server span's parent is one of Envoy's spans")
        assert {s.service for s in collector.spans()} >= {"ext-proc-envoy-ingress", "ext-proc-envoy-egress"}

        def requests(spans: list[Span]) -> list[Span]:
            """Envoy's span of each request, named by its leg; the ext_proc call spans are named for the gRPC call."""
            return [s for s in spans if s.service == f"ext-proc-envoy-{s.name}"]

        collector.wait_until(lambda spans: len(requests(spans)) == 3, "Envoy's span of each of the three requests")
        traced = requests(collector.spans())
        assert sorted(s.name for s in traced) == ["egress", "egress", "ingress"]
        for span in traced:
            client_text = ("user_agent", "http.url", "downstream_cluster", "guid:x-client-trace-id")
            assert {tag: span.attributes.get(tag, "-") for tag in client_text} == dict.fromkeys(client_text, "-")
        assert [s.attributes["guid:x-client-trace-id"] for s in traced if s.name == "ingress"] == ["-"]
        exported = collector.raw()
        for secret in (OAUTH, "TRACEDLITELLMKEY", "EGRESSTRACEKEY", TOKEN, SERVER_KEY):
            assert secret.encode() not in exported, f"{secret[:12]}... reached the collector"
        # docs/operations.md: where an operator looks when spans do not arrive.
        docs = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
        (cluster,) = set(re.findall(r"`cluster\.(\w+)\.upstream_cx_connect_fail`", docs))
        url = f"http://{legs.envoy.admin}/stats?format=json&filter=^cluster\\.{cluster}\\."
        with urllib.request.urlopen(url) as got:
            stats = {s["name"]: s["value"] for s in json.load(got)["stats"] if "value" in s}
        assert stats.get(f"cluster.{cluster}.upstream_cx_total", 0) >= 1, stats


def test_up_with_a_tracing_endpoint_exports_envoy_s_and_the_server_s_spans(tmp_path: Path) -> None:
    """The same wiring as `up` runs it (the test above renders Envoy's config in this process)."""
    with (
        Collector() as collector,
        Recorder() as recorder,
        running_up(tmp_path, recorder, "--tracing-endpoint", collector.endpoint) as (_, ingress, _),
    ):
        send(
            ingress, "POST", "/v1/messages", [("authorization", f"Bearer {OAUTH}"), ("x-litellm-api-key", TOKEN)], b"{}"
        )
        wanted = {"ext-proc-envoy-ingress", "ext-proc-envoy-egress", "ext-proc-credentials"}
        collector.wait_until(lambda spans: {s.service for s in spans} >= wanted, "spans of both legs and the server")


def test_up_stopped_right_after_a_request_still_exports_its_span(tmp_path: Path) -> None:
    """A pod stopped at once keeps its last decisions' spans: the exporter's batch (sent every 5 s) is flushed as
    the process stops (the server's stop and the OpenTelemetry SDK's exit hook both flush it)."""
    with Collector() as collector, Recorder() as recorder:
        with running_up(tmp_path, recorder, "--tracing-endpoint", collector.endpoint) as (up, ingress, _):
            send(ingress, "POST", "/v1/messages", [("x-api-key", "sk-ant-api03-LAST"), ("x-litellm-api-key", TOKEN)],
                 b"{}")  # fmt: skip
            up.signal(signal.SIGTERM)
            assert up.stop() == 0, up.output
        assert [s.attributes["ext_proc.leg"] for s in collector.spans("ext-proc-credentials")] == ["ingress", "egress"]


def test_spans_are_encoded_with_otlp_s_numbers(traced: tuple[Tracing, InMemorySpanExporter]) -> None:
    """Field by field, as OTLP 1.x defines them (xds-protos' names are older; the numbers are what travels)."""
    span = one_span(traced, "sideways", HeaderView.of(("x-api-key", "k")))
    request = encode([span])
    (resource_spans,) = request.resource_spans
    (scope,) = getattr(resource_spans, resource_spans.DESCRIPTOR.fields_by_number[2].name)  # scope_spans
    (out,) = scope.spans
    assert out.trace_id == span.context.trace_id.to_bytes(16, "big") and len(out.span_id) == 8
    assert out.parent_span_id == b"" and out.name == "ext_proc sideways"
    assert out.kind == 2, "SPAN_KIND_SERVER"
    assert (out.start_time_unix_nano, out.end_time_unix_nano) == (1_000, 2_000)
    assert (out.status.code, out.status.DESCRIPTOR.fields_by_name["code"].number) == (2, 3), "STATUS_CODE_ERROR"
    values = {a.key: a.value for a in out.attributes}
    assert values["http.response.status_code"].int_value == 500 and values["ext_proc.leg"].string_value == "sideways"
    service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}["service.name"]
    assert service == "ext-proc-credentials"


@pytest.mark.parametrize("collector", ["closed", "silent"])
def test_the_exporter_reports_a_collector_it_cannot_reach_or_that_never_answers_as_a_failure(collector: str) -> None:
    """A closed port fails at once; a port that accepts and never answers fails at the export's deadline."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1] if collector == "silent" else free_port()
        exporter = otlp_exporter(("127.0.0.1", port), 0.2)
        try:
            assert exporter.export([]) == SpanExportResult.FAILURE
        finally:
            exporter.shutdown()


def test_a_server_stopped_in_this_process_has_exported_its_queued_spans(tmp_path: Path) -> None:
    """stop() flushes the batch (sent every 5 s) before it returns, not only the SDK's exit hook: a caller whose
    process goes on (an embedding, a test) gets the last decisions' spans too."""
    with Collector() as collector:

        async def scenario() -> list[Span]:
            async with serving(tmp_path, tracing_endpoint=collector.endpoint) as (_, stub):
                message = message_stream(headers_message(("x-api-key", b"sk-ant-api03-QUEUED")))
                assert [r async for r in stub.Process(message, metadata=EGRESS)] != []
            return collector.spans("ext-proc-credentials")  # as stop() returned: no waiting for a batch

        spans = asyncio.run(scenario())
    assert [(s.attributes["ext_proc.leg"], s.attributes["ext_proc.outcome"]) for s in spans] == [("egress", "forward")]


def test_the_configured_collector_receives_the_spans_as_recorded() -> None:
    """In this process: `tracing_endpoint` to OTLP/gRPC, field by field, against the spans the SDK finished."""
    with Collector() as collector:
        config = Config(tracing_endpoint=collector.endpoint, tracing_service_name="gw-under-test").validated()
        tracing = Tracing.start(config)
        assert tracing is not None
        memory = InMemorySpanExporter()
        tracing._provider.add_span_processor(SimpleSpanProcessor(memory))
        ctx = rule_context(Config(), Secrets(KEYRING, ApiKey(SERVER_KEY.encode()), TOKEN.encode()))
        for leg, policy, headers in [
            ("ingress", "", HeaderView.of(("traceparent", PARENT), ("authorization", f"Bearer {OAUTH}"))),
            ("sideways", "anthropic", HeaderView.of(("x-api-key", "k"))),
        ]:
            decision = decide(leg, policy, HeaderView([(":method", b"POST"), (":path", b"/v1/messages"), *headers]),
                              ctx, NOW)  # fmt: skip
            tracing.record(leg, policy, decision, 1_000, 2_000, (), headers)
        tracing.shutdown()
        (request,) = collector.requests
    finished = memory.get_finished_spans()
    assert [s.instrumentation_scope and s.instrumentation_scope.name for s in finished] == ["ext_proc", "ext_proc"]
    assert [(s.status.status_code, s.status.description) for s in finished] == [
        (StatusCode.UNSET, None), (StatusCode.ERROR, "config-leg"),
    ]  # fmt: skip
    assert request == encode(finished)
    (resource_spans,) = request.resource_spans
    (scope,) = getattr(resource_spans, resource_spans.DESCRIPTOR.fields_by_number[2].name)
    assert getattr(scope, scope.DESCRIPTOR.fields_by_number[1].name).name == "ext_proc"
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource["service.name"] == "gw-under-test"
    ingress, sideways = scope.spans
    assert (ingress.trace_id.hex(), ingress.parent_span_id.hex()) == (TRACE_ID, "00f067aa0ba902b7")
    assert ingress.span_id == finished[0].context.span_id.to_bytes(8, "big") and sideways.parent_span_id == b""
    assert [(s.status.code, s.status.message) for s in scope.spans] == [(0, ""), (2, "config-leg")]
    attributes = {a.key: (a.value.WhichOneof("value"), getattr(a.value, a.value.WhichOneof("value")))
                  for a in ingress.attributes}  # fmt: skip
    assert attributes == {
        "ext_proc.leg": ("string_value", "ingress"), "ext_proc.policy": ("string_value", "none"),
        "ext_proc.outcome": ("string_value", "reject"), "ext_proc.reason": ("string_value", "no-litellm-key"),
        "http.response.status_code": ("int_value", 400),
    }  # fmt: skip


def test_spans_of_two_providers_keep_their_own_resource() -> None:
    spans: list[ReadableSpan] = []
    for service in ("gw-a", "gw-b"):
        memory = InMemorySpanExporter()
        tracing = Tracing.start(Config(tracing_service_name=service), memory)
        assert tracing is not None
        _record_an_egress_decision(tracing)
        tracing.shutdown()
        spans += memory.get_finished_spans()
    services = [{a.key: a.value.string_value for a in r.resource.attributes}["service.name"]
                for r in encode(spans).resource_spans]  # fmt: skip
    assert services == ["gw-a", "gw-b"]


def test_a_collector_that_never_answers_holds_the_exporter_only_for_the_export_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Shutting down flushes the queue through the exporter: against a silent collector that takes the export's
    deadline (here 0.2 s instead of EXPORT_SECONDS, which docs/operations.md gives), never longer."""
    docs = " ".join((Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text().split())
    assert f"One export waits at most {EXPORT_SECONDS:.0f} s for the collector" in docs
    monkeypatch.setattr("ext_proc.tracing.EXPORT_SECONDS", 0.2)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        tracing = Tracing.start(Config(tracing_endpoint=f"http://127.0.0.1:{silent.getsockname()[1]}").validated())
        assert tracing is not None
        _record_an_egress_decision(tracing)

        async def shutdown() -> None:
            await asyncio.wait_for(asyncio.to_thread(tracing.shutdown), 5)

        asyncio.run(shutdown())


def _record_an_egress_decision(tracing: Tracing) -> None:
    """One span: an egress request without a credential (the server credential is not configured here)."""
    decision = decide("egress", "anthropic", HeaderView.of(), rule_context(Config(), Secrets(KEYRING)), NOW)
    tracing.record("egress", "anthropic", decision, 1, 2, (), HeaderView.of())
