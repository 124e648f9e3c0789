"""Every Prometheus metric the server exports, declared here and nowhere else.

The HTTP layer counts what only it sees (answers by outcome, rejections, latency) and
what each accepted request gives when the engine finishes it (completed or failed, its
engine latency, whether it missed its latency target), incrementally, as it happens: a
scrape reads counters and histogram buckets, never sorts. What only the engine counts
(switches and bytes per tier path, pool hits, batches, busy time) comes from its stats
counters (without the latency window, which the histograms replace), refreshed off the
event loop at most every `max_age_s`: scrapes read the last ones. Queue depths, pool
bytes, quarantine and health are cheap and read at scrape time. Each server has its own
registry, so two servers can live in one process."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coserve.engine.engine import Engine
from coserve.server.limits import Admission
from coserve.stats import EngineStats
from coserve.types import Result

# HTTP inference endpoints, by path: the `endpoint` label.
ENDPOINTS = {"/v1/inspect": "inspect", "/v1/inspect/batch": "inspect_batch"}
# An answer's status code -> the `outcome` label of coserve_requests_total.
OUTCOMES = {200: "ok", 400: "invalid", 401: "unauthorized", 404: "invalid", 408: "timeout",
            413: "invalid", 415: "invalid", 422: "invalid", 429: "rejected", 500: "failed",
            503: "unavailable", 504: "timeout"}
# Seconds: from a few ms (a resident expert on a small input) to the default timeout.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServerMetrics:
    def __init__(self, engine: Engine, admission: Admission, engine_stats_max_age_s: float) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "coserve_requests", "HTTP inference requests answered, by endpoint and outcome",
            ["endpoint", "outcome"], registry=self.registry)
        self.rejected = Counter(
            "coserve_requests_rejected",
            "Requests refused before admission, by reason (overload, decode_budget, draining, not_ready)",
            ["reason"], registry=self.registry)
        self.accepted = Counter(
            "coserve_requests_accepted", "Images admitted into the engine (each is answered)",
            registry=self.registry)
        self.duration = Histogram(
            "coserve_request_duration_seconds", "HTTP inference request latency, by endpoint",
            ["endpoint"], buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.engine_requests = Counter(
            "coserve_engine_requests", "Requests the engine finished, by outcome", ["outcome"],
            registry=self.registry)
        self.deadline_misses = Counter(
            "coserve_deadline_misses", "Requests the engine answered after their latency target "
            "(failed ones included)", registry=self.registry)
        self.escalated = Counter(
            "coserve_escalated", "Requests a confidence cascade escalated (a cheap expert's "
            "answer below its threshold went to a bigger expert)", registry=self.registry)
        self.engine_latency = Histogram(
            "coserve_engine_latency_seconds", "From submission to the engine's answer",
            buckets=LATENCY_BUCKETS_S, registry=self.registry)
        for outcome in ("completed", "failed"):
            self.engine_requests.labels(outcome)
        self.engine_counters = EngineCounters(engine, engine_stats_max_age_s)
        self.registry.register(EngineCollector(engine, admission, self.engine_counters))

    def answered(self, endpoint: str, status: int, duration_s: float) -> None:
        self.requests.labels(endpoint, OUTCOMES.get(status, "other")).inc()
        self.duration.labels(endpoint).observe(duration_s)

    def engine_finished(self, result: Result, latency_target_s: float) -> None:
        """From an accepted request's done callback (an engine thread)."""
        self.engine_requests.labels("completed" if result.ok else "failed").inc()
        self.engine_latency.observe(result.latency_s)
        if result.latency_s > latency_target_s:
            self.deadline_misses.inc()
        if result.escalated:
            self.escalated.inc()


class EngineCounters:
    """The engine's last stats snapshot, at most `max_age_s` old: `run` refreshes it in
    the background; 0 refreshes at every scrape."""

    def __init__(self, engine: Engine, max_age_s: float) -> None:
        self._engine = engine
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._latest: EngineStats | None = None

    def latest(self) -> EngineStats | None:
        if self.max_age_s == 0 or self._latest is None:
            self.refresh()
        return self._latest

    def refresh(self) -> None:
        if self._engine.running:
            stats = self._engine.stats(latencies=False)  # the histograms have them
            with self._lock:
                self._latest = stats

    async def run(self) -> None:
        """Refresh every max_age_s, off the event loop, until cancelled."""
        if self.max_age_s == 0:
            return
        while True:
            await asyncio.sleep(self.max_age_s)
            await asyncio.to_thread(self.refresh)


class EngineCollector(Collector):
    """Reads the engine's own counters at scrape time."""

    def __init__(self, engine: Engine, admission: Admission, counters: EngineCounters) -> None:
        self._engine = engine
        self._admission = admission
        self._counters = counters

    def describe(self) -> list[Metric]:
        return []  # not known until the engine runs; the registry then skips its checks

    def collect(self) -> Iterator[Metric]:
        engine, admission = self._engine, self._admission
        problems = engine.health() if engine.running else []
        yield _gauge("coserve_ready", "1 when the engine runs, its executors are healthy and "
                     "intake is open",
                     float(engine.running and not problems and not admission.draining))
        yield _gauge("coserve_engine_problems", "What the engine reports wrong now (a stuck or "
                     "dead executor), as /readyz lists it", len(problems))
        yield _gauge("coserve_requests_in_flight", "Images the engine holds for HTTP clients",
                     admission.num_inflight)
        yield _gauge("coserve_requests_in_flight_limit", "Most images admitted at once",
                     admission.max_inflight)
        yield _gauge("coserve_event_loop_lag_seconds", "How far behind the HTTP event loop runs",
                     admission.loop_lag.lag_s)
        yield from _quarantine(engine)
        stats = self._counters.latest() if engine.running else None
        if stats is not None:
            yield from _engine_counters(stats)
            yield from _executors(engine, stats)


