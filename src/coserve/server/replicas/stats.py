"""The replicas' engine statistics as one `EngineStats`, what the ingress's /metrics
exports as `coserve serve` exports one engine's.

Counters (requests, switches and bytes by path, pool hits, batches, splits) are summed
over the replicas' current engines and over the engines of replicas that restarted
since (`retired`: their last polled counters, so a restart does not make a counter go
back; what a dead engine counted after its last poll is lost). Per-executor lists are
the current engines' concatenated in replica order, the order of the ingress's executor
list. Latency percentiles are zeros: the replicas' windows cannot be merged from
percentiles, and the ingress's own histograms measure latency."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from coserve.stats import EngineStats


def sum_by_path(maps: Iterable[Mapping[str, float]]) -> dict[str, float]:
    total: Counter = Counter()
    for m in maps:
        total.update(m)
    return dict(total)


def summed_stats(current: Sequence[EngineStats], retired: Sequence[EngineStats] = ()) -> EngineStats | None:
    """One EngineStats over the replicas (None before any replica answered a poll)."""
    if not current:
        return None
    every = [*current, *retired]

    def total(name: str) -> int:
        return sum(getattr(s, name) for s in every)

    def joined(name: str) -> list:
        return [x for s in current for x in getattr(s, name)]

    hits, misses, batches, requests = (total("num_pool_hits"), total("num_pool_misses"),
                                       total("num_batches"), total("num_requests"))
    storage_s = sum(s.bytes_read / s.load_bandwidth_bytes_per_s for s in every
                    if s.load_bandwidth_bytes_per_s > 0)
    budgets = [s.budget_bytes for s in current]
    return replace(
        current[0],
        num_requests=requests, num_completed=total("num_completed"), num_failed=total("num_failed"),
        wall_s=max(s.wall_s for s in current),
        throughput_rps=sum(s.throughput_rps for s in current),
        num_switches=total("num_switches"),
        switches_by_path=sum_by_path(s.switches_by_path for s in every),
        switches_per_executor=joined("switches_per_executor"),
        bytes_read=total("bytes_read"),
        bytes_loaded_by_path=sum_by_path(s.bytes_loaded_by_path for s in every),
        load_time_s_by_path=sum_by_path(s.load_time_s_by_path for s in every),
        load_bandwidth_bytes_per_s=total("bytes_read") / storage_s if storage_s else 0.0,
        num_pool_hits=hits, num_pool_misses=misses,
        pool_hit_rate=hits / (hits + misses) if hits + misses else 0.0,
        num_batches=batches,
        mean_batch_size=sum(s.mean_batch_size * s.num_batches for s in every) / batches if batches else 0.0,
        latency_p50_s=0.0, latency_p90_s=0.0, latency_p99_s=0.0, latency_mean_s=0.0,
        queue_depth_max=joined("queue_depth_max"), busy_s_per_executor=joined("busy_s_per_executor"),
        utilisation_per_executor=joined("utilisation_per_executor"),
        handling_s_per_executor=joined("handling_s_per_executor"),
        budget_bytes=None if None in budgets else sum(b for b in budgets if b is not None),
        num_deadline_misses=total("num_deadline_misses"),
        deadline_miss_rate=total("num_deadline_misses") / requests if requests else 0.0,
        num_batch_timeouts=total("num_batch_timeouts"),
        num_unhealthy_executors=sum(s.num_unhealthy_executors for s in current),
        num_batch_splits=total("num_batch_splits"), num_oom_splits=total("num_oom_splits"),
        loads_by_path=sum_by_path(s.loads_by_path for s in every),
        num_host_hits=total("num_host_hits"), num_host_misses=total("num_host_misses"),
        host_arena=_summed_arenas([s.host_arena for s in current if s.host_arena]),
        extra={"num_replicas": len(current), "num_retired_engines": len(retired)})


def _summed_arenas(arenas: Sequence[Mapping[str, float]]) -> dict[str, float] | None:
    """The replicas' host arenas as one: bytes summed; the largest free extent is any
    one replica's, and fragmentation is not summable (left out)."""
    if not arenas:
        return None
    summed = {key: sum(a[key] for a in arenas)
              for key in ("capacity_bytes", "used_bytes", "pinned_bytes", "num_extents")}
    return {**summed, "largest_free_bytes": max(a["largest_free_bytes"] for a in arenas)}
