"""Optional OpenTelemetry tracing: one span per decision, joined to the request's W3C trace context.

Off unless ``tracing_endpoint`` is set; the transport then holds ``None`` and pays one ``is None`` test per request.
The OpenTelemetry SDK and its OTLP exporter are the ``tracing`` extra, imported only when tracing is on.

A span carries what the audit log carries, minus anything a client chose: leg, policy, outcome, the rejection's
metric label, where the credential came from and its kind. Never a value, a fingerprint or a header name.
The parent is the trace context Envoy puts on the ext_proc gRPC call when Envoy traces (its span for that call),
else the request's own ``traceparent`` (the client's, or LiteLLM's on the egress); ``tracestate`` is never read.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ext_proc.config import Config
from ext_proc.headers import HeaderView
from ext_proc.rules import Decision

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

# Only traceparent: its W3C format is hex digits and dashes, so it cannot carry a credential. tracestate is free
# text a client controls (it would be exported as the span's trace state), so it is never read.
_TRACEPARENT = "traceparent"


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
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=config.tracing_endpoint, insecure=True)
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
