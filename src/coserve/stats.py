"""Statistics: one recorder the engine writes and one snapshot the CLI, the benchmark
and the server read. Counters are plain ints under one lock; latencies are kept per
request for the latest LATENCY_WINDOW requests (every request of a benchmark run; a
long-running server keeps bounded memory)."""

from __future__ import annotations

import statistics
import threading
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from coserve.types import LoadPath

LATENCY_WINDOW = 100_000  # latest request latencies kept for percentiles


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); 0.0 for no values."""
    return _ranked(sorted(values), q)


def _ranked(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass(frozen=True)
class EngineStats:
    policy: str
    num_requests: int
    num_completed: int
    num_failed: int
    wall_s: float
    throughput_rps: float
    num_switches: int
    switches_by_path: dict[str, int]
    switches_per_executor: list[int]
    bytes_read: int  # from storage
    bytes_loaded_by_path: dict[str, int]
    load_time_s_by_path: dict[str, float]
    load_bandwidth_bytes_per_s: float  # storage bytes / time spent loading from storage
    num_pool_hits: int
    num_pool_misses: int
    pool_hit_rate: float
    num_batches: int
    mean_batch_size: float
    latency_p50_s: float
    latency_p90_s: float
    latency_p99_s: float
    latency_mean_s: float
    queue_depth_max: list[int]
    busy_s_per_executor: list[float]
    utilisation_per_executor: list[float]
    budget_bytes: int | None
    total_expert_bytes: int
    storage: str
    cost_source: str
    # time each executor spent on its batches besides executing them: waiting for loads,
    # routing the outputs, queueing what follows
    handling_s_per_executor: list[float] = field(default_factory=list)
    # requests answered after their latency target (failed ones included)
    num_deadline_misses: int = 0
    deadline_miss_rate: float = 0.0
    # requests a confidence cascade escalated (a step answered low_confidence)
    num_escalated: int = 0
    escalated_share: float = 0.0
    # supervision: batches that ran past the batch deadline, executors stuck now, batches
    # halved to isolate a failing input, batches halved because they ran out of memory
    num_batch_timeouts: int = 0
    num_unhealthy_executors: int = 0
    num_batch_splits: int = 0
    num_oom_splits: int = 0
    # stored precision: loads and storage bytes read at each, and tasks run on experts
    # loaded from each (an fp32 expert's tensors either way; see coserve repo quantize)
    loads_by_precision: dict[str, int] = field(default_factory=dict)
    bytes_read_by_precision: dict[str, int] = field(default_factory=dict)
    tasks_by_precision: dict[str, int] = field(default_factory=dict)
    num_upgrades: int = 0  # low-precision residents read again in fp32 (auto)
    # every load per tier path, host-cache fills (storage->host) included, where
    # switches_by_path counts the executors' switches only
    loads_by_path: dict[str, int] = field(default_factory=dict)
    num_host_hits: int = 0  # a device load found its host copy in the host cache
    num_host_misses: int = 0  # ... or read it from storage (or joined a read in flight)
    # the host arena (None without a GPU executor): capacity, used, largest free extent,
    # page-locked bytes (the whole capacity, never rounded), fragmentation
    host_arena: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StatsRecorder:
    def __init__(self, num_executors: int) -> None:
        self._lock = threading.Lock()
        self._num_executors = num_executors
        self._num_unhealthy = 0  # a gauge: a new window does not reset it
        self.reset(0.0)

    def reset(self, now_s: float) -> None:
        """Start a measurement window (after initial placement)."""
        with self._lock:
            self._t0 = now_s
            self._t_last = now_s
            self._num_requests = 0
            self._num_done = 0
            self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
            self._num_failed = 0
            self._num_deadline_misses = 0
            self._num_escalated = 0
            self._switches = [Counter() for _ in range(self._num_executors)]
            self._bytes_by_path: Counter[str] = Counter()
            self._load_s_by_path: Counter[str] = Counter()
            self._hits = 0
            self._misses = 0
            self._host_hits = 0
            self._host_misses = 0
            self._loads_by_path: Counter[str] = Counter()
            self._num_batches = 0
            self._num_items = 0
            self._queue_max = [0] * self._num_executors
            self._busy_s = [0.0] * self._num_executors
            self._handling_s = [0.0] * self._num_executors
            self._num_timeouts = 0
            self._num_splits = 0
            self._num_oom_splits = 0
            self._loads_by_precision: Counter[str] = Counter()
            self._bytes_by_precision: Counter[str] = Counter()
            self._tasks_by_precision: Counter[str] = Counter()
            self._num_upgrades = 0
            self._extra: dict[str, Any] = {}

    def request_submitted(self) -> None:
        with self._lock:
            self._num_requests += 1

    def request_done(self, latency_s: float, ok: bool, now_s: float,
                     missed_deadline: bool = False, escalated: bool = False) -> None:
        with self._lock:
            self._num_done += 1
            self._num_deadline_misses += missed_deadline
            self._num_escalated += escalated
            self._latencies.append(latency_s)
            self._num_failed += 0 if ok else 1
            self._t_last = max(self._t_last, now_s)

    def pool_lookup(self, hit: bool) -> None:
        with self._lock:
            if hit:
                self._hits += 1
            else:
                self._misses += 1

    def host_lookup(self, hit: bool) -> None:
        """A device load asked the host tier for its host copy."""
        with self._lock:
            if hit:
                self._host_hits += 1
            else:
                self._host_misses += 1

    def switch(self, executor: int | None, path: LoadPath, num_bytes: int, load_s: float) -> None:
        """A load along `path` (e.g. storage->cpu); executor None for the host cache."""
        key = str(path)
        with self._lock:
            self._loads_by_path[key] += 1
            if executor is not None:
                self._switches[executor][key] += 1
            self._bytes_by_path[key] += num_bytes
            self._load_s_by_path[key] += load_s

    def precision_read(self, precision: str, num_bytes: int | None, upgrade: bool = False) -> None:
        """A storage read of an expert stored at `precision` (`num_bytes` when known);
        `upgrade`: a low-precision resident read again in fp32."""
        with self._lock:
            self._loads_by_precision[precision] += 1
            self._bytes_by_precision[precision] += num_bytes or 0
            self._num_upgrades += upgrade

    def batch(self, executor: int, num_items: int, busy_s: float,
              precision: str = "fp32") -> None:
        with self._lock:
            self._tasks_by_precision[precision] += num_items
            self._num_batches += 1
            self._num_items += num_items
            self._busy_s[executor] += busy_s

    def batch_split(self, num_splits: int, num_oom_splits: int) -> None:
        """A failing batch was halved `num_splits` times to isolate its bad inputs, and
        `num_oom_splits` times because it ran out of memory."""
        with self._lock:
            self._num_splits += num_splits
            self._num_oom_splits += num_oom_splits

    def batch_timed_out(self) -> None:
        with self._lock:
            self._num_timeouts += 1

    def executors_unhealthy(self, num_executors: int) -> None:
        """How many executors are stuck now."""
        with self._lock:
            self._num_unhealthy = num_executors

    def note(self, key: str, value: Any) -> None:
        """A figure of this run for EngineStats.extra (e.g. how long a backlog took to
        queue)."""
        with self._lock:
            self._extra[key] = value

    def handling(self, executor: int, seconds: float) -> None:
        """Time a batch took on its executor besides executing: loads waited for,
        routing, queueing the subsequent tasks."""
        with self._lock:
            self._handling_s[executor] += seconds

    def queue_depth(self, executor: int, depth: int) -> None:
        with self._lock:
            self._queue_max[executor] = max(self._queue_max[executor], depth)

    def snapshot(self, now_s: float, bytes_read: int, latencies: bool = True,
                 load_busy_s: float | None = None, **static: Any) -> EngineStats:
        """The statistics now. The latency window is copied under the lock and sorted
        outside it, once; `latencies=False` skips it (zeros), for a caller that keeps its
        own latency histogram. `load_busy_s`: wall-clock seconds with a storage load in
        flight; given, the load bandwidth is `bytes_read` over it (loads that overlap
        would otherwise count their shared time twice)."""
        with self._lock:
            window = list(self._latencies) if latencies else []
            stats = self._counters(now_s, bytes_read, **static)
        if load_busy_s:
            stats = replace(stats, load_bandwidth_bytes_per_s=bytes_read / load_busy_s)
        return replace(stats, **_latency_summary(window))

    def _counters(self, now_s: float, bytes_read: int, **static: Any) -> EngineStats:
        """Everything but the latency summary (the caller holds the lock)."""
        done = self._num_done
        # Throughput over the window that ends with the last completion, so idle time
        # after the run does not dilute it.
        end_s = self._t_last if done else now_s
        wall_s = max(end_s - self._t0, 1e-9)
        switches_by_path: Counter[str] = Counter()
        for c in self._switches:
            switches_by_path.update(c)
        storage_bytes = sum(b for p, b in self._bytes_by_path.items() if p.startswith("storage"))
        storage_s = sum(s for p, s in self._load_s_by_path.items() if p.startswith("storage"))
        lookups = self._hits + self._misses
        return EngineStats(
            num_requests=self._num_requests,
            num_completed=done - self._num_failed,
            num_failed=self._num_failed,
            wall_s=wall_s,
            throughput_rps=(done - self._num_failed) / wall_s,
            num_switches=sum(switches_by_path.values()),
            switches_by_path=dict(switches_by_path),
            switches_per_executor=[sum(c.values()) for c in self._switches],
            bytes_read=bytes_read,
            bytes_loaded_by_path=dict(self._bytes_by_path),
            load_time_s_by_path=dict(self._load_s_by_path),
            load_bandwidth_bytes_per_s=storage_bytes / storage_s if storage_s else 0.0,
            num_pool_hits=self._hits,
            num_pool_misses=self._misses,
            pool_hit_rate=self._hits / lookups if lookups else 0.0,
            num_batches=self._num_batches,
            mean_batch_size=self._num_items / self._num_batches if self._num_batches else 0.0,
            latency_p50_s=0.0, latency_p90_s=0.0, latency_p99_s=0.0, latency_mean_s=0.0,
            queue_depth_max=list(self._queue_max),
            busy_s_per_executor=list(self._busy_s),
            utilisation_per_executor=[b / wall_s for b in self._busy_s],
            handling_s_per_executor=list(self._handling_s),
            num_deadline_misses=self._num_deadline_misses,
            deadline_miss_rate=self._num_deadline_misses / done if done else 0.0,
            num_escalated=self._num_escalated,
            escalated_share=self._num_escalated / done if done else 0.0,
            num_batch_timeouts=self._num_timeouts,
            num_unhealthy_executors=self._num_unhealthy,
            num_batch_splits=self._num_splits,
            num_oom_splits=self._num_oom_splits,
            loads_by_precision=dict(self._loads_by_precision),
            bytes_read_by_precision=dict(self._bytes_by_precision),
            tasks_by_precision=dict(self._tasks_by_precision),
            num_upgrades=self._num_upgrades,
            loads_by_path=dict(self._loads_by_path),
            num_host_hits=self._host_hits,
            num_host_misses=self._host_misses,
            extra=dict(self._extra),
            **static,
        )


def _latency_summary(window: list[float]) -> dict[str, float]:
    ordered = sorted(window)
    return {"latency_p50_s": _ranked(ordered, 50), "latency_p90_s": _ranked(ordered, 90),
            "latency_p99_s": _ranked(ordered, 99),
            "latency_mean_s": statistics.fmean(ordered) if ordered else 0.0}
