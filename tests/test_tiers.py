"""The host-RAM tier in front of device pools, on the real tiny zoo with real storage
reads into a real (unpinned) host arena and real threads. Only the host->device copy is
a fake (this machine has no GPU): it clones the tensors into CPU memory of their own.
Synchronisation by events and barriers, never sleeps."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from coserve.loader.arena import HostArena, arena_capacity_bytes
from coserve.loader.expert_loader import ExpertLoader
from coserve.loader.storage import Storage, storage_profile
from coserve.manager.eviction import LruEviction
from coserve.manager.manager import ExpertManager, LoadOutOfMemory
from coserve.manager.residency import Residency
from coserve.manager.usage import UsageTracker
from coserve.repository import CoEModel, open_repository
from coserve.stats import StatsRecorder

JOIN_TIMEOUT_S = 30.0  # a deadlock fails the test instead of hanging it


class GatedStorage(Storage):
    """Counts loads per file; while `gate` is clear a load waits in it (after `reading`
    is set), so a test can hold a storage read in flight."""

    def __init__(self) -> None:
        super().__init__(storage_profile("none"))
        self.loads: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.reading = threading.Event()

    def load(self, path, expected_bytes=None, **kwargs):
        self.loads.append(Path(path).stem)
        self.reading.set()
        assert self.gate.wait(JOIN_TIMEOUT_S)
        return super().load(path, expected_bytes, **kwargs)


class CpuDeviceLoader(ExpertLoader):
    """The real loader with the device copy faked: a clone into memory of its own."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.copies: list[str] = []

    def to_device(self, tensors, processor):
        self.copies.append(processor)
        return {k: t.clone() for k, t in tensors.items()}, 1e-3


class SignallingStats(StatsRecorder):
    """Sets `asked[n]` once the host tier has been asked n times (a barrier on the
    lookups, which happen under the manager's lock before a load joins a read)."""

    def __init__(self, num_executors: int) -> None:
        super().__init__(num_executors)
        self.asked = [threading.Event() for _ in range(8)]
        self._num_asked = 0

    def host_lookup(self, hit: bool) -> None:
        super().host_lookup(hit)
        self._num_asked += 1
        self.asked[self._num_asked].set()


@pytest.fixture(scope="module")
def model(tiny_zoo) -> CoEModel:
    return open_repository(tiny_zoo[0])


def _setup(model: CoEModel, processors: list[str], host_cache_experts: int,
           arena_bytes: int | None = None, missing: str | None = None):
    """`missing`: an expert whose weights path points at no file."""
    expert = next(iter(model.experts.values()))
    storage = GatedStorage()
    sizes = [(e.num_bytes, e.file_bytes) for e in model.experts.values()]
    host_bytes = host_cache_experts * expert.num_bytes
    arena = HostArena(arena_bytes or arena_capacity_bytes(sizes, host_bytes, 2 * len(processors)))
    files = {e.name: (e.weights_path, e.file_bytes) for e in model.experts.values()}
    if missing is not None:
        files[missing] = (Path(files[missing][0]).with_name("missing.safetensors"), 1)
    loader = CpuDeviceLoader(storage, files, arena=arena)
    residency = Residency(
        budgets=[None] * len(processors), expert_bytes={e.name: e.num_bytes for e in model.experts.values()},
        subsequent=model.subsequent_experts, predecessors=model.predecessors, evict=LruEviction(),
        usage=UsageTracker(dict.fromkeys(model.experts, 0.5), 0.5, 50), clock=_Clock(),
        host_cache_bytes=host_bytes)
    stats = SignallingStats(len(processors))
    manager = ExpertManager(processors=processors, residency=residency, loader=loader, stats=stats)
    return manager, storage, loader, arena, stats


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def _in_thread(fn, *args) -> tuple[threading.Thread, list]:
    out: list = []

    def run() -> None:
        try:
            out.append(fn(*args))
        except BaseException as exc:  # handed to the test thread
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def _assert_weights(tensors: dict[str, torch.Tensor], model: CoEModel, expert: str) -> None:
    expected = load_file(model.experts[expert].weights_path)
    assert tensors.keys() == expected.keys()
    for name, t in expected.items():
        assert torch.equal(tensors[name], t), name


def _snapshot(stats: StatsRecorder):
    return stats.snapshot(0.0, bytes_read=0, policy="", budget_bytes=None, total_expert_bytes=0,
                          storage="none", cost_source="")


def _experts(model: CoEModel) -> list[str]:
    return sorted(e for e in model.experts if e not in model.subsequent_experts)


@pytest.mark.parametrize("host_cache_experts", [0, 4])
def test_two_gpus_needing_one_expert_share_one_storage_read(model, host_cache_experts):
    manager, storage, loader, arena, stats = _setup(model, ["cuda:0", "cuda:1"], host_cache_experts)
    expert = _experts(model)[0]
    storage.gate.clear()
    first, out0 = _in_thread(manager.acquire, 0, expert)
    assert storage.reading.wait(JOIN_TIMEOUT_S)  # executor 0 is reading it from storage
    second, out1 = _in_thread(manager.acquire, 1, expert)
    assert stats.asked[2].wait(JOIN_TIMEOUT_S)  # executor 1 asked while the read is in flight
    storage.gate.set()
    for t in (first, second):
        t.join(JOIN_TIMEOUT_S)

    assert storage.loads == [Path(model.experts[expert].weights_path).stem]  # one read
    assert sorted(loader.copies) == ["cuda:0", "cuda:1"]
    for out in (out0, out1):
        _assert_weights(out[0].tensors, model, expert)
    s = _snapshot(stats)
    assert s.loads_by_path == {"storage->host": 1, "host->cuda:0": 1, "host->cuda:1": 1}
    assert s.switches_by_path == {"host->cuda:0": 1, "host->cuda:1": 1}
    assert (s.num_host_hits, s.num_host_misses) == (0, 2)
    # the host copy stays only if the host cache holds it
    assert arena.stats().num_extents == (1 if host_cache_experts else 0)
    assert manager.in_host(expert) == bool(host_cache_experts)


