"""Optional OpenTelemetry tracing: one span per decision, joined to the request's W3C trace context.

Off unless ``tracing_endpoint`` is set; the transport then holds ``None`` and pays one ``is None`` test per request.
The OpenTelemetry SDK is the ``tracing`` extra, imported only when tracing is on. Spans are exported over
OTLP/gRPC by ``OtlpExporter`` below, with the OTLP messages that xds-protos already ships (see its docstring).

A span carries what the audit log carries, minus anything a client chose: leg, policy, outcome, the rejection's
metric label, where the credential came from and its kind. Never a value, a fingerprint or a header name.
The parent is the trace context Envoy puts on the ext_proc gRPC call when Envoy traces (its span for that call),
else the request's own ``traceparent`` (the client's, or LiteLLM's on the egress); ``tracestate`` is never read.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ext_proc.config import Config
from ext_proc.headers import HeaderView
from ext_proc.rules import Decision

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

# Only traceparent: its W3C format is hex digits and dashes, so it cannot carry a credential. tracestate is free
# text a client controls (it would be exported as the span's trace state), so it is never read.
_TRACEPARENT = "traceparent"
# How long one export waits for the collector; a batch that misses it is dropped (the SDK's thread waits, never a
# request).
EXPORT_SECONDS = 10.0


class Tracing:
    """Records decisions as spans through an SDK tracer provider that it owns (and shuts down, flushing)."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry.trace import SpanKind, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._provider = provider
        self._tracer = provider.get_tracer("ext_proc")
        self._propagator = TraceContextTextMapPropagator()
        self._server_kind = SpanKind.SERVER
        self._error = StatusCode.ERROR

    @classmethod
    def start(cls, config: Config, exporter: SpanExporter | None = None) -> Tracing | None:
        """From the configuration: None when tracing is off. ``exporter`` replaces OTLP (tests use an in-memory one)."""
        if not config.tracing_endpoint and exporter is None:
            return None
        # Config.validated has checked that the SDK is installed when tracing_endpoint is set.
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        if exporter is None:
            exporter = otlp_exporter(config.tracing_address(), EXPORT_SECONDS)
        resource = Resource.create({"service.name": config.tracing_service_name})
        provider = TracerProvider(resource=resource)
        # Exported in batches from the SDK's own thread: the event loop only appends the finished span to a queue.
        provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider)

    def record(
        self,
        leg: str,
        policy: str,
        decision: Decision,
        start_ns: int,
        end_ns: int,
        metadata: Iterable[tuple[str, str | bytes]],
        headers: HeaderView,
    ) -> None:
        carrier = {k: v for k, v in metadata if k == _TRACEPARENT and isinstance(v, str)}
        if not carrier:
            values = headers.get_all(_TRACEPARENT)
            if len(values) == 1:
                carrier[_TRACEPARENT] = values[0].decode("latin-1")
        parent = self._propagator.extract(carrier)
        audit = decision.audit
        attributes: dict[str, str | int] = {"ext_proc.leg": leg, "ext_proc.policy": policy or "none",
                                            "ext_proc.outcome": audit.outcome}  # fmt: skip
        if audit.source is not None:
            attributes["ext_proc.credential.source"] = audit.source.value
        if audit.kind is not None:
            attributes["ext_proc.credential.kind"] = audit.kind
        if audit.sealed:
            attributes["ext_proc.sealed"] = len(audit.sealed)
        rejection = decision.rejection
        if rejection is not None:
            attributes["ext_proc.reason"] = rejection.metric_label
            attributes["http.response.status_code"] = rejection.status
        span = self._tracer.start_span(
            f"ext_proc {leg}", context=parent, kind=self._server_kind, attributes=attributes, start_time=start_ns
        )
        if rejection is not None and rejection.status >= 500:
            span.set_status(self._error, rejection.metric_label)
        span.end(end_time=end_ns)

    def shutdown(self) -> None:
        """Export what is queued, then stop the exporter."""
        self._provider.shutdown()


