"""The validated, read-only description of a CoE model: architectures, experts, routing,
usage. Built only by `open_repository`, which has checked every field against the files."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from coserve.repository._common import import_callable
from coserve.repository.routing import Router


class Stage(enum.Enum):
    """Where an expert sits in a request's chain: chosen by `routing.first` (preliminary)
    or only by another expert's output (subsequent)."""

    PRELIMINARY = "preliminary"
    SUBSEQUENT = "subsequent"


@dataclass(frozen=True)
class ArchitectureSpec:
    """A module factory shared by many experts; experts of one architecture differ only in
    weights."""

    name: str
    factory: str  # "package.module:attr", a callable returning an nn.Module
    args: Mapping[str, Any]
    input_shape: tuple[int, ...]  # one item, float32, without the batch dimension
    labels: tuple[str, ...]  # names of decode()'s label indices, in index order

    def build(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        """A fresh module in eval mode. On "meta" it allocates nothing: the engine binds
        weights it loaded itself into that skeleton."""
        factory = import_callable(self.factory)
        with torch.device(device):
            module = factory(**self.args)
        return module.eval()


@dataclass(frozen=True)
class VariantSpec:
    """An expert's weights stored at a lower precision, expanded to fp32 when loaded."""

    precision: str  # "fp16", "bf16" or "int8"
    weights_path: Path  # absolute
    file_bytes: int  # what loading this variant reads


@dataclass(frozen=True)
class ExpertSpec:
    """One expert: an architecture plus a safetensors weight file (fp32), and optionally
    lower-precision variants of it."""

    name: str
    architecture: str
    weights_path: Path  # absolute
    stage: Stage
    num_bytes: int  # tensor bytes from the header: what the expert occupies when resident
    file_bytes: int  # size on storage: what loading it reads
    variants: Mapping[str, VariantSpec] = field(default_factory=dict)  # precision -> variant

    def weights_file(self, precision: str = "fp32") -> tuple[Path, int]:
        """(path, file bytes) of the weights stored at `precision`; KeyError if none."""
        if precision == "fp32":
            return self.weights_path, self.file_bytes
        variant = self.variants[precision]
        return variant.weights_path, variant.file_bytes


@dataclass(frozen=True)
class CoEModel:
    """A validated model repository. Mappings are read-only; `experts` keeps file order."""

    name: str
    root: Path
    architectures: Mapping[str, ArchitectureSpec]
    experts: Mapping[str, ExpertSpec]
    router: Router
    usage: Mapping[str, float]  # P(a request uses expert e), for every expert
    # P(label | expert) for every expert: the rules' prior (uniform where not given)
    label_probs: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def total_expert_bytes(self) -> int:
        """Bytes of all experts' tensors: what holding every expert resident takes."""
        return sum(expert.num_bytes for expert in self.experts.values())

    @property
    def subsequent_experts(self) -> frozenset[str]:
        """Experts only another expert's output leads to (two-stage eviction's stage 1)."""
        return frozenset(e.name for e in self.experts.values() if e.stage is Stage.SUBSEQUENT)

    def predecessors(self, expert: str) -> frozenset[str]:
        """Experts that can route to `expert` in the static routing graph."""
        return self.router.predecessors(expert)
