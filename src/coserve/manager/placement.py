"""Initial placement: which experts each executor's pool holds before the first request."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol


class PlacementPolicy(Protocol):
    def place(
        self, usage: Mapping[str, float], expert_bytes: Mapping[str, int], budgets: Sequence[int]
    ) -> list[list[str]]:
        """For each pool (by its byte budget), the experts to load into it."""
        ...


def by_descending_usage(usage: Mapping[str, float], expert_bytes: Mapping[str, int]) -> list[str]:
    # Ties broken by name so placement is deterministic.
    return sorted(expert_bytes, key=lambda e: (-usage.get(e, 0.0), e))


class RoundRobinByUsage:
    """coserve: deal experts round-robin over pools in descending usage probability until
    each pool is full; an expert that does not fit its turn's pool tries the next pools."""

    def place(
        self, usage: Mapping[str, float], expert_bytes: Mapping[str, int], budgets: Sequence[int]
    ) -> list[list[str]]:
        placed: list[list[str]] = [[] for _ in budgets]
        free = list(budgets)
        turn = 0
        for expert in by_descending_usage(usage, expert_bytes):
            size = expert_bytes[expert]
            for k in range(len(budgets)):
                i = (turn + k) % len(budgets)
                if size <= free[i]:
                    placed[i].append(expert)
                    free[i] -= size
                    turn = i + 1
                    break
        return placed


class ReplicateAll:
    """all-resident: every pool holds every expert (the budget is unlimited)."""

    def place(
        self, usage: Mapping[str, float], expert_bytes: Mapping[str, int], budgets: Sequence[int]
    ) -> list[list[str]]:
        ordered = by_descending_usage(usage, expert_bytes)
        return [list(ordered) for _ in budgets]
