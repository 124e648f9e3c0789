"""One pool shared by the executors of a CPU: residency (one entry, one budget, both
executors told of changes), the scheduler (an executor with nothing to serve takes a batch
from its sibling's queue; assignment keeps a group in one queue), eviction that keeps
queued experts, and the simulator running it end to end. No torch."""

import pytest

from coserve.manager.eviction import EvictionContext, PoolEntry, TwoStageEviction
from coserve.manager.residency import Residency
from coserve.manager.usage import UsageTracker
from coserve.scheduler import AffinityMinMaxAssign, GroupByExpert, QueueView, Task
from coserve.scheduler.queues import Scheduler
from coserve.scheduler.select import DeadlineAwareSelect
from test_scheduler_policies import costs

SIZES = {"a": 10, "b": 10, "c": 10}


def shared_residency(budget=20) -> Residency:
    return Residency(budgets=[budget, budget], expert_bytes=SIZES, subsequent=frozenset(),
                     predecessors=lambda e: frozenset(), evict=TwoStageEviction(),
                     usage=UsageTracker({"a": 0.5, "b": 0.3, "c": 0.2}, 0.5, 50),
                     clock=lambda: 0.0, shared=[(0, 1)])


def test_executors_of_a_shared_pool_see_one_entry_and_one_budget():
    r = shared_residency()
    assert r.pools[0] is r.pools[1] and r.distinct_pools() == [r.pools[0]]
    assert r.pool_index(1) == 0 and r.sharing(0) == [1] and r.sharing(1) == [0]
    assert r.reserve(0, "a", frozenset())
    assert "a" in r.resident(1)  # loaded once, runs on either
    assert r.reserve(1, "b", frozenset())
    assert r.pool_bytes(0) == r.pool_bytes(1) == 20  # one budget of 20, not two of 10
    changes: list[tuple[int | None, str]] = []
    r.watch(lambda executor, expert: changes.append((executor, expert)))
    r.pools[0].entries["a"].tensors = {}
    r.pools[0].entries["b"].tensors = {}
    assert r.reserve(1, "c", frozenset())  # evicts from the one pool
    assert sorted(changes) == [(0, "b"), (0, "c"), (1, "b"), (1, "c")]


def test_a_shared_pool_needs_one_budget():
    with pytest.raises(ValueError, match="share a pool but not its budget"):
        Residency(budgets=[10, 20], expert_bytes=SIZES, subsequent=frozenset(),
                  predecessors=lambda e: frozenset(), evict=TwoStageEviction(),
                  usage=UsageTracker({}, 0.5, 50), clock=lambda: 0.0, shared=[(0, 1)])


def shared_scheduler(resident: set[str]) -> Scheduler:
    return Scheduler(
        processors=["cpu", "cpu"], assign=AffinityMinMaxAssign(10.0, 1.0),
        arrange=GroupByExpert(), select=DeadlineAwareSelect(1.0), costs=costs(max_batch=4),
        activation_bytes=1000, resident_of=lambda i: resident, in_host=lambda e: False,
        clock=lambda: 0.0, siblings=lambda i: [1 - i])


def test_an_idle_executor_takes_a_batch_of_its_siblings_resident_group():
    """Per-executor pools leave one executor idle while the other works through a hot
    expert's group; sharing the pool, the idle one takes batches of it."""
    s = shared_scheduler(resident={"a"})
    queues = {s.enqueue(Task(request_id=f"r{i}", expert="a", enqueued_s=0.0)) for i in range(12)}
    assert len(queues) == 1  # the group stays in one queue
    (owner,) = queues
    other = 1 - owner
    assert s.wakes(owner) == (owner, other)  # a task queued there may set the other to work
    first, stolen = s.take_batch(owner), s.take_batch(other)
    assert first.expert == stolen.expert == "a" and stolen.executor == other
    assert len(first.tasks) == len(stolen.tasks) == 4
    assert s.depth(owner) == 4 and s.depth(other) == 0
    assert s.backlog_s(other) == pytest.approx(costs().exec_s("a", "cpu", 4))  # its batch


