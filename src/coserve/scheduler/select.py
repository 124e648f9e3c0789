"""Group selection: which queued group an executor serves when it takes work.

The paper (and samba) serve the head of the queue. coserve chooses, in this order:
1. groups whose expert is resident here (no switch): the most tasks per second of
   execution over the whole group, raised up to twice as its deadline comes within
   `risk_s` of what serving it takes and passes (capped, so that once everything is
   late a small group does not win over a big one). When nothing arrives (a backlog),
   those fed by predecessors with tasks queued anywhere come after the others: they
   will grow, and a group served before its feeders drain is served, and often loaded,
   again for the rest (simulated, 20%, sata-530, cpu:2: board A's backlog 544 -> 582
   img/s, synth's 529 -> 589, synth 9,000 queued 1014 -> 1193 req/s; streaming
   unchanged, since new requests keep every group fed);
2. groups that need a switch: earliest deadline (the oldest, grown longest) first;
3. last, such groups whose predecessors (experts routing to them) still have tasks
   queued anywhere: expert dependency says they will grow, so their load waits.
While requests stream in and the queue is short, a group that needs a switch may be held
back to grow (`SwitchHold`): it is neither served nor prefetched until it ripens, and
`wake_s` says when an idle executor should look again.
Grouping holds at any queue length. Deadlines order the groups that need a switch;
they do not let a small group preempt resident work (measured: that cost more
switches and throughput on both the board and the synth shape than it saved in misses),
except past the starvation bound: a group whose deadline is more than `starvation_s`
before the chosen group's goes first, so sustained load cannot hold a group back forever
(simulated, board A and synth traces repeated 4x: steady-state completions 73 -> 241 and
97 -> 191 img/s; without the bound, starved groups were served only once arrivals ended).
A pure policy on a `SelectContext`; the engine and the simulator share it."""

from __future__ import annotations

import heapq
import math
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
    # whether an expert that routes to this one has tasks queued anywhere: its group grows
    fed: Callable[[str], bool] = lambda expert: False
    backlog_s: float = 0.0  # predicted time until this executor drains its queue
    newest_deadline_s: float = -math.inf  # the latest deadline of any task queued so far


class SelectPolicy(Protocol):
    def order(self, groups: Sequence[GroupView], ctx: SelectContext, limit: int) -> list[str]:
        """The experts of the first `limit` groups in the order they would be served as
        things stand now (groups is never empty): the first is served next, the rest are
        what prefetching may load ahead. Empty: every group is held for now."""
        ...

    def wake_s(self, groups: Sequence[GroupView], ctx: SelectContext) -> float | None:
        """When a held group may be served at the latest (None: none is held); new
        tasks may ripen one sooner."""
        ...

    def quiet(self, ctx: SelectContext) -> bool:
        """Whether no request has arrived for a while (a backlog, or a stream's tail):
        what is queued is then all the work there is, and an expert no queued task can
        reach is done with."""
        ...


class HeadSelect:
    """The head of the queue (a list queue offers only its head)."""

    def order(self, groups: Sequence[GroupView], ctx: SelectContext, limit: int) -> list[str]:
        return [g.expert for g in groups[:limit]]

    def wake_s(self, groups: Sequence[GroupView], ctx: SelectContext) -> float | None:
        return None  # never holds

    def quiet(self, ctx: SelectContext) -> bool:
        return False  # it knows nothing of arrivals


