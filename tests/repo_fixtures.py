"""Tiny modules and routing callables that test repositories name by import path
("repo_fixtures:TinyNet"); pytest puts tests/ on sys.path."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from coserve.architectures.base import Decoded, ExpertModule, decode_scores

NOT_CALLABLE = 42  # a factory path that imports but cannot build anything


class TinyNet(ExpertModule):
    """A Conv2d + Linear classifier over [N, 3, 8, 8] inputs, cheap enough to save per test."""

    def __init__(self, num_classes: int = 2, width: int = 4) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.num_labels = num_classes
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).mean(dim=(2, 3))  # [N, width]
        return self.fc(h)  # [N, num_classes]

    def decode(self, out: torch.Tensor) -> list[Decoded]:
        # out: [N, num_classes] logits
        return [Decoded(int(row.argmax()), {"scores": row.tolist()}) for row in out]


class SoftmaxNet(TinyNet):
    """TinyNet whose scores are its softmax, as coserve's classifiers decode (a cascade
    reads the top score as the answer's confidence)."""

    def decode(self, out: torch.Tensor) -> list[Decoded]:
        return decode_scores(out)


def route_by_size(expert: str, label: str, fields: dict[str, Any]) -> list[str]:
    """Large parts get the second detector; everything that fails ends."""
    if label != "pass":
        return []
    return ["det-b"] if fields.get("size") == "large" else ["det-a"]


def route_to_unknown(expert: str, label: str, fields: dict[str, Any]) -> list[str]:
    return ["no-such-expert"]


def route_raises(expert: str, label: str, fields: dict[str, Any]) -> list[str]:
    raise RuntimeError("rule table unavailable")
