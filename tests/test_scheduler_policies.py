"""Scheduler policies: assignment, arrangement with the starvation bound, splitting, and
the queue runtime. No torch."""

import itertools

import pytest

from coserve.errors import ConfigError
from coserve.plan import ArchCost, CostModel
from coserve.scheduler import (
    AffinityMinMaxAssign,
    FifoArrange,
    GroupBehindLast,
    GroupByExpert,
    MinMaxLatencyAssign,
    QueueView,
    RoundRobinAssign,
    ShortestQueueAssign,
    Task,
    added_latency_s,
    split_batch,
)
from coserve.scheduler.queues import Scheduler
from coserve.scheduler.select import DeadlineAwareSelect, HeadSelect

K, B = 0.01, 0.05
MB = 1_000_000


def costs(max_batch=8, item_bytes=1):
    experts = ["a", "b", "c"]
    return CostModel(
        arch_of={e: "arch" for e in experts},
        expert_bytes={e: 50 * MB for e in experts},  # 0.1 s from storage at 500 MB/s
        arch_costs={("arch", "cpu"): ArchCost(K, B, max_batch, item_bytes)},
        storage_bytes_per_s=500 * MB,
    )


def view(backlog_s=0.0, queued=None, resident=()):
    return QueueView("cpu", backlog_s, dict(queued or {}), frozenset(resident))


def test_added_latency_components():
    c = costs()
    assert added_latency_s("a", view(), c, False) == pytest.approx(K + B + 0.1)
    assert added_latency_s("a", view(resident={"a"}), c, False) == pytest.approx(K + B)
    # Joining a queued group costs only K: no B, no switch.
    assert added_latency_s("a", view(queued={"a": 3}), c, False) == pytest.approx(K)


def test_minmax_picks_shorter_longest_queue():
    queues = [view(backlog_s=1.0, resident={"a"}), view(backlog_s=0.2, resident={"a"})]
    assert MinMaxLatencyAssign().assign("a", queues, costs(), False) == 1


def test_minmax_prefers_queue_already_holding_the_expert():
    # q0 is longer but holds "a": joining it adds K and keeps the max at ~1.0;
    # q1 would need a switch and push its own time to ~1.06.
    queues = [view(backlog_s=1.0, queued={"a": 2}), view(backlog_s=0.9)]
    assert MinMaxLatencyAssign().assign("a", queues, costs(), False) == 0


def test_minmax_tie_goes_to_smallest_added_latency():
    # Both choices leave the longest queue at 5.0 (queue 2), so the tie is broken by the
    # smaller added latency: queue 1 has "b" resident, queue 0 would need a load.
    queues = [view(), view(resident={"b"}), view(backlog_s=5.0)]
    assert MinMaxLatencyAssign().assign("b", queues, costs(), False) == 1


def test_round_robin_and_shortest_queue():
    rr = RoundRobinAssign()
    queues = [view(), view(), view()]
    assert [rr.assign("a", queues, costs(), False) for _ in range(4)] == [0, 1, 2, 0]
    sq = ShortestQueueAssign()
    assert sq.assign("a", [view(queued={"a": 3}), view(queued={"b": 1})], costs(), False) == 1


def task(expert, t=0.0, i=0):
    return Task(request_id=f"r{i}", expert=expert, enqueued_s=t)


def test_group_arrange_places_behind_last_same_expert():
    queue = [task("a"), task("b"), task("a"), task("c")]
    assert GroupBehindLast(10.0).position(queue, "a", now_s=1.0, added_s=0.1) == 3
    assert GroupBehindLast(10.0).position(queue, "d", now_s=1.0, added_s=0.1) == 4
    assert FifoArrange().position(queue, "a", now_s=1.0, added_s=0.1) == 4


def test_group_arrange_starvation_bound_is_on_delay_by_overtaking():
    queue = [task("a"), task("b"), task("c")]
    queue[2].deferred_s = 4.95
    # Overtaking "c" would defer it past 5 s in all: the new "a" goes behind it.
    assert GroupBehindLast(5.0).position(queue, "a", now_s=100.0, added_s=0.1) == 3
    # Within the bound it may overtake, however long everyone has waited (a backlog).
    assert GroupBehindLast(5.0).position(queue, "a", now_s=100.0, added_s=0.01) == 1