class DeadlineAwareSelect:
    """coserve's selection. A group is at risk when less than `risk_s` plus the time to
    serve its next batch is left before its earliest deadline; its urgency grows from 1 to
    2 over the next `risk_s`."""

    def __init__(self, risk_s: float, starvation_s: float | None = None,
                 hold: SwitchHold | None = None) -> None:
        """`starvation_s`: the starvation bound. A group whose earliest deadline is more
        than this before the deadline of the group chosen goes first (earliest deadline
        first): under sustained load, resident groups that keep receiving tasks cannot
        hold back one that needs a switch (or a small one) forever. None: no bound.
        `hold`: when a group that needs a switch is worth its switch yet (None: always)."""
        if risk_s < 0:
            raise ConfigError(f"risk_s must be >= 0 seconds, got {risk_s}")
        if starvation_s is not None and starvation_s < 0:
            raise ConfigError(f"starvation_s must be >= 0 seconds, got {starvation_s}")
        self.risk_s = risk_s
        self.starvation_s = starvation_s
        self.hold = hold

    def order(self, groups: Sequence[GroupView], ctx: SelectContext, limit: int) -> list[str]:
        # This runs on every take over every queued group: resident groups are scored,
        # the others only ordered by deadline, and `fed` is asked only until enough are
        # found (the same order as ranking every group by `_key`).
        resident = [g for g in groups if g.expert in ctx.resident]
        quiet = self.quiet(ctx)
        ranked = heapq.nlargest(limit, resident, key=lambda g: self._key(g, ctx, quiet))
        if len(ranked) < limit:
            others = sorted((g for g in groups if g.expert not in ctx.resident
                             and self._ripe(g, ctx)), key=lambda g: g.deadline_s)
            ranked += _unfed_first(others, ctx, limit - len(ranked))
        if not ranked:
            return []
        if self.starvation_s is not None:
            # In a backlog every deadline is within the submission time of the others:
            # nothing is starved and grouping holds. Streaming, a starved group's
            # deadline falls behind the groups that keep being served.
            bound_s = ranked[0].deadline_s - self.starvation_s
            starved = [g for g in groups if g.deadline_s < bound_s]
            if starved:
                first = heapq.nlargest(limit, starved, key=lambda g: self._key(g, ctx, quiet))
                chosen = {g.expert for g in first}
                ranked = first + [g for g in ranked if g.expert not in chosen]
        return [g.expert for g in ranked[:limit]]

    def wake_s(self, groups: Sequence[GroupView], ctx: SelectContext) -> float | None:
        if self.hold is None:
            return None
        ripe_at = (self.hold.ripe_at(g, ctx) for g in groups if g.expert not in ctx.resident)
        return min((t for t in ripe_at if t > ctx.now_s), default=None)

    def quiet(self, ctx: SelectContext) -> bool:
        return self.hold is not None and self.hold.quiet(ctx)

    def _ripe(self, g: GroupView, ctx: SelectContext) -> bool:
        return self.hold is None or ctx.now_s >= self.hold.ripe_at(g, ctx)

    def _key(self, g: GroupView, ctx: SelectContext, quiet: bool = False) -> tuple[int, float, float]:
        """(level, score, -deadline), highest first. Level 3, resident here: the most tasks
        per second, raised by urgency as its deadline nears; when nothing arrives
        (`quiet`: a backlog), only those not fed by queued predecessors, and the fed ones
        at level 2 (they will grow: served now, they are served again). Level 1, needs a
        switch: the oldest (earliest deadline) first. Level 0, needs a switch and is fed
        by queued predecessors: last."""
        if g.expert not in ctx.resident:
            # Expert dependency: a group that needs a switch while the experts feeding it
            # still have tasks queued will grow; it waits for them unless nothing else
            # can run (even when late: measured, letting late fed groups go first cost
            # board A a fifth of its backlog throughput). Otherwise the oldest goes
            # first: it has grown the longest, and its deadline is the nearest.
            return (0 if ctx.fed(g.expert) else 1), -g.deadline_s, -g.deadline_s
        level = 2 if quiet and ctx.fed(g.expert) else 3
        return level, self._rate(g, ctx), -g.deadline_s

    def _rate(self, g: GroupView, ctx: SelectContext) -> float:
        """Tasks per second of execution over the whole resident group, by urgency."""
        batch = ctx.batch_size(g.expert, g.num_tasks)
        batch_s = ctx.costs.exec_s(g.expert, ctx.processor, batch)
        overdue_s = ctx.now_s + batch_s + self.risk_s - g.deadline_s
        # At most twice as urgent: once everything is late (a long backlog), a tiny group
        # that is only a little later must not win over a big one (board A, 20,000
        # queued, simulated: 261 switches uncapped, 201 capped at 2x).
        urgency = 1.0 + min(max(0.0, overdue_s) / max(self.risk_s, 1e-9), 1.0)
        # Tasks the whole group serves per second of all its batches: once an expert is
        # chosen its group is finished.
        return g.num_tasks / max(_group_exec_s(g, ctx), 1e-9) * urgency


