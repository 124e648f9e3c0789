"""Expert loading along the tier path: storage -> host (one honest storage read, tensors
as views into the read buffer, parsed while the read streams in) and host -> device (one
bulk copy of the whole host copy on a side stream, then tensor views on the device)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from coserve.errors import ExpertError
from coserve.loader.arena import Extent, HostArena
from coserve.loader.safetensors_view import Layout, parse_layout, read_layout, tensor_views
from coserve.loader.storage import BusyClock, Storage


@dataclass(eq=False)
class HostCopy:
    """An expert's tensors in host RAM, as views of one buffer: an arena extent (freed
    by `release`) or a buffer of its own (freed with the tensors)."""

    tensors: dict[str, torch.Tensor]
    extent: Extent | None
    arena: HostArena | None

    def release(self) -> None:
        """Give the extent back; the tensors must not be used afterwards."""
        if self.arena is not None and self.extent is not None:
            self.arena.free(self.extent)
            self.extent = None


class ExpertLoader:
    def __init__(self, storage: Storage, files: Mapping[str, tuple[Path, int]],
                 arena: HostArena | None = None) -> None:
        """`files`: expert -> (weights path, expected file bytes). `arena`: where host
        copies for device loads go (`read_host`); None: buffers of their own."""
        self.storage = storage
        self.arena = arena
        self._files = dict(files)
        self._streams: dict[str, torch.cuda.Stream] = {}
        self._lock = threading.Lock()
        self._busy = BusyClock(time.perf_counter)
        # Each expert's parsed header: later loads build their views while the read is
        # in flight (parsing an 11 MB ResNet expert, 122 tensors, took ~2 ms, 15-20% of
        # its read at ~1 GB/s) and only compare the header bytes once it has landed.
        self._layouts: dict[str, Layout] = {}

    def busy_s(self) -> float:
        """Wall-clock seconds with at least one storage load in flight: storage bytes
        over it is the loader's delivered bandwidth, however the loads overlapped."""
        return self._busy.busy_s()

    def idle(self) -> bool:
        """Whether no storage load is in flight now."""
        return self._busy.num_in_flight() == 0

    def read_layouts(self) -> int:
        """Read every expert's header now (a few KiB each, not left cached), so even
        first loads build their views during the read. A file that cannot be read is
        skipped: its own load reports it. Returns the number read."""
        for expert, (path, _) in self._files.items():
            try:
                self._layouts[expert] = read_layout(path)
            except ExpertError:
                continue
        return len(self._layouts)

    def read(self, expert: str) -> tuple[dict[str, torch.Tensor], float]:
        """Storage -> host RAM into a fresh buffer (the CPU executing tier)."""
        copy, seconds = self._load(expert, None)
        return copy.tensors, seconds

    def read_host(self, expert: str) -> tuple[HostCopy, float]:
        """Storage -> a host copy in the arena (when there is one), for a device load.
        ArenaExhausted (a MemoryError) when the arena has no room for it now."""
        return self._load(expert, self.arena)

    def _load(self, expert: str, arena: HostArena | None) -> tuple[HostCopy, float]:
        t0 = time.perf_counter()
        path, file_bytes = self._files[expert]
        extents: list[Extent] = []
        into = _extent_allocator(arena, extents) if arena is not None else None
        layout = self._layouts.get(expert)
        early = layout if layout is not None and layout.aligned else None
        self._busy.enter()
        try:
            buf, tensors = self.storage.load(
                path, file_bytes, into=into,
                then=None if early is None else lambda b: tensor_views(early, b))
            if early is None or not early.matches(buf):  # first load, or the file changed
                self._layouts[expert] = layout = parse_layout(buf, source=path)
                tensors = tensor_views(layout, buf)
        except BaseException:
            for extent in extents:
                arena.free(extent)  # type: ignore[union-attr]
            raise
        finally:
            self._busy.exit()
        assert tensors is not None
        copy = HostCopy(tensors, extents[0] if extents else None, arena)
        return copy, time.perf_counter() - t0

    def to_device(self, tensors: dict[str, torch.Tensor],
                  processor: str) -> tuple[dict[str, torch.Tensor], float]:
        """Host -> device on the device's copy stream: one transfer of the buffer the
        tensors are views of (pinned when it is the arena), then views on the device."""
        t0 = time.perf_counter()
        stream = self._stream(processor)
        with torch.cuda.stream(stream):
            on_device = bulk_copy(tensors, processor)
        stream.synchronize()
        return on_device, time.perf_counter() - t0

    def _stream(self, processor: str) -> torch.cuda.Stream:
        # A side stream per device keeps copies off the stream kernels run on.
        with self._lock:
            if processor not in self._streams:
                self._streams[processor] = torch.cuda.Stream(device=processor)
            return self._streams[processor]


def _extent_allocator(arena: HostArena, extents: list[Extent]) -> Callable[[int], memoryview]:
    def allocate(num_bytes: int) -> memoryview:
        if extents:  # a retry (O_DIRECT refused): read into the same extent again
            return arena.view(extents[0])
        extents.append(arena.allocate(num_bytes))
        return arena.view(extents[0])

    return allocate


def bulk_copy(tensors: dict[str, torch.Tensor], device: str | torch.device,
              non_blocking: bool = True) -> dict[str, torch.Tensor]:
    """`tensors` on `device`. Contiguous views of one shared storage (what
    `parse_safetensors` returns) move in one copy of that storage, not one per tensor;
    any other tensor is copied on its own."""
    shared = _largest_shared_storage(tensors)
    if shared is None:
        return {k: t.to(device, non_blocking=non_blocking) for k, t in tensors.items()}
    whole = torch.empty(0, dtype=torch.uint8).set_(shared)  # [storage bytes] uint8
    on_device = whole.to(device, non_blocking=non_blocking)
    out = {}
    for name, t in tensors.items():
        if t.numel() and t.is_contiguous() and t.untyped_storage().data_ptr() == shared.data_ptr():
            begin = t.storage_offset() * t.element_size()
            out[name] = on_device[begin : begin + t.nbytes].view(t.dtype).view(t.shape)
        else:
            out[name] = t.to(device, non_blocking=non_blocking)
    return out


def _largest_shared_storage(tensors: dict[str, torch.Tensor]) -> torch.UntypedStorage | None:
    """The storage most tensors are views of, when at least two share it."""
    counts: dict[int, int] = {}
    storages: dict[int, torch.UntypedStorage] = {}
    for t in tensors.values():
        if t.numel():
            storage = t.untyped_storage()
            counts[storage.data_ptr()] = counts.get(storage.data_ptr(), 0) + 1
            storages[storage.data_ptr()] = storage
    if not counts:
        return None
    ptr = max(counts, key=counts.__getitem__)
    return storages[ptr] if counts[ptr] > 1 else None