def test_a_host_hit_loads_from_host_ram_without_reading_storage(model):
    manager, storage, loader, arena, stats = _setup(model, ["cuda:0", "cuda:1"], 2)
    expert = _experts(model)[0]
    manager.acquire(0, expert)
    manager.acquire(1, expert)  # after the first finished: a host hit
    assert len(storage.loads) == 1
    s = _snapshot(stats)
    assert (s.num_host_hits, s.num_host_misses) == (1, 1)
    assert s.loads_by_path["storage->host"] == 1


def test_an_evicted_host_copy_is_freed_only_when_its_device_copy_is_done(model):
    manager, storage, loader, arena, stats = _setup(model, ["cuda:0"], 1)
    a, b = _experts(model)[:2]
    tier = manager.host_tier
    lease = tier.acquire(a)  # a device copy of `a` in progress
    used_by_a = arena.stats().used_bytes
    tier.release(tier.acquire(b))  # `b` takes the cache's only place: `a` is evicted
    assert not manager.in_host(a) and manager.in_host(b)
    assert arena.stats().num_extents == 2  # `a`'s memory is still being copied from
    _assert_weights(lease.tensors, model, a)  # intact after the eviction
    tier.release(lease)
    assert arena.stats().num_extents == 1
    assert arena.stats().used_bytes == used_by_a  # only `b`, same size


def test_a_read_waits_for_arena_memory_a_device_copy_gives_back(model):
    one = next(iter(model.experts.values())).file_bytes
    manager, storage, loader, arena, stats = _setup(model, ["cuda:0", "cuda:1"], 0,
                                                    arena_bytes=one)  # room for one copy
    a, b = _experts(model)[:2]
    tier = manager.host_tier
    lease = tier.acquire(a)  # holds the whole arena
    waiting, out = _in_thread(tier.acquire, b)
    assert stats.asked[2].wait(JOIN_TIMEOUT_S)
    tier.release(lease)  # gives the memory back: the waiting read goes ahead
    waiting.join(JOIN_TIMEOUT_S)
    assert not waiting.is_alive() and not isinstance(out[0], BaseException)
    assert storage.loads[-1] == Path(model.experts[b].weights_path).stem
    tier.release(out[0])
    assert arena.stats().used_bytes == 0


def test_no_arena_room_and_nothing_to_wait_for_is_a_load_out_of_memory(model):
    manager, storage, loader, arena, stats = _setup(model, ["cuda:0"], 0, arena_bytes=4096)
    expert = _experts(model)[0]
    with pytest.raises(LoadOutOfMemory, match="out of memory loading expert"):
        manager.acquire(0, expert)
    assert expert not in manager.resident(0)  # no dead entry left behind
    assert arena.stats().used_bytes == 0


def test_a_failed_read_fails_every_executor_waiting_for_it(model):
    expert = _experts(model)[0]
    manager, storage, loader, arena, stats = _setup(model, ["cuda:0", "cuda:1"], 2, missing=expert)
    storage.gate.clear()
    first, out0 = _in_thread(manager.acquire, 0, expert)
    assert storage.reading.wait(JOIN_TIMEOUT_S)
    second, out1 = _in_thread(manager.acquire, 1, expert)
    assert stats.asked[2].wait(JOIN_TIMEOUT_S)
    storage.gate.set()
    for t in (first, second):
        t.join(JOIN_TIMEOUT_S)
    assert all("does not exist" in str(out[0]) for out in (out0, out1))
    assert len(storage.loads) == 1
    assert not manager.in_host(expert) and arena.stats().used_bytes == 0


def test_cpu_executors_read_storage_into_their_own_pool(model):
    manager, storage, loader, arena, stats = _setup(model, ["cpu"], 2)
    expert = _experts(model)[0]
    manager.acquire(0, expert)
    s = _snapshot(stats)
    assert s.loads_by_path == {"storage->cpu": 1}
    assert arena.stats().used_bytes == 0 and loader.copies == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_an_engine_with_a_gpu_executor_loads_through_the_pinned_arena(model, tiny_zoo):
    from coserve import Engine, EngineConfig, parse_executors, read_trace

    config = EngineConfig(policy="coserve", measure_costs=False, executors=parse_executors("cuda:0:1"),
                          budget_fraction=0.5, host_cache_bytes=model.total_expert_bytes // 4)
    with Engine(model, config) as engine:
        results = engine.run_trace(read_trace(tiny_zoo[1])[:40], realtime=False)
        s = engine.stats()
    assert all(r.ok for r in results)
    assert s.host_arena is not None
    assert s.host_arena["pinned_bytes"] == s.host_arena["capacity_bytes"] > 0
    assert s.loads_by_path.get("host->cuda:0", 0) == s.num_switches > 0
    assert s.loads_by_path.get("storage->host", 0) <= s.num_switches
