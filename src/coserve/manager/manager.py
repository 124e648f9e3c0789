"""The expert manager: owns every executor's model pool (and the host RAM cache in front
of CUDA pools), decides what is resident, and loads experts through the loader.

Memory operations come in ask/act form under one condition variable: a load first
*reserves* its bytes (the decisions are `Residency`'s, shared with the simulator),
publishes a loading entry so the scheduler already counts the expert as resident, then
reads outside the lock. Waiters are woken when a load finishes or a batch releases its
expert."""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable, Sequence, Set
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from coserve.errors import ExpertError
from coserve.manager.host_tier import HostCopyLike, HostTier
from coserve.manager.pool import Resident
from coserve.manager.precision import LoadContext, LoadTimes, PrecisionPolicy
from coserve.manager.residency import Residency
from coserve.stats import StatsRecorder
from coserve.types import FULL_PRECISION, LoadPath

log = logging.getLogger(__name__)


class LoadOutOfMemory(ExpertError):
    """No memory to load an expert: the machine's fault now, not the expert's."""


CPU_ALLOCATOR_OOM = "can't allocate memory"  # in PyTorch's CPU allocator's RuntimeError


def is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, torch's OutOfMemoryError (torch.cuda.OutOfMemoryError is the same
    class), an OSError ENOMEM (a buffer the loader could not map), or the RuntimeError
    PyTorch's CPU allocator raises; told apart without importing torch here."""
    if isinstance(exc, MemoryError) or any(
            c.__name__ == "OutOfMemoryError" for c in type(exc).__mro__):
        return True
    if isinstance(exc, OSError):
        return exc.errno == errno.ENOMEM
    return isinstance(exc, RuntimeError) and CPU_ALLOCATOR_OOM in str(exc)


class Loader(Protocol):
    def read(self, expert: str) -> tuple[dict[str, Any], float]:
        """Storage -> host tensors (a CPU's executing tier); returns (tensors, seconds)."""
        ...

    def read_host(self, expert: str) -> tuple[HostCopyLike, float]:
        """Storage -> a host copy for device loads (released when no longer needed);
        MemoryError when there is no room for it now."""
        ...

    def to_device(self, tensors: dict[str, Any], processor: str) -> tuple[dict[str, Any], float]:
        """Host -> device copy; returns (device tensors, seconds)."""
        ...


