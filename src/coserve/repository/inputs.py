"""The check every way of serving a CoE makes before a request reaches an expert: its
input is what the first experts' architectures take. Made at submission, because a bad
input in a batch would fail the whole batch, other requests included."""

from __future__ import annotations

import torch

from coserve.errors import RequestError
from coserve.repository.spec import CoEModel
from coserve.types import Request


def check_input(model: CoEModel, request: Request, first: tuple[str, ...]) -> None:
    """Raises RequestError unless `request.input` is a float tensor of the input shape of
    every expert in `first` (the experts routing sends it to first)."""
    x = request.input
    for expert in first:
        shape = tuple(model.architectures[model.experts[expert].architecture].input_shape)
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != shape or not x.is_floating_point():
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise RequestError(
                f"request {request.request_id!r}: expert {expert!r} takes a float tensor "
                f"of shape {list(shape)}, got {got}"
            )
