"""A model pool: the experts resident in one executor's memory, within a byte budget.
Bookkeeping only; the expert manager decides what enters and leaves."""

from __future__ import annotations

import math
from collections.abc import Callable, Set
from dataclasses import dataclass
from typing import Any

from coserve.manager.eviction import PoolEntry


@dataclass(eq=False, kw_only=True)
class Resident:
    expert: str
    num_bytes: int
    loaded_s: float
    last_used_s: float
    tensors: dict[str, Any] | None = None  # None while loading
    in_use: int = 0  # batches running on it now
    precision: str = "fp32"  # the stored precision its tensors were read from

    @property
    def loading(self) -> bool:
        return self.tensors is None


class ModelPool:
    def __init__(self, budget_bytes: int | None) -> None:
        self.budget_bytes = budget_bytes  # None = unlimited
        self.entries: dict[str, Resident] = {}
        self.used_bytes = 0
        # Told the expert whenever one enters or leaves (the scheduler re-predicts the
        # switch time of its queued group).
        self.on_change: Callable[[str], None] = lambda expert: None
        # Told of every entry that leaves (evicted or dropped), e.g. so the host tier
        # can give an evicted host copy's memory back once nothing copies from it.
        self.on_remove: Callable[[Resident], None] | None = None

    def free_bytes(self) -> float:
        return math.inf if self.budget_bytes is None else self.budget_bytes - self.used_bytes

    def add(self, entry: Resident) -> None:
        assert entry.expert not in self.entries, entry.expert
        self.entries[entry.expert] = entry
        self.used_bytes += entry.num_bytes
        self.on_change(entry.expert)

    def remove(self, expert: str) -> Resident:
        entry = self.entries.pop(expert)
        self.used_bytes -= entry.num_bytes
        self.on_change(expert)
        if self.on_remove is not None:
            self.on_remove(entry)
        return entry

    def evictable(self, is_subsequent: Callable[[str], bool], protected: Set[str]) -> list[PoolEntry]:
        """Entries eviction may choose from: loaded, not in use, not protected."""
        return [
            PoolEntry(e.expert, e.num_bytes, e.loaded_s, e.last_used_s, is_subsequent(e.expert))
            for e in self.entries.values()
            if not e.loading and e.in_use == 0 and e.expert not in protected
        ]
