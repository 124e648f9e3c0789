"""Checks of architectures and weight files that read only safetensors headers and build
modules on the meta device, so validating a 60 GB repository costs milliseconds per
expert, never a weight load."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import torch

from coserve.errors import ExpertError
from coserve.loader.precision import variant_layout
from coserve.loader.safetensors_view import DTYPES, expected_file_bytes, read_header
from coserve.repository._common import (
    BUILTIN_FACTORIES,
    TRUST_FIX,
    check_trusted,
    import_callable,
    listed,
    repo_error,
)
from coserve.repository.schema import ExpertEntry
from coserve.repository.spec import ArchitectureSpec, ExpertSpec, VariantSpec

# tensor name -> (safetensors dtype string, shape)
TensorLayout = Mapping[str, tuple[str, tuple[int, ...]]]

_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")
_MAX_NAMES_SHOWN = 3  # per kind of mismatch: enough to see the pattern
_EXPORT_FIX = "re-export it with safetensors.torch.save_file(module.state_dict(), path)"


def architecture_layout(arch: ArchitectureSpec, file: Path, trust_code: bool) -> TensorLayout:
    """The tensors an expert of `arch` must provide, from a weightless (meta) build.
    RepositoryError if the factory is not coserve's own and `trust_code` is off (then
    nothing is imported), does not import, rejects its args, or disagrees with the listed
    labels."""
    subject = f"architecture {arch.name!r}"
    check_trusted(arch.factory, BUILTIN_FACTORIES, trust_code, file, f"{subject} factory")
    try:
        factory = import_callable(arch.factory)
    except ImportError as exc:
        raise repo_error(file, subject, f"factory: {exc}",
                         "set factory to an importable 'package.module:callable' (is its "
                         "package installed or on PYTHONPATH?)") from None
    try:
        with torch.device("meta"):
            module = factory(**arch.args)
    except Exception as exc:  # user code: any failure means these args do not build it
        raise repo_error(file, subject, f"{arch.factory}(**{dict(arch.args)}) failed with "
                         f"{type(exc).__name__}: {exc}",
                         "change its args to ones the factory accepts") from None
    if not isinstance(module, torch.nn.Module):
        raise repo_error(file, subject, f"factory returned a {type(module).__name__}, "
                         "not a torch.nn.Module", "point factory at a module class or builder")
    num_labels = getattr(module, "num_labels", None)
    if isinstance(num_labels, int) and num_labels != len(arch.labels):
        raise repo_error(file, subject, f"labels lists {len(arch.labels)} names but the "
                         f"module decodes {num_labels} labels",
                         f"list exactly {num_labels} label names, in decode()'s index order")
    return {name: (_DTYPE_NAMES.get(t.dtype, str(t.dtype)), tuple(t.shape))
            for name, t in module.state_dict().items()}


def check_expert(entry: ExpertEntry, root: Path, layout: TensorLayout,
                 trust_code: bool) -> ExpertSpec:
    """The expert's spec from its weight files' headers; RepositoryError naming the file
    if it (or a variant) is missing, unreadable, truncated, or does not fit its
    architecture, or (unless `trust_code`) if its path leaves the repository folder."""
    path, header, file_bytes = _check_file(entry, entry.weights, root, layout, trust_code)
    num_bytes = sum(math.prod(shape) * DTYPES[dtype].itemsize for dtype, shape in header.values())
    variants = {
        precision: _check_variant(entry, precision, root, layout, trust_code)
        for precision, variant in entry.variants.items()
    }
    return ExpertSpec(entry.name, entry.architecture, path, entry.stage, num_bytes, file_bytes,
                      MappingProxyType(variants))


def _check_variant(entry: ExpertEntry, precision: str, root: Path, layout: TensorLayout,
                   trust_code: bool) -> VariantSpec:
    """A stored precision: a weight file like any other, whose tensors are the
    architecture's in that precision's layout, and as long as coe.yaml recorded."""
    variant = entry.variants[precision]
    path, _, file_bytes = _check_file(entry, variant.weights, root,
                                      variant_layout(layout, precision), trust_code, precision)
    if file_bytes != variant.num_bytes:
        raise repo_error(path, f"expert {entry.name!r} {precision} variant", f"the file is "
                         f"{file_bytes} bytes but coe.yaml records {variant.num_bytes}",
                         _requantize_fix(root, precision))
    return VariantSpec(precision, path, file_bytes)


def _check_file(entry: ExpertEntry, weights: str, root: Path, layout: TensorLayout,
                trust_code: bool, precision: str = "fp32") -> tuple[Path, TensorLayout, int]:
    """(path, header, file bytes) of one weight file of `entry`, checked."""
    path = root / weights  # an absolute `weights` replaces root
    subject = f"expert {entry.name!r}" + ("" if precision == "fp32" else f" {precision} variant")
    if not trust_code:
        _check_inside(entry, weights, root, path)
    if not path.is_file():
        fix = (f"write it, or correct the expert's weights path (relative to {root})"
               if precision == "fp32" else
               _requantize_fix(root, precision))
        raise repo_error(path, subject, "the weight file does not exist", fix)
    try:
        header = read_header(path)
        header_file_bytes = expected_file_bytes(path)
    except ExpertError as exc:
        # A torch.save checkpoint is the usual culprit; say why it cannot just be loaded.
        pickle = (" (this looks like a pickle checkpoint: coserve reads only safetensors, "
                  "because unpickling runs arbitrary code)"
                  if path.suffix in _PICKLE_SUFFIXES else "")
        raise repo_error(path, subject, f"unreadable safetensors header ({exc}){pickle}",
                         _EXPORT_FIX) from None
    file_bytes = path.stat().st_size
    if file_bytes != header_file_bytes:
        state = "truncated" if file_bytes < header_file_bytes else "longer than its header says"
        raise repo_error(path, subject, f"the file is {state}: {file_bytes} bytes, the header "
                         f"describes {header_file_bytes}",
                         f"copy it again completely, or {_EXPORT_FIX}")
    # A variant is coserve repo quantize's output: the fix is to write it again.
    _check_layout(header, layout, path, entry, subject,
                  None if precision == "fp32" else _requantize_fix(root, precision))
    return path, header, file_bytes


def _requantize_fix(root: Path, precision: str) -> str:
    return (f"delete the expert's variants[{precision!r}] entry in coe.yaml and re-run "
            f"`coserve repo quantize {root} --to {precision}`")


def _check_inside(entry: ExpertEntry, weights: str, root: Path, path: Path) -> None:
    """An untrusted repository reads only files inside its folder: no absolute path, no
    `..`, no symbolic link on the way (which could point at any file on the machine)."""
    problem = None
    rel = Path(weights)
    if rel.is_absolute() or ".." in rel.parts:
        problem = "is not a path inside the repository folder"
    elif any((root / Path(*rel.parts[:i])).is_symlink() for i in range(1, len(rel.parts) + 1)):
        problem = "goes through a symbolic link, which may point anywhere"
    elif not path.resolve().is_relative_to(root.resolve()):
        problem = "resolves outside the repository folder"
    if problem:
        raise repo_error(root / "coe.yaml", f"expert {entry.name!r}", f"weights "
                         f"{weights!r} {problem}", "keep weight files inside the repository "
                         f"and name them relative to coe.yaml, or {TRUST_FIX}")


def _check_layout(
    header: TensorLayout, layout: TensorLayout, path: Path, entry: ExpertEntry, subject: str,
    fix: str | None = None,
) -> None:
    missing = [name for name in layout if name not in header]
    unexpected = [name for name in header if name not in layout]
    mismatched = [
        f"{name} is {_describe(header[name])} in the file but {_describe(layout[name])} in "
        "the architecture"
        for name in layout if name in header and header[name] != layout[name]
    ]
    parts = [
        f"{kind} tensors: {listed(names, _MAX_NAMES_SHOWN)}"
        for kind, names in (("missing", missing), ("unexpected", unexpected),
                            ("mismatched", mismatched))
        if names
    ]
    fix = fix or (f"export the weights from a module built by architecture "
                  f"{entry.architecture!r} with the same args, or give the expert the "
                  "architecture these weights belong to")
    if parts:
        raise repo_error(path, subject, f"the tensors do not match architecture "
                         f"{entry.architecture!r} ({'; '.join(parts)})", fix)


def _describe(entry: tuple[str, tuple[int, ...]]) -> str:
    dtype, shape = entry
    return f"{dtype} {list(shape)}"