def test_scheduler_bounds_the_delay_of_an_overtaken_task():
    s = make_scheduler(GroupBehindLast(max_defer_s=0.05))
    s.enqueue(Task(request_id="r0", expert="a", enqueued_s=0.0))
    s.enqueue(Task(request_id="r1", expert="b", enqueued_s=0.0))
    for i in range(2, 12):  # each "a" adds K = 0.01 s in front of "b"
        s.enqueue(Task(request_id=f"r{i}", expert="a", enqueued_s=0.0))
    order = [(b.expert, len(b.tasks)) for b in iter(lambda: s.take_batch(0), None)]
    # Five "a" tasks may overtake "b" (5 x 0.01 s = the bound); the rest wait behind it.
    assert order == [("a", 6), ("b", 1), ("a", 5)]


def test_group_arrange_rejects_negative_bound():
    with pytest.raises(ConfigError, match="max_defer_s"):
        GroupBehindLast(-1)


def test_split_batch():
    assert split_batch(10, max_batch=4, free_activation_bytes=100, item_bytes=10) == 4
    assert split_batch(10, max_batch=16, free_activation_bytes=30, item_bytes=10) == 3
    assert split_batch(2, max_batch=16, free_activation_bytes=100, item_bytes=10) == 2
    # A single item always runs.
    assert split_batch(5, max_batch=16, free_activation_bytes=1, item_bytes=10) == 1


def make_scheduler(arrange, num_executors=1, max_batch=8, activation_bytes=1000, select=None):
    clock = iter(range(10_000)).__next__
    return Scheduler(
        processors=["cpu"] * num_executors,
        assign=MinMaxLatencyAssign(),
        arrange=arrange,
        select=select or HeadSelect(),
        costs=costs(max_batch=max_batch),
        activation_bytes=activation_bytes,
        resident_of=lambda i: frozenset(),
        in_host=lambda e: False,
        clock=lambda: float(clock()),
    )


def test_scheduler_groups_interleaved_tasks_into_batches():
    s = make_scheduler(GroupBehindLast(100.0))
    for i, e in enumerate("ababab"):
        s.enqueue(Task(request_id=f"r{i}", expert=e, enqueued_s=0.0))
    first = s.take_batch(0)
    second = s.take_batch(0)
    assert (first.expert, len(first.tasks)) == ("a", 3)
    assert (second.expert, len(second.tasks)) == ("b", 3)
    assert s.take_batch(0) is None


def test_fifo_scheduler_keeps_arrival_order():
    s = make_scheduler(FifoArrange())
    for i, e in enumerate("aab"):
        s.enqueue(Task(request_id=f"r{i}", expert=e, enqueued_s=0.0))
    assert [len(s.take_batch(0).tasks) for _ in range(2)] == [2, 1]


def test_scheduler_splits_at_max_batch_and_activation_memory():
    s = make_scheduler(FifoArrange(), max_batch=4)
    for i in range(10):
        s.enqueue(Task(request_id=f"r{i}", expert="a", enqueued_s=0.0))
    assert [len(s.take_batch(0).tasks) for _ in range(3)] == [4, 4, 2]
    s = make_scheduler(FifoArrange(), max_batch=16, activation_bytes=3)  # item_bytes=1
    for i in range(5):
        s.enqueue(Task(request_id=f"r{i}", expert="a", enqueued_s=0.0))
    assert len(s.take_batch(0).tasks) == 3


def test_scheduler_spreads_load_over_executors():
    s = make_scheduler(GroupBehindLast(100.0), num_executors=2)
    executors = [s.enqueue(Task(request_id=f"r{i}", expert=e, enqueued_s=0.0)) for i, e in enumerate("abab")]
    # Same expert sticks to one queue (no second switch); different experts spread.
    assert executors[0] == executors[2] and executors[1] == executors[3]
    assert executors[0] != executors[1]


