"""Precision tiers at rest: an expert's weights stored smaller (fp16, bf16, or int8 per
output channel with fp32 scales) and expanded back into the executing dtype (fp32) in
memory after the storage read. Storage is the bottleneck, not the arithmetic: a variant
costs its own, smaller read, and expanding it costs one pass over the tensors.

The int8 layout: every fp32 tensor with two or more dimensions and at least
INT8_MIN_ELEMENTS elements (conv and linear weights) is stored as int8 of the same shape plus `<name>.int8_scale`, fp32 [out], one
symmetric scale per output channel (dimension 0); `w = q * scale`. One-dimensional and
scalar tensors (biases, batch-norm statistics) and small ones stay fp32: they are a tiny share of the
bytes and batch-norm variances lose the most from rounding.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from coserve.errors import ConfigError
from coserve.types import FULL_PRECISION, VARIANT_PRECISIONS

INT8_SCALE_SUFFIX = ".int8_scale"
INT8_MAX = 127  # symmetric: -127..127, so that -q never overflows
# Smaller tensors stay fp32: they save nothing worth having, and some are not weights at
# all (a detector's anchor boxes, in pixels, lost 1.5 px to int8).
INT8_MIN_ELEMENTS = 1024
_F32 = "F32"
_HALF_DTYPES = {"fp16": ("F16", torch.float16), "bf16": ("BF16", torch.bfloat16)}

# tensor name -> (safetensors dtype string, shape)
Layout = Mapping[str, tuple[str, tuple[int, ...]]]


def _is_channel_weight(dtype: str, shape: tuple[int, ...]) -> bool:
    return dtype == "F32" and len(shape) >= 2 and math.prod(shape) >= INT8_MIN_ELEMENTS


def variant_layout(layout: Layout, precision: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The tensors a `precision` variant of an expert with fp32 `layout` must hold."""
    if precision == FULL_PRECISION:
        return dict(layout)
    if precision in _HALF_DTYPES:
        half = _HALF_DTYPES[precision][0]
        return {name: ((half if dtype == "F32" else dtype), shape)
                for name, (dtype, shape) in layout.items()}
    assert precision == "int8", precision
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, (dtype, shape) in layout.items():
        if _is_channel_weight(dtype, shape):
            out[name] = ("I8", shape)
            out[name + INT8_SCALE_SUFFIX] = ("F32", (shape[0],))
        else:
            out[name] = (dtype, shape)
    return out


def quantize(tensors: Mapping[str, torch.Tensor], precision: str) -> dict[str, torch.Tensor]:
    """The `precision` variant of fp32 `tensors` (contiguous, ready for save_file)."""
    if precision in _HALF_DTYPES:
        dtype = _HALF_DTYPES[precision][1]
        return {name: (t.to(dtype) if t.dtype == torch.float32 else t).contiguous()
                for name, t in tensors.items()}
    assert precision == "int8", precision
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if _is_channel_weight(_F32 if t.dtype == torch.float32 else "", tuple(t.shape)):
            out[name], out[name + INT8_SCALE_SUFFIX] = _quantize_int8(t)
        else:
            out[name] = t.contiguous()
    return out


