"""Prometheus metrics of a routing service (served at ``GET /metrics`` in the text exposition format).

Each service has its own registry, so several services (tests, benchmarks) can live in one process.

========================================  ==========  =====================================================
metric                                    type        meaning
========================================  ==========  =====================================================
``trim_requests_total{router,outcome}``   counter     chat requests by outcome: ok, bad_request,
                                                      upstream_error, cancelled
``trim_requests_in_flight``               gauge       requests being served
``trim_steps_total{router,writer}``       counter     written steps, by writer (weak, strong)
``trim_escalation_rate{router}``          gauge       strong steps / all steps so far
``trim_strong_tokens_total{router}``      counter     tokens the strong model decoded
``trim_weak_tokens_total{router}``        counter     tokens the weak model decoded (rejected proposals too)
``trim_request_seconds{router}``          histogram   request latency
``trim_decision_seconds{router}``         histogram   router decision latency (observation + router)
``trim_step_overhead_seconds{router}``    histogram   a step's wall time minus its upstream calls' time
``trim_upstream_seconds{upstream}``       histogram   one backend call's latency (weak, strong, prm)
``trim_upstream_in_flight{upstream}``     gauge       backend calls holding a slot now
``trim_cost_total{router}``               counter     requests' cost in the cost model's natural unit
                                                      (USD, FLOPs, s: its HELP line says which); only
                                                      when the service's cost model is not strong_tokens
========================================  ==========  =====================================================
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from trim_env.cost import CostModel, StrongTokensCost

#: Latency buckets (seconds): sub-millisecond decisions up to minute-long solutions.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class ServeMetrics:
    """The metrics of one service, in their own registry.

    :param cost_model: the service's cost model; unless it is ``strong_tokens`` (whose cost is
        ``trim_strong_tokens_total``), ``trim_cost_total`` counts requests' cost in its natural unit.
    """

    def __init__(self, cost_model: CostModel | None = None) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter("trim_requests", "Chat requests by outcome", ["router", "outcome"], registry=registry)
        self.in_flight = Gauge("trim_requests_in_flight", "Requests being served", registry=registry)
        self.steps = Counter("trim_steps", "Written steps by writer", ["router", "writer"], registry=registry)
        self.escalation_rate = Gauge("trim_escalation_rate", "Strong steps / all steps so far", ["router"], registry=registry)
        self.strong_tokens = Counter("trim_strong_tokens", "Tokens decoded by the strong model", ["router"], registry=registry)
        self.weak_tokens = Counter("trim_weak_tokens", "Tokens decoded by the weak model", ["router"], registry=registry)
        self.request_seconds = Histogram("trim_request_seconds", "Request latency", ["router"], buckets=LATENCY_BUCKETS, registry=registry)
        self.decision_seconds = Histogram("trim_decision_seconds", "Router decision latency", ["router"],
                                          buckets=LATENCY_BUCKETS, registry=registry)
        self.step_overhead_seconds = Histogram("trim_step_overhead_seconds", "Step wall time minus upstream time", ["router"],
                                               buckets=LATENCY_BUCKETS, registry=registry)
        self.upstream_seconds = Histogram("trim_upstream_seconds", "Backend call latency", ["upstream"],
                                          buckets=LATENCY_BUCKETS, registry=registry)
        self.upstream_in_flight = Gauge("trim_upstream_in_flight", "Backend calls holding a slot", ["upstream"], registry=registry)
        self.cost: Counter | None = None
        if cost_model is not None and not isinstance(cost_model, StrongTokensCost):
            cache = ", prefix cache" if cost_model.caches_prefixes else ""
            self.cost = Counter("trim_cost", f"Cost of requests in {cost_model.natural_unit} (cost={cost_model.name}{cache})",
                                ["router"], registry=registry)
        self._step_counts: dict[str, list[int]] = {}

    def watch_upstream(self, role: str, upstream: Any) -> None:
        """Report ``upstream.in_flight`` (an :class:`~agents.serve.loop.Upstream`) as the slots ``role`` holds, read at each scrape."""
        self.upstream_in_flight.labels(upstream=role).set_function(lambda: upstream.in_flight)

    def observe_upstream(self, role: str, seconds: float) -> None:
        self.upstream_seconds.labels(upstream=role).observe(seconds)

    def observe_step(self, router: str, is_strong: bool, decision_ms: float, overhead_s: float) -> None:
        """Count a written step and its latencies."""
        self.steps.labels(router=router, writer="strong" if is_strong else "weak").inc()
        counts = self._step_counts.setdefault(router, [0, 0])
        counts[0] += 1
        counts[1] += int(is_strong)
        self.escalation_rate.labels(router=router).set(counts[1] / counts[0])
        self.decision_seconds.labels(router=router).observe(decision_ms / 1000.0)
        self.step_overhead_seconds.labels(router=router).observe(max(overhead_s, 0.0))

    def observe_request(self, router: str, outcome: str, seconds: float, weak_tokens: int, strong_tokens: int,
                        cost: float | None = None) -> None:
        """Count a finished request (whatever its outcome), the tokens it cost and, under a cost model
        other than ``strong_tokens``, its cost in the model's natural unit."""
        self.requests.labels(router=router, outcome=outcome).inc()
        self.request_seconds.labels(router=router).observe(seconds)
        self.weak_tokens.labels(router=router).inc(weak_tokens)
        self.strong_tokens.labels(router=router).inc(strong_tokens)
        if self.cost is not None and cost is not None:
            self.cost.labels(router=router).inc(cost)

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)
