"""The expert manager's bookkeeping: `Residency` (reserve, evict, use, release, the host
cache) and `ExpertManager` (acquire, prefetch, failed loads, shutdown) with a fake loader
and a fake clock. No torch, no storage: what is under test is who holds which bytes."""

import threading

import pytest

from coserve.errors import ExpertError
from coserve.manager.eviction import LruEviction, TwoStageEviction
from coserve.manager.manager import ExpertManager
from coserve.manager.residency import Residency
from coserve.manager.usage import UsageTracker
from coserve.stats import StatsRecorder

SIZES = {"cls-a": 10, "cls-b": 10, "cls-c": 10, "det-x": 20}
USAGE = {"cls-a": 0.6, "cls-b": 0.3, "cls-c": 0.1, "det-x": 0.5}
PREDECESSORS = {"det-x": frozenset({"cls-a"})}
JOIN_TIMEOUT_S = 10.0  # a deadlock fails the test instead of hanging it


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0  # every reading is later: LRU order is the order of events
        return self.now


class FakeHostCopy:
    def __init__(self, tensors) -> None:
        self.tensors = tensors

    def release(self) -> None:
        pass


class FakeLoader:
    """Counts reads and copies; `gate` holds a read until set; `broken` experts raise."""

    def __init__(self, broken: frozenset[str] = frozenset()) -> None:
        self.reads: list[str] = []
        self.copies: list[tuple[str, str]] = []
        self.broken = broken
        self.gate = threading.Event()
        self.gate.set()
        self.reading = threading.Event()

    def read(self, expert: str):
        self.reads.append(expert)
        self.reading.set()
        assert self.gate.wait(JOIN_TIMEOUT_S)
        if expert in self.broken:
            raise OSError(f"{expert}.safetensors is truncated")
        return {"weight": expert}, 0.5

    def read_host(self, expert: str):
        tensors, seconds = self.read(expert)
        return FakeHostCopy(tensors), seconds

    def to_device(self, tensors, processor: str):
        self.copies.append((tensors["weight"], processor))
        return {"weight": f"{tensors['weight']}@{processor}"}, 0.1


def residency(budgets, evict=None, host_cache_bytes=0, clock=None, predecessors=PREDECESSORS,
              **kwargs) -> Residency:
    return Residency(
        budgets=budgets, expert_bytes=SIZES, subsequent=frozenset({"det-x"}),
        predecessors=lambda e: predecessors.get(e, frozenset()),
        evict=evict or TwoStageEviction(), usage=UsageTracker(USAGE, 0.5, 50),
        clock=clock or FakeClock(), host_cache_bytes=host_cache_bytes, **kwargs,
    )


def manager(budgets, processors=None, loader=None, **kwargs) -> tuple[ExpertManager, StatsRecorder]:
    stats = StatsRecorder(len(budgets))
    m = ExpertManager(processors=processors or ["cpu"] * len(budgets),
                      residency=residency(budgets, **kwargs), loader=loader or FakeLoader(),
                      stats=stats)
    return m, stats


def loaded(r: Residency, executor: int, *experts: str) -> None:
    for e in experts:
        assert r.reserve(executor, e, frozenset())
        r.pools[executor].entries[e].tensors = {}


# -- Residency -----------------------------------------------------------------------------
def test_reserve_counts_bytes_and_publishes_a_loading_entry():
    r = residency([30])
    assert r.reserve(0, "cls-a", frozenset())
    assert r.pool_bytes(0) == 10 and "cls-a" in r.resident(0)
    assert r.pools[0].entries["cls-a"].loading  # counted as resident before it is loaded


def test_reserve_evicts_by_the_policy_when_the_pool_is_full():
    r = residency([20])
    loaded(r, 0, "cls-b", "cls-c")
    assert r.reserve(0, "cls-a", frozenset())
    assert set(r.resident(0)) == {"cls-b", "cls-a"}  # the least likely to be used left
    assert r.pool_bytes(0) == 20