def _host_arena(s: EngineStats) -> Iterator[Metric]:
    """The pinned host arena in front of GPU executors (nothing without one)."""
    if not s.host_arena:
        return
    for key, what in (("capacity_bytes", "Bytes of the host arena"),
                      ("used_bytes", "Bytes of the host arena holding host copies"),
                      ("largest_free_bytes", "The host arena's largest free extent"),
                      ("pinned_bytes", "Page-locked host RAM: the arena's capacity, unrounded")):
        yield _gauge(f"coserve_host_arena_{key}", what, s.host_arena[key])


def _engine_counters(s: EngineStats) -> Iterator[Metric]:
    yield _by_path("coserve_expert_switches", "Expert loads into an executing tier, by tier path",
                   s.switches_by_path)
    yield _by_path("coserve_expert_load_bytes", "Bytes of expert weights loaded, by tier path",
                   s.bytes_loaded_by_path)
    yield _by_path("coserve_expert_load_seconds", "Seconds spent loading experts, by tier path",
                   s.load_time_s_by_path)
    yield _by_path("coserve_expert_loads", "Every expert load by tier path, host-cache fills "
                   "(storage->host) included", s.loads_by_path)
    yield CounterMetricFamily("coserve_storage_read_bytes", "Bytes read from storage",
                              value=s.bytes_read)
    yield _labelled("coserve_storage_read_bytes_by_precision", "Bytes read from storage, by "
                    "the stored precision read (coserve repo quantize)", "precision",
                    s.bytes_read_by_precision)
    yield _labelled("coserve_expert_loads_by_precision", "Expert storage reads, by stored "
                    "precision", "precision", s.loads_by_precision)
    yield from _host_arena(s)
    yield CounterMetricFamily("coserve_pool_hits", "Batches whose expert was resident",
                              value=s.num_pool_hits)
    yield CounterMetricFamily("coserve_pool_misses", "Batches that had to load their expert",
                              value=s.num_pool_misses)
    yield _gauge("coserve_pool_hit_ratio", "Pool hits / lookups since start", s.pool_hit_rate)
    yield CounterMetricFamily("coserve_batches", "Batches executed", value=s.num_batches)


def _executors(engine: Engine, stats: EngineStats) -> Iterator[Metric]:
    labels = ["executor", "processor"]
    keys = [[str(i), spec.processor] for i, spec in enumerate(engine.executor_specs)]
    depth = GaugeMetricFamily("coserve_queue_depth", "Tasks waiting in each executor's queue",
                              labels=labels)
    used = GaugeMetricFamily("coserve_pool_used_bytes", "Expert bytes in each executor's pool",
                             labels=labels)
    budget = GaugeMetricFamily("coserve_pool_budget_bytes", "Each executor's pool budget "
                               "(absent: unlimited)", labels=labels)
    busy = CounterMetricFamily("coserve_executor_busy_seconds", "Seconds each executor ran batches",
                               labels=labels)
    for key, d, u, b, s in zip(keys, engine.queue_depths(), engine.pool_bytes(),
                               engine.pool_budgets(), stats.busy_s_per_executor, strict=True):
        depth.add_metric(key, d)
        used.add_metric(key, u)
        if b is not None:
            budget.add_metric(key, b)
        busy.add_metric(key, s)
    yield from (depth, used, budget, busy)


def _quarantine(engine: Engine) -> Iterator[Metric]:
    records = engine.quarantine.records()
    flagged = GaugeMetricFamily("coserve_expert_quarantined", "1 for each quarantined expert",
                                labels=["expert"])
    failures = CounterMetricFamily("coserve_expert_failures", "Failed attempts to load or run "
                                   "an expert, for experts that ever failed", labels=["expert"])
    for name, r in sorted(records.items()):
        flagged.add_metric([name], float(r.quarantined))
        failures.add_metric([name], r.total_failures)
    yield flagged
    yield failures
    yield _gauge("coserve_experts_quarantined", "Experts quarantined now",
                 sum(r.quarantined for r in records.values()))


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _by_path(name: str, doc: str, values: dict[str, float]) -> CounterMetricFamily:
    return _labelled(name, doc, "path", values)


def _labelled(name: str, doc: str, label: str, values: dict[str, Any]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


class RequestMetricsMiddleware:
    """Counts every answer of the inference endpoints by outcome and times it, whoever
    answered (a route, an error handler, the body-size limit)."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = ENDPOINTS.get(scope.get("path", "")) if scope["type"] == "http" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            self.metrics.answered(endpoint, status, time.perf_counter() - t0)
