"""The check every way of serving a CoE makes before a request reaches an expert: its
input is what the first experts' architectures take. Made at submission, because a bad
input in a batch would fail the whole batch, other requests included.

`check_input_shape` is the same check on a shape alone, so a server can refuse an
image from its header, before decoding it (a 4096x4096 PNG for a 64x64 expert costs
its header, not 200 MB of pixels)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from coserve.errors import RequestError
from coserve.repository.spec import CoEModel
from coserve.types import Request


def check_input(model: CoEModel, request: Request, first: tuple[str, ...]) -> None:
    """Raises RequestError unless `request.input` is a float tensor of the input shape of
    every expert in `first` (the experts routing sends it to first)."""
    x = request.input
    where = f"request {request.request_id!r}"
    if first and (not isinstance(x, torch.Tensor) or not x.is_floating_point()):
        got = f"a {x.dtype} tensor" if isinstance(x, torch.Tensor) else type(x).__name__
        raise RequestError(f"{where}: expert {first[0]!r} takes a float tensor of shape "
                           f"{list(input_shape(model, first[0]))}, got {got}")
    check_input_shape(model, tuple(x.shape), first, where)


def check_input_shape(model: CoEModel, shape: Sequence[int], first: tuple[str, ...],
                      where: str) -> None:
    """Raises RequestError, prefixed with `where`, unless `shape` is the input shape of
    every expert in `first`."""
    got = tuple(shape)
    for expert in first:
        expected = input_shape(model, expert)
        if got != expected:
            raise RequestError(f"{where}: expert {expert!r} takes a float tensor of shape "
                               f"{list(expected)}, got {got}")


def input_shape(model: CoEModel, expert: str) -> tuple[int, ...]:
    return tuple(model.architectures[model.experts[expert].architecture].input_shape)
