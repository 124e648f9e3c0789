"""The host arena: one page-aligned (and, with CUDA, page-locked) allocation made once,
sub-allocated by coserve itself for the host copies of experts.

Why not `tensor.pin_memory()` per expert: PyTorch's caching host allocator rounds every
request up to a power of two and never gives the memory back, so pinning experts one by
one can take up to twice their bytes of host RAM for good. The arena pins exactly its
capacity, once (`cudaHostRegister` of the mapping), and O_DIRECT reads land straight in
its extents, so a host->device copy of an extent runs asynchronously at link speed.
"""

from __future__ import annotations

import bisect
import ctypes
import math
import mmap
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from coserve.errors import ConfigError
from coserve.loader.storage import DIRECT_IO_ALIGN_BYTES, back_with_huge_pages

ARENA_ALIGN_BYTES = DIRECT_IO_ALIGN_BYTES  # every extent starts and ends on a page


class ArenaExhausted(MemoryError):
    """No free extent of the arena is large enough. A MemoryError: the expert manager
    treats it as a load out of memory (the machine's state now, not the expert's)."""


@dataclass(frozen=True)
class Extent:
    """A sub-allocation: `num_bytes` (a multiple of ARENA_ALIGN_BYTES) at `offset`."""

    offset: int
    num_bytes: int


@dataclass(frozen=True)
class ArenaStats:
    capacity_bytes: int
    used_bytes: int
    free_bytes: int
    largest_free_bytes: int
    num_extents: int
    pinned_bytes: int  # page-locked host RAM: the whole capacity, or 0 (no CUDA / pin=False)

    @property
    def fragmentation(self) -> float:
        """1 - largest free extent / free bytes: 0 when the free space is one extent."""
        return 1.0 - self.largest_free_bytes / self.free_bytes if self.free_bytes else 0.0


def aligned_up(num_bytes: int) -> int:
    return -(-num_bytes // ARENA_ALIGN_BYTES) * ARENA_ALIGN_BYTES


class HostArena:
    """`capacity_bytes` (rounded up to a page) of host RAM mapped once; `allocate` and
    `free` carve it first-fit into page-aligned extents, coalescing freed neighbours.
    Thread-safe. `pin=True` page-locks the mapping when CUDA is available."""

    def __init__(self, capacity_bytes: int, pin: bool = False) -> None:
        if not isinstance(capacity_bytes, int) or capacity_bytes <= 0:
            raise ConfigError(f"host arena capacity must be a positive number of bytes, "
                              f"got {capacity_bytes!r}: size it to the host cache budget plus "
                              f"room for the loads in flight")
        self.capacity_bytes = aligned_up(capacity_bytes)
        # MAP_PRIVATE anonymous: page-aligned, writable, eligible for huge pages.
        self._buf = mmap.mmap(-1, self.capacity_bytes,
                              flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        back_with_huge_pages(self._buf)
        self._view = memoryview(self._buf)
        self._lock = threading.Lock()
        self._free: list[list[int]] = [[0, self.capacity_bytes]]  # [offset, bytes], by offset
        self._used: dict[int, int] = {}  # offset -> bytes
        self._used_bytes = 0
        self.pinned_bytes = self._pin() if pin else 0

    # -- ask / act -----------------------------------------------------------------------
    def can_allocate(self, num_bytes: int) -> bool:
        need = aligned_up(max(1, num_bytes))
        with self._lock:
            return any(length >= need for _, length in self._free)

    def allocate(self, num_bytes: int) -> Extent:
        """A free extent of at least `num_bytes` (first fit); ArenaExhausted if none."""
        need = aligned_up(max(1, num_bytes))
        with self._lock:
            for i, (offset, length) in enumerate(self._free):
                if length >= need:
                    if length == need:
                        del self._free[i]
                    else:
                        self._free[i] = [offset + need, length - need]
                    self._used[offset] = need
                    self._used_bytes += need
                    return Extent(offset, need)
            largest = max((length for _, length in self._free), default=0)
        raise ArenaExhausted(
            f"the host arena has no free extent of {need} bytes (capacity {self.capacity_bytes}, "
            f"in use {self._used_bytes}, largest free {largest}): raise the host cache budget "
            f"or run fewer loads at once")

    def free(self, extent: Extent) -> None:
        with self._lock:
            assert self._used.get(extent.offset) == extent.num_bytes, extent  # a double free
            del self._used[extent.offset]
            self._used_bytes -= extent.num_bytes
            i = bisect.bisect_left(self._free, [extent.offset, 0])
            self._free.insert(i, [extent.offset, extent.num_bytes])
            self._coalesce(i)

    def view(self, extent: Extent) -> memoryview:
        """The extent's bytes (writable; the arena outlives every view of it)."""
        return self._view[extent.offset : extent.offset + extent.num_bytes]

    def stats(self) -> ArenaStats:
        with self._lock:
            free_bytes = self.capacity_bytes - self._used_bytes
            largest = max((length for _, length in self._free), default=0)
            return ArenaStats(self.capacity_bytes, self._used_bytes, free_bytes, largest,
                              len(self._used), self.pinned_bytes)

    # -- internals -----------------------------------------------------------------------
    def _coalesce(self, i: int) -> None:
        """Merge free extent i with its free neighbours (the caller holds the lock)."""
        if i + 1 < len(self._free) and sum(self._free[i]) == self._free[i + 1][0]:
            self._free[i][1] += self._free.pop(i + 1)[1]
        if i > 0 and sum(self._free[i - 1]) == self._free[i][0]:
            self._free[i - 1][1] += self._free.pop(i)[1]

    def _pin(self) -> int:
        """Page-lock the whole mapping with cudaHostRegister; 0 without CUDA."""
        import torch

        if not torch.cuda.is_available():
            return 0
        address = ctypes.addressof(ctypes.c_char.from_buffer(self._buf))
        # cudaHostRegisterDefault (0): pinned for every device of this process.
        error = torch.cuda.cudart().cudaHostRegister(address, self.capacity_bytes, 0)
        if int(error) != 0:  # the machine's limit, not a load's: say how to change it
            raise ConfigError(f"cannot page-lock a host arena of {self.capacity_bytes} bytes "
                                 f"(cudaHostRegister error {int(error)}): lower the host cache "
                                 f"budget or raise the locked-memory limit (ulimit -l)")
        return self.capacity_bytes


def arena_capacity_bytes(sizes: Sequence[tuple[int, int]], host_cache_bytes: int,
                         num_loads_in_flight: int) -> int:
    """Arena bytes for a host cache of `host_cache_bytes` (a budget of tensor bytes, as
    every pool's) plus `num_loads_in_flight` host copies outside it (staging for device
    loads). `sizes`: each expert's (tensor bytes, file bytes); an extent holds the whole
    file rounded up to a page, so the cache's part is scaled by the worst such ratio."""
    if not sizes:
        return ARENA_ALIGN_BYTES
    largest_extent = max(aligned_up(file_bytes) for _, file_bytes in sizes)
    ratio = max(aligned_up(file_bytes) / max(1, num_bytes) for num_bytes, file_bytes in sizes)
    all_extents = sum(aligned_up(file_bytes) for _, file_bytes in sizes)
    cache = min(all_extents, math.ceil(host_cache_bytes * ratio))
    return aligned_up(cache + max(1, num_loads_in_flight) * largest_extent)
