"""The scheduler's runtime state: one task queue per executor, filled by the assignment
and arrangement policies and drained a batch at a time. `take_batch` never blocks, so the
simulator drives the same object on a virtual clock; `next_batch` is the blocking form
the engine's executor threads use."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass
from typing import Any

from coserve.plan import CostModel
from coserve.scheduler.arrange import ArrangePolicy
from coserve.scheduler.assign import AssignPolicy, QueueView, added_latency_s
from coserve.scheduler.split import split_batch
from coserve.scheduler.task import Task
from coserve.types import Step


@dataclass(frozen=True)
class Batch:
    executor: int
    expert: str
    tasks: tuple[Task, ...]
    started_s: float

    def step(self, task: Task, label: str, detail: dict[str, Any], exec_s: float) -> Step:
        """What `task` did in this batch, as its request records it."""
        return Step(expert=self.expert, label=label, detail=detail, executor=self.executor,
                    batch_size=len(self.tasks), queued_s=self.started_s - task.enqueued_s,
                    exec_s=exec_s)


class Scheduler:
    def __init__(
        self,
        *,
        processors: Sequence[str],
        assign: AssignPolicy,
        arrange: ArrangePolicy,
        costs: CostModel,
        activation_bytes: int,
        resident_of: Callable[[int], Set[str]],
        in_host: Callable[[str], bool],
        clock: Callable[[], float],
    ) -> None:
        self.processors = list(processors)
        self._assign = assign
        self._arrange = arrange
        self._costs = costs
        self._activation_bytes = activation_bytes
        self._resident_of = resident_of
        self._in_host = in_host
        self._clock = clock
        self._queues: list[list[Task]] = [[] for _ in processors]
        self._queued: list[Counter[str]] = [Counter() for _ in processors]
        self._backlog_s = [0.0] * len(processors)
        self._running_s = [0.0] * len(processors)
        self._cond = threading.Condition()
        self._closed = False
        self._held = False

    # -- assign + arrange ---------------------------------------------------------------
    def enqueue(self, task: Task) -> int:
        """Assign `task` to an executor queue and place it there; returns the executor."""
        with self._cond:
            views = [self._view(i) for i in range(len(self._queues))]
            in_host = self._in_host(task.expert)
            i = self._assign.assign(task.expert, views, self._costs, in_host)
            queue = self._queues[i]
            added_s = added_latency_s(task.expert, views[i], self._costs, in_host)
            at = self._arrange.position(queue, task.expert, task.enqueued_s, added_s)
            queue.insert(at, task)
            for overtaken in queue[at + 1 :]:
                overtaken.deferred_s += added_s
            # Incremental: a full re-prediction per enqueue would be O(queue) each time.
            self._backlog_s[i] += added_s
            self._queued[i][task.expert] += 1
            self._cond.notify_all()
            return i

    def _view(self, i: int) -> QueueView:
        return QueueView(
            processor=self.processors[i],
            backlog_s=self._backlog_s[i] + self._running_s[i],
            queued=self._queued[i],
            resident=self._resident_of(i),
        )

    def _predict_backlog_s(self, i: int) -> float:
        """Execution plus switch time of every group now in queue i."""
        processor = self.processors[i]
        resident = self._resident_of(i)
        total = 0.0
        for expert, n in _groups(self._queues[i]):
            total += self._costs.exec_s(expert, processor, n)
            if expert not in resident:
                total += self._costs.load_s(expert, processor, self._in_host(expert))
        return total

    # -- split ---------------------------------------------------------------------------
    def take_batch(self, executor: int) -> Batch | None:
        """Pop the head group of the queue, cut to the batch size; None if empty."""
        with self._cond:
            queue = self._queues[executor]
            if not queue:
                return None
            expert = queue[0].expert
            group_len = next((k for k, t in enumerate(queue) if t.expert != expert), len(queue))
            cost = self._costs.arch_cost(expert, self.processors[executor])
            n = split_batch(group_len, cost.max_batch, self._activation_bytes, cost.item_bytes)
            tasks = tuple(queue[:n])
            del queue[:n]
            self._queued[executor][expert] -= n
            if not self._queued[executor][expert]:
                del self._queued[executor][expert]
            self._running_s[executor] = cost.exec_s(n)
            self._backlog_s[executor] = self._predict_backlog_s(executor)
            return Batch(executor, expert, tasks, self._clock())

    def next_batch(self, executor: int) -> Batch | None:
        """Block until a batch is available; None once closed and drained."""
        with self._cond:
            while True:
                batch = None if self._held else self.take_batch(executor)
                if batch is not None or (self._closed and not self._held):
                    return batch
                self._cond.wait()

    def hold(self, held: bool) -> None:
        """While held, executors take nothing: a backlog is queued whole before the first
        batch starts, so a run with one executor is deterministic."""
        with self._cond:
            self._held = held
            self._cond.notify_all()

    def batch_done(self, executor: int) -> None:
        with self._cond:
            self._running_s[executor] = 0.0

    # -- what the expert manager may ask -------------------------------------------------
    def next_expert(self, executor: int) -> str | None:
        """The expert the executor's next batch will need (for prefetching)."""
        with self._cond:
            queue = self._queues[executor]
            return queue[0].expert if queue else None

    def depth(self, executor: int) -> int:
        with self._cond:
            return len(self._queues[executor])

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def _groups(queue: Sequence[Task]) -> list[tuple[str, int]]:
    """Runs of consecutive tasks for the same expert: [(expert, count), ...]."""
    runs: list[tuple[str, int]] = []
    for task in queue:
        if runs and runs[-1][0] == task.expert:
            runs[-1] = (task.expert, runs[-1][1] + 1)
        else:
            runs.append((task.expert, 1))
    return runs
