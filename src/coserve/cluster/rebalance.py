"""Keeping the partition the ingress routes by current: re-partition when usage shifts,
re-home the experts of a replica that is down (and give them back when it returns).
Pure Python (no torch, no Ray, no clock of its own: every call takes `now_s`), so it is
tested with a fake clock; the Ray Serve ingress drives it from its status poll.

Two partitions are kept:
- the **target**: every expert's owner over all N replicas, as if all were up. It starts
  as the partition the replicas were deployed with and changes only on a usage shift.
- the **routing partition**: the target with the experts of the replicas that are down
  re-homed to the others (`partition.rehome`, moving as few as possible). When a replica
  returns, the routing partition is recomputed from the target, so its experts go back to
  it: the experts its restarted engine's prior favours.

A usage shift: the routed first experts over the last `window_s` give each expert's usage
(propagated down the routing graph by the model's label probabilities); each replica's
predicted load is the work its families bring it under that usage (`replica_loads`, the
measure the partition balances). When the load of the most loaded replica that is up over
their mean passes `max_imbalance`, `repartition` recomputes the target moving as few
experts as possible, and the new partition is adopted when its predicted imbalance is at
least `min_gain` lower (one expert carrying more than 1/N of the work cannot be split by
moving experts: then the partition stays, and is checked again next interval).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from coserve.cluster.partition import (
    FamilyPlacement,
    Partition,
    StepPlacement,
    imbalance,
    num_moved,
    reach_probabilities,
)
from coserve.errors import ConfigError

if TYPE_CHECKING:
    from coserve.repository import CoEModel

# Past this max-over-mean predicted load the partition is recomputed. The partition aims
# at 1 + BALANCE_TOLERANCE (1.1); 1.25 leaves room for the sampling noise of a window of
# a few hundred requests, so a steady mix does not move experts back and forth.
MAX_IMBALANCE = 1.25
# A recomputed partition is adopted only when it lowers the predicted imbalance this much:
# below it, moving experts (each a switch on its new owner) buys nothing.
MIN_GAIN = 0.05
WINDOW_S = 60.0  # the routed first experts the usage is estimated from
MIN_REQUESTS = 500  # in the window, before its usage is trusted over the prior
CHECK_INTERVAL_S = 5.0  # how often the usage is checked (a repartition costs milliseconds)


@dataclass(frozen=True)
class RebalanceConfig:
    """When the ingress re-partitions (see the module's docstring)."""

    window_s: float = WINDOW_S
    min_requests: int = MIN_REQUESTS
    max_imbalance: float = MAX_IMBALANCE
    min_gain: float = MIN_GAIN
    check_interval_s: float = CHECK_INTERVAL_S
    follow_usage: bool = True  # False: the target never changes (re-homing still happens)

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.check_interval_s < 0:
            raise ConfigError(f"window_s must be > 0 and check_interval_s >= 0 seconds, got "
                              f"{self.window_s} and {self.check_interval_s}")
        if self.min_requests < 1:
            raise ConfigError(f"min_requests must be at least 1, got {self.min_requests}")
        if self.max_imbalance < 1 or self.min_gain < 0:
            raise ConfigError(f"max_imbalance must be >= 1 (1 = perfectly even) and min_gain "
                              f">= 0, got {self.max_imbalance} and {self.min_gain}")


class ChangeReason(enum.Enum):
    USAGE = "usage"  # the routed mix shifted
    REPLICA_DOWN = "replica_down"  # a replica's experts re-homed to the others
    REPLICA_BACK = "replica_back"  # a replica returned: its experts go back to it


@dataclass(frozen=True)
class PartitionChange:
    """One change of the routing partition."""

    reason: ChangeReason
    partition: Partition
    num_moved: int  # experts whose owner changed
    imbalance_before: float  # predicted max/mean load over the replicas up, before
    imbalance_after: float
    down: frozenset[int]  # the replicas that own nothing in `partition`


class UsageWindow:
    """The first experts of the requests routed over the last `window_s` seconds."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._seen: deque[tuple[float, tuple[str, ...]]] = deque()
        self._counts: dict[str, int] = {}

    def observe(self, first: Sequence[str], now_s: float) -> None:
        self._seen.append((now_s, tuple(first)))
        for expert in first:
            self._counts[expert] = self._counts.get(expert, 0) + 1
        self._expire(now_s)

    def num_requests(self, now_s: float) -> int:
        self._expire(now_s)
        return len(self._seen)

    def first_usage(self, now_s: float) -> dict[str, float]:
        """P(a request starts at each expert) over the window (empty: nothing seen)."""
        num = self.num_requests(now_s)
        return {e: c / num for e, c in self._counts.items() if c > 0} if num else {}

    def _expire(self, now_s: float) -> None:
        while self._seen and self._seen[0][0] < now_s - self.window_s:
            _, first = self._seen.popleft()
            for expert in first:
                self._counts[expert] -= 1


def usage_from_first(model: CoEModel, first_usage: Mapping[str, float],
                     reach: Callable[[str], Mapping[str, float]] | None = None) -> dict[str, float]:
    """Every expert's usage from its preliminary experts': P(start at p) x P(reach e | p),
    summed over p (capped at one)."""
    reach = reach or (lambda e: reach_probabilities(model, [e]))
    usage = dict.fromkeys(model.experts, 0.0)
    for root, p in first_usage.items():
        for expert, q in reach(root).items():
            usage[expert] = min(1.0, usage[expert] + p * q)
    return usage


class Rebalancer:
    """The ingress's partition keeper: `observe` each routed request, `set_down` after
    each status poll, `check` the usage now and then; each returns the change it made, if
    any. `partition` is what requests are routed by. Not thread-safe: the caller locks."""

    def __init__(self, model: CoEModel, target: Partition, config: RebalanceConfig | None = None,
                 usage: Mapping[str, float] | None = None,
                 cost: Callable[[str], float] | None = None,
                 placement: FamilyPlacement | StepPlacement | None = None) -> None:
        """`cost(e)`: what one request visiting expert e costs its replica (default: e's
        bytes, the partition's default); an expert's work is its usage x its cost, under
        whichever usage is current. `placement`: how experts are placed, re-homed and
        weighed (default FamilyPlacement: replicas run whole requests; StepPlacement with
        step handoff)."""
        self.model, self.config, self._cost = model, config or RebalanceConfig(), cost
        self.placement = placement or FamilyPlacement()
        self._prior = dict(model.usage if usage is None else usage)
        self.target = target
        self.partition = target
        self.down: frozenset[int] = frozenset()
        self.window = UsageWindow(self.config.window_s)
        self._reach: dict[str, Mapping[str, float]] = {}
        self._last_check_s: float | None = None
        self.imbalance = self._imbalance(target, self._prior)

    def observe(self, first: Sequence[str], now_s: float) -> None:
        self.window.observe(first, now_s)

    def usage(self, now_s: float) -> dict[str, float]:
        """The window's usage once it holds `min_requests`, else the prior."""
        if self.window.num_requests(now_s) < self.config.min_requests:
            return self._prior
        return usage_from_first(self.model, self.window.first_usage(now_s), self._reach_of)

    def set_down(self, down: Collection[int], now_s: float) -> PartitionChange | None:
        """The replicas now down: re-home their experts, or give a returned one back its
        own. With every replica down nothing changes (there is nowhere to re-home to)."""
        down = frozenset(down)
        if down == self.down or len(down) >= self.target.num_replicas:
            return None
        usage = self.usage(now_s)
        before = self._imbalance(self.partition, usage)
        new = self.placement.rehome(self.target, self.model, usage, down, self._weight(usage))
        reason = ChangeReason.REPLICA_DOWN if down - self.down else ChangeReason.REPLICA_BACK
        self.down = down
        return self._adopt(reason, new, usage, before)

    def check(self, now_s: float) -> PartitionChange | None:
        """Every `check_interval_s`: re-partition when the usage shifted (module doc)."""
        config = self.config
        if self._last_check_s is not None and now_s - self._last_check_s < config.check_interval_s:
            return None
        self._last_check_s = now_s
        if not config.follow_usage or self.window.num_requests(now_s) < config.min_requests:
            return None
        usage = self.usage(now_s)
        before = self.imbalance = self._imbalance(self.partition, usage)
        if before <= config.max_imbalance:
            return None
        target = self.placement.repartition(self.target, self.model, usage, self._weight(usage))
        new = self.placement.rehome(target, self.model, usage, self.down, self._weight(usage))
        if self._imbalance(new, usage) > before - config.min_gain:
            return None  # moving experts cannot balance it (one family is too heavy)
        self.target = target
        return self._adopt(ChangeReason.USAGE, new, usage, before)

    def _adopt(self, reason: ChangeReason, new: Partition, usage: Mapping[str, float],
               before: float) -> PartitionChange:
        old, self.partition = self.partition, new
        self.imbalance = self._imbalance(new, usage)
        return PartitionChange(reason, new, num_moved(old, new), before, self.imbalance, self.down)

    def _imbalance(self, partition: Partition, usage: Mapping[str, float]) -> float:
        up = [r for r in range(partition.num_replicas) if r not in self.down] or None
        return imbalance(self.placement.loads(self.model, partition, usage, self._weight(usage)),
                         up)

    def _weight(self, usage: Mapping[str, float]) -> Callable[[str], float] | None:
        """The partition's weight under `usage` (None: its default, usage x bytes)."""
        cost = self._cost
        if cost is None:
            return None
        return lambda expert: usage.get(expert, 0.0) * cost(expert)

    def _reach_of(self, expert: str) -> Mapping[str, float]:
        if expert not in self._reach:
            self._reach[expert] = reach_probabilities(self.model, [expert])
        return self._reach[expert]
