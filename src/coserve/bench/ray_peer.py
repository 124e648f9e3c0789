"""A real peer for the benchmark: the same repository and trace served through Ray Serve
model multiplexing, measured in the same run and reported as one `EngineStats` row
(policy "ray-serve").

What Ray gets, and why it is a fair comparison:

- **One deployment**, `num_replicas` replicas. Each replica holds at most N experts in
  Ray's own LRU cache (`@serve.multiplexed(max_num_models_per_replica=N)`), with

      N = max(1, (budget_bytes // num_replicas) // largest expert's bytes)

  Ray's cache counts models, not bytes, so N is the most whole experts that can never
  exceed the replica's share of the byte budget whichever experts it holds. (With
  experts of mixed sizes that is stricter than coserve's byte-packed pools; the row
  reports N, the per-replica share and the worst case, and `budget_exceeded` when even
  N=1 does not fit.)
- **Honest loads**: an expert not in Ray's cache is read with coserve's `Storage.read`
  (O_DIRECT, paced to the same storage profile), parsed with `parse_safetensors` and
  bound with `load_state_dict` into a freshly built module (never pickle): by default a
  skeleton built on "meta" that adopts the read tensors (`assign=True`), so a load
  costs Ray no random initialisation, which coserve does not pay either
  (`build_device="cpu"` gives the plain build-and-copy). With several replicas a paced profile is split evenly between
  them, so together they share one device's bandwidth as coserve's executors do.
- **Batching**: `@serve.batch`, which Ray 2.60 splits per multiplexed model id, so a
  batch runs one expert like coserve's. Forward passes run on one compute thread per
  replica (like one coserve executor; intra-op threads: see `torch_threads`); loads
  run on another thread, so a load overlaps other experts' execution.
- **Warm start like coserve**: coserve starts with its initial placement, so each
  replica loads the top-N experts by `model.usage` in its constructor (least likely
  first, so the most likely is the most recently used); those loads are outside the
  window and are not counted.
- **The driver** replays the trace with the CoE routing (`router.first`, then
  `router.next` on each returned label, fan-out allowed) through
  `handle.options(multiplexed_model_id=expert)`, with at most `max_inflight` requests
  in flight; the window starts after Ray start-up and deployment.

Switches and bytes are counted where they happen: each replica reports every load to a
small ledger actor, and the driver counts the loads made inside the window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from coserve.errors import ConfigError
from coserve.loader.safetensors_view import parse_safetensors
from coserve.loader.storage import Storage, StorageProfile, storage_profile
from coserve.repository import CoEModel
from coserve.repository.spec import ArchitectureSpec
from coserve.stats import EngineStats, percentile
from coserve.types import Request, Result, Step

RAY_PEER_POLICY = "ray-serve"
RAY_APP_NAME = "coserve-ray-peer"
LOAD_PATH = "storage->cpu"

# Largest batch a replica runs; coserve's tiny experts stop gaining per item well before.
DEFAULT_MAX_BATCH_SIZE = 8
# How long a replica waits to fill a batch: short, because the driver's window (16 by
# default) keeps few requests per expert queued at once, and waiting only adds latency.
DEFAULT_BATCH_WAIT_TIMEOUT_S = 0.002
# The object store only carries inputs and replies (kilobytes each); Ray's default (30%
# of RAM) would reserve gigabytes of shared memory on a shared machine.
RAY_OBJECT_STORE_BYTES = 256 * 1024 * 1024

NOT_MEASURED = ("queue_depth_max",)

log = logging.getLogger(__name__)


def ray_available() -> bool:
    """Whether Ray Serve can be imported (`pip install "ray[serve]==2.60.0"`)."""
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        return False
    return True


def models_per_replica(budget_bytes: int, num_replicas: int, largest_expert_bytes: int) -> int:
    """The N of `max_num_models_per_replica`: whole experts of the largest size that fit in
    one replica's equal share of the byte budget, at least 1."""
    if num_replicas < 1:
        raise ConfigError(f"num_replicas must be at least 1, got {num_replicas}")
    if largest_expert_bytes < 1:
        raise ConfigError(f"largest_expert_bytes must be positive, got {largest_expert_bytes}")
    return max(1, (budget_bytes // num_replicas) // largest_expert_bytes)


# -- messages between the driver, the replicas and the ledger ------------------------------
@dataclass(frozen=True)
class _ExpertFile:
    architecture: str
    weights_path: str
    file_bytes: int


@dataclass(frozen=True)
class _Architecture:
    """A picklable ArchitectureSpec (the spec holds read-only mapping proxies)."""

    name: str
    factory: str
    args: dict[str, Any]
    input_shape: tuple[int, ...]
    labels: tuple[str, ...]

    def spec(self) -> ArchitectureSpec:
        return ArchitectureSpec(self.name, self.factory, self.args, self.input_shape, self.labels)


@dataclass(frozen=True)
class _ReplicaSetup:
    experts: dict[str, _ExpertFile]
    architectures: dict[str, _Architecture]
    storage: StorageProfile
    num_threads: int
    preload: tuple[str, ...]  # loaded in this order before the window
    build_device: str  # "meta" or "cpu", see RayPeerConfig


@dataclass(frozen=True)
class LoadRecord:
    """One model load inside a replica."""

    replica: str
    expert: str
    file_bytes: int
    read_s: float  # storage read + parse, as coserve's loader times it
    build_s: float  # module construction + load_state_dict


@dataclass(frozen=True)
class _TaskReply:
    label_index: int
    detail: dict[str, Any]
    replica: str
    batch_id: int
    batch_size: int
    exec_s: float


class _LoadLedger:
    """A Ray actor every replica reports its loads to, in the order they finish."""

    def __init__(self) -> None:
        self._records: list[LoadRecord] = []

    def record(self, loads: tuple[LoadRecord, ...]) -> None:
        self._records.extend(loads)

    def count(self) -> int:
        return len(self._records)

    def since(self, start: int) -> list[LoadRecord]:
        return self._records[start:]


# -- the replica ---------------------------------------------------------------------------
class _ExpertReplicaBase:
    """Everything of the deployment except the two Ray decorators, which need N and the
    batch size at class-definition time (see `_deployment_class`)."""

    async def __init__(self, setup: _ReplicaSetup, ledger: Any) -> None:
        from ray import serve

        self._setup = setup
        self._ledger = ledger
        self._replica = serve.get_replica_context().replica_tag
        self._storage = Storage(setup.storage)
        self._architectures = {n: a.spec() for n, a in setup.architectures.items()}
        self._num_batches = 0
        self._unreported: list[LoadRecord] = []  # loads not yet in the ledger
        torch.set_num_threads(setup.num_threads)
        # One compute lane (like one coserve executor) and one load lane per replica.
        self._compute = ThreadPoolExecutor(1, "ray-peer-compute",
                                           initializer=torch.set_num_threads,
                                           initargs=(setup.num_threads,))
        self._loads = ThreadPoolExecutor(1, "ray-peer-load")
        for expert in setup.preload:
            try:
                await self.get_model(expert)  # type: ignore[attr-defined]
            except Exception as exc:  # a broken expert fails its requests, not the replica
                log.warning("ray peer: preloading expert %r failed: %s", expert, exc)
        await self._report_loads()

    async def get_model(self, expert: str) -> torch.nn.Module:  # replaced by the subclass
        raise NotImplementedError

    async def _load_expert(self, expert: str) -> torch.nn.Module:
        loop = asyncio.get_running_loop()
        module, load = await loop.run_in_executor(self._loads, self._read_and_build, expert)
        # Reported by the batch that asked for it, outside Ray's model-cache lock, so the
        # ledger's round trip does not lengthen Ray's serialised loads.
        self._unreported.append(load)
        return module

    async def _report_loads(self) -> None:
        loads, self._unreported = tuple(self._unreported), []
        if loads:
            await self._ledger.record.remote(loads)

    def _read_and_build(self, expert: str) -> tuple[torch.nn.Module, LoadRecord]:
        file = self._setup.experts[expert]
        t0 = time.perf_counter()
        buf = self._storage.read(file.weights_path, expected_bytes=file.file_bytes)
        tensors = parse_safetensors(buf, source=file.weights_path)
        t1 = time.perf_counter()
        module = self._architectures[file.architecture].build(self._setup.build_device)
        module.load_state_dict(tensors, strict=True, assign=self._setup.build_device == "meta")
        load = LoadRecord(self._replica, expert, file.file_bytes, t1 - t0,
                          time.perf_counter() - t1)
        return module, load

    async def _run_batch(self, inputs: list[np.ndarray]) -> list[_TaskReply]:
        from ray import serve

        expert = serve.get_multiplexed_model_id()
        module = await self.get_model(expert)  # type: ignore[attr-defined]
        self._num_batches += 1
        batch_id = self._num_batches
        loop = asyncio.get_running_loop()
        compute = loop.run_in_executor(self._compute, _forward, module, inputs)
        # Before replying, so every load is in the ledger when the driver reads it after
        # the last reply; it overlaps the forward pass.
        await self._report_loads()
        decoded, exec_s = await compute
        return [
            _TaskReply(d.label_index, d.detail, self._replica, batch_id, len(inputs), exec_s)
            for d in decoded
        ]


def _forward(module: torch.nn.Module, inputs: list[np.ndarray]) -> tuple[list[Any], float]:
    t0 = time.perf_counter()
    with torch.inference_mode():
        x = torch.from_numpy(np.stack(inputs))  # [N, C, H, W]
        decoded = module.decode(module(x))
    return decoded, time.perf_counter() - t0


def _deployment_class(num_models: int, max_batch_size: int, batch_wait_timeout_s: float) -> type:
    from ray import serve

    class ExpertReplica(_ExpertReplicaBase):
        @serve.multiplexed(max_num_models_per_replica=num_models)
        async def get_model(self, expert: str) -> torch.nn.Module:
            return await self._load_expert(expert)

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s)
        async def __call__(self, inputs: list[np.ndarray]) -> list[_TaskReply]:
            return await self._run_batch(inputs)

    return ExpertReplica


# -- the driver ----------------------------------------------------------------------------
@dataclass(frozen=True)
class RayPeerConfig:
    """Everything about the peer except the model and the trace."""

    budget_bytes: int
    storage: str = "none"
    max_inflight: int = 16
    num_replicas: int = 1
    realtime: bool = False
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    batch_wait_timeout_s: float = DEFAULT_BATCH_WAIT_TIMEOUT_S
    num_cpus: int = field(default_factory=lambda: os.cpu_count() or 1)
    # How a load makes its module. "meta": a weightless skeleton that adopts the tensors
    # read from storage (load_state_dict(assign=True): no random init, no copy), what a
    # careful PyTorch user writes. "cpu": the plain build + copying load_state_dict, whose
    # random initialisation costs several times the storage read on the tiny CoE.
    build_device: str = "meta"
    # Intra-op threads per replica; None: the cores but one, split between the replicas.
    # The driver, Ray's raylet/GCS/controller and the replica's own event loop need CPU
    # too, and OpenMP threads that spin on a busy core collapse: on 2 cores one replica
    # with 2 threads served 9 req/s where 1 thread served 34 (all experts resident).
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("budget_bytes", "max_inflight", "num_replicas", "max_batch_size", "num_cpus"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.batch_wait_timeout_s < 0:
            raise ConfigError(f"batch_wait_timeout_s must be >= 0 seconds, "
                              f"got {self.batch_wait_timeout_s!r}")
        storage_profile(self.storage)  # ConfigError naming the valid profiles
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ConfigError(f"torch_threads must be a positive integer or None (automatic), "
                              f"got {self.torch_threads!r}")
        if self.build_device not in ("meta", "cpu"):
            raise ConfigError(f"build_device must be 'meta' or 'cpu', got {self.build_device!r}")


class _Replay:
    """Replays requests through the deployment with at most `max_inflight` in flight."""

    def __init__(self, model: CoEModel, handle: Any, max_inflight: int, realtime: bool) -> None:
        self._model = model
        self._handles = {e: handle.options(multiplexed_model_id=e) for e in model.experts}
        self._window = asyncio.Semaphore(max_inflight)
        self._realtime = realtime
        self.num_inflight = 0
        self.peak_inflight = 0
        self.replies: list[_TaskReply] = []
        self.replica_index: dict[str, int] = {}  # replica tag -> Step.executor, first seen first

    async def run(self, requests: Sequence[Request]) -> tuple[list[Result], float, float]:
        """Results in request order, and the window's start and end (perf_counter)."""
        t0 = time.perf_counter()
        results = await asyncio.gather(*(self._request(r, t0) for r in requests))
        return list(results), t0, time.perf_counter()

    async def _request(self, request: Request, t0: float) -> Result:
        released_s = t0 + (request.arrival_s if self._realtime else 0.0)
        await asyncio.sleep(max(0.0, released_s - time.perf_counter()))
        async with self._window:
            self.num_inflight += 1
            self.peak_inflight = max(self.peak_inflight, self.num_inflight)
            try:
                steps, error = await self._route(request)
            finally:
                self.num_inflight -= 1
        return Result(request.request_id, error is None, tuple(steps), released_s,
                      time.perf_counter(), error, dict(request.fields))

    async def _route(self, request: Request) -> tuple[list[Step], str | None]:
        try:
            first = self._model.router.first(request.fields)
        except Exception as exc:  # an unknown component type fails only this request
            return [], str(exc)
        # Checked here, as coserve checks at submit: a bad input in a Ray batch would fail
        # the whole batch, other requests included.
        error = _input_error(self._model, request, first)
        if error is not None:
            return [], error
        return await self._fan_out(request, first)

    async def _fan_out(self, request: Request, experts: Sequence[str]) -> tuple[list[Step], str | None]:
        branches = await asyncio.gather(*(self._task(request, e) for e in experts))
        steps = [s for branch_steps, _ in branches for s in branch_steps]
        errors = [err for _, err in branches if err is not None]
        return steps, errors[0] if errors else None

    async def _task(self, request: Request, expert: str) -> tuple[list[Step], str | None]:
        sent_s = time.perf_counter()
        try:
            reply: _TaskReply = await self._handles[expert].remote(request.input.numpy())
            arch = self._model.architectures[self._model.experts[expert].architecture]
            label = arch.labels[reply.label_index]
            following = self._model.router.next(expert, label, request.fields)
        except Exception as exc:  # a replica's failure fails only this request
            return [], f"expert {expert!r} failed: {_last_line(exc)}"
        self.replies.append(reply)
        executor = self.replica_index.setdefault(reply.replica, len(self.replica_index))
        round_trip_s = time.perf_counter() - sent_s
        step = Step(expert, label, reply.detail, executor, reply.batch_size,
                    max(0.0, round_trip_s - reply.exec_s), reply.exec_s)
        steps, error = await self._fan_out(request, following)
        return [step, *steps], error


def _input_error(model: CoEModel, request: Request, first: Sequence[str]) -> str | None:
    x = request.input
    for expert in first:
        shape = tuple(model.architectures[model.experts[expert].architecture].input_shape)
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != shape or not x.is_floating_point():
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            return (f"request {request.request_id!r}: expert {expert!r} takes a float tensor "
                    f"of shape {list(shape)}, got {got}")
    return None


def _last_line(exc: Exception) -> str:
    """A replica's exception as one line: Ray prefixes the remote traceback."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(exc).__name__


@dataclass(frozen=True)
class _Window:
    results: list[Result]
    replies: list[_TaskReply]
    loads: list[LoadRecord]
    t0: float
    t_end: float
    peak_inflight: int
    replica_index: dict[str, int]


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
    setup = _replica_setup(model, config, num_models)
    t_start = time.perf_counter()
    started_ray = _start_ray(config.num_cpus)
    try:
        ledger = ray.remote(num_cpus=0)(_LoadLedger).remote()
        t_ray = time.perf_counter()
        handle = _deploy(setup, ledger, config, num_models)
        t_deployed = time.perf_counter()
        num_preload_loads = ray.get(ledger.count.remote())
        replay = _Replay(model, handle, config.max_inflight, config.realtime)
        results, t0, t_end = asyncio.run(replay.run(requests))
        loads = ray.get(ledger.since.remote(num_preload_loads))
    finally:
        _stop_ray(started_ray)
    window = _Window(results, replay.replies, loads, t0, t_end, replay.peak_inflight,
                     replay.replica_index)
    extra = {
        "ray_version": ray.__version__,
        "ray_start_s": t_ray - t_start,
        "deploy_s": t_deployed - t_ray,
        "num_preload_loads": num_preload_loads,
        **_budget_extra(config, num_models, largest),
        **_setup_extra(config, setup),
    }
    return _stats(model, config, window, extra), results


def _replica_setup(model: CoEModel, config: RayPeerConfig, num_models: int) -> _ReplicaSetup:
    experts = {
        e.name: _ExpertFile(e.architecture, str(e.weights_path), e.file_bytes)
        for e in model.experts.values()
    }
    architectures = {
        a.name: _Architecture(a.name, a.factory, dict(a.args), tuple(a.input_shape), tuple(a.labels))
        for a in model.architectures.values()
    }
    by_usage = sorted(model.experts, key=lambda e: (-model.usage.get(e, 0.0), e))
    profile = storage_profile(config.storage)
    if profile.read_bytes_per_s is not None and config.num_replicas > 1:
        # Replicas are separate processes, so they cannot share coserve's serial-device
        # pacer; an even split gives them one device's bandwidth together.
        profile = StorageProfile(f"{profile.name}/{config.num_replicas}",
                                 profile.read_bytes_per_s / config.num_replicas)
    return _ReplicaSetup(
        experts, architectures, profile,
        num_threads=config.torch_threads or max(1, (config.num_cpus - 1) // config.num_replicas),
        preload=tuple(reversed(by_usage[:num_models])),
        build_device=config.build_device,
    )


def _start_ray(num_cpus: int) -> bool:
    """Start a local Ray with no dashboard and no usage reporting; False if one runs."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING, object_store_memory=RAY_OBJECT_STORE_BYTES,
             _node_ip_address="127.0.0.1")
    return True


def _deploy(setup: _ReplicaSetup, ledger: Any, config: RayPeerConfig, num_models: int) -> Any:
    from ray import serve

    serve.start(proxy_location="Disabled",
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    cls = _deployment_class(num_models, config.max_batch_size, config.batch_wait_timeout_s)
    deployment = serve.deployment(
        cls,
        name="experts",
        num_replicas=config.num_replicas,
        # The driver's window is the bound on in-flight work; Ray's default of 5 per
        # replica would add a second, tighter one and cap batches at 5.
        max_ongoing_requests=config.max_inflight,
        ray_actor_options={"num_cpus": config.num_cpus / config.num_replicas},
        logging_config={"log_level": "WARNING", "enable_access_log": False},
    )
    return serve.run(deployment.bind(setup, ledger), name=RAY_APP_NAME, route_prefix=None)


def _stop_ray(started_ray: bool) -> None:
    import ray
    from ray import serve

    with contextlib.suppress(Exception):  # shutting down must not hide the run's error
        if started_ray:
            serve.shutdown()
            ray.shutdown()
        else:
            serve.delete(RAY_APP_NAME)


# -- statistics ----------------------------------------------------------------------------
def _replica_order(window: _Window, num_replicas: int) -> list[str]:
    """Replica tags by Step.executor index, then replicas that only loaded, then
    placeholders for replicas that did nothing in the window."""
    order = list(dict.fromkeys([*window.replica_index, *(r.replica for r in window.loads)]))
    return order + [f"idle-{i}" for i in range(num_replicas - len(order))]


def _stats(model: CoEModel, config: RayPeerConfig, window: _Window, extra: dict[str, Any]) -> EngineStats:
    wall_s = max(window.t_end - window.t0, 1e-9)
    latencies = [r.latency_s for r in window.results]
    num_completed = sum(r.ok for r in window.results)
    replicas = _replica_order(window, config.num_replicas)
    batches = {(r.replica, r.batch_id): r for r in window.replies}
    busy_s = [sum(b.exec_s for (tag, _), b in batches.items() if tag == t) for t in replicas]
    loads_per_replica = [sum(load.replica == t for load in window.loads) for t in replicas]
    bytes_read = sum(load.file_bytes for load in window.loads)
    read_s = sum(load.read_s for load in window.loads)
    num_switches = len(window.loads)
    num_lookups = len(batches)  # one get_model per (sub-)batch
    return EngineStats(
        policy=RAY_PEER_POLICY,
        num_requests=len(window.results),
        num_completed=num_completed,
        num_failed=len(window.results) - num_completed,
        wall_s=wall_s,
        throughput_rps=num_completed / wall_s,
        num_switches=num_switches,
        switches_by_path={LOAD_PATH: num_switches} if num_switches else {},
        switches_per_executor=loads_per_replica,
        bytes_read=bytes_read,
        bytes_loaded_by_path={LOAD_PATH: bytes_read} if num_switches else {},
        load_time_s_by_path={LOAD_PATH: read_s} if num_switches else {},
        load_bandwidth_bytes_per_s=bytes_read / read_s if read_s else 0.0,
        num_pool_hits=max(0, num_lookups - num_switches),
        num_pool_misses=num_switches,
        pool_hit_rate=max(0, num_lookups - num_switches) / num_lookups if num_lookups else 0.0,
        num_batches=len(batches),
        mean_batch_size=len(window.replies) / len(batches) if batches else 0.0,
        latency_p50_s=percentile(latencies, 50),
        latency_p90_s=percentile(latencies, 90),
        latency_p99_s=percentile(latencies, 99),
        latency_mean_s=statistics.fmean(latencies) if latencies else 0.0,
        queue_depth_max=[],
        busy_s_per_executor=busy_s,
        utilisation_per_executor=[b / wall_s for b in busy_s],
        budget_bytes=config.budget_bytes,
        total_expert_bytes=model.total_expert_bytes,
        storage=config.storage,
        cost_source="none (ray serve uses no cost model)",
        extra={
            **extra,
            "peak_inflight": window.peak_inflight,
            "module_build_s_total": sum(load.build_s for load in window.loads),
            "not_measured": list(NOT_MEASURED),
        },
    )


def _budget_extra(config: RayPeerConfig, num_models: int, largest: int) -> dict[str, Any]:
    share = config.budget_bytes // config.num_replicas
    return {
        "models_per_replica": num_models,
        "models_per_replica_rule": "max(1, (budget_bytes // num_replicas) // largest expert bytes)",
        "per_replica_budget_bytes": share,
        "largest_expert_bytes": largest,
        "worst_case_resident_bytes": num_models * largest * config.num_replicas,
        "budget_exceeded": num_models * largest > share,
    }


def _setup_extra(config: RayPeerConfig, setup: _ReplicaSetup) -> dict[str, Any]:
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
