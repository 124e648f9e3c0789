"""Assignment: which executor queue a new task joins.

`MinMaxLatencyAssign` is coserve's: predict, for every queue, the latency this task adds
(execution K*n+B, or only K when the queue already holds the same expert, plus the switch
latency unless the expert is resident there or already queued there) and pick the queue
that minimises the longest queue time over all executors; ties go to the smallest added
latency. The baselines are other objects behind the same `assign` method."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Protocol

from coserve.errors import ConfigError
from coserve.plan import CostModel


@dataclass(frozen=True)
class QueueView:
    """What assignment may know of one executor."""

    processor: str
    backlog_s: float  # predicted time until this executor drains its queue
    queued: Mapping[str, int]  # expert -> number of queued tasks
    resident: Set[str]  # experts in this executor's pool (or being loaded into it)
    pool: int = -1  # which pool it runs from: queues of one CPU share it (-1: its own)

    @property
    def num_queued(self) -> int:
        return sum(self.queued.values())


class AssignPolicy(Protocol):
    def assign(
        self, expert: str, queues: Sequence[QueueView], costs: CostModel, in_host: bool
    ) -> int:
        """Index of the queue that takes a new task for `expert`. `in_host` says whether
        the expert sits in the host RAM cache (a cheaper switch than storage)."""
        ...


def added_latency_s(expert: str, queue: QueueView, costs: CostModel, in_host: bool) -> float:
    """Predicted latency a task for `expert` adds to `queue`."""
    if queue.queued.get(expert, 0) > 0:
        # It joins the batch of the tasks already queued: no B, no switch.
        return costs.per_item_s(expert, queue.processor)
    exec_s = costs.exec_s(expert, queue.processor, 1)
    if expert in queue.resident:
        return exec_s
    return exec_s + costs.load_s(expert, queue.processor, in_host)


class MinMaxLatencyAssign:
    """coserve: minimise the longest predicted queue time; ties to the smallest added latency."""

    def assign(
        self, expert: str, queues: Sequence[QueueView], costs: CostModel, in_host: bool
    ) -> int:
        added = [added_latency_s(expert, q, costs, in_host) for q in queues]
        backlogs = [q.backlog_s for q in queues]

        def score(i: int) -> tuple[float, float]:
            longest = max(
                b + (added[i] if j == i else 0.0) for j, b in enumerate(backlogs)
            )
            return (longest, added[i])

        return min(range(len(queues)), key=score)


class ShortestQueueAssign:
    """samba: one executor per processor; among processors, the one with fewest queued tasks."""

    def assign(
        self, expert: str, queues: Sequence[QueueView], costs: CostModel, in_host: bool
    ) -> int:
        return min(range(len(queues)), key=lambda i: queues[i].num_queued)


class RoundRobinAssign:
    """samba-parallel: coserve's executor count, tasks dealt round-robin."""

    def __init__(self) -> None:
        self._next = itertools.count()

    def assign(
        self, expert: str, queues: Sequence[QueueView], costs: CostModel, in_host: bool
    ) -> int:
        return next(self._next) % len(queues)


class AffinityMinMaxAssign:
    """coserve: the paper's min-max rule, except that a second copy of an expert must be
    worth it. A queue that would load `expert` while another executor holds it or has it
    queued is charged more than the load: the copy takes pool room, so it evicts about
    its own bytes of experts that are loaded again later, and the expert's group splits
    in two. The charge is `copy_loads` loads, at most `copy_wait_s` (so a holder that far
    behind shares the expert after all). Simulated on board A's trace (20%, sata-530, 2
    executors) this cut switches from 288 to 94 (the floor is about 82)."""

    def __init__(self, copy_loads: float, copy_wait_s: float) -> None:
        if copy_loads < 0 or copy_wait_s < 0:
            raise ConfigError(f"copy_loads and copy_wait_s must be >= 0, got {copy_loads} "
                              f"and {copy_wait_s}")
        self.copy_loads = copy_loads
        self.copy_wait_s = copy_wait_s

    def assign(
        self, expert: str, queues: Sequence[QueueView], costs: CostModel, in_host: bool
    ) -> int:
        added = [added_latency_s(expert, q, costs, in_host) for q in queues]
        held = [_holds(expert, q, queues) for q in queues]
        if any(held) and not all(held):
            added = [a if h else a + self._copy_s(expert, q, costs, in_host)
                     for a, h, q in zip(added, held, queues, strict=True)]
        backlogs = [q.backlog_s for q in queues]

        def score(i: int) -> tuple[float, float]:
            longest = max(b + (added[i] if j == i else 0.0) for j, b in enumerate(backlogs))
            return (longest, added[i])

        return min(range(len(queues)), key=score)

    def _copy_s(self, expert: str, queue: QueueView, costs: CostModel, in_host: bool) -> float:
        """What a second copy, or a group split over two queues of one pool, costs."""
        load_s = costs.load_s(expert, queue.processor, in_host)
        return min(self.copy_wait_s, self.copy_loads * load_s)


def _holds(expert: str, queue: QueueView, queues: Sequence[QueueView]) -> bool:
    """Whether `queue` holds `expert`'s group: queued there, or resident in its pool with
    no queue sharing that pool holding its tasks (joining a queue beside them would split
    the group in two, each half needing the expert resident at its own time)."""
    if queue.queued.get(expert, 0) > 0:
        return True
    if expert not in queue.resident:
        return False
    return queue.pool < 0 or not any(
        q is not queue and q.pool == queue.pool and q.queued.get(expert, 0) > 0 for q in queues)