def test_nothing_is_taken_from_a_sibling_that_would_need_a_load():
    s = shared_scheduler(resident=set())
    owner = s.enqueue(Task(request_id="r0", expert="b", enqueued_s=0.0))
    assert s.take_batch(1 - owner) is None  # the owner loads it; no second, duplicate wait
    assert s.take_batch(owner).expert == "b"


def test_assignment_does_not_split_a_group_over_queues_of_one_pool():
    """Resident in the shared pool, an expert is 'held' by both queues; joining the queue
    without its group would split it, each half needing it resident at its own time."""
    c = costs()
    policy = AffinityMinMaxAssign(copy_loads=10.0, copy_wait_s=1.0)
    queued = QueueView("cpu", 0.3, {"a": 3}, frozenset({"a"}), pool=0)
    idle = QueueView("cpu", 0.0, {}, frozenset({"a"}), pool=0)
    assert policy.assign("a", [queued, idle], c, False) == 0
    # Pools of their own (pool -1): resident in both, either queue holds it; min-max.
    queued_own = QueueView("cpu", 0.3, {"a": 3}, frozenset({"a"}))
    idle_own = QueueView("cpu", 0.0, {}, frozenset({"a"}))
    assert policy.assign("a", [queued_own, idle_own], c, False) == 1


def test_queued_last_eviction_keeps_an_expert_with_queued_tasks():
    """Stage 2 by usage alone evicts the rarer expert even when its group is queued."""
    entries = [PoolEntry("a", 10, 0.0, 0.0, False), PoolEntry("b", 10, 0.0, 0.0, False)]
    ctx = EvictionContext(usage={"a": 0.1, "b": 0.9}, predecessors=lambda e: frozenset(),
                          present={"a", "b"}, queued=frozenset({"a"}))
    assert TwoStageEviction().victims(entries, 10, frozenset(), ctx) == ["a"]  # the paper's
    assert TwoStageEviction(queued_last=True).victims(entries, 10, frozenset(), ctx) == ["b"]


@pytest.fixture(scope="module")
def synth_tiny(tmp_path_factory):
    from coserve.repository import open_repository
    from coserve.trace import read_trace
    from coserve.zoo.synth import build_synth

    root, trace = build_synth(tmp_path_factory.mktemp("shared") / "synth", "tiny")
    return open_repository(root), read_trace(trace)


def _executors_per_expert(results) -> dict[str, set[int]]:
    ran: dict[str, set[int]] = {}
    for result in results:
        for step in result.steps:
            ran.setdefault(step.expert, set()).add(step.executor)
    return ran


@pytest.mark.parametrize("policy", ["coserve", "coserve-paper"])
def test_the_simulator_and_the_engine_run_a_shared_pool(synth_tiny, policy):
    """coserve's two CPU executors run experts out of one pool (an expert's batches on
    both, each expert read once); the paper's have a pool each. The engine answers every
    request either way, with the same labels."""
    from coserve.config import EngineConfig
    from coserve.engine.engine import Engine
    from coserve.executors.spec import parse_executors
    from coserve.simulator import simulate
    from plan_fixtures import hand_made_plan

    model, trace = synth_tiny
    config = EngineConfig(policy=policy, executors=parse_executors("cpu:2"),
                          budget_bytes=model.total_expert_bytes, measure_costs=False)
    stats, results = simulate(model, trace, config, backlog=True, plan=hand_made_plan(model))
    assert all(r.ok for r in results) and len(results) == len(trace)
    both = [e for e, ran in _executors_per_expert(results).items() if ran == {0, 1}]
    if policy == "coserve":
        assert both and stats.num_switches == 0  # everything placed once, in one pool
    budget = model.total_expert_bytes
    with Engine(model, config) as engine:
        answered = engine.run_trace(trace, realtime=False)
        assert engine.pool_budgets() == ([budget, budget] if policy == "coserve"
                                         else [budget // 2, budget // 2])
        stats = engine.stats()
    assert [r.ok for r in answered] == [True] * len(trace)
    assert stats.num_failed == 0
    if policy == "coserve":
        assert stats.num_switches == 0  # every expert placed once, in the one pool
