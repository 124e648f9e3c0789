"""Eviction: which resident experts leave a pool to make room for an incoming one.

coserve's `TwoStageEviction` uses expert dependency and usage probability, not recency:
1. subsequent experts that no request can reach soon: none of their predecessors is
   present (resident in any pool, incoming, or queued on any executor) and none of
   their own tasks is queued, largest first, until the incoming expert fits. An expert
   with no known predecessor (reached only through a routing callable not yet seen
   routing to it) is not judged unreachable;
2. then the rest in ascending usage probability.
Protected experts (in use, or needed by a task queued ahead of the incoming one) never
leave. The baselines (LRU, FIFO) are other objects behind the same method."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class PoolEntry:
    """What eviction may know of one resident expert."""

    expert: str
    num_bytes: int
    loaded_s: float
    last_used_s: float
    subsequent: bool  # a subsequent expert (reached only through another expert)


@dataclass(frozen=True)
class EvictionContext:
    usage: Mapping[str, float]  # P(a request uses expert e)
    predecessors: Callable[[str], Set[str]]  # experts that route to e (static + observed)
    # Experts a request may be at soon: resident in any pool (loading included), the
    # incoming one, and every expert with a task queued on any executor.
    present: Set[str]
    queued: Set[str] = frozenset()  # experts with a task queued on any executor


class EvictionPolicy(Protocol):
    def victims(
        self,
        entries: Sequence[PoolEntry],
        need_bytes: int,
        protected: Set[str],
        ctx: EvictionContext,
    ) -> list[str] | None:
        """Experts to evict, in order, freeing at least `need_bytes`; None if impossible
        without touching a protected expert."""
        ...


def _take_until(candidates: Iterable[PoolEntry], need_bytes: int, taken: list[str]) -> int:
    """Append candidates to `taken` until `need_bytes` are freed; return bytes still needed."""
    for entry in candidates:
        if need_bytes <= 0:
            break
        taken.append(entry.expert)
        need_bytes -= entry.num_bytes
    return need_bytes


def _ordered_victims(
    entries: Sequence[PoolEntry], need_bytes: int, protected: Set[str], key: Callable
) -> list[str] | None:
    taken: list[str] = []
    free = [e for e in entries if e.expert not in protected]
    left = _take_until(sorted(free, key=key), need_bytes, taken)
    return taken if left <= 0 else None


def _unreachable(entry: PoolEntry, ctx: EvictionContext) -> bool:
    """Stage 1: a subsequent expert no request can reach soon."""
    if not entry.subsequent or entry.expert in ctx.queued:
        return False
    predecessors = ctx.predecessors(entry.expert)
    # None known yet: the routing callable may lead to it at any time, so usage decides.
    return bool(predecessors) and not (predecessors & ctx.present)


class TwoStageEviction:
    """`queued_last`: stage 2 takes experts with no task queued before any that has one
    (each in ascending usage); a queued expert is needed for certain, an idle one only
    perhaps. Off: the paper's stage 2, usage alone."""

    def __init__(self, queued_last: bool = False) -> None:
        self.queued_last = queued_last

    def victims(
        self,
        entries: Sequence[PoolEntry],
        need_bytes: int,
        protected: Set[str],
        ctx: EvictionContext,
    ) -> list[str] | None:
        if need_bytes <= 0:
            return []
        free = [e for e in entries if e.expert not in protected]
        unreachable = [e for e in free if _unreachable(e, ctx)]
        taken: list[str] = []
        left = _take_until(sorted(unreachable, key=lambda e: -e.num_bytes), need_bytes, taken)
        rest = sorted(
            (e for e in free if e.expert not in taken),
            key=lambda e: (self.queued_last and e.expert in ctx.queued,
                           ctx.usage.get(e.expert, 0.0), -e.num_bytes),
        )
        left = _take_until(rest, left, taken)
        return taken if left <= 0 else None


class _OrderedEviction:
    """Evict unprotected entries in ascending order of `order_key` until enough is free."""

    @staticmethod
    def order_key(entry: PoolEntry) -> float:
        raise NotImplementedError

    def victims(
        self,
        entries: Sequence[PoolEntry],
        need_bytes: int,
        protected: Set[str],
        ctx: EvictionContext,
    ) -> list[str] | None:
        return _ordered_victims(entries, need_bytes, protected, key=self.order_key)


class LruEviction(_OrderedEviction):
    """samba: least recently used first."""

    @staticmethod
    def order_key(entry: PoolEntry) -> float:
        return entry.last_used_s


class FifoEviction(_OrderedEviction):
    """samba-fifo: earliest loaded first."""

    @staticmethod
    def order_key(entry: PoolEntry) -> float:
        return entry.loaded_s
