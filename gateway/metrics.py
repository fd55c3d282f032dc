"""Prometheus metrics. Every label value comes from the configuration (connection names), the fixed
route set or the fixed reason vocabulary: never from what a client sent, so series cannot explode.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from .config import Connection
from .record import RequestRecord

# LLM calls take from tens of milliseconds to minutes.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
# The gateway's own cost is sub-millisecond when healthy.
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
NO_CONNECTION = "none"
CONTENT_TYPE = CONTENT_TYPE_LATEST


class _Family:
    """A metric with its label children cached: `labels()` validates and locks on every call,
    and the label space here is small and bounded by the configuration."""

    __slots__ = ("children", "metric")

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self.children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *labels: str) -> Any:
        child = self.children.get(labels)
        if child is None:
            child = self.children[labels] = self.metric.labels(*labels)
        return child


class Metrics:
    def __init__(self, connections: Iterable[Connection]) -> None:
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)

        def family(kind, name: str, doc: str, labels: list[str], **kwargs: Any) -> _Family:
            return _Family(kind(name, doc, labels, registry=registry, **kwargs))

        self.requests = family(
            Counter, "gateway_requests_total", "Client requests answered.", ["route", "connection", "code_class"]
        )
        self.request_duration = family(
            Histogram,
            "gateway_request_duration_seconds",
            "Client request duration, received to last byte.",
            ["route"],
            buckets=LATENCY_BUCKETS,
        )
        self.upstream_duration = family(
            Histogram,
            "gateway_upstream_duration_seconds",
            "Upstream attempt duration, request sent to outcome.",
            ["connection", "outcome"],
            buckets=LATENCY_BUCKETS,
        )
        self.upstream_ttfb = family(
            Histogram,
            "gateway_upstream_ttfb_seconds",
            "Upstream time to first byte: request sent to headers; for streams, to the first content event.",
            ["connection"],
            buckets=LATENCY_BUCKETS,
        )
        self.fallbacks = family(
            Counter,
            "gateway_fallbacks_total",
            "Moves from one connection to the next.",
            ["from_connection", "to_connection", "reason"],
        )
        self.upstream_errors = family(
            Counter, "gateway_upstream_errors_total", "Failed upstream attempts.", ["connection", "reason"]
        )
        self.inflight = family(Gauge, "gateway_inflight_requests", "Client requests in progress.", ["route"])
        self.overhead = family(
            Histogram,
            "gateway_overhead_seconds",
            "Time a request spent in the gateway, not waiting on an upstream.",
            ["route"],
            buckets=OVERHEAD_BUCKETS,
        )
        self.tokens = family(Counter, "gateway_tokens_total", "Tokens reported by upstreams.", ["connection", "kind"])
        self.key_rotations = family(
            Counter,
            "gateway_key_rotations_total",
            "A connection's key set aside and its next key tried.",
            ["connection", "reason"],
        )
        self.connection_up = family(
            Gauge, "gateway_connection_up", "1 when the connection is enabled and healthy.", ["connection"]
        )
        for connection in connections:
            self.connection_up(connection.name).set(1 if connection.enabled else 0)

    def observe(self, record: RequestRecord, duration: float) -> None:
        """Everything one finished request says: called once per request, from the record."""
        route = record.route
        status = record.status or 0
        self.requests(route, record.connection or NO_CONNECTION, f"{status // 100}xx").inc()
        self.request_duration(route).observe(duration)
        waited = 0.0
        previous = None
        for attempt in record.attempts:
            if previous is not None and previous.reason != "ok" and previous.connection != attempt.connection:
                self.fallbacks(previous.connection, attempt.connection, previous.reason).inc()
            previous = attempt
            if attempt.skipped:
                continue
            waited += attempt.waited
            self.upstream_duration(attempt.connection, attempt.reason).observe(attempt.duration)
            if attempt.ttfb is not None:
                self.upstream_ttfb(attempt.connection).observe(attempt.ttfb)
            if attempt.reason != "ok":
                self.upstream_errors(attempt.connection, attempt.reason).inc()
            if attempt.rotated:
                self.key_rotations(attempt.connection, attempt.reason).inc()
        self.overhead(route).observe(max(0.0, duration - waited))
        usage = record.usage
        if usage is not None and record.connection:
            for kind, count in (
                ("input", usage.input_tokens),
                ("output", usage.output_tokens),
                ("reasoning", usage.reasoning_tokens),
            ):
                if count:
                    self.tokens(record.connection, kind).inc(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)
