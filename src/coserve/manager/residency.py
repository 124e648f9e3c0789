"""Residency: which experts each executor's pool (and the host cache) holds, and every
decision about making room. No locks, no I/O, no threads: the expert manager calls it
under its lock and does the loading; the simulator calls it on a virtual clock and
charges the plan's load times. One copy of the logic for both."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence, Set

from coserve.manager.eviction import EvictionContext, EvictionPolicy
from coserve.manager.pool import ModelPool, Resident
from coserve.manager.usage import UsageTracker


class Residency:
    def __init__(
        self,
        *,
        budgets: Sequence[int | None],
        expert_bytes: Mapping[str, int],
        subsequent: Set[str],
        predecessors: Callable[[str], Set[str]],
        evict: EvictionPolicy,
        usage: UsageTracker,
        clock: Callable[[], float],
        host_cache_bytes: int = 0,
        queued: Callable[[], Set[str]] = frozenset,
        shared: Sequence[Sequence[int]] = (),
    ) -> None:
        """`budgets`: each executor's pool (None = unlimited). `shared`: groups of
        executors that share one pool, of the budget `budgets` gives each of them (the
        executors of one CPU: every one of them reads the same RAM). `subsequent`: experts that
        only a preliminary expert's output leads to; `predecessors(e)` names those in the
        static graph (the routing `usage` observes adds more). `queued()`: the experts
        with a task queued on any executor (the scheduler's `queued_experts`); it may
        take the scheduler's lock, which never waits for the caller's."""
        self.pools = _pools(budgets, shared)
        # Executors by pool: pool_index(i) is the index of executor i's pool's first one.
        self._pool_index = [self.pools.index(pool) for pool in self.pools]
        self.host = ModelPool(host_cache_bytes)  # only used in front of CUDA pools
        self.expert_bytes = expert_bytes
        self._subsequent = subsequent
        self._predecessors = predecessors
        self._evict = evict
        self.usage = usage
        self._clock = clock
        self._queued = queued

    def watch(self, changed: Callable[[int | None, str], None]) -> None:
        """Call `changed(executor, expert)` whenever an expert enters or leaves executor
        `executor`'s pool, or the host cache (executor None)."""
        for i, pool in enumerate(self.pools):
            if self._pool_index[i] == i:  # each pool once, told to all its executors
                pool.on_change = functools.partial(_tell_each, changed, [i, *self.sharing(i)])
        self.host.on_change = functools.partial(changed, None)

    # -- what the scheduler reads --------------------------------------------------------
    def resident(self, executor: int) -> Set[str]:
        """Experts in the pool, loading ones included (a live view, no copy)."""
        return self.pools[executor].entries.keys()

    def distinct_pools(self) -> list[ModelPool]:
        """Each pool once (a shared one is in `pools` once per executor sharing it)."""
        return [pool for i, pool in enumerate(self.pools) if self._pool_index[i] == i]

    def pool_index(self, executor: int) -> int:
        """The pool executor `executor` runs from, by the first executor that shares it
        (the executor itself when its pool is its own)."""
        return self._pool_index[executor]

    def sharing(self, executor: int) -> list[int]:
        """The other executors that share `executor`'s pool."""
        pool = self.pools[executor]
        return [i for i, p in enumerate(self.pools) if p is pool and i != executor]

    def in_host(self, expert: str) -> bool:
        return expert in self.host.entries

    def pool_bytes(self, executor: int) -> int:
        return self.pools[executor].used_bytes

    # -- decisions -----------------------------------------------------------------------
    def reserve(self, executor: int, expert: str, protected: Set[str]) -> bool:
        """Make room (evicting by the policy) and publish a loading entry; False if the
        room is held by experts in use, loading or protected."""
        return self._reserve_in(self.pools[executor], expert, protected)

    def reserve_host(self, expert: str) -> bool:
        return self._reserve_in(self.host, expert, frozenset())

    def use(self, entry: Resident) -> Resident:
        entry.in_use += 1
        entry.last_used_s = self._clock()
        return entry

    def release(self, entry: Resident) -> None:
        entry.in_use -= 1
        entry.last_used_s = self._clock()

    # -- internals -----------------------------------------------------------------------
    def _reserve_in(self, pool: ModelPool, expert: str, protected: Set[str]) -> bool:
        size = self.expert_bytes[expert]
        if not self._make_room(pool, expert, size, protected):
            return False
        now = self._clock()
        pool.add(Resident(expert=expert, num_bytes=size, loaded_s=now, last_used_s=now))
        return True

    def _make_room(self, pool: ModelPool, incoming: str, size: int, protected: Set[str]) -> bool:
        need = size - pool.free_bytes()
        if need <= 0:
            return True
        entries = pool.evictable(self._subsequent.__contains__, protected)
        victims = self._evict.victims(entries, int(need), protected, self._context(incoming))
        if victims is None:
            return False
        for victim in victims:
            pool.remove(victim)
        return True

    def _context(self, incoming: str) -> EvictionContext:
        """What eviction knows now. Present: resident anywhere, the incoming expert (its
        group reaches its subsequent experts next) and every queued expert."""
        queued = frozenset(self._queued())
        present = {incoming, *queued}
        for pool in self.distinct_pools():
            present.update(pool.entries)
        static = self._predecessors
        learned = self.usage.predecessors()

        def predecessors(expert: str) -> Set[str]:
            seen = learned.get(expert)
            return static(expert) | seen if seen else static(expert)

        return EvictionContext(self.usage.usage(), predecessors, present, queued)


def _pools(budgets: Sequence[int | None], shared: Sequence[Sequence[int]]) -> list[ModelPool]:
    """One pool per executor, except that each group in `shared` has one between them."""
    pools: list[ModelPool | None] = [None] * len(budgets)
    for group in shared:
        if len({budgets[i] for i in group}) != 1:
            raise ValueError(f"executors {list(group)} share a pool but not its budget")
        pool = ModelPool(budgets[group[0]])
        for i in group:
            if pools[i] is not None:
                raise ValueError(f"executor {i} is in two shared pools")
            pools[i] = pool
    return [pool if pool is not None else ModelPool(b) for pool, b in zip(pools, budgets, strict=True)]


def _tell_each(changed: Callable[[int | None, str], None], executors: Sequence[int],
               expert: str) -> None:
    for i in executors:
        changed(i, expert)
