"""A stand-in OpenTelemetry collector: an OTLP/gRPC trace service that records every export it receives.

Like the Anthropic stand-in it keeps exactly what arrived (the raw requests), so a test can search everything that
was exported, not only the fields it expects.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc

# xds-protos' copy of OTLP (no type stubs); wire-compatible with today's OTLP (ext_proc/tracing.py).
otlp: Any = importlib.import_module("opentelemetry.proto.collector.trace.v1.trace_service_pb2")


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, str]


class Collector:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.requests: list[Any] = []
        self._spans: list[Span] = []
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        export = grpc.unary_unary_rpc_method_handler(
            self.Export,
            request_deserializer=otlp.ExportTraceServiceRequest.FromString,
            response_serializer=otlp.ExportTraceServiceResponse.SerializeToString,
        )
        service = "opentelemetry.proto.collector.trace.v1.TraceService"
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {"Export": export}),))
        # Every address of localhost, one port: a test reaches it by name, as a collector Service is reached.
        self.port = self._server.add_insecure_port("localhost:0")

    def Export(  # the generated service's method name
        self, request: Any, context: grpc.ServicerContext
    ) -> Any:
        spans = _spans_of(request)
        with self._changed:
            self.requests.append(request)
            self._spans += spans
            self._changed.notify_all()
        return otlp.ExportTraceServiceResponse()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spans(self, service: str | None = None) -> list[Span]:
        with self._lock:
            return [s for s in self._spans if service is None or s.service == service]

    def wait_for(self, count: int, service: str, timeout: float = 30.0) -> list[Span]:
        """Block until ``count`` spans from ``service`` have arrived (exports are batched, on their own schedule)."""
        with self._changed:
            self._changed.wait_for(lambda: sum(s.service == service for s in self._spans) >= count, timeout=timeout)
        spans = self.spans(service)
        assert len(spans) >= count, f"{len(spans)} span(s) from {service} arrived, expected {count}: {self.spans()}"
        return spans

    def wait_until(self, condition: Callable[[list[Span]], bool], what: str, timeout: float = 30.0) -> list[Span]:
        """Block until the spans received so far satisfy ``condition``."""
        with self._changed:
            if not self._changed.wait_for(lambda: condition(self._spans), timeout=timeout):
                raise AssertionError(f"never true within {timeout:.0f}s: {what}; received {self._spans}")
            return list(self._spans)

    def raw(self) -> bytes:
        """Every export as received, serialized: what a test searches for text that must never leave."""
        with self._lock:
            return b"".join(r.SerializeToString() for r in self.requests)

    def __enter__(self) -> Collector:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=None)


def _spans_of(request: Any) -> list[Span]:
    found = []
    for resource_spans in request.resource_spans:
        resource = resource_spans.resource.attributes
        service = next((a.value.string_value for a in resource if a.key == "service.name"), "")
        scope_spans = resource_spans.DESCRIPTOR.fields_by_number[2].name  # OTLP's scope_spans, by any name
        for scope in getattr(resource_spans, scope_spans):
            for s in scope.spans:
                attributes = {a.key: str(getattr(a.value, a.value.WhichOneof("value") or "string_value"))
                              for a in s.attributes}  # fmt: skip
                found.append(Span(service, s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(),
                                  attributes))  # fmt: skip
    return found
