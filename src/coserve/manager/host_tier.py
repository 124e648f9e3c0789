"""The host-RAM tier in front of device pools: host copies of experts, filled from
storage with single flight (executors needing one expert share one storage read), kept
within the host cache budget (`Residency.host`), and freed once nothing uses them.

A host copy is held by references: the host cache's own (while the expert is in the
cache), and one per device copy in progress. Its memory (an arena extent) goes back
when the last reference is released, so evicting an expert from the host cache never
pulls memory from under a copy still running."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from coserve.manager.pool import Resident
from coserve.manager.residency import Residency
from coserve.stats import StatsRecorder
from coserve.types import FULL_PRECISION, STORAGE_TO_HOST


class HostCopyLike(Protocol):
    tensors: dict[str, Any]

    def release(self) -> None: ...


# (expert, stored precision) -> a host copy from storage and the seconds it took;
# MemoryError (e.g. ArenaExhausted) when there is no room now
HostReader = Callable[[str, str], tuple[HostCopyLike, float]]


@dataclass(eq=False)
class _Held:
    copy: HostCopyLike
    num_refs: int
    precision: str  # the stored precision it was read at


@dataclass(eq=False)
class HostLease:
    """A reference to a host copy; give it back with `HostTier.release`."""

    expert: str
    held: _Held

    @property
    def tensors(self) -> dict[str, Any]:
        return self.held.copy.tensors

    @property
    def precision(self) -> str:
        return self.held.precision


@dataclass(eq=False)
class _Fill:
    """A storage read in flight; waiters are counted so the copy outlives its reader."""

    future: Future = field(default_factory=Future)
    num_waiters: int = 0


class HostTier:
    def __init__(self, residency: Residency, reader: HostReader, stats: StatsRecorder,
                 cond: threading.Condition) -> None:
        """`reader(expert, precision)` reads a host copy from storage. `cond`: the expert
        manager's condition (it guards `residency` and this)."""
        self._residency = residency
        self._reader = reader
        self._stats = stats
        self._cond = cond
        self._cached: dict[str, _Held] = {}  # in the host cache and loaded
        self._fills: dict[str, _Fill] = {}
        self._num_live = 0  # copies with references, cached or not
        self._num_freed = 0  # copies released so far (a read that failed may retry)
        residency.host.on_remove = self._evicted

    def acquire(self, expert: str, precision: str = FULL_PRECISION) -> HostLease:
        """The expert's host copy: from the host cache or a fill in flight (at whatever
        precision that one was read: the lease says which), or read from storage now at
        `precision` (one read however many executors ask at once). Raises what the read
        raised, to every executor that waited for it."""
        with self._cond:
            held = self._cached.get(expert)
            self._stats.host_lookup(hit=held is not None)
            if held is not None:
                held.num_refs += 1
                return HostLease(expert, held)
            fill = self._fills.get(expert)
            if fill is None:
                self._fills[expert] = fill = _Fill()
                leader = True
            else:
                fill.num_waiters += 1
                leader = False
        if leader:
            return HostLease(expert, self._fill(expert, fill, precision))
        return HostLease(expert, fill.future.result())

    def release(self, lease: HostLease) -> None:
        with self._cond:
            self._drop(lease.held)
            self._cond.notify_all()

    # -- internals -----------------------------------------------------------------------
    def _fill(self, expert: str, fill: _Fill, precision: str) -> _Held:
        with self._cond:
            cache = self._residency.reserve_host(expert)
        try:
            copy, seconds = self._read(expert, precision)
        except BaseException as exc:
            with self._cond:
                if cache:
                    self._residency.host.remove(expert)
                del self._fills[expert]
                self._cond.notify_all()
            fill.future.set_exception(exc)
            raise
        self._stats.switch(None, STORAGE_TO_HOST, self._residency.expert_bytes[expert], seconds)
        with self._cond:
            held = _Held(copy, 1 + fill.num_waiters + int(cache), precision)
            self._num_live += 1
            if cache:
                self._residency.host.entries[expert].tensors = copy.tensors
                self._cached[expert] = held
            del self._fills[expert]
            self._cond.notify_all()
        fill.future.set_result(held)
        return held

    def _read(self, expert: str, precision: str) -> tuple[HostCopyLike, float]:
        """Read, waiting for room while copies outside the cache hold memory that will
        come back (each is being copied to a device); else the MemoryError stands."""
        while True:
            with self._cond:
                num_freed = self._num_freed
            try:
                return self._reader(expert, precision)
            except MemoryError:
                with self._cond:
                    if self._num_freed != num_freed:  # memory came back meanwhile: retry
                        continue
                    if self._num_live <= len(self._cached):
                        raise
                    self._cond.wait()

    def _drop(self, held: _Held) -> None:
        held.num_refs -= 1
        if held.num_refs == 0:
            self._num_live -= 1
            self._num_freed += 1
            held.copy.release()

    def _evicted(self, entry: Resident) -> None:
        """The host cache let an expert go (the caller holds the condition)."""
        held = self._cached.pop(entry.expert, None)
        if held is not None:
            self._drop(held)
            self._cond.notify_all()
