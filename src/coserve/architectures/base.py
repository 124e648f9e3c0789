"""The contract every expert architecture meets: a batch forward plus a decode step."""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Decoded:
    """One item's result. `label_index` drives routing to the next expert; `detail` goes
    back to the client as JSON, so it holds only plain floats, ints, strings and lists."""

    label_index: int
    detail: dict


class ExpertModule(torch.nn.Module, abc.ABC):
    """An expert network. Every weight is a registered parameter or buffer and nothing
    derived from weights is cached on the instance, because the engine runs experts with
    `torch.func.functional_call(module, tensors, (x,))` on tensors it loaded itself."""

    num_labels: int

    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: float32 `[N, C, H, W]`; returns the raw batch output that `decode` reads."""

    @abc.abstractmethod
    def decode(self, out: torch.Tensor) -> list[Decoded]:
        """Turn a batch output into one `Decoded` per item, in batch order."""


def decode_scores(out: torch.Tensor) -> list[Decoded]:
    """A classifier's batch output `[N, num_labels]` as one Decoded per item: the argmax
    label and the softmax scores. One device->host copy per tensor for the whole batch,
    not one per item."""
    probs = out.detach().float().softmax(dim=-1)  # [N, num_labels]
    labels = probs.argmax(dim=-1)  # [N]
    return [
        Decoded(label_index=label, detail={"scores": scores})
        for label, scores in zip(labels.tolist(), probs.tolist(), strict=True)
    ]