# -- coserve: a group per expert, selection by deadline, residency and yield ----------------
def grouped_scheduler(resident=(), clock=None, max_batch=8, risk_s=1.0, predecessors=None):
    return Scheduler(
        processors=["cpu"],
        assign=MinMaxLatencyAssign(),
        arrange=GroupByExpert(),
        select=DeadlineAwareSelect(risk_s),
        costs=costs(max_batch=max_batch),
        activation_bytes=1000,
        resident_of=lambda i: resident,
        in_host=lambda e: False,
        clock=clock or (lambda: 0.0),
        predecessors=predecessors or (lambda e: frozenset()),
    )


def test_grouping_holds_at_any_queue_length():
    # The paper's bound ends grouping once a queue is long; a group per expert does not.
    pool: set[str] = set()  # room for one expert: the last one served
    s = grouped_scheduler(resident=pool, max_batch=1000)
    for i in range(10_000):
        s.enqueue(Task(request_id=f"r{i}", expert="abc"[i % 3], enqueued_s=0.0))
    batches = []
    while (batch := s.take_batch(0)) is not None:
        batches.append((batch.expert, len(batch.tasks)))
        pool.clear()
        pool.add(batch.expert)
    assert sorted(batches) == sorted([("a", 1000)] * 3 + [("a", 334)] + [("b", 1000)] * 3
                                     + [("b", 333)] + [("c", 1000)] * 3 + [("c", 333)])
    # Each group is served to the end before another switch: three runs, one per expert.
    assert len([e for e, _ in itertools.groupby(e for e, _ in batches)]) == 3


def test_a_resident_group_goes_before_a_bigger_one_that_needs_a_switch():
    s = grouped_scheduler(resident={"b"})
    for i in range(5):
        s.enqueue(Task(request_id=f"a{i}", expert="a", enqueued_s=0.0, deadline_s=100.0))
    s.enqueue(Task(request_id="b0", expert="b", enqueued_s=0.0, deadline_s=100.0))
    assert s.take_batch(0).expert == "b"


def test_among_groups_that_need_a_switch_and_can_wait_the_oldest_goes_first():
    s = grouped_scheduler()
    s.enqueue(Task(request_id="a0", expert="a", enqueued_s=0.0, deadline_s=90.0))
    for i in range(4):
        s.enqueue(Task(request_id=f"b{i}", expert="b", enqueued_s=0.0, deadline_s=100.0))
    assert s.take_batch(0).expert == "a"


def test_resident_groups_go_first_and_switches_go_earliest_deadline_first():
    s = grouped_scheduler(resident={"c"})
    s.enqueue(Task(request_id="a0", expert="a", enqueued_s=0.0, deadline_s=12.0))
    s.enqueue(Task(request_id="b0", expert="b", enqueued_s=0.0, deadline_s=10.0))
    s.enqueue(Task(request_id="c0", expert="c", enqueued_s=0.0, deadline_s=50.0))
    assert [s.take_batch(0).expert for _ in range(3)] == ["c", "b", "a"]


def test_urgency_raises_a_resident_group_as_its_deadline_nears():
    now = [0.0]
    s = grouped_scheduler(resident={"a", "b"}, clock=lambda: now[0], risk_s=1.0)
    s.enqueue(Task(request_id="a0", expert="a", enqueued_s=0.0, deadline_s=10.0))
    for i in range(2):
        s.enqueue(Task(request_id=f"b{i}", expert="b", enqueued_s=0.0, deadline_s=100.0))
    # Far from a's deadline, the group serving more tasks per second goes first.
    assert s.prefetch_order(0, running="x", num_groups=2) == []  # both resident: no load
    now[0] = 9.9  # a is past the point where its deadline was at risk: twice as urgent
    assert s.take_batch(0).expert == "a"