class SwitchHold:
    """When a group that needs a switch is worth it. With requests streaming in slower
    than the executors run, queues are short and an executor that switched for every
    lone task read its pool over and over (board A at one image per 8 ms, simulated:
    536 switches, 9.7 GB and 199 answers late against 249 switches and 4.0 GB at 4 ms);
    coserve then holds a small group back so that it grows. A group is served (ripe)
    once any of:
    - its tasks take at least `amortize` times its switch to execute (the load pays);
    - its oldest task has waited `hold_s` (its deadline is `target_s` after it arrived);
    - its deadline is within `risk_s` plus its switch and execution of now;
    - the executor's queue holds half of `hold_s` of predicted work or more (groups
      grow while it works: a backlog, an overloaded line; with all of `hold_s`, the
      overloaded synth trace lost 4% of its throughput), or no request has arrived for
      `quiet_s` (nothing will grow it: the tail of a backlog).
    Held groups are not prefetched either; an idle executor wakes when one ripens (or a
    task arrives)."""

    def __init__(self, hold_s: float, target_s: float, risk_s: float,
                 amortize: float = 1.0, quiet_s: float = 0.0) -> None:
        if not 0 <= hold_s <= target_s or risk_s < 0 or amortize < 0 or quiet_s < 0:
            raise ConfigError(f"a switch hold needs 0 <= hold_s <= target_s and risk_s, "
                              f"amortize, quiet_s >= 0; got {hold_s}, {target_s}, {risk_s}, "
                              f"{amortize}, {quiet_s}")
        self.hold_s, self.target_s, self.risk_s = hold_s, target_s, risk_s
        self.amortize, self.quiet_s = amortize, quiet_s

    def ripe_at(self, g: GroupView, ctx: SelectContext) -> float:
        """When `g` is served at the latest (now or earlier: ripe)."""
        if ctx.backlog_s >= self.hold_s / 2 or not math.isfinite(g.deadline_s):
            return ctx.now_s
        quiet_at = self._quiet_at(ctx)
        if quiet_at <= ctx.now_s:
            return ctx.now_s
        load_s = ctx.costs.load_s(g.expert, ctx.processor, ctx.in_host(g.expert))
        exec_s = _group_exec_s(g, ctx)
        if exec_s >= self.amortize * load_s:
            return ctx.now_s
        waited_at = g.deadline_s - self.target_s + self.hold_s
        return min(waited_at, quiet_at, g.deadline_s - self.risk_s - load_s - exec_s)


    def quiet(self, ctx: SelectContext) -> bool:
        """No request has arrived for `quiet_s`."""
        return self._quiet_at(ctx) <= ctx.now_s

    @staticmethod
    def _quiet_at_of(ctx: SelectContext, target_s: float, quiet_s: float) -> float:
        # The newest request arrived a target before its deadline.
        return ctx.newest_deadline_s - target_s + quiet_s

    def _quiet_at(self, ctx: SelectContext) -> float:
        return self._quiet_at_of(ctx, self.target_s, self.quiet_s)


def _group_exec_s(g: GroupView, ctx: SelectContext) -> float:
    """Execution of the whole group, in batches of the size it would be split into."""
    batch = ctx.batch_size(g.expert, g.num_tasks)
    full, rest = divmod(g.num_tasks, batch)
    group_s = full * ctx.costs.exec_s(g.expert, ctx.processor, batch)
    if rest:
        group_s += ctx.costs.exec_s(g.expert, ctx.processor, rest)
    return group_s


def _unfed_first(by_deadline: Sequence[GroupView], ctx: SelectContext,
                 limit: int) -> list[GroupView]:
    """The first `limit` groups needing a switch: earliest deadline first, those not fed
    by queued predecessors before those that are."""
    unfed: list[GroupView] = []
    fed: list[GroupView] = []
    for g in by_deadline:
        (fed if ctx.fed(g.expert) else unfed).append(g)
        if len(unfed) == limit:
            break
    return (unfed + fed)[:limit]
