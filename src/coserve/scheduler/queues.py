"""The scheduler's runtime state: one task queue per executor, filled by the assignment
and arrangement policies and drained a batch at a time, from the group the selection
policy picks. `take_batch` never blocks, so the
simulator drives the same object on a virtual clock; `next_batch` is the blocking form
the engine's executor threads use."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence, Set
from dataclasses import dataclass
from typing import Any

from coserve.plan import CostModel
from coserve.scheduler.arrange import ArrangePolicy
from coserve.scheduler.assign import AssignPolicy, QueueView, added_latency_s
from coserve.scheduler.groups import GroupView, TaskQueue
from coserve.scheduler.select import SelectContext, SelectPolicy
from coserve.scheduler.split import split_batch
from coserve.scheduler.task import Task
from coserve.types import Step

# How far up the routing graph `_reachable` looks for a queued ancestor.
MAX_REACH_DEPTH = 8


class NoActiveExecutor(RuntimeError):
    """Every executor is retired (stuck): a task has nowhere to go."""


@dataclass(frozen=True)
class Batch:
    executor: int
    expert: str
    tasks: tuple[Task, ...]
    started_s: float

    def step(self, task: Task, label: str, detail: dict[str, Any], exec_s: float,
             precision: str = "fp32") -> Step:
        """What `task` did in this batch, as its request records it."""
        return Step(expert=self.expert, label=label, detail=detail, executor=self.executor,
                    batch_size=len(self.tasks), queued_s=self.started_s - task.enqueued_s,
                    exec_s=exec_s, precision=precision)


class Scheduler:
    def __init__(
        self,
        *,
        processors: Sequence[str],
        assign: AssignPolicy,
        arrange: ArrangePolicy,
        select: SelectPolicy,
        costs: CostModel,
        activation_bytes: int | Sequence[int],
        resident_of: Callable[[int], Set[str]],
        in_host: Callable[[str], bool],
        clock: Callable[[], float],
        predecessors: Callable[[str], Set[str]] = lambda expert: frozenset(),
        siblings: Callable[[int], Sequence[int]] = lambda executor: (),
    ) -> None:
        """`activation_bytes`: each executor's activation memory (one value: the same for
        all). `predecessors(e)`: experts whose output can route to e (selection lets a
        group grow while they have tasks queued). `siblings(i)`: the executors that share
        executor i's pool; one with nothing to serve takes a batch from their queues."""
        self.processors = list(processors)
        self._predecessors = predecessors
        self._siblings = [tuple(siblings(i)) for i in range(len(processors))]
        # Which pool each queue's executor runs from, as assignment sees it (-1: its own).
        self._pool_of = [min(i, *s) if s else -1 for i, s in enumerate(self._siblings)]
        self._assign = assign
        self._select = select
        self._costs = costs
        self._activation_bytes = ([activation_bytes] * len(processors)
                                  if isinstance(activation_bytes, int) else list(activation_bytes))
        assert len(self._activation_bytes) == len(processors), "one activation size per executor"
        self._resident_of = resident_of
        self._in_host = in_host
        self._clock = clock
        self._queues: list[TaskQueue] = [arrange.new_queue() for _ in processors]
        self._backlog_s = [0.0] * len(processors)
        # Each queued group's share of its queue's backlog, as last predicted: a push or a
        # take re-predicts only the group it touches (O(1), not O(groups) per call).
        self._group_backlog_s: list[dict[str, float]] = [{} for _ in processors]
        self._running_s = [0.0] * len(processors)
        self._running: list[str | None] = [None] * len(processors)  # each one's batch's expert
        self._lock = threading.RLock()  # next_batch holds it around take_batch
        # One condition per executor: a task queued for one executor wakes only that one.
        self._ready = [threading.Condition(self._lock) for _ in processors]
        self._newest_deadline_s = -math.inf  # of any task queued: are requests streaming in?
        self._closed = False
        self._held = False
        self._retired: set[int] = set()  # stuck executors: assigned nothing until reinstated
        # Experts with tasks queued on other replicas (step handoff), as last told.
        self._queued_elsewhere: frozenset[str] = frozenset()

    # -- assign + arrange ---------------------------------------------------------------
    def enqueue(self, task: Task) -> int:
        """Assign `task` to an executor queue and place it there; returns the executor.
        NoActiveExecutor when every executor is retired."""
        with self._lock:
            active = [i for i in range(len(self._queues)) if i not in self._retired]
            if not active:
                raise NoActiveExecutor("every executor is stuck: none can take a task")
            views = [self._view(i) for i in active]
            in_host = self._in_host(task.expert)
            k = self._assign.assign(task.expert, views, self._costs, in_host)
            i = active[k]
            added_s = added_latency_s(task.expert, views[k], self._costs, in_host)
            self._queues[i].push(task, added_s)
            self._newest_deadline_s = max(self._newest_deadline_s, task.deadline_s)
            self._repredict(i, task.expert)
            for j in self.wakes(i):
                self._ready[j].notify()
            return i

    def wakes(self, executor: int) -> tuple[int, ...]:
        """The executors a task queued for `executor` may set to work: it, and the ones
        that share its pool (an idle one takes it)."""
        return (executor, *self._siblings[executor])

    def _view(self, i: int) -> QueueView:
        return QueueView(
            processor=self.processors[i],
            backlog_s=self._backlog_s[i] + self._running_s[i],  # as backlog_s(i)
            queued=self._queues[i].counts,
            resident=self._resident_of(i),
            pool=self._pool_of[i],
        )

    def _repredict(self, i: int, expert: str) -> None:
        """Predict again the execution and switch time of `expert`'s group(s) in queue i."""
        shares = self._group_backlog_s[i]
        group_s = sum(self._group_s(i, expert, n) for n in self._queues[i].run_sizes(expert))
        self._backlog_s[i] += group_s - shares.pop(expert, 0.0)
        if group_s:
            shares[expert] = group_s
        if not shares:
            self._backlog_s[i] = 0.0  # no float residue once the queue is empty

    def residency_changed(self, executor: int | None, expert: str) -> None:
        """`expert` entered or left executor `executor`'s pool (None: the host cache, which
        every executor's switch reads): its queued group's switch time changed."""
        with self._lock:
            for i in range(len(self._queues)) if executor is None else (executor,):
                if expert in self._group_backlog_s[i]:
                    self._repredict(i, expert)

    def _group_s(self, i: int, expert: str, num_tasks: int) -> float:
        """Execution of `num_tasks` of `expert` on executor i, plus its switch if needed."""
        processor = self.processors[i]
        exec_s = self._costs.exec_s(expert, processor, num_tasks)
        if expert in self._resident_of(i):
            return exec_s
        return exec_s + self._costs.load_s(expert, processor, self._in_host(expert))

    # -- select + split ------------------------------------------------------------------
    def take_batch(self, executor: int) -> Batch | None:
        """Select a group, cut it to the batch size and take it; None if the queue is empty."""
        with self._lock:
            group = self._selected(executor)
            if group is not None:
                return self._take(executor, group)
            return self._steal(executor)

    def _steal(self, executor: int) -> Batch | None:
        """Nothing to serve here: a batch of the group a sibling (an executor sharing
        this pool) would serve next, when its expert is resident in the pool, from the
        sibling with the longest backlog."""
        resident = self._resident_of(executor)
        for j in sorted(self._siblings[executor], key=lambda j: -self._backlog_s[j]):
            group = self._selected(j)
            if group is not None and group.expert in resident:
                return self._take(executor, group, source=j)
        return None

    def _take(self, executor: int, group: GroupView, source: int | None = None) -> Batch:
        """A batch of `group` from queue `source` (default: the executor's own) for
        `executor` to run."""
        source = executor if source is None else source
        expert = group.expert
        n = self._batch_size(executor, expert, group.num_tasks)
        tasks = self._queues[source].pop(expert, n)
        # The batch's own switch counts too: a queue whose executor is loading is busy.
        self._running_s[executor] = self._group_s(executor, expert, n)
        self._running[executor] = expert
        self._repredict(source, expert)
        return Batch(executor, expert, tasks, self._clock())

    def _take_any(self, executor: int) -> Batch:
        """The earliest-deadline group, held or not (the queue is draining)."""
        return self._take(executor, min(self._queues[executor].groups(),
                                        key=lambda g: g.deadline_s))

    def _selected(self, executor: int) -> GroupView | None:
        groups = self._queues[executor].groups()
        if not groups:
            return None
        chosen = self._select.order(groups, self._context(executor), 1)
        if not chosen:  # every group is held back for now
            return None
        return next(g for g in groups if g.expert == chosen[0])

    def wake_s(self, executor: int) -> float | None:
        """When a group held back in `executor`'s queue may be served at the latest (None:
        nothing is held); a task queued there before then wakes it anyway."""
        with self._lock:
            groups = self._queues[executor].groups()
            if not groups:
                return None
            return self._select.wake_s(groups, self._context(executor))

    def _context(self, executor: int) -> SelectContext:
        return SelectContext(
            now_s=self._clock(), processor=self.processors[executor],
            resident=self._resident_of(executor), costs=self._costs, in_host=self._in_host,
            batch_size=lambda expert, n: self._batch_size(executor, expert, n),
            fed=self._fed, backlog_s=self._backlog_s[executor] + self._running_s[executor],
            newest_deadline_s=self._newest_deadline_s,
        )

    def _fed(self, expert: str) -> bool:
        """Whether an expert that routes to `expert` has tasks queued on any executor, or
        on another replica (`set_queued_elsewhere`)."""
        return any(e in self._queued_elsewhere or any(q.counts.get(e) for q in self._queues)
                   for e in self._predecessors(expert))

    def set_queued_elsewhere(self, experts: frozenset[str]) -> None:
        """Step handoff: the experts with tasks queued on the other replicas now. Their
        steps will hand tasks on to this replica, so a group they feed here waits for
        them as it waits for predecessors queued here."""
        with self._lock:
            self._queued_elsewhere = frozenset(experts)

    def _batch_size(self, executor: int, expert: str, num_queued: int) -> int:
        cost = self._costs.arch_cost(expert, self.processors[executor])
        return split_batch(num_queued, cost.max_batch, self._activation_bytes[executor],
                           cost.item_bytes)

    def next_batch(self, executor: int) -> Batch | None:
        """Block until a batch is available; None once closed and drained."""
        with self._lock:
            while True:
                batch = None if self._held else self.take_batch(executor)
                if batch is not None:
                    return batch
                if self._closed and not self._held:
                    if not self._queues[executor]:
                        return None
                    # Draining: a held group is served at once, nothing more will come.
                    return self._take_any(executor)
                wake_s = None if self._held else self.wake_s(executor)
                timeout_s = None if wake_s is None else max(0.0, wake_s - self._clock())
                self._ready[executor].wait(timeout_s)

    def hold(self, held: bool) -> None:
        """While held, executors take nothing: a backlog is queued whole before the first
        batch starts, so a run with one executor is deterministic."""
        with self._lock:
            self._held = held
            self._wake_all()

    def batch_done(self, executor: int) -> None:
        with self._lock:
            self._running_s[executor] = 0.0
            self._running[executor] = None

    # -- supervision ---------------------------------------------------------------------
    def retire(self, executor: int) -> list[Task]:
        """Take a stuck executor out: it is assigned nothing more, and its queued tasks
        are returned for the caller to queue again elsewhere (or fail)."""
        with self._lock:
            self._retired.add(executor)
            self._backlog_s[executor] = 0.0
            self._group_backlog_s[executor].clear()
            return self._queues[executor].take_all()

    def reinstate(self, executor: int) -> None:
        """A retired executor came back: it takes tasks again."""
        with self._lock:
            self._retired.discard(executor)

    def retired(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._retired)

    # -- what the expert manager may ask -------------------------------------------------
    def prefetch_order(self, executor: int, running: str, num_groups: int,
                       storage_idle: bool = False) -> list[tuple[str, frozenset[str]]]:
        """The experts of the next `num_groups` groups the executor will serve after the
        `running` one that are not resident here, in the order it will need them, each
        with the experts a prefetch for it must not evict: the running one and every
        nearer group's. When those groups are all resident, the storage is idle and no
        request is arriving (`SelectPolicy.quiet`: a backlog), also the first group past
        them that needs a load, which may evict only experts no queued task can reach:
        storage then fills the room finished groups leave while resident ones run. Board A
        backlog, simulated: storage sat idle for the first 2.05 s of 5.43 s, while the
        placed experts' groups ran, and every later group then waited on it."""
        with self._lock:
            groups = self._queues[executor].groups()
            if not groups:
                return []
            ctx = self._context(executor)
            resident = self._resident_of(executor)
            ahead_too = storage_idle and self._select.quiet(ctx)
            limit = len(groups) if ahead_too else num_groups + 1
            ahead = [e for e in self._select.order(groups, ctx, limit) if e != running]
            loads: list[tuple[str, frozenset[str]]] = []
            nearer = {running} | self._siblings_next(executor, num_groups)
            for expert in ahead[:num_groups]:
                if expert not in resident:
                    loads.append((expert, frozenset(nearer)))
                nearer.add(expert)
            later = next((e for e in ahead[num_groups:] if e not in resident), None)
            if ahead_too and not loads and later is not None:
                loads.append((later, frozenset(nearer | self._reachable(resident))))
            return loads

    def _siblings_next(self, executor: int, num_groups: int) -> set[str]:
        """What the executors sharing this pool run now and serve next: a prefetch here
        must not evict it from under them."""
        out: set[str] = set()
        for j in self._siblings[executor]:
            if self._running[j] is not None:
                out.add(self._running[j])
            groups = self._queues[j].groups()
            if groups:
                out.update(self._select.order(groups, self._context(j), num_groups))
        return out

    def _reachable(self, experts: Iterable[str]) -> set[str]:
        """Those of `experts` a queued task can still reach: queued themselves (here or
        on another replica), or downstream of a queued expert."""
        queued = {e for q in self._queues for e, n in q.counts.items() if n}
        queued |= self._queued_elsewhere
        memo: dict[str, bool] = {}

        def reached(expert: str, depth: int) -> bool:
            if expert not in memo:
                memo[expert] = False  # a cycle ends here
                memo[expert] = expert in queued or (depth < MAX_REACH_DEPTH and any(
                    reached(p, depth + 1) for p in self._predecessors(expert)))
            return memo[expert]

        return {e for e in experts if reached(e, 0)}

    def backlog_s(self, executor: int) -> float:
        """Predicted time until `executor` drains its queue, its running batch included
        (what assignment compares)."""
        with self._lock:
            return self._backlog_s[executor] + self._running_s[executor]

    def queued_experts(self) -> set[str]:
        """Experts with a task queued on any executor."""
        with self._lock:
            return {e for q in self._queues for e, n in q.counts.items() if n}

    def depth(self, executor: int) -> int:
        with self._lock:
            return len(self._queues[executor])

    def close(self, discard: bool = False) -> list[Task]:
        """Executors stop once their queues are empty; `discard` empties them now and
        returns what they held (a drain deadline passed)."""
        with self._lock:
            self._closed = True
            dropped = [t for q in self._queues for t in q.take_all()] if discard else []
            self._wake_all()
            return dropped

    def _wake_all(self) -> None:
        for ready in self._ready:
            ready.notify_all()
