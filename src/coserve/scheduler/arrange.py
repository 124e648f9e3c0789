"""Arrangement: where a new task goes inside its executor's queue.

coserve places it right behind the last queued task of the same expert, so each expert is
loaded at most once per group, but never so that a task it overtakes would have been
delayed by overtaking for more than `max_defer_s` in all (the starvation bound). The
bound is on the delay caused by overtaking, not on waiting: in a backlog every task has
waited since the start, and a bound on waiting would end grouping after `max_defer_s`.
FIFO appends."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from coserve.errors import ConfigError
from coserve.scheduler.task import Task


class ArrangePolicy(Protocol):
    def position(self, queue: Sequence[Task], expert: str, now_s: float, added_s: float) -> int:
        """Index at which a new task for `expert`, which delays every task behind it by
        `added_s`, is inserted into `queue`."""
        ...


class FifoArrange:
    def position(self, queue: Sequence[Task], expert: str, now_s: float, added_s: float) -> int:
        return len(queue)


class GroupByExpertArrange:
    def __init__(self, max_defer_s: float) -> None:
        if max_defer_s < 0:
            raise ConfigError(f"max_defer_s must be >= 0 seconds, got {max_defer_s}")
        self.max_defer_s = max_defer_s

    def position(self, queue: Sequence[Task], expert: str, now_s: float, added_s: float) -> int:
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
