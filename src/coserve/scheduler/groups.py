"""Task queues: what one executor has waiting, and the groups it may serve next.

`GroupedQueue` (coserve) keeps one group per expert, each a heap by deadline: a new task
always joins its expert's group, however long the queue, and pushing or taking costs
O(log group), never O(queue). `ListQueue` is one list in an arrangement policy's order
(samba's FIFO, the paper's insert-behind-the-group with an overtaking bound); only its
head run can be served, as the paper has it."""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from coserve.scheduler.task import Task


@dataclass(frozen=True)
class GroupView:
    """What group selection may know of one queued group."""

    expert: str
    num_tasks: int
    deadline_s: float  # the earliest deadline among its tasks


class TaskQueue(Protocol):
    counts: Mapping[str, int]  # expert -> tasks queued

    def push(self, task: Task, added_s: float) -> None:
        """Queue `task`, which delays the tasks it overtakes by `added_s`."""
        ...

    def groups(self) -> Sequence[GroupView]:
        """The groups that may be served next."""
        ...

    def pop(self, expert: str, num_tasks: int) -> tuple[Task, ...]:
        """Take `num_tasks` tasks of `expert`'s group (the most urgent first)."""
        ...

    def runs(self) -> Iterable[tuple[str, int]]:
        """(expert, tasks) of every group that will load its expert once, in queue order."""
        ...

    def run_sizes(self, expert: str) -> list[int]:
        """The sizes of `expert`'s groups that will each load it once (none: [])."""
        ...

    def take_all(self) -> list[Task]:
        """Empty the queue (its executor is stuck, or the engine stops): every task."""
        ...

    def __len__(self) -> int: ...


class GroupedQueue:
    def __init__(self) -> None:
        self._groups: dict[str, list[tuple[float, int, Task]]] = {}  # heaps by deadline
        # What selection reads, kept per group as it changes: building every view on every
        # take was the largest cost of a take with hundreds of groups queued.
        self._views: dict[str, GroupView] = {}
        self._seq = itertools.count()  # ties by arrival
        self.counts: Counter[str] = Counter()
        self._len = 0

    def push(self, task: Task, added_s: float) -> None:
        heap = self._groups.setdefault(task.expert, [])
        heapq.heappush(heap, (task.deadline_s, next(self._seq), task))
        self._views[task.expert] = GroupView(task.expert, len(heap), heap[0][0])
        self.counts[task.expert] += 1
        self._len += 1

    def groups(self) -> list[GroupView]:
        return list(self._views.values())

    def pop(self, expert: str, num_tasks: int) -> tuple[Task, ...]:
        heap = self._groups[expert]
        tasks = tuple(heapq.heappop(heap)[2] for _ in range(min(num_tasks, len(heap))))
        if heap:
            self._views[expert] = GroupView(expert, len(heap), heap[0][0])
        else:
            del self._groups[expert], self._views[expert]
        self.counts[expert] -= len(tasks)
        if not self.counts[expert]:
            del self.counts[expert]
        self._len -= len(tasks)
        return tasks

    def runs(self) -> Iterable[tuple[str, int]]:
        return ((e, len(h)) for e, h in self._groups.items())

    def run_sizes(self, expert: str) -> list[int]:
        heap = self._groups.get(expert)
        return [len(heap)] if heap else []

    def take_all(self) -> list[Task]:
        tasks = [t for heap in self._groups.values() for _, _, t in sorted(heap)]
        self._groups.clear()
        self._views.clear()
        self.counts.clear()
        self._len = 0
        return tasks

    def __len__(self) -> int:
        return self._len


PositionFn = Callable[[Sequence[Task], str, float, float], int]  # (queue, expert, now_s, added_s)


class ListQueue:
    """Tasks in one list; `position(queue, expert, now_s, added_s)` says where a new one goes.
    Tasks it overtakes accumulate `deferred_s` (the paper's starvation bound reads it)."""

    def __init__(self, position: PositionFn) -> None:
        self._position = position
        self._tasks: list[Task] = []
        self.counts: Counter[str] = Counter()

    def push(self, task: Task, added_s: float) -> None:
        at = self._position(self._tasks, task.expert, task.enqueued_s, added_s)
        self._tasks.insert(at, task)
        for overtaken in self._tasks[at + 1:]:
            overtaken.deferred_s += added_s
        self.counts[task.expert] += 1

    def groups(self) -> list[GroupView]:
        if not self._tasks:
            return []
        head = self._tasks[0]
        run = next((k for k, t in enumerate(self._tasks) if t.expert != head.expert),
                   len(self._tasks))
        return [GroupView(head.expert, run, head.deadline_s)]

    def pop(self, expert: str, num_tasks: int) -> tuple[Task, ...]:
        assert self._tasks and self._tasks[0].expert == expert, "a list queue serves its head"
        tasks = tuple(self._tasks[:num_tasks])
        del self._tasks[:num_tasks]
        self.counts[expert] -= len(tasks)
        if not self.counts[expert]:
            del self.counts[expert]
        return tasks

    def take_all(self) -> list[Task]:
        tasks, self._tasks = self._tasks, []
        self.counts.clear()
        return tasks

    def runs(self) -> Iterable[tuple[str, int]]:
        for expert, run in itertools.groupby(self._tasks, key=lambda t: t.expert):
            yield expert, sum(1 for _ in run)

    def run_sizes(self, expert: str) -> list[int]:
        # O(queue), as every operation of the list queue already is.
        return [n for e, n in self.runs() if e == expert]

    def __len__(self) -> int:
        return len(self._tasks)
