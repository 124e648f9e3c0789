"""`coserve repo quantize`: write every expert's lower-precision variant beside its fp32
weights and record it in coe.yaml. Each file and coe.yaml are replaced atomically (a
temporary file in the same folder, then a rename), so an interrupted run leaves the
repository as it was or complete; re-running finds the recorded variants and skips them."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from safetensors.torch import load_file, save_file

from coserve.errors import RepositoryError
from coserve.loader.precision import quantize, variant_file
from coserve.repository.load import _locate, _plain, open_repository
from coserve.repository.schema import read_document
from coserve.repository.spec import CoEModel, ExpertSpec
from coserve.types import VARIANT_PRECISIONS

_FILE_MODE = 0o644  # mkstemp makes 0600; a repository's files are readable like any other


@dataclass(frozen=True)
class QuantizeReport:
    precision: str
    num_written: int
    num_kept: int  # already recorded and on disk: left alone
    fp32_bytes: int  # every expert's fp32 file together
    variant_bytes: int  # every expert's variant file together

    @property
    def ratio(self) -> float:
        return self.variant_bytes / self.fp32_bytes if self.fp32_bytes else 0.0


def quantize_repository(path: str | Path, precision: str, *, trust_code: bool = False,
                        on_expert: Callable[[str], None] | None = None) -> QuantizeReport:
    """Write the `precision` variant of every expert of the repository at `path` and record
    it under the expert's `variants` in coe.yaml; validates the result. RepositoryError
    for an unknown precision or a repository that does not open."""
    if precision not in VARIANT_PRECISIONS:
        raise RepositoryError(f"cannot quantize to {precision!r}: choose one of "
                              f"{', '.join(VARIANT_PRECISIONS)} (fp32 is the `weights` file)")
    model = open_repository(path, trust_code=trust_code)
    file, _ = _locate(Path(path))
    raw = read_document(file)
    entries = {entry["name"]: entry for entry in raw["experts"]}
    num_written = 0
    for expert in model.experts.values():
        if on_expert is not None:
            on_expert(expert.name)
        if precision in expert.variants:  # validated by open_repository: current
            continue
        entries[expert.name].setdefault("variants", {})[precision] = _write_variant(
            model, expert, precision)
        num_written += 1
    if num_written:
        _atomic_write_text(file, yaml.safe_dump(_plain(raw), sort_keys=False,
                                                default_flow_style=None))
    done = open_repository(path, trust_code=trust_code)
    return QuantizeReport(
        precision, num_written, len(done.experts) - num_written,
        sum(e.file_bytes for e in done.experts.values()),
        sum(e.variants[precision].file_bytes for e in done.experts.values()))


def _write_variant(model: CoEModel, expert: ExpertSpec, precision: str) -> dict[str, Any]:
    """Write one variant file; its coe.yaml entry (path relative to the repository when
    the fp32 file lies inside it)."""
    target = variant_file(expert.weights_path, precision)
    tensors = quantize(load_file(expert.weights_path), precision)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    os.chmod(tmp, _FILE_MODE)
    try:
        save_file(tensors, tmp, metadata={"coserve_precision": precision})
        _fsync(Path(tmp))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    rel = (target.relative_to(model.root) if target.is_relative_to(model.root) else target)
    return {"weights": str(rel), "bytes": target.stat().st_size}


def _atomic_write_text(file: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{file.name}.", dir=file.parent)
    os.chmod(tmp, _FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