def test_lru_evicts_the_least_recently_used_instead():
    clock = FakeClock()
    r = residency([20], evict=LruEviction(), clock=clock)
    loaded(r, 0, "cls-b", "cls-c")
    r.release(r.use(r.pools[0].entries["cls-b"]))  # cls-b used last
    assert r.reserve(0, "cls-a", frozenset())
    assert set(r.resident(0)) == {"cls-b", "cls-a"}


def test_nothing_in_use_loading_or_protected_is_evicted():
    r = residency([20])
    loaded(r, 0, "cls-b")
    assert r.reserve(0, "cls-c", frozenset())  # still loading
    r.use(r.pools[0].entries["cls-b"])  # in use
    assert not r.reserve(0, "cls-a", frozenset())
    assert set(r.resident(0)) == {"cls-b", "cls-c"} and r.pool_bytes(0) == 20
    r.release(r.pools[0].entries["cls-b"])
    assert not r.reserve(0, "cls-a", frozenset({"cls-b"}))  # protected
    assert r.reserve(0, "cls-a", frozenset())


def test_stage_one_sees_every_pool():
    # det-x's only predecessor is resident in the other pool, so det-x stays; cls-b goes.
    r = residency([30, 10])
    loaded(r, 0, "det-x", "cls-b")
    loaded(r, 1, "cls-a")
    assert r.reserve(0, "cls-c", frozenset())
    assert set(r.resident(0)) == {"det-x", "cls-c"}


def test_stage_one_counts_the_incoming_expert_as_present():
    # cls-a is resident nowhere, but it is the one coming in: its group reaches det-x
    # next, so det-x must not be evicted to make room for it (it would be reloaded).
    r = residency([40])
    loaded(r, 0, "det-x", "cls-b", "cls-c")
    assert r.reserve(0, "cls-a", frozenset())
    assert set(r.resident(0)) == {"det-x", "cls-b", "cls-a"}  # stage 2 took cls-c


def test_stage_one_counts_queued_experts_as_present():
    # cls-a is resident nowhere but has tasks queued: their next step is det-x.
    r = residency([30], queued=lambda: {"cls-a"})
    loaded(r, 0, "det-x", "cls-b")
    assert r.reserve(0, "cls-c", frozenset())
    assert set(r.resident(0)) == {"det-x", "cls-c"}


def test_a_subsequent_expert_with_queued_tasks_is_not_unreachable():
    r = residency([30], queued=lambda: {"det-x"})
    loaded(r, 0, "det-x", "cls-b")
    assert r.reserve(0, "cls-c", frozenset())
    assert set(r.resident(0)) == {"det-x", "cls-c"}


def test_without_a_queue_nothing_reaches_an_absent_predecessor_s_experts():
    r = residency([30], queued=lambda: set())
    loaded(r, 0, "det-x", "cls-b")
    assert r.reserve(0, "cls-c", frozenset())
    assert set(r.resident(0)) == {"cls-b", "cls-c"}  # stage 1 still works


def test_an_expert_with_no_known_predecessor_is_left_to_stage_two_until_one_is_seen():
    # det-x is reached only through a routing callable: the static graph names no
    # predecessor of it, so stage 1 cannot know it is unreachable.
    r = residency([30], predecessors={})
    loaded(r, 0, "det-x", "cls-b")
    assert r.reserve(0, "cls-c", frozenset())
    assert set(r.resident(0)) == {"det-x", "cls-c"}  # cls-b is the less likely to be used
    # Once cls-b is seen routing to det-x, det-x is reachable only while cls-b is present.
    r.usage.routed(r.usage.admitted(["cls-b"]), "cls-b", ["det-x"])
    assert r.reserve(0, "cls-a", frozenset())
    assert set(r.resident(0)) == {"cls-c", "cls-a"}  # det-x went in stage 1