def otlp_exporter(collector: tuple[str, int], timeout: float) -> SpanExporter:
    """An OTLP/gRPC span exporter to ``collector`` (host, port), plain HTTP/2, each export given ``timeout``
    seconds."""
    import grpc
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    otlp = _otlp()

    class OtlpExporter(SpanExporter):
        """Sends the SDK's finished spans to the collector's ``TraceService/Export``, one call per batch.

        Not OpenTelemetry's own OTLP exporter: it depends on ``opentelemetry-proto``, whose files share paths with
        the OTLP protos inside ``xds-protos`` (``opentelemetry/proto/...``), so whichever pip installs last wins
        and the other breaks (seen: a fresh install left the exporter importing xds-protos' older copy and
        failing). xds-protos carries OTLP under its pre-1.0 names (``instrumentation_library_spans``), with the
        field numbers of today's OTLP (``scope_spans`` = 2, ``scope`` = 1): the bytes on the wire are the same.
        Retries and batching are the SDK's BatchSpanProcessor's; a failed batch is dropped, never retried here.
        The collector's answer (an empty message, or a partial-success count) is parsed and not read.
        """

        def __init__(self) -> None:
            self._channel = grpc.insecure_channel(f"{collector[0]}:{collector[1]}")
            self._export = self._channel.unary_unary(
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                request_serializer=otlp.ExportTraceServiceRequest.SerializeToString,
                response_deserializer=otlp.ExportTraceServiceResponse.FromString,  # pragma: no mutate (not read)
            )

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            try:
                self._export(encode(spans), timeout=timeout)
            except grpc.RpcError:
                return SpanExportResult.FAILURE
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            self._channel.close()

    return OtlpExporter()


def encode(spans: Sequence[ReadableSpan]) -> Any:
    """The OTLP ``ExportTraceServiceRequest`` for a batch of finished spans, grouped by resource."""
    request = _otlp().ExportTraceServiceRequest()
    by_resource: dict[int, tuple[Any, list[ReadableSpan]]] = {}
    for span in spans:
        by_resource.setdefault(id(span.resource), (span.resource, []))[1].append(span)
    for resource, group in by_resource.values():
        resource_spans = request.resource_spans.add()
        _attributes(resource_spans.resource.attributes, resource.attributes)
        scope_spans = _field(resource_spans, 2).add()  # scope_spans
        _field(scope_spans, 1).name = "ext_proc"  # its scope
        for span in group:
            out = scope_spans.spans.add()
            out.trace_id = span.context.trace_id.to_bytes(16)  # big-endian, int.to_bytes' default
            out.span_id = span.context.span_id.to_bytes(8)
            if span.parent is not None:
                out.parent_span_id = span.parent.span_id.to_bytes(8)
            out.name = span.name
            out.kind = span.kind.value + 1  # OTLP numbers SPAN_KIND_UNSPECIFIED 0, then the SDK's kinds from 1
            out.start_time_unix_nano = span.start_time  # an ended span (the only kind exported) has both
            out.end_time_unix_nano = span.end_time
            _attributes(out.attributes, span.attributes or {})
            out.status.code = span.status.status_code.value  # UNSET 0, OK 1, ERROR 2 in both
            out.status.message = span.status.description or ""
    return request


def _field(message: Any, number: int) -> Any:
    """The field OTLP numbers ``number``, under whichever name this copy of the protos gives it: xds-protos' copy
    says instrumentation_library(_spans), opentelemetry-proto's (if another package installed it over) scope(_spans).
    """
    return getattr(message, message.DESCRIPTOR.fields_by_number[number].name)


def _otlp() -> Any:
    """xds-protos' generated OTLP trace service module (it ships no type stubs)."""
    return importlib.import_module("opentelemetry.proto.collector.trace.v1.trace_service_pb2")


def _attributes(into: Any, attributes: Mapping[str, Any]) -> None:
    """Ours are text and counts (``record``), the resource's text and the SDK's version: strings and ints only."""
    for key, value in attributes.items():
        item = into.add()
        item.key = key
        if type(value) is int:  # a bool (none of ours) goes as its text
            item.value.int_value = value
        else:
            item.value.string_value = str(value)
