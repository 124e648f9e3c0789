"""Policy sets: coserve and the baselines, each a bundle of small policy objects the
engine and the simulator run unchanged. A baseline is a different bundle, never a branch."""

from __future__ import annotations

from dataclasses import dataclass

from coserve.errors import ConfigError
from coserve.manager.eviction import (
    EvictionPolicy,
    FifoEviction,
    LruEviction,
    TwoStageEviction,
)
from coserve.manager.placement import PlacementPolicy, ReplicateAll, RoundRobinByUsage
from coserve.scheduler.arrange import ArrangePolicy, FifoArrange, GroupByExpertArrange
from coserve.scheduler.assign import (
    AssignPolicy,
    MinMaxLatencyAssign,
    RoundRobinAssign,
    ShortestQueueAssign,
)

POLICY_NAMES = ("samba", "samba-fifo", "samba-parallel", "coserve", "all-resident")
DEFAULT_MAX_DEFER_S = 5.0


@dataclass(frozen=True)
class PolicySet:
    name: str
    assign: AssignPolicy
    arrange: ArrangePolicy
    evict: EvictionPolicy
    place: PlacementPolicy
    one_executor_per_processor: bool = False  # samba runs one worker per processor
    unlimited_budget: bool = False  # all-resident: the ceiling any policy can reach


def policy_set(name: str, max_defer_s: float = DEFAULT_MAX_DEFER_S) -> PolicySet:
    """A fresh policy set by name (policies may hold state, so never share one)."""
    place = RoundRobinByUsage()
    grouped = GroupByExpertArrange(max_defer_s)
    sets = {
        "samba": lambda: PolicySet(
            name, ShortestQueueAssign(), FifoArrange(), LruEviction(), place, True
        ),
        "samba-fifo": lambda: PolicySet(
            name, ShortestQueueAssign(), FifoArrange(), FifoEviction(), place, True
        ),
        "samba-parallel": lambda: PolicySet(
            name, RoundRobinAssign(), FifoArrange(), LruEviction(), place
        ),
        "coserve": lambda: PolicySet(
            name, MinMaxLatencyAssign(), grouped, TwoStageEviction(), place
        ),
        "all-resident": lambda: PolicySet(
            name, MinMaxLatencyAssign(), grouped, TwoStageEviction(), ReplicateAll(),
            unlimited_budget=True,
        ),
    }
    if name not in sets:
        raise ConfigError(f"unknown policy {name!r}; choose one of {', '.join(POLICY_NAMES)}")
    return sets[name]()