class ExpertManager:
    def __init__(
        self,
        *,
        processors: Sequence[str],
        residency: Residency,
        loader: Loader,
        stats: StatsRecorder,
        precision: PrecisionPolicy | None = None,
        backlog_s: Callable[[int], float] | None = None,
        storage_bytes_per_s: float = 500e6,
    ) -> None:
        """`residency` decides what each pool holds (the same object the scheduler reads);
        this manager loads what it reserves, under its own lock. `precision` chooses the
        stored precision of each load (the loader must then be a PrecisionLoader), from
        the executor's `backlog_s` (seconds of queued work) and the load times measured
        so far (starting from `storage_bytes_per_s`)."""
        self.processors = list(processors)
        self.residency = residency
        self._pools = residency.pools
        self._host = residency.host
        self._expert_bytes = residency.expert_bytes
        self._loader = loader
        self.usage = residency.usage
        self._stats = stats
        self._precision = precision
        self._backlog_s = backlog_s or (lambda executor: 0.0)
        self._load_times = LoadTimes(storage_bytes_per_s)
        self._cond = threading.Condition()
        # Pools with an upgrade in flight, by `Residency.pool_index` (a shared pool's
        # executors must not read the same expert's fp32 copy twice).
        self._upgrading: set[int] = set()
        self.host_tier = HostTier(residency, self._read_host, stats, self._cond)
        self._prefetchers = [
            ThreadPoolExecutor(1, thread_name_prefix=f"coserve-prefetch-{i}")
            for i in range(len(self.processors))
        ]

    # -- what the scheduler reads --------------------------------------------------------
    def resident(self, executor: int) -> Set[str]:
        """Experts in the pool, loading ones included (a live view, no copy)."""
        return self.residency.resident(executor)

    def in_host(self, expert: str) -> bool:
        return self.residency.in_host(expert)

    def pool_bytes(self, executor: int) -> int:
        return self.residency.pool_bytes(executor)

    # -- initial placement ---------------------------------------------------------------
    def place(self, placement: Sequence[Sequence[str]]) -> None:
        for executor, experts in enumerate(placement):
            for expert in experts:
                with self._cond:
                    reserved = self.residency.reserve(executor, expert, frozenset())
                if reserved:
                    # A broken expert must not stop the engine: it is left out here and
                    # fails only the requests that need it later.
                    self._load_quietly(executor, expert)

    # -- ensure resident -----------------------------------------------------------------
    def acquire(self, executor: int, expert: str) -> Resident:
        """Make `expert` resident in the executor's pool and mark it in use. Blocks while
        the room it needs is held by loads in flight or batches running."""
        pool = self._pools[executor]
        with self._cond:
            entry = pool.entries.get(expert)
            # A hit is an expert ready to run; waiting for a prefetch still in flight is not.
            self._stats.pool_lookup(hit=entry is not None and not entry.loading)
            while True:
                entry = pool.entries.get(expert)
                if entry is not None and not entry.loading:
                    return self.residency.use(entry)
                if entry is None and self.residency.reserve(executor, expert, frozenset()):
                    break
                self._cond.wait()
        self._load(executor, expert)
        with self._cond:
            return self.residency.use(pool.entries[expert])

    def release(self, executor: int, entry: Resident) -> None:
        with self._cond:
            self.residency.release(entry)
            self._cond.notify_all()

    def prefetch(self, executor: int, expert: str, protected: Set[str]) -> None:
        """Start loading `expert` in the background if room can be made without touching
        `protected` experts; otherwise do nothing (acquire will load it later)."""
        with self._cond:
            if expert in self._pools[executor].entries:
                return
            if not self.residency.reserve(executor, expert, protected):
                return
        try:
            self._prefetchers[executor].submit(self._load_quietly, executor, expert)
        except RuntimeError:  # shutting down: give the reserved room back
            with self._cond:
                self._pools[executor].remove(expert)
                self._cond.notify_all()

    def upgrade(self, executor: int) -> None:
        """Read one low-precision resident expert of the pool again in fp32, in the
        background (the most used first; one at a time per pool). Its resident bytes
        do not change, since variants are expanded to fp32; for the duration of the read
        both copies exist."""
        with self._cond:
            pool = self.residency.pool_index(executor)
            if pool in self._upgrading:
                return
            usage = self.usage.usage()
            low = [e for e in self._pools[executor].entries.values()
                   if not e.loading and e.precision != FULL_PRECISION]
            if not low:
                return
            expert = max(low, key=lambda e: usage.get(e.expert, 0.0)).expert
            self._upgrading.add(pool)
        try:
            self._prefetchers[executor].submit(self._upgrade, executor, expert)
        except RuntimeError:  # shutting down
            with self._cond:
                self._upgrading.discard(pool)

    def _upgrade(self, executor: int, expert: str) -> None:
        try:
            tensors, _ = self._read(expert, FULL_PRECISION, upgrade=True)
            processor = self.processors[executor]
            if LoadPath.to_executor(processor).source != "storage":  # a device pool
                tensors, _ = self._loader.to_device(tensors, processor)
            with self._cond:
                entry = self._pools[executor].entries.get(expert)
                if entry is not None and not entry.loading:  # not evicted meanwhile
                    entry.tensors, entry.precision = tensors, FULL_PRECISION
        except Exception as exc:  # the low-precision copy keeps serving
            log.warning("upgrading %s to fp32 failed: %s", expert, exc)
        finally:
            with self._cond:
                self._upgrading.discard(self.residency.pool_index(executor))

    def close(self, wait: bool = True) -> None:
        """Stop the prefetchers; `wait=False` leaves a load that hangs behind."""
        for p in self._prefetchers:
            p.shutdown(wait=wait, cancel_futures=not wait)

    # -- internals -----------------------------------------------------------------------
    def _load(self, executor: int, expert: str) -> None:
        """Fill a reserved entry; on failure drop it and raise ExpertError
        (LoadOutOfMemory when memory ran out)."""
        try:
            tensors, precision = self._fetch(executor, expert)
        except BaseException as exc:
            with self._cond:  # whatever was raised, the pool must not keep a dead entry
                self._pools[executor].remove(expert)
                self._cond.notify_all()
            if isinstance(exc, ExpertError) or not isinstance(exc, Exception):
                raise
            if is_out_of_memory(exc):
                raise LoadOutOfMemory(f"out of memory loading expert {expert!r} "
                                      f"({self._expert_bytes[expert]} bytes): {exc}") from exc
            raise ExpertError(f"expert {expert!r} failed to load: {exc}") from exc
        with self._cond:
            entry = self._pools[executor].entries[expert]
            entry.tensors, entry.precision = tensors, precision
            self._cond.notify_all()

    def _load_quietly(self, executor: int, expert: str) -> None:
        try:
            self._load(executor, expert)
        except ExpertError as exc:
            log.warning("loading %s in the background failed: %s", expert, exc)

    def _fetch(self, executor: int, expert: str) -> tuple[dict[str, Any], str]:
        processor = self.processors[executor]
        size = self._expert_bytes[expert]
        path = LoadPath.to_executor(processor)
        precision = self._choose(executor, expert)
        if path.source == "storage":  # a CPU: the host pool is the executing tier
            tensors, seconds = self._read(expert, precision)
        else:
            lease = self.host_tier.acquire(expert, precision)
            try:
                tensors, seconds = self._loader.to_device(lease.tensors, processor)
            finally:
                self.host_tier.release(lease)
            precision = lease.precision
        self._stats.switch(executor, path, size, seconds)
        return tensors, precision

    def _choose(self, executor: int, expert: str) -> str:
        if self._precision is None:
            return FULL_PRECISION
        available = self._loader.available(expert)  # type: ignore[attr-defined]
        load_s = {p: self._load_times.predict_s(p, self._loader.file_bytes(expert, p))  # type: ignore[attr-defined]
                  for p in available}
        return self._precision.choose(
            LoadContext(expert, available, self._backlog_s(executor), load_s))

    def _read(self, expert: str, precision: str,
              upgrade: bool = False) -> tuple[dict[str, Any], float]:
        """Storage -> host tensors at `precision` (a CPU's executing tier)."""
        if self._precision is None:
            return self._plain(self._loader.read, expert)
        return self._timed(self._loader.read_timed, expert, precision, upgrade)  # type: ignore[attr-defined]

    def _read_host(self, expert: str, precision: str) -> tuple[HostCopyLike, float]:
        """Storage -> a host copy for a device load at `precision` (the host tier's
        reader)."""
        if self._precision is None:
            return self._plain(self._loader.read_host, expert)
        return self._timed(self._loader.read_host_timed, expert, precision, False)  # type: ignore[attr-defined]

    def _plain(self, read: Callable[[str], tuple[Any, float]], expert: str) -> tuple[Any, float]:
        """`read(expert)` of a loader without precision tiers, counted as fp32."""
        result, seconds = read(expert)
        self._stats.precision_read(FULL_PRECISION, None)
        return result, seconds

    def _timed(self, read: Callable[[str, str], tuple[Any, float, float]], expert: str,
               precision: str, upgrade: bool) -> tuple[Any, float]:
        """`read(expert, precision)`, a PrecisionLoader's timed read: counted per
        precision, its read and expansion seconds apart into auto's load times."""
        result, read_s, expand_s = read(expert, precision)
        num_bytes = self._loader.file_bytes(expert, precision)  # type: ignore[attr-defined]
        self._stats.precision_read(precision, num_bytes, upgrade)
        self._load_times.observe(precision, num_bytes, read_s, expand_s)
        return result, read_s + expand_s