def test_within_a_group_the_earliest_deadline_runs_first():
    s = grouped_scheduler(max_batch=1)
    for i, deadline in enumerate([30.0, 10.0, 20.0]):
        s.enqueue(Task(request_id=f"r{i}", expert="a", enqueued_s=0.0, deadline_s=deadline))
    assert [s.take_batch(0).tasks[0].request_id for _ in range(3)] == ["r1", "r2", "r0"]


def test_queued_experts_are_known_across_executors():
    s = grouped_scheduler()
    s.enqueue(Task(request_id="a0", expert="a", enqueued_s=0.0))
    s.enqueue(Task(request_id="b0", expert="b", enqueued_s=0.0))
    assert s.queued_experts() == {"a", "b"}
    s.take_batch(0)
    assert len(s.queued_experts()) == 1


def test_a_group_whose_predecessors_have_tasks_queued_waits_to_grow():
    # "b" is reached from "a": while a's tasks are queued, more b tasks are coming.
    s = grouped_scheduler(predecessors=lambda e: frozenset({"a"}) if e == "b" else frozenset())
    for i in range(3):
        s.enqueue(Task(request_id=f"b{i}", expert="b", enqueued_s=0.0, deadline_s=50.0))
    s.enqueue(Task(request_id="a0", expert="a", enqueued_s=0.0, deadline_s=100.0))
    # b is older, but a feeds it: a goes first, then b with whatever a routed to it.
    assert [s.take_batch(0).expert for _ in range(2)] == ["a", "b"]


# -- supervision: a stuck executor is retired ------------------------------------------------
@pytest.mark.parametrize("arrange", [GroupBehindLast(100.0), FifoArrange(), GroupByExpert()])
def test_a_retired_executor_gives_back_its_queue_and_takes_nothing_until_reinstated(arrange):
    from coserve.scheduler.queues import NoActiveExecutor

    s = make_scheduler(arrange, num_executors=2)
    placed = {f"r{i}": s.enqueue(task(e, i=i)) for i, e in enumerate("abab")}
    stuck = placed["r0"]
    moved = s.retire(stuck)
    assert sorted(t.request_id for t in moved) == sorted(r for r, i in placed.items() if i == stuck)
    assert s.depth(stuck) == 0 and s.take_batch(stuck) is None and s.retired() == {stuck}
    assert {s.enqueue(t) for t in moved} == {1 - stuck}
    assert all(s.enqueue(task(e, i=10 + k)) == 1 - stuck for k, e in enumerate("abab"))
    s.retire(1 - stuck)
    with pytest.raises(NoActiveExecutor, match="every executor is stuck"):
        s.enqueue(task("a", i=20))
    s.reinstate(stuck)
    assert s.enqueue(task("a", i=21)) == stuck


def test_closing_with_discard_empties_every_queue():
    s = make_scheduler(GroupBehindLast(100.0), num_executors=2)
    for i, e in enumerate("abab"):
        s.enqueue(task(e, i=i))
    assert sorted(t.request_id for t in s.close(discard=True)) == ["r0", "r1", "r2", "r3"]
    assert s.next_batch(0) is None and s.next_batch(1) is None


def test_a_group_held_back_past_the_starvation_bound_goes_first():
    # A resident group keeps receiving tasks; a group that needs a switch would wait for it
    # forever under sustained load, unless its deadline falls starvation_s behind.
    from coserve.scheduler.groups import GroupView
    from coserve.scheduler.select import SelectContext

    ctx = SelectContext(now_s=100.0, processor="cpu", resident={"a"}, costs=costs(),
                        in_host=lambda e: False, batch_size=lambda e, n: min(n, 8))
    fresh = GroupView("a", 8, deadline_s=105.0)
    held = {"b": GroupView("b", 1, deadline_s=95.0), "c": GroupView("c", 1, deadline_s=80.0)}
    select = DeadlineAwareSelect(risk_s=1.0, starvation_s=15.0)
    assert select.order([fresh, held["b"]], ctx, 2) == ["a", "b"]  # 10 s behind: grouping holds
    assert select.order([fresh, held["b"], held["c"]], ctx, 3) == ["c", "a", "b"]  # 25 s behind
    unbounded = DeadlineAwareSelect(risk_s=1.0)
    assert unbounded.order([fresh, held["c"]], ctx, 2) == ["a", "c"]
    with pytest.raises(ConfigError):
        DeadlineAwareSelect(risk_s=1.0, starvation_s=-1.0)


