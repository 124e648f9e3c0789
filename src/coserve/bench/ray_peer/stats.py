"""The peer's statistics row: the measurement window fed through the engine's own
StatsRecorder, so the figures are counted and named exactly as coserve's are."""

from __future__ import annotations

import dataclasses
from typing import Any

from coserve.bench.ray_peer.config import RAY_PEER_POLICY, RayPeerConfig
from coserve.bench.ray_peer.driver import Window
from coserve.bench.ray_peer.replica import ReplicaSetup, TaskReply
from coserve.repository import CoEModel
from coserve.stats import EngineStats, StatsRecorder
from coserve.types import LoadPath

# Every replica runs on the CPU and loads from storage into its own (Ray's) cache.
LOAD_PATH = LoadPath.to_executor("cpu")
NOT_MEASURED = ("queue_depth_max",)


def peer_stats(model: CoEModel, config: RayPeerConfig, window: Window,
               extra: dict[str, Any]) -> EngineStats:
    """The window as one EngineStats row (policy "ray-serve"); `extra` goes first in
    its `extra`, then the window's own figures."""
    replicas = replica_order(window, config.num_replicas)
    executor = {tag: i for i, tag in enumerate(replicas)}
    recorder = StatsRecorder(len(replicas))
    recorder.reset(window.t0)
    for result in window.results:
        recorder.request_submitted()
        recorder.request_done(result.latency_s, result.ok, result.completed_s)
    for load in window.loads:
        recorder.switch(executor[load.replica], LOAD_PATH, load.file_bytes, load.read_s)
    batches = _batches(window.replies)
    for (tag, _), replies in batches.items():
        recorder.batch(executor[tag], len(replies), replies[0].exec_s)
    # One cache lookup per (sub-)batch; a miss is a load in the window.
    num_misses = len(window.loads)
    for i in range(max(len(batches), num_misses)):
        recorder.pool_lookup(hit=i >= num_misses)
    for key, value in {**extra, **_window_extra(window)}.items():
        recorder.note(key, value)
    stats = recorder.snapshot(
        window.t_end, bytes_read=sum(load.file_bytes for load in window.loads),
        policy=RAY_PEER_POLICY, budget_bytes=config.budget_bytes,
        total_expert_bytes=model.total_expert_bytes, storage=config.storage,
        cost_source="none (ray serve uses no cost model)",
    )
    # Not measured inside Ray's replicas: empty, not a row of zeros that reads as measured.
    return dataclasses.replace(stats, queue_depth_max=[], handling_s_per_executor=[])


def replica_order(window: Window, num_replicas: int) -> list[str]:
    """Replica tags by Step.executor index, then replicas that only loaded, then
    placeholders for replicas that did nothing in the window."""
    order = list(dict.fromkeys([*window.replica_index, *(r.replica for r in window.loads)]))
    return order + [f"idle-{i}" for i in range(num_replicas - len(order))]


def _batches(replies: list[TaskReply]) -> dict[tuple[str, int], list[TaskReply]]:
    """The replies that came back, by (replica, batch), in the order batches first replied."""
    batches: dict[tuple[str, int], list[TaskReply]] = {}
    for reply in replies:
        batches.setdefault((reply.replica, reply.batch_id), []).append(reply)
    return batches


def _window_extra(window: Window) -> dict[str, Any]:
    return {
        "peak_inflight": window.peak_inflight,
        "module_build_s_total": sum(load.build_s for load in window.loads),
        "not_measured": list(NOT_MEASURED),
    }


def budget_extra(config: RayPeerConfig, num_models: int, largest: int) -> dict[str, Any]:
    share = config.budget_bytes // config.num_replicas
    return {
        "models_per_replica": num_models,
        "models_per_replica_rule": "max(1, (budget_bytes // num_replicas) // largest expert bytes)",
        "per_replica_budget_bytes": share,
        "largest_expert_bytes": largest,
        "worst_case_resident_bytes": num_models * largest * config.num_replicas,
        "budget_exceeded": num_models * largest > share,
    }


def setup_extra(config: RayPeerConfig, setup: ReplicaSetup) -> dict[str, Any]:
    return {
        "num_replicas": config.num_replicas,
        "max_inflight": config.max_inflight,
        "max_ongoing_requests": config.max_inflight,
        "max_batch_size": config.max_batch_size,
        "batch_wait_timeout_s": config.batch_wait_timeout_s,
        "torch_threads_per_replica": setup.num_threads,
        "replica_storage": setup.storage.name,
        "arrivals": "trace offsets" if config.realtime else "backlog (window-bounded)",
        "preloaded_per_replica": list(reversed(setup.preload)),
        "preload": "top-N experts by model.usage loaded in every replica before the window, "
                   "like coserve's initial placement; not counted",
        "latency_from": "release (window start, or arrival offset) to completion, "
                        "including the wait for a window slot",
        "pool_lookups": "one per (sub-)batch; a miss is a load in the window",
        "threading": "per replica: one compute thread, one load thread",
        "module_build": f"ArchitectureSpec.build({setup.build_device!r}) + load_state_dict"
                        + (" (assign=True)" if setup.build_device == "meta" else " (copy)"),
    }
