"""The expert manager: model pools with byte budgets, initial placement, eviction."""

from coserve.manager.eviction import (
    EvictionContext,
    EvictionPolicy,
    FifoEviction,
    LruEviction,
    PoolEntry,
    TwoStageEviction,
)
from coserve.manager.placement import PlacementPolicy, ReplicateAll, RoundRobinByUsage

__all__ = [
    "EvictionContext",
    "EvictionPolicy",
    "FifoEviction",
    "LruEviction",
    "PlacementPolicy",
    "PoolEntry",
    "ReplicateAll",
    "RoundRobinByUsage",
    "TwoStageEviction",
]
