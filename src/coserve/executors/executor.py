"""An executor: a worker bound to one processor that runs batches of one expert.

Each architecture has one module skeleton per executor, built on the meta device (no
memory, no random init). A resident expert's tensors are bound into it for one call by
a `Binder`: the skeleton's parameter and buffer slots are resolved once per
architecture, so binding is one dict store per tensor (functional_call resolves every
name again on each call: 3 ms of a detector's 481 tensors per batch, against 0.08 ms).
A switch never constructs or copies a module.

A CUDA executor runs all its work on its own stream, so several executors on one GPU
overlap: inputs are staged in pinned memory and copied without blocking, the output
comes back into a pinned buffer, and only this executor's stream is waited for."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from coserve.architectures.base import Decoded
from coserve.errors import ExpertError


class Binder:
    """Binds a tensor dict into a skeleton's parameter and buffer slots for one call,
    and puts the skeleton's own (meta) tensors back afterwards, so the skeleton never
    keeps an evicted expert's memory alive."""

    def __init__(self, skeleton: torch.nn.Module) -> None:
        # (the owning module's slot dict, name in it, key in the expert's tensors, original)
        self._slots: list[tuple[dict[str, Any], str, str, Any]] = []
        first_key: dict[int, str] = {}  # a tied tensor is read under its first name
        for prefix, module in skeleton.named_modules():
            for slots in (module._parameters, module._buffers):
                for name, original in slots.items():
                    if original is not None:
                        key = first_key.setdefault(id(original), f"{prefix}.{name}" if prefix else name)
                        self._slots.append((slots, name, key, original))

    @contextmanager
    def bound(self, tensors: Mapping[str, torch.Tensor]) -> Iterator[None]:
        try:
            for slots, name, key, _ in self._slots:
                slots[name] = tensors[key]
        except KeyError as exc:
            self._restore()
            raise ExpertError(f"the expert's weights lack tensor {exc.args[0]!r} that its "
                              f"architecture needs: rebuild its weights file") from None
        try:
            yield
        finally:
            self._restore()

    def _restore(self) -> None:
        for slots, name, _, original in self._slots:
            slots[name] = original


class CudaStaging:
    """One CUDA executor's stream and its pinned staging buffers (grown, never shrunk:
    a batch's input and output are small beside the experts)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device=device)
        self._done = torch.cuda.Event()
        self._buffers: dict[str, torch.Tensor] = {}

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """Host batch -> device, through pinned memory, queued on this stream."""
        pinned = self._pinned("in", x)
        pinned.copy_(x)
        # The previous call waited for its stream, so no copy still reads this buffer.
        return pinned.to(self.device, non_blocking=True)

    def to_host(self, out: torch.Tensor) -> torch.Tensor:
        """Device output -> pinned host memory, then wait for this stream only."""
        host = self._pinned("out", out)
        host.copy_(out, non_blocking=True)
        self._done.record(self.stream)
        self._done.synchronize()
        # A copy: the buffer is reused by the next batch, the result outlives it.
        return host.clone()

    def _pinned(self, role: str, like: torch.Tensor) -> torch.Tensor:
        num_bytes = like.numel() * like.element_size()
        buf = self._buffers.get(role)
        if buf is None or buf.numel() < num_bytes:
            size = max(num_bytes, 2 * buf.numel() if buf is not None else 0)
            buf = self._buffers[role] = torch.empty(size, dtype=torch.uint8, pin_memory=True)
        return buf[:num_bytes].view(like.dtype).view(like.shape)


class Executor:
    def __init__(self, index: int, processor: str, skeletons: Mapping[str, torch.nn.Module]) -> None:
        self.index = index
        self.processor = processor
        self.device = torch.device(processor)
        self._skeletons = dict(skeletons)
        self._binders = {name: Binder(s) for name, s in self._skeletons.items()}
        self._cuda = CudaStaging(self.device) if self.device.type == "cuda" else None

    @property
    def stream(self) -> torch.cuda.Stream | None:
        """The CUDA stream all this executor's work runs on (None on the CPU)."""
        return self._cuda.stream if self._cuda is not None else None

    def execute(
        self, architecture: str, tensors: Mapping[str, torch.Tensor], inputs: Sequence[Any]
    ) -> list[Decoded]:
        skeleton = self._skeletons[architecture]
        with torch.inference_mode(), self._binders[architecture].bound(tensors):
            x = torch.stack(list(inputs))  # [N, C, H, W]
            out = skeleton(x) if self._cuda is None else self._on_stream(skeleton, x)
            return skeleton.decode(out)

    def _on_stream(self, skeleton: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        cuda = self._cuda
        assert cuda is not None
        # Weights copied on another stream (the loader's) are complete: it synchronised.
        # Work another thread queued on the default stream is waited for, never the
        # other executors' streams.
        cuda.stream.wait_stream(torch.cuda.default_stream(self.device))
        with torch.cuda.stream(cuda.stream):
            out = skeleton(cuda.to_device(x))
            return cuda.to_host(out)


def build_skeletons(architectures: Mapping[str, Any]) -> dict[str, torch.nn.Module]:
    """One weightless module per architecture (ArchitectureSpec.build on 'meta')."""
    return {name: spec.build(device="meta").eval() for name, spec in architectures.items()}
