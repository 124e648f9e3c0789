"""An executor: a worker bound to one processor that runs batches of one expert.

Each architecture has one module skeleton per executor, built on the meta device (no
memory, no random init); a resident expert's tensors are bound to it per call with
`torch.func.functional_call`, so a switch never constructs or copies a module."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.func import functional_call

from coserve.architectures.base import Decoded


class Executor:
    def __init__(self, index: int, processor: str, skeletons: Mapping[str, torch.nn.Module]) -> None:
        self.index = index
        self.processor = processor
        self.device = torch.device(processor)
        self._skeletons = dict(skeletons)

    def execute(
        self, architecture: str, tensors: Mapping[str, torch.Tensor], inputs: Sequence[Any]
    ) -> list[Decoded]:
        skeleton = self._skeletons[architecture]
        with torch.inference_mode():
            x = torch.stack(list(inputs)).to(self.device)  # [N, C, H, W]
            out = functional_call(skeleton, dict(tensors), (x,))
            if self.device.type == "cuda":
                out = out.cpu()
            return skeleton.decode(out)


def build_skeletons(architectures: Mapping[str, Any]) -> dict[str, torch.nn.Module]:
    """One weightless module per architecture (ArchitectureSpec.build on 'meta')."""
    return {name: spec.build(device="meta").eval() for name, spec in architectures.items()}
