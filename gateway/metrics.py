"""Prometheus metrics. Every label value comes from the configuration (connection names), the fixed
route set or the fixed reason vocabulary: never from what a client sent, so series cannot explode.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.utils import floatToGoString

from .config.model import Connection
from .record import RequestRecord

# LLM calls take from tens of milliseconds to minutes.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
# The gateway's own cost is sub-millisecond when healthy.
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
NO_CONNECTION = "none"
CODE_CLASSES = tuple(f"{n}xx" for n in range(10))
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Counter:
    """Counts kept in a dict on the event loop; turned into a metric family only when scraped.
    (prometheus-client's own metrics lock on every update: nine updates a request add up.)"""

    kind = CounterMetricFamily

    def __init__(self, name: str, doc: str, labels: list[str]) -> None:
        self.name, self.doc, self.labels = name, doc, labels
        self.values: dict[tuple[str, ...], float] = {}

    def add(self, key: tuple[str, ...], amount: float = 1.0) -> None:
        self.values[key] = self.values.get(key, 0.0) + amount

    def set(self, key: tuple[str, ...], value: float) -> None:
        self.values[key] = value

    def family(self) -> Any:
        family = self.kind(self.name, self.doc, labels=self.labels)
        for key, value in self.values.items():
            family.add_metric(list(key), value)
        return family


class Gauge(Counter):
    kind = GaugeMetricFamily


class Histogram:
    def __init__(self, name: str, doc: str, labels: list[str], buckets: tuple[float, ...]) -> None:
        self.name, self.doc, self.labels, self.bounds = name, doc, labels, buckets
        self.series: dict[tuple[str, ...], list[Any]] = {}  # key -> [counts per bucket (+Inf last), sum]

    def observe(self, key: tuple[str, ...], value: float) -> None:
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = [[0] * (len(self.bounds) + 1), 0.0]
        series[0][bisect.bisect_left(self.bounds, value)] += 1  # `le` buckets: value <= bound
        series[1] += value

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for key, (counts, total) in self.series.items():
            cumulative, buckets = 0, []
            for bound, count in zip((*map(floatToGoString, self.bounds), "+Inf"), counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric(list(key), buckets, total)
        return family


class Metrics:
    def __init__(self, connections: Iterable[Connection]) -> None:
        self.requests = Counter("gateway_requests", "Client requests answered.", ["route", "connection", "code_class"])
        self.request_duration = Histogram(
            "gateway_request_duration_seconds", "Client request duration, received to last byte.", ["route"],
            LATENCY_BUCKETS,
        )  # fmt: skip
        self.upstream_duration = Histogram(
            "gateway_upstream_duration_seconds", "Upstream attempt duration, request sent to outcome.",
            ["connection", "outcome"], LATENCY_BUCKETS,
        )  # fmt: skip
        self.upstream_ttfb = Histogram(
            "gateway_upstream_ttfb_seconds",
            "Upstream time to first byte: request sent to headers; for streams, to the first content event.",
            ["connection"], LATENCY_BUCKETS,
        )  # fmt: skip
        self.fallbacks = Counter(
            "gateway_fallbacks",
            "Moves from one connection to the next.",
            ["from_connection", "to_connection", "reason"],
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors", "Failed upstream attempts.", ["connection", "reason"]
        )
        self.inflight = Gauge("gateway_inflight_requests", "Client requests in progress.", ["route"])
        self.overhead = Histogram(
            "gateway_overhead_seconds", "Time a request spent in the gateway, not waiting on an upstream.", ["route"],
            OVERHEAD_BUCKETS,
        )  # fmt: skip
        self.tokens = Counter("gateway_tokens", "Tokens reported by upstreams.", ["connection", "kind"])
        self.key_rotations = Counter(
            "gateway_key_rotations", "A connection's key set aside and its next key tried.", ["connection", "reason"]
        )
        self.retries = Counter(
            "gateway_retries", "The same connection tried again after a 429 / 503 / overloaded answer.",
            ["connection", "reason"],
        )  # fmt: skip
        self.connection_up = Gauge(
            "gateway_connection_up", "1 when the connection is enabled and its breaker is not open.", ["connection"]
        )
        self.breaker_state = Gauge(
            "gateway_breaker_state", "Circuit breaker per connection: 0 closed, 1 half-open, 2 open.", ["connection"]
        )
        # Set by the app: (connection, up, breaker state) for each connection, read at scrape time.
        self.health: Callable[[], Iterable[tuple[str, bool, int]]] | None = None
        for connection in connections:
            self.connection_up.set((connection.name,), 1 if connection.enabled else 0)
            self.breaker_state.set((connection.name,), 0)
        families = [v for v in vars(self).values() if isinstance(v, Counter | Histogram)]
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        registry.register(_Collector(families))

    def observe(self, record: RequestRecord, duration: float) -> None:
        """Everything one finished request says: called once per request, from the record."""
        route = (record.route,)
        status = record.status or 0
        self.requests.add((record.route, record.connection or NO_CONNECTION, CODE_CLASSES[min(status // 100, 9)]))
        self.request_duration.observe(route, duration)
        waited = 0.0
        previous = None
        for attempt in record.attempts:
            name = attempt.connection
            if previous is not None and previous.reason != "ok" and previous.connection != name:
                self.fallbacks.add((previous.connection, name, previous.reason))
            previous = attempt
            if attempt.skipped:
                continue
            waited += attempt.waited
            self.upstream_duration.observe((name, attempt.reason), attempt.duration)
            if attempt.ttfb is not None:
                self.upstream_ttfb.observe((name,), attempt.ttfb)
            if attempt.reason != "ok":
                self.upstream_errors.add((name, attempt.reason))
            if attempt.rotated:
                self.key_rotations.add((name, attempt.reason))
            if attempt.retried:
                self.retries.add((name, attempt.reason))
        self.overhead.observe(route, max(0.0, duration - waited))
        usage = record.usage
        if usage is not None and record.connection:
            for kind, count in (
                ("input", usage.input_tokens),
                ("output", usage.output_tokens),
                ("reasoning", usage.reasoning_tokens),
            ):
                if count:
                    self.tokens.add((record.connection, kind), count)

    def render(self) -> bytes:
        if self.health is not None:
            self.connection_up.values.clear()
            self.breaker_state.values.clear()
            for name, up, breaker in self.health():
                self.connection_up.set((name,), 1 if up else 0)
                self.breaker_state.set((name,), int(breaker))
        return generate_latest(self.registry)


class _Collector:
    """Hands the gateway's metric families to the registry at scrape time."""

    def __init__(self, families: list[Counter | Histogram]) -> None:
        self.families = families

    def collect(self) -> Iterator[Any]:
        for family in self.families:
            yield family.family()
        yield _asyncio_tasks()


def _asyncio_tasks() -> GaugeMetricFamily:
    """Tasks alive on the event loop, counted at scrape time (a leak shows as steady growth)."""
    try:
        tasks = len(asyncio.all_tasks())
    except RuntimeError:  # scraped outside a running loop
        tasks = 0
    return GaugeMetricFamily("gateway_asyncio_tasks", "asyncio tasks alive on the event loop.", value=tasks)
