"""Expert loading along the tier path: storage -> host (one honest storage read, tensors
as views into the read buffer) and host -> device (pinned memory, side stream)."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from coserve.loader.safetensors_view import parse_safetensors
from coserve.loader.storage import Storage


class ExpertLoader:
    def __init__(
        self, storage: Storage, files: Mapping[str, tuple[Path, int]], pin_memory: bool = False
    ) -> None:
        """`files`: expert -> (weights path, expected file bytes)."""
        self.storage = storage
        self._files = dict(files)
        self._pin_memory = pin_memory
        self._streams: dict[str, torch.cuda.Stream] = {}
        self._lock = threading.Lock()

    def read(self, expert: str) -> tuple[dict[str, torch.Tensor], float]:
        t0 = time.perf_counter()
        path, file_bytes = self._files[expert]
        buf = self.storage.read(path, expected_bytes=file_bytes)
        if self._pin_memory:
            # One copy of the whole file into page-locked memory, so the device copy can
            # run asynchronously at full link speed.
            pinned = torch.frombuffer(buf, dtype=torch.uint8).pin_memory()
            buf = memoryview(pinned.numpy())
        tensors = parse_safetensors(buf, source=path)
        return tensors, time.perf_counter() - t0

    def to_device(
        self, tensors: dict[str, torch.Tensor], processor: str
    ) -> tuple[dict[str, torch.Tensor], float]:
        t0 = time.perf_counter()
        stream = self._stream(processor)
        with torch.cuda.stream(stream):
            on_device = {k: t.to(processor, non_blocking=True) for k, t in tensors.items()}
        stream.synchronize()
        return on_device, time.perf_counter() - t0

    def _stream(self, processor: str) -> torch.cuda.Stream:
        # A side stream per device keeps copies off the stream kernels run on.
        with self._lock:
            if processor not in self._streams:
                self._streams[processor] = torch.cuda.Stream(device=processor)
            return self._streams[processor]
