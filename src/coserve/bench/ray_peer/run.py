"""One peer run: size the replicas from the byte budget, start Ray and deploy, replay
the trace inside the measurement window, and build the statistics row."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from coserve.bench.ray_peer.config import RayPeerConfig, models_per_replica, ray_available
from coserve.bench.ray_peer.driver import Replay, Window
from coserve.bench.ray_peer.lifecycle import deploy, start_ray, stop_ray
from coserve.bench.ray_peer.replica import LoadLedger, replica_setup
from coserve.bench.ray_peer.stats import budget_extra, peer_stats, setup_extra
from coserve.errors import ConfigError
from coserve.repository import CoEModel
from coserve.stats import EngineStats
from coserve.types import Request, Result


def run_ray_peer(
    model: CoEModel,
    requests: Sequence[Request],
    budget_bytes: int,
    storage: str = "none",
    max_inflight: int = 16,
    num_replicas: int = 1,
    realtime: bool = False,
) -> EngineStats:
    """Serve `requests` through Ray Serve model multiplexing under `budget_bytes` and
    return the statistics row (policy "ray-serve"). Starts a local Ray (no dashboard, no
    HTTP proxy) unless one is running, and shuts down what it started."""
    config = RayPeerConfig(budget_bytes, storage, max_inflight, num_replicas, realtime)
    stats, _ = run_ray_peer_results(model, requests, config)
    return stats


def run_ray_peer_results(
    model: CoEModel, requests: Sequence[Request], config: RayPeerConfig
) -> tuple[EngineStats, list[Result]]:
    """`run_ray_peer` with every knob, also returning each request's Result (steps carry
    the replica index as `executor`)."""
    if not ray_available():
        raise ConfigError('Ray Serve is not installed: pip install "ray[serve]==2.60.0"')
    import ray

    largest = max(e.num_bytes for e in model.experts.values())
    num_models = models_per_replica(config.budget_bytes, config.num_replicas, largest)
    setup = replica_setup(model, config, num_models)
    t_start = time.perf_counter()
    started_ray = start_ray(config.num_cpus)
    try:
        ledger = ray.remote(num_cpus=0)(LoadLedger).remote()
        t_ray = time.perf_counter()
        handle = deploy(setup, ledger, config, num_models)
        t_deployed = time.perf_counter()
        num_preload_loads = ray.get(ledger.count.remote())
        replay = Replay(model, handle, config.max_inflight, config.realtime)
        results, t0, t_end = asyncio.run(replay.run(requests))
        loads = ray.get(ledger.since.remote(num_preload_loads))
    finally:
        stop_ray(started_ray)
    window = Window(results, replay.replies, loads, t0, t_end, replay.peak_inflight,
                    replay.replica_index)
    extra = {
        "ray_version": ray.__version__,
        "ray_start_s": t_ray - t_start,
        "deploy_s": t_deployed - t_ray,
        "num_preload_loads": num_preload_loads,
        **budget_extra(config, num_models, largest),
        **setup_extra(config, setup),
    }
    return peer_stats(model, config, window, extra), results
