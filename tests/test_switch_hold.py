"""coserve's switch hold: while requests stream in and the queue is short, a small group
that needs a switch waits to grow instead of loading its expert for a lone task. The
policy, the scheduler that wakes an idle executor when a held group ripens, and the
simulator at light load."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from coserve.errors import ConfigError
from coserve.plan import ArchCost, CostModel
from coserve.scheduler import GroupByExpert, MinMaxLatencyAssign
from coserve.scheduler.groups import GroupView
from coserve.scheduler.queues import Scheduler
from coserve.scheduler.select import DeadlineAwareSelect, SelectContext, SwitchHold
from coserve.scheduler.task import Task

K, B = 0.01, 0.05  # a batch of n runs K * n + B seconds
MB = 1_000_000
TARGET_S, HOLD_S, RISK_S, QUIET_S = 5.0, 2.5, 1.25, 0.1


def costs() -> CostModel:
    experts = ["a", "b", "c"]
    return CostModel(
        arch_of={e: "arch" for e in experts},
        expert_bytes={e: 50 * MB for e in experts},  # a switch: 0.1 s at 500 MB/s
        arch_costs={("arch", "cpu"): ArchCost(K, B, 8, 1)},
        storage_bytes_per_s=500 * MB,
    )


def hold() -> SwitchHold:
    return SwitchHold(HOLD_S, TARGET_S, RISK_S, quiet_s=QUIET_S)


def context(now_s: float, newest_arrival_s: float, backlog_s: float = 0.0,
            resident: frozenset[str] = frozenset()) -> SelectContext:
    return SelectContext(now_s=now_s, processor="cpu", resident=resident, costs=costs(),
                         in_host=lambda e: False, batch_size=lambda e, n: min(n, 8),
                         backlog_s=backlog_s, newest_deadline_s=newest_arrival_s + TARGET_S)


def group(num_tasks: int, arrived_s: float, expert: str = "b") -> GroupView:
    return GroupView(expert, num_tasks, deadline_s=arrived_s + TARGET_S)


def test_a_lone_task_waits_while_requests_stream_in_and_a_full_group_does_not() -> None:
    h = hold()
    ctx = context(now_s=10.0, newest_arrival_s=10.0)
    lone = group(1, arrived_s=9.0)
    # Held until no request arrives for QUIET_S (a new one moves that on).
    assert h.ripe_at(lone, ctx) == pytest.approx(10.0 + QUIET_S)
    # Requests keep streaming in: it waits until its task has waited HOLD_S.
    streaming = context(now_s=11.45, newest_arrival_s=11.45)
    assert h.ripe_at(lone, streaming) == pytest.approx(9.0 + HOLD_S)
    # Five tasks run 0.1 s, as long as the switch takes: the load pays, no wait.
    assert h.ripe_at(group(5, arrived_s=9.0), streaming) == 11.45


def test_the_hold_ends_at_risk_on_a_busy_queue_and_when_nothing_arrives() -> None:
    h = hold()
    lone = group(1, arrived_s=9.0)
    # A request with a short latency target of its own counts as old: no wait.
    streaming = context(now_s=9.05, newest_arrival_s=9.05)
    assert h.ripe_at(GroupView("b", 1, deadline_s=9.0 + 1.5), streaming) <= 9.05
    # A hold longer than the deadline allows ends once the deadline is at risk.
    long_hold = SwitchHold(4.5, TARGET_S, RISK_S, quiet_s=QUIET_S)
    late = context(now_s=12.55, newest_arrival_s=12.55)
    assert long_hold.ripe_at(lone, late) == pytest.approx(14.0 - RISK_S - 0.1 - (K + B))
    # The queue holds half of HOLD_S of work: groups grow while it runs.
    assert h.ripe_at(lone, context(10.0, 10.0, backlog_s=HOLD_S / 2)) == 10.0
    # No request for longer than QUIET_S (the tail of a backlog): nothing grows it.
    assert h.ripe_at(lone, context(now_s=10.0, newest_arrival_s=9.0)) == 10.0
    with pytest.raises(ConfigError):
        SwitchHold(6.0, TARGET_S, RISK_S)  # a hold longer than the target


def test_selection_skips_held_groups_and_says_when_one_ripens() -> None:
    select = DeadlineAwareSelect(RISK_S, hold=hold())
    ctx = context(now_s=11.45, newest_arrival_s=11.45)
    lone_b, lone_c = group(1, 9.0, "b"), group(1, 10.0, "c")
    assert select.order([lone_b, lone_c], ctx, 2) == []
    assert select.wake_s([lone_b, lone_c], ctx) == pytest.approx(9.0 + HOLD_S)
    # A resident group is never held; a ripe one is served, the held one is not offered
    # for prefetching either.
    resident = context(now_s=11.45, newest_arrival_s=11.45, resident=frozenset({"c"}))
    assert select.order([lone_b, lone_c], resident, 2) == ["c"]
    ripe = group(6, 10.5, "a")
    assert select.order([lone_b, ripe], ctx, 2) == ["a"]
    assert DeadlineAwareSelect(RISK_S).order([lone_b, lone_c], ctx, 2) == ["b", "c"]


class Clock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def scheduler(clock) -> Scheduler:
    return Scheduler(
        processors=["cpu"], assign=MinMaxLatencyAssign(), arrange=GroupByExpert(),
        select=DeadlineAwareSelect(RISK_S, hold=hold()), costs=costs(), activation_bytes=1000,
        resident_of=lambda i: frozenset(), in_host=lambda e: False, clock=clock,
        predecessors=lambda e: frozenset())


def task(i: int, expert: str, at_s: float) -> Task:
    return Task(request_id=f"r{i}", expert=expert, enqueued_s=at_s, deadline_s=at_s + TARGET_S)


def test_the_scheduler_holds_a_stream_of_lone_tasks_into_groups() -> None:
    clock = Clock()
    s = scheduler(clock)
    batches = []
    # One request every 50 ms, alternating between two experts the pool does not hold.
    for i in range(61):
        clock.now_s = 0.05 * i
        s.enqueue(task(i, "ab"[i % 2], clock.now_s))
        while (batch := s.take_batch(0)) is not None:
            batches.append(len(batch.tasks))
            s.batch_done(0)
    assert s.wake_s(0) is not None  # the last lone task waits for its hold
    # Without the hold every lone task would be a batch (and a switch) of its own.
    assert len(batches) < 15 and sum(batches) >= 45
    clock.now_s += 10.0  # nothing arrives any more: the rest is served
    rest = []
    while (batch := s.take_batch(0)) is not None:
        rest.append(len(batch.tasks))
    assert sum(batches) + sum(rest) == 61 and rest == [1]


def test_an_idle_executor_wakes_for_a_held_group_and_a_closing_queue_drains() -> None:
    import time

    start = time.monotonic()
    s = Scheduler(
        processors=["cpu"], assign=MinMaxLatencyAssign(), arrange=GroupByExpert(),
        select=DeadlineAwareSelect(0.01, hold=SwitchHold(1.0, 2.0, 0.01, quiet_s=1.0)),
        costs=costs(), activation_bytes=1000, resident_of=lambda i: frozenset(),
        in_host=lambda e: False, clock=lambda: time.monotonic() - start,
        predecessors=lambda e: frozenset())
    s.enqueue(Task(request_id="r0", expert="a", enqueued_s=0.0, deadline_s=2.0))
    assert s.take_batch(0) is None  # held: a lone task, a request just arrived
    got: list = []
    worker = threading.Thread(target=lambda: got.append(s.next_batch(0)))
    worker.start()
    worker.join(timeout=30)  # it wakes when the hold ends, with no new task to wake it
    assert not worker.is_alive() and got[0].expert == "a"
    s.enqueue(Task(request_id="r1", expert="b", enqueued_s=0.0, deadline_s=1e9))
    s.close()
    assert s.next_batch(0).expert == "b"  # closing: a held group is served at once
    assert s.next_batch(0) is None


def test_at_light_load_the_simulated_engine_switches_less_and_stays_on_time(tiny_zoo, monkeypatch):
    from dataclasses import replace as with_

    from coserve import EngineConfig, open_repository, parse_executors, read_trace
    from coserve import policies as policy_module
    from coserve.engine.costs import default_costs
    from coserve.simulator import simulate

    model = open_repository(tiny_zoo[0])
    # The tiny trace at a fifth of its rate: queues stay short.
    requests = [with_(r, arrival_s=r.arrival_s * 5) for r in read_trace(tiny_zoo[1])]
    config = EngineConfig(budget_fraction=0.3, executors=parse_executors("cpu:1"),
                          storage="sata-530", measure_costs=False)

    def run() -> tuple[int, int]:
        stats, _ = simulate(model, requests, config, costs=default_costs(model))
        return stats.num_switches, stats.num_deadline_misses

    held = run()
    monkeypatch.setattr(policy_module, "HOLD_SHARE", 0.0)  # a lone task ripens at once
    eager = run()
    assert held[0] < 0.8 * eager[0], (held, eager)
    assert held[1] == 0


def test_a_quiet_queue_prefetches_past_its_resident_groups_into_room_nothing_needs() -> None:
    """A backlog's head: every next group is resident, so storage would sit idle. Once no
    request arrives and storage is idle, the first group needing a load is prefetched,
    evicting only experts no queued task can reach."""
    clock = Clock()
    resident = {"a", "child", "done"}  # a: queued; child: a routes to it; done: neither
    s = Scheduler(
        processors=["cpu"], assign=MinMaxLatencyAssign(), arrange=GroupByExpert(),
        select=DeadlineAwareSelect(RISK_S, hold=hold()), costs=costs(), activation_bytes=1000,
        resident_of=lambda i: frozenset(resident), in_host=lambda e: False, clock=clock,
        predecessors=lambda e: frozenset({"a"}) if e == "child" else frozenset())
    for i in range(3):
        s.enqueue(task(i, "a", 0.0))
    s.enqueue(task(3, "b", 0.0))
    # Requests still arriving: only the next group is looked at, and it is resident.
    assert s.prefetch_order(0, running="x", num_groups=1, storage_idle=True) == []
    clock.now_s = 1.0  # no request for QUIET_S: what is queued is all there is
    assert s.prefetch_order(0, running="x", num_groups=1, storage_idle=False) == []
    [(expert, protected)] = s.prefetch_order(0, running="x", num_groups=1, storage_idle=True)
    assert expert == "b"
    assert {"x", "a", "child"} <= protected and "done" not in protected
    # A next group that needs a load is prefetched as always, whatever storage does.
    s.enqueue(task(4, "c", 1.0))
    clock.now_s = 2.0
    assert [e for e, _ in s.prefetch_order(0, running="a", num_groups=1)] == ["b"]


def test_when_nothing_arrives_a_resident_group_fed_by_queued_experts_waits_for_them() -> None:
    """In a backlog a fed group grows until its feeders drain: served now, it is served
    (and perhaps loaded) again for the rest. The unfed one goes first, even at a lower
    rate; while requests stream in, everything is fed and the rate decides as before."""
    select = DeadlineAwareSelect(RISK_S, hold=hold())
    fed = GroupView("a", 8, deadline_s=TARGET_S)  # the bigger group: the higher rate
    unfed = GroupView("b", 2, deadline_s=TARGET_S)
    resident = frozenset({"a", "b"})
    quiet = replace(context(now_s=10.0, newest_arrival_s=0.0, resident=resident),
                    fed=lambda e: e == "a")
    streaming = replace(quiet, newest_deadline_s=10.0 + TARGET_S)
    assert select.quiet(quiet) and not select.quiet(streaming)
    assert select.order([fed, unfed], quiet, 2) == ["b", "a"]
    assert select.order([fed, unfed], streaming, 2) == ["a", "b"]
    assert select.order([fed], quiet, 1) == ["a"]  # still served when nothing else is