def test_the_host_cache_has_its_own_budget():
    r = residency([40], host_cache_bytes=10)
    assert r.reserve_host("cls-a") and r.in_host("cls-a")
    r.host.entries["cls-a"].tensors = {}
    assert r.reserve_host("cls-b") and not r.in_host("cls-a")
    assert r.pool_bytes(0) == 0


# -- ExpertManager -------------------------------------------------------------------------
def test_acquire_loads_once_then_hits():
    m, stats = manager([30])
    m.release(0, m.acquire(0, "cls-a"))
    entry = m.acquire(0, "cls-a")
    m.release(0, entry)
    s = stats.snapshot(0.0, bytes_read=0, policy="", budget_bytes=None, total_expert_bytes=0,
                       storage="none", cost_source="")
    assert entry.tensors == {"weight": "cls-a"}
    assert m._loader.reads == ["cls-a"]
    assert (s.num_pool_hits, s.num_pool_misses) == (1, 1)
    assert s.switches_by_path == {"storage->cpu": 1}


def test_acquire_waits_for_a_prefetch_in_flight_instead_of_loading_again():
    loader = FakeLoader()
    loader.gate.clear()
    m, _ = manager([30], loader=loader)
    m.prefetch(0, "cls-a", protected=frozenset())
    assert loader.reading.wait(JOIN_TIMEOUT_S)
    got: list = []
    t = threading.Thread(target=lambda: got.append(m.acquire(0, "cls-a")))
    t.start()
    loader.gate.set()
    t.join(JOIN_TIMEOUT_S)
    assert got and got[0].tensors == {"weight": "cls-a"}
    assert loader.reads == ["cls-a"]
    m.close()


def test_a_failed_load_gives_its_room_back_and_raises():
    m, _ = manager([20], loader=FakeLoader(broken=frozenset({"cls-b"})))
    m.release(0, m.acquire(0, "cls-a"))
    with pytest.raises(ExpertError, match="cls-b"):
        m.acquire(0, "cls-b")
    assert set(m.resident(0)) == {"cls-a"} and m.pool_bytes(0) == 10


def test_a_prefetch_that_cannot_make_room_does_nothing():
    m, _ = manager([10])
    entry = m.acquire(0, "cls-a")
    m.prefetch(0, "cls-b", protected=frozenset({"cls-a"}))
    assert set(m.resident(0)) == {"cls-a"}
    m.release(0, entry)
    m.close()


def test_a_prefetch_after_shutdown_gives_the_reserved_room_back():
    m, _ = manager([30])
    m.close()
    m.prefetch(0, "cls-a", protected=frozenset())
    assert set(m.resident(0)) == set() and m.pool_bytes(0) == 0


def test_a_release_wakes_an_acquire_waiting_for_room():
    m, _ = manager([10])
    entry = m.acquire(0, "cls-a")
    got: list = []
    t = threading.Thread(target=lambda: got.append(m.acquire(0, "cls-b")))
    t.start()
    m.release(0, entry)
    t.join(JOIN_TIMEOUT_S)
    assert got and set(m.resident(0)) == {"cls-b"}


def test_device_loads_go_through_the_host_cache():
    loader = FakeLoader()
    m, stats = manager([30, 30], processors=["cuda:0", "cuda:1"], loader=loader,
                       host_cache_bytes=30)
    m.release(0, m.acquire(0, "cls-a"))
    entry = m.acquire(1, "cls-a")
    s = stats.snapshot(0.0, bytes_read=0, policy="", budget_bytes=None, total_expert_bytes=0,
                       storage="none", cost_source="")
    assert entry.tensors == {"weight": "cls-a@cuda:1"}
    assert loader.reads == ["cls-a"]  # the second executor copied from host RAM
    assert loader.copies == [("cls-a", "cuda:0"), ("cls-a", "cuda:1")]
    assert s.switches_by_path == {"host->cuda:0": 1, "host->cuda:1": 1}
    assert s.bytes_loaded_by_path["storage->host"] == 10
