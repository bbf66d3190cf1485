"""Prometheus metrics, on their own registry and HTTP port.

Label values come only from closed sets (legs, policies, sources, rejection reasons); anything else that Envoy's
config might send is counted as ``unknown``, so no request can grow the label space or put a value in it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from itertools import accumulate
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from ext_proc.names import LEGS, POLICIES
from ext_proc.rules import Decision

# Decisions take microseconds; the top buckets are there to show a stalled event loop.
_LATENCY_BUCKETS = (25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 10e-3, 50e-3, 0.25, 1.0)


class _PerDecision:
    """The two metrics updated on every decision, kept as plain numbers and turned into samples only when scraped.

    Only the event loop thread writes them; the scrape thread copies each container in one step (atomic under the
    GIL). A prometheus_client Counter and Histogram take a lock per update, which costs more than the decision's
    own bookkeeping should (docs/performance.md).
    """

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}
        # Per leg: one count per bucket (the last is +Inf), then the sum of observed seconds.
        self.latency: dict[str, list[float]] = {}

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "ext_proc_requests",
            "Decisions made, by leg, policy and where the credential that left came from.",
            labels=["leg", "policy", "source"],
        )
        for key, count in list(self.requests.items()):
            requests.add_metric(key, count)
        yield requests
        latency = HistogramMetricFamily(
            "ext_proc_decision_seconds", "Time to decide one request's headers.", labels=["leg"]
        )
        bounds = [*(repr(b) for b in _LATENCY_BUCKETS), "+Inf"]
        for leg, counts in list(self.latency.items()):
            snapshot = list(counts)
            buckets = list(zip(bounds, accumulate(snapshot[:-1]), strict=True))
            latency.add_metric([leg], buckets, sum_value=snapshot[-1])
        yield latency


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._per_decision = _PerDecision()
        self.registry.register(self._per_decision)
        self.rejections = Counter(
            "ext_proc_rejections", "Requests answered by the gateway instead of forwarded.", ["reason"],
            registry=self.registry,
        )  # fmt: skip
        self.seal_failures = Counter(
            "ext_proc_seal_failures", "Handoff headers that could not be opened.", ["reason"], registry=self.registry
        )
        self.reloads = Counter(
            "ext_proc_reloads", "Secret file reloads, by file and result.", ["file", "result"], registry=self.registry
        )
        # Envoy is configured never to send bodies; if one ever arrives it is counted here (must stay 0).
        self.unexpected = Counter(
            "ext_proc_unexpected_messages", "Messages other than request headers.", ["type"], registry=self.registry
        )
        # A 4xx status is three ASCII digits starting with 4 (rules.answer): at most 100 label values.
        self.answers_marked = Counter(
            "ext_proc_answers_marked",
            "Endpoint 4xx answers to a client's own credential marked retry-after: 0 for LiteLLM's router (E9).",
            ["status"], registry=self.registry,
        )  # fmt: skip
        self.body_bytes = Counter("ext_proc_body_bytes", "Body bytes received (should stay 0).", registry=self.registry)
        self._server: WSGIServer | None = None

    def observe(self, leg: str, policy: str, decision: Decision, seconds: float) -> None:
        leg = leg if leg in LEGS else "unknown"
        policy = policy if policy in POLICIES else ("none" if not policy else "unknown")
        latency = self._per_decision.latency.get(leg)
        if latency is None:
            latency = self._per_decision.latency[leg] = [0] * (len(_LATENCY_BUCKETS) + 1) + [0.0]
        latency[bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        latency[-1] += seconds
        rejection = decision.rejection
        if rejection is not None:
            self.rejections.labels(rejection.metric_label).inc()
            if rejection.reason.startswith("seal-"):
                self.seal_failures.labels(rejection.reason.removeprefix("seal-")).inc()
            return
        source = decision.audit.source.value if decision.audit.source else "sealed" if decision.audit.sealed else "none"
        key = (leg, policy, source)
        requests = self._per_decision.requests
        requests[key] = requests.get(key, 0) + 1

    def serve(self, host: str, port: int) -> int:
        """Expose /metrics; returns the bound port (0 picks one)."""
        self._server, _ = start_http_server(port, host, registry=self.registry)  # its thread is a daemon
        return int(self._server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