def _quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: q [out, ...] and scale [out] with w ~ q * scale."""
    amax = w.detach().abs().flatten(1).amax(dim=1)  # [out]
    # An all-zero channel gets scale 1 (q = 0) rather than a division by zero.
    scale = torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax)).float()
    q = torch.round(w / _per_channel(scale, w.dim())).clamp_(-INT8_MAX, INT8_MAX)
    return q.to(torch.int8).contiguous(), scale.contiguous()


def _per_channel(scale: torch.Tensor, ndim: int) -> torch.Tensor:
    return scale.reshape(-1, *([1] * (ndim - 1)))  # [out, 1, ...]: broadcasts over a weight


def expand(tensors: Mapping[str, torch.Tensor], precision: str) -> dict[str, torch.Tensor]:
    """fp32 tensors (the executing dtype) from a `precision` variant's. Every tensor is a
    fresh copy, so the read buffer the variant's views point into can be freed. (One
    packed, huge-page buffer for all of them measured no faster than per-tensor
    allocations on the development machine.) On a GPU executor the fp32 copy is not
    pinned, so its host -> device copy is synchronous."""
    if precision == FULL_PRECISION:
        return dict(tensors)
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if name.endswith(INT8_SCALE_SUFFIX):
            continue
        scale = tensors.get(name + INT8_SCALE_SUFFIX)
        if scale is not None:
            out[name] = t.float().mul_(_per_channel(scale, t.dim()))
        elif t.is_floating_point():
            out[name] = t.float() if t.dtype != torch.float32 else t.clone()
        else:
            out[name] = t.clone()
    return out


def variant_file(weights: Path, precision: str) -> Path:
    """Where `coserve repo quantize` writes a variant: beside the fp32 file,
    `cls-R.safetensors` -> `cls-R.int8.safetensors`."""
    return weights.with_name(f"{weights.stem}.{precision}{weights.suffix}")


ExpertFiles = Mapping[str, tuple[Path, int]]  # expert -> (weights path, file bytes)


class PrecisionLoader:
    """Loads each expert at the precision asked for: one inner loader per precision (all
    over the same Storage, so every read is the same honest, paced read at the variant's
    own size), then the variant expanded to fp32. Host -> device copies are the fp32
    loader's."""

    def __init__(self, make_loader: Callable[[ExpertFiles], Any],
                 files: Mapping[str, ExpertFiles]) -> None:
        """`files`: precision -> expert -> (path, file bytes); fp32 holds every expert."""
        assert FULL_PRECISION in files
        self._loaders = {p: make_loader(f) for p, f in files.items() if f}
        self._file_bytes = {p: {e: b for e, (_, b) in f.items()} for p, f in files.items()}
        self.storage = self._loaders[FULL_PRECISION].storage

    def available(self, expert: str) -> tuple[str, ...]:
        """The precisions `expert` can be loaded at, fp32 first."""
        return tuple(p for p in (FULL_PRECISION, *VARIANT_PRECISIONS)
                     if expert in self._file_bytes.get(p, {}))

    def file_bytes(self, expert: str, precision: str) -> int:
        return self._file_bytes[precision][expert]

    def read(self, expert: str, precision: str = FULL_PRECISION
             ) -> tuple[dict[str, torch.Tensor], float]:
        tensors, read_s, expand_s = self.read_timed(expert, precision)
        return tensors, read_s + expand_s

    def read_timed(self, expert: str, precision: str = FULL_PRECISION
                   ) -> tuple[dict[str, torch.Tensor], float, float]:
        """fp32 tensors, the storage read's seconds and the expansion's (0 for fp32):
        apart, because the read follows the shared device and the expansion the cores."""
        tensors, read_s = self._loaders[precision].read(expert)
        if precision == FULL_PRECISION:
            return tensors, read_s, 0.0
        t0 = time.perf_counter()
        full = expand(tensors, precision)
        return full, read_s, time.perf_counter() - t0

    def read_host(self, expert: str, precision: str = FULL_PRECISION
                  ) -> tuple[Any, float]:
        copy, read_s, expand_s = self.read_host_timed(expert, precision)
        return copy, read_s + expand_s

    def read_host_timed(self, expert: str, precision: str = FULL_PRECISION
                        ) -> tuple[Any, float, float]:
        """A host copy for a device load (see ExpertLoader.read_host), with the read's and
        the expansion's seconds: fp32 lands in the arena; a variant is expanded into
        memory of its own (its fp32 copy is bigger than what was read, so it cannot reuse
        the read's extent)."""
        if precision == FULL_PRECISION:
            copy, read_s = self._loaders[FULL_PRECISION].read_host(expert)
            return copy, read_s, 0.0
        tensors, read_s, expand_s = self.read_timed(expert, precision)
        return _OwnCopy(tensors), read_s, expand_s

    def to_device(self, tensors: dict[str, torch.Tensor], processor: str
                  ) -> tuple[dict[str, torch.Tensor], float]:
        return self._loaders[FULL_PRECISION].to_device(tensors, processor)

    def read_layouts(self) -> int:
        return sum(loader.read_layouts() for loader in self._loaders.values())

    def idle(self) -> bool:
        """Whether no load is in flight at any precision."""
        return all(loader.idle() for loader in self._loaders.values())

    def busy_s(self) -> float:
        """Seconds with a load in flight, summed over the precisions' loaders (loads at
        two precisions at once count twice)."""
        return sum(loader.busy_s() for loader in self._loaders.values())

    @property
    def arena(self) -> Any:
        return self._loaders[FULL_PRECISION].arena


class _OwnCopy:
    """A host copy in memory of its own: released by dropping the last reference."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def release(self) -> None:
        self.tensors = {}



def stored_files(model: Any, mode: str) -> dict[str, dict[str, tuple[Path, int]]]:
    """precision -> expert -> (path, file bytes) the engine may read for `mode` (a
    precision, or "auto": every stored variant). ConfigError when a fixed precision is
    missing for some expert, naming the command that writes it."""
    experts = model.experts.values()
    files = {FULL_PRECISION: {e.name: (e.weights_path, e.file_bytes) for e in experts}}
    wanted = VARIANT_PRECISIONS if mode == "auto" else tuple(
        p for p in VARIANT_PRECISIONS if p == mode)
    for precision in wanted:
        files[precision] = {e.name: (e.variants[precision].weights_path,
                                     e.variants[precision].file_bytes)
                            for e in experts if precision in e.variants}
    if mode in VARIANT_PRECISIONS and len(files[mode]) < len(model.experts):
        missing = sorted(set(model.experts) - set(files[mode]))
        raise ConfigError(f"precision {mode}: {len(missing)} expert(s) have no {mode} variant "
                          f"(e.g. {missing[0]!r}); run `coserve repo quantize {model.root} "
                          f"--to {mode}` first, or choose --precision fp32")
    return files
