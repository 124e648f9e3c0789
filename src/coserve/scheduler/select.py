"""Group selection: which queued group an executor serves when it takes work.

The paper (and samba) serve the head of the queue. coserve chooses:
the group that serves the most tasks per second of its switch and execution (a resident
group needs no switch, so it goes first; a load is spent on a big group while small ones
grow), with that rate raised up to twice as a group's earliest deadline comes within
`risk_s` of what serving it takes and passes: waiting is bounded by each request's
latency target, not by the queue's length, and grouping holds at any length.
A pure policy on a `SelectContext`; the engine and the simulator share it."""

from __future__ import annotations

from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass
from typing import Protocol

from coserve.errors import ConfigError
from coserve.plan import CostModel
from coserve.scheduler.groups import GroupView


@dataclass(frozen=True)
class SelectContext:
    now_s: float
    processor: str
    resident: Set[str]  # experts in this executor's pool, loading ones included
    costs: CostModel
    in_host: Callable[[str], bool]
    batch_size: Callable[[str, int], int]  # (expert, tasks queued) -> tasks in its next batch


class SelectPolicy(Protocol):
    def select(self, groups: Sequence[GroupView], ctx: SelectContext) -> str:
        """The expert whose group is served next (groups is never empty)."""
        ...


class HeadSelect:
    """The head of the queue (a list queue offers only its head)."""

    def select(self, groups: Sequence[GroupView], ctx: SelectContext) -> str:
        return groups[0].expert


class DeadlineAwareSelect:
    """coserve's selection. A group is at risk when less than `risk_s` plus the time to
    serve its next batch is left before its earliest deadline; its urgency grows from 1 to
    2 over the next `risk_s`."""

    def __init__(self, risk_s: float) -> None:
        if risk_s < 0:
            raise ConfigError(f"risk_s must be >= 0 seconds, got {risk_s}")
        self.risk_s = risk_s

    def select(self, groups: Sequence[GroupView], ctx: SelectContext) -> str:
        return max(groups, key=lambda g: (*self._rank(g, ctx), -g.deadline_s)).expert

    def _rank(self, g: GroupView, ctx: SelectContext) -> tuple[bool, float]:
        """(resident or at risk, tasks per second raised by urgency): a group that needs
        a switch and has time to grow waits while there is other work."""
        overdue_s = ctx.now_s + _serve_s(g, ctx) + self.risk_s - g.deadline_s
        # At most twice as urgent: once everything is late (a long backlog), a tiny group
        # that is only a little later must not win over a big one (board A, 20,000
        # queued, simulated: 261 switches uncapped, 201 capped at 2x).
        urgency = 1.0 + min(max(0.0, overdue_s) / max(self.risk_s, 1e-9), 1.0)
        return (g.expert in ctx.resident or overdue_s > 0, _tasks_per_s(g, ctx) * urgency)


def _switch_s(g: GroupView, ctx: SelectContext) -> float:
    if g.expert in ctx.resident:
        return 0.0
    return ctx.costs.load_s(g.expert, ctx.processor, ctx.in_host(g.expert))


def _serve_s(g: GroupView, ctx: SelectContext) -> float:
    n = ctx.batch_size(g.expert, g.num_tasks)
    return _switch_s(g, ctx) + ctx.costs.exec_s(g.expert, ctx.processor, n)


def _tasks_per_s(g: GroupView, ctx: SelectContext) -> float:
    """Tasks the whole group serves per second of its switch and all its batches: once
    an expert is loaded its group is finished, so a switch is spent on all of it, and the
    rest of a resident group (no switch) goes before a group that needs one."""
    batch = ctx.batch_size(g.expert, g.num_tasks)
    full, rest = divmod(g.num_tasks, batch)
    exec_s = full * ctx.costs.exec_s(g.expert, ctx.processor, batch)
    if rest:
        exec_s += ctx.costs.exec_s(g.expert, ctx.processor, rest)
    return g.num_tasks / max(_switch_s(g, ctx) + exec_s, 1e-9)
