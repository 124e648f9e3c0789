"""A wide one-hidden-layer perceptron: an expert whose weight bytes are set by its width
and whose compute is two matrix products, so loading it costs far more than running it
(each weight is read once per item, but read from storage once per switch)."""

from __future__ import annotations

import torch
from torch import nn

from coserve.architectures.base import Decoded, ExpertModule, decode_scores

FLOAT32_BYTES = 4


class WideMLP(ExpertModule):
    """flatten -> Linear(in_features, width) -> ReLU -> Linear(width, num_labels).

    Input: float32 `[N, *input_shape]` with `in_features` values per item (768 for
    `[3, 16, 16]`). Output: label logits `[N, num_labels]`."""

    def __init__(self, width: int = 256, num_labels: int = 4, in_features: int = 768) -> None:
        super().__init__()
        for name, value in (("width", width), ("num_labels", num_labels),
                            ("in_features", in_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"WideMLP {name} must be a positive int; got {value!r}")
        self.num_labels = num_labels
        self.hidden = nn.Linear(in_features, width)
        self.head = nn.Linear(width, num_labels)

    @staticmethod
    def num_bytes(width: int, num_labels: int = 4, in_features: int = 768) -> int:
        """The float32 weight bytes of a WideMLP of these arguments."""
        return FLOAT32_BYTES * (in_features * width + width + width * num_labels + num_labels)

    @staticmethod
    def width_for_bytes(num_bytes: int, num_labels: int = 4, in_features: int = 768) -> int:
        """The width whose weights come closest to `num_bytes` (at least 1)."""
        per_unit = FLOAT32_BYTES * (in_features + 1 + num_labels)
        return max(1, round((num_bytes - FLOAT32_BYTES * num_labels) / per_unit))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.hidden(x.flatten(1)))  # [N, width]
        return self.head(h)  # [N, num_labels]

    def decode(self, out: torch.Tensor) -> list[Decoded]:
        return decode_scores(out)
