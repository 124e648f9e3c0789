"""Expert-management policies: both eviction stages, baselines, initial placement. No torch."""

from coserve.manager import (
    EvictionContext,
    FifoEviction,
    LruEviction,
    PoolEntry,
    ReplicateAll,
    RoundRobinByUsage,
    TwoStageEviction,
)

PREDECESSORS = {"det-x": {"cls-a", "cls-b"}, "det-y": {"cls-c"}}


def ctx(usage, present, queued=(), predecessors=PREDECESSORS):
    return EvictionContext(
        usage=usage,
        predecessors=lambda e: frozenset(predecessors.get(e, ())),
        present=frozenset(present) | frozenset(queued),
        queued=frozenset(queued),
    )


def entry(name, size, loaded=0.0, used=0.0):
    return PoolEntry(name, size, loaded, used, subsequent=name.startswith("det"))


ENTRIES = [entry("cls-a", 10), entry("cls-c", 10), entry("det-x", 30), entry("det-y", 40)]
USAGE = {"cls-a": 0.5, "cls-c": 0.05, "det-x": 0.3, "det-y": 0.01}


def test_stage_one_evicts_unreachable_subsequent_largest_first():
    # det-y's only predecessor cls-c is resident nowhere, det-x's cls-a is resident.
    victims = TwoStageEviction().victims(ENTRIES, 5, frozenset(), ctx(USAGE, {"cls-a", "det-x", "det-y"}))
    assert victims == ["det-y"]


def test_stage_one_takes_several_unreachable_before_stage_two():
    # Nothing routes to either detector now: both go, largest first, even though det-x
    # has a higher usage probability than cls-c.
    victims = TwoStageEviction().victims(ENTRIES, 60, frozenset(), ctx(USAGE, {"det-x", "det-y"}))
    assert victims == ["det-y", "det-x"]


def test_stage_one_spares_a_subsequent_expert_with_queued_tasks():
    # det-y's predecessor cls-c is absent, but det-y's own tasks are queued somewhere.
    usage = {**USAGE, "det-y": 0.2}
    c = ctx(usage, {"cls-a", "det-x", "det-y"}, queued={"det-y"})
    assert TwoStageEviction().victims(ENTRIES, 5, frozenset(), c) == ["cls-c"]  # stage 2


def test_stage_one_spares_a_subsequent_expert_with_no_known_predecessor():
    # Nothing in the graph routes to det-y (a routing callable does): stage 2 decides.
    usage = {**USAGE, "det-y": 0.2}
    c = ctx(usage, {"cls-a"}, predecessors={"det-x": {"cls-a"}})
    assert TwoStageEviction().victims(ENTRIES, 5, frozenset(), c) == ["cls-c"]


def test_stage_two_ascending_usage():
    # Every subsequent expert is reachable (its predecessors are resident somewhere).
    anywhere = {"cls-a", "cls-c", "det-x", "det-y"}
    victims = TwoStageEviction().victims(ENTRIES, 45, frozenset(), ctx(USAGE, anywhere))
    assert victims == ["det-y", "cls-c"]


def test_protected_experts_are_never_evicted():
    anywhere = {"cls-a", "cls-c", "det-x", "det-y"}
    victims = TwoStageEviction().victims(ENTRIES, 35, frozenset({"det-y"}), ctx(USAGE, anywhere))
    assert "det-y" not in victims
    assert victims == ["cls-c", "det-x"]


def test_impossible_eviction_returns_none():
    protected = frozenset({"det-x", "det-y"})
    assert TwoStageEviction().victims(ENTRIES, 25, protected, ctx(USAGE, set())) is None
    assert LruEviction().victims(ENTRIES, 25, protected, ctx(USAGE, set())) is None


def test_nothing_needed_evicts_nothing():
    assert TwoStageEviction().victims(ENTRIES, 0, frozenset(), ctx(USAGE, set())) == []


def test_lru_and_fifo_orders():
    entries = [entry("cls-a", 10, loaded=1, used=9), entry("cls-c", 10, loaded=2, used=3),
               entry("det-x", 10, loaded=3, used=5)]
    c = ctx(USAGE, set())
    assert LruEviction().victims(entries, 15, frozenset(), c) == ["cls-c", "det-x"]
    assert FifoEviction().victims(entries, 15, frozenset(), c) == ["cls-a", "cls-c"]


def test_round_robin_placement_by_descending_usage_until_full():
    usage = {"e1": 0.9, "e2": 0.8, "e3": 0.7, "e4": 0.6, "e5": 0.5}
    sizes = {"e1": 10, "e2": 10, "e3": 10, "e4": 25, "e5": 10}
    placed = RoundRobinByUsage().place(usage, sizes, [30, 30])
    assert placed == [["e1", "e3"], ["e2", "e5"]]  # e4 fits nowhere after e1..e3
    for pool, budget in zip(placed, [30, 30], strict=True):
        assert sum(sizes[e] for e in pool) <= budget


def test_replicate_all_places_everything_everywhere():
    usage = {"a": 0.1, "b": 0.9}
    assert ReplicateAll().place(usage, {"a": 1, "b": 1}, [0, 0]) == [["b", "a"], ["b", "a"]]
