"""Prometheus metrics, on their own registry and HTTP port.

Label values come only from closed sets (legs, policies, sources, rejection reasons); anything else that Envoy's
config might send is counted as ``unknown``, so no request can grow the label space or put a value in it.
"""

from __future__ import annotations

import threading
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from ext_proc.rules import LEGS, POLICIES, Decision

# Decisions take microseconds; the top buckets are there to show a stalled event loop.
_LATENCY_BUCKETS = (25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 10e-3, 50e-3, 0.25, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ext_proc_requests",
            "Decisions made, by leg, policy and where the credential that left came from.",
            ["leg", "policy", "source"],
            registry=self.registry,
        )
        self.rejections = Counter(
            "ext_proc_rejections", "Requests answered by the gateway instead of forwarded.", ["reason"],
            registry=self.registry,
        )  # fmt: skip
        self.seal_failures = Counter(
            "ext_proc_seal_failures", "Handoff headers that could not be opened.", ["reason"], registry=self.registry
        )
        self.latency = Histogram(
            "ext_proc_decision_seconds", "Time to decide one request's headers.", ["leg"],
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.reloads = Counter(
            "ext_proc_reloads", "Secret file reloads, by file and result.", ["file", "result"], registry=self.registry
        )
        # Envoy is configured never to send bodies; if one ever arrives it is counted here (must stay 0).
        self.unexpected = Counter(
            "ext_proc_unexpected_messages", "Messages other than request headers.", ["type"], registry=self.registry
        )
        self.body_bytes = Counter("ext_proc_body_bytes", "Body bytes received (should stay 0).", registry=self.registry)
        # Label children resolved once: every label value comes from a closed set, so these stay small.
        self._latency: dict[str, Any] = {}
        self._requests: dict[tuple[str, str, str], Any] = {}
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def observe(self, leg: str, policy: str, decision: Decision, seconds: float) -> None:
        leg = leg if leg in LEGS else "unknown"
        policy = policy if policy in POLICIES else ("none" if not policy else "unknown")
        latency = self._latency.get(leg)
        if latency is None:
            latency = self._latency[leg] = self.latency.labels(leg)
        latency.observe(seconds)
        rejection = decision.rejection
        if rejection is not None:
            self.rejections.labels(rejection.reason).inc()
            if rejection.reason.startswith("seal-"):
                self.seal_failures.labels(rejection.reason.removeprefix("seal-")).inc()
            return
        source = decision.audit.source.value if decision.audit.source else "sealed" if decision.audit.sealed else "none"
        key = (leg, policy, source)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = self.requests.labels(*key)
        counter.inc()

    def serve(self, host: str, port: int) -> int:
        """Expose /metrics; returns the bound port (0 picks one)."""
        server, thread = start_http_server(port, host, registry=self.registry)
        self._server, self._thread = server, thread
        return int(server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
