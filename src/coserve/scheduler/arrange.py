"""Arrangement: how an executor's queue keeps its tasks, so that each expert is loaded
as few times as possible.

`GroupByExpert` (coserve) keeps a group per expert: a new task always joins its expert's
group, at any queue length; which group runs when, and how long a task may wait, is the
selection policy's business (deadlines, not accumulated overtaking).
`GroupBehindLast` (the paper, `coserve-paper`) inserts a task right behind the last
queued task of the same expert, but never so that a task it overtakes would have been
delayed by overtaking for more than `max_defer_s` in all. The bound is on the delay
caused by overtaking, not on waiting: in a backlog every task has waited since the
start. Once a queue is long, overtaking anything costs more than the bound allows and
grouping ends: that is the published algorithm. `FifoArrange` (samba) appends."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from coserve.errors import ConfigError
from coserve.scheduler.groups import GroupedQueue, ListQueue, TaskQueue
from coserve.scheduler.task import Task


class ArrangePolicy(Protocol):
    def new_queue(self) -> TaskQueue:
        """An empty queue for one executor, kept in this policy's order."""
        ...


class FifoArrange:
    def new_queue(self) -> TaskQueue:
        return ListQueue(self.position)

    def position(self, queue: Sequence[Task], expert: str, now_s: float, added_s: float) -> int:
        return len(queue)


class GroupBehindLast:
    def __init__(self, max_defer_s: float) -> None:
        if max_defer_s < 0:
            raise ConfigError(f"max_defer_s must be >= 0 seconds, got {max_defer_s}")
        self.max_defer_s = max_defer_s

    def new_queue(self) -> TaskQueue:
        return ListQueue(self.position)

    def position(self, queue: Sequence[Task], expert: str, now_s: float, added_s: float) -> int:
        """Index at which a new task for `expert`, which delays every task behind it by
        `added_s`, is inserted into `queue`."""
        last_same = next(
            (i for i in range(len(queue) - 1, -1, -1) if queue[i].expert == expert), None
        )
        if last_same is None:
            return len(queue)
        # Inserting after last_same overtakes queue[last_same + 1:]; the latest of those that
        # would be deferred past the bound must stay ahead of us.
        for i in range(len(queue) - 1, last_same, -1):
            if queue[i].deferred_s + added_s > self.max_defer_s:
                return i + 1
        return last_same + 1


class GroupByExpert:
    def new_queue(self) -> TaskQueue:
        return GroupedQueue()