# -- coserve's assignment: a second copy of an expert must be worth it ----------------------
def test_affinity_keeps_an_expert_on_the_executor_that_holds_it():
    # The paper's rule copies "a" to the idle executor (a load of 0.1 s beats waiting
    # 0.3 s); coserve charges the copy 10 loads (capped at 0.5 s) and waits instead.
    queues = [view(backlog_s=0.3, resident={"a"}), view()]
    assert MinMaxLatencyAssign().assign("a", queues, costs(), False) == 1
    assert AffinityMinMaxAssign(copy_loads=10, copy_wait_s=0.5).assign(
        "a", queues, costs(), False) == 0
    # Queued (not yet resident) counts as held too.
    queues = [view(backlog_s=0.3, queued={"a": 1}), view()]
    assert AffinityMinMaxAssign(10, 0.5).assign("a", queues, costs(), False) == 0


def test_affinity_copies_once_the_holder_is_far_enough_behind():
    queues = [view(backlog_s=0.65, resident={"a"}), view()]
    # The charge is capped at copy_wait_s: 0.5 s + the load (0.1) + K + B < 0.65 + K + B.
    assert AffinityMinMaxAssign(10, 0.5).assign("a", queues, costs(), False) == 1
    # Charged in loads when that is less: 2 loads (0.2 s) + 0.16 < 0.45 + 0.06 on q0.
    queues = [view(backlog_s=0.45, resident={"a"}), view()]
    assert AffinityMinMaxAssign(2, 0.5).assign("a", queues, costs(), False) == 1
    assert AffinityMinMaxAssign(10, 0.5).assign("a", queues, costs(), False) == 0


def test_affinity_is_the_paper_rule_when_no_executor_or_every_executor_holds_it():
    minmax, affinity = MinMaxLatencyAssign(), AffinityMinMaxAssign(10, 0.5)
    for queues in ([view(backlog_s=0.3), view(backlog_s=0.1)],
                   [view(backlog_s=0.3, resident={"a"}), view(backlog_s=0.1, resident={"a"})]):
        assert affinity.assign("a", queues, costs(), False) == minmax.assign(
            "a", queues, costs(), False)
    with pytest.raises(ConfigError, match="copy_loads"):
        AffinityMinMaxAssign(-1, 0.5)


def test_the_predicted_backlog_follows_pushes_takes_and_residency():
    """The scheduler predicts each queue's backlog incrementally (a push or a take
    re-predicts one group, a residency change the groups of that expert); it must equal
    predicting every queued group from scratch."""
    resident: set[str] = set()
    s = grouped_scheduler(resident=resident, max_batch=4)
    c = costs(max_batch=4)

    def from_scratch() -> float:
        counts = {e: n for e, n in s._queues[0].counts.items()}  # noqa: SLF001 (reference)
        return sum(c.exec_s(e, "cpu", n) + (0.0 if e in resident else c.load_s(e, "cpu", False))
                   for e, n in counts.items())

    for i, e in enumerate("aabcabca"):
        s.enqueue(Task(request_id=f"r{i}", expert=e, enqueued_s=0.0, deadline_s=10.0 + i))
    assert s.backlog_s(0) == pytest.approx(from_scratch())
    resident.add("b")  # a prefetch made "b" resident: its group no longer needs a switch
    s.residency_changed(0, "b")
    assert s.backlog_s(0) == pytest.approx(from_scratch())
    batch = s.take_batch(0)
    running_s = c.exec_s(batch.expert, "cpu", len(batch.tasks)) + (
        0.0 if batch.expert in resident else c.load_s(batch.expert, "cpu", False))
    assert s.backlog_s(0) == pytest.approx(from_scratch() + running_s)
    s.batch_done(0)
    while s.take_batch(0) is not None:
        s.batch_done(0)
    assert s.backlog_s(0) == 0.0
