"""A repository whose experts misbehave on demand, for the supervision tests: each
architecture's module (`fault_fixtures:FaultyNet`) calls the behaviour a test put in
`BEHAVIOUR[key]` on every forward, so a test makes an expert raise, hang, raise a
BaseException, fail on marked inputs or run out of memory, with real weights and the
real engine around it. pytest puts tests/ on sys.path."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from coserve.architectures.base import Decoded, ExpertModule
from coserve.repository import CoEModel, open_repository, write_repository
from coserve.types import Request

MARKER = 7.0  # an input whose first value is this is "bad" for `fail_on_marker`
BEHAVIOUR: dict[str, Callable[[torch.Tensor], None]] = {}  # key -> called with the batch
CALLS: dict[str, list[int]] = {}  # key -> batch size of every forward


class FaultyNet(ExpertModule):
    """TinyNet's shape ([N, 3, 8, 8] -> 2 labels) with a hook a test controls."""

    def __init__(self, key: str, num_classes: int = 2) -> None:
        super().__init__()
        self.key = key
        self.num_labels = num_classes
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        CALLS.setdefault(self.key, []).append(len(x))
        behaviour = BEHAVIOUR.get(self.key)
        if behaviour is not None:
            behaviour(x)
        return self.fc(self.conv(x).mean(dim=(2, 3)))  # [N, num_classes]

    def decode(self, out: torch.Tensor) -> list[Decoded]:
        return [Decoded(int(row.argmax()), {"scores": row.tolist()}) for row in out]


class Doom(BaseException):
    """What a badly written expert might raise: not an Exception."""


# -- behaviours ----------------------------------------------------------------------------
def raise_always(x: torch.Tensor) -> None:
    raise RuntimeError("this expert is broken")


def raise_doom(x: torch.Tensor) -> None:
    raise Doom("the expert raised a BaseException")


def fail_on_marker(x: torch.Tensor) -> None:
    if bool((x[:, 0, 0, 0] == MARKER).any()):
        raise ValueError("cannot handle a marked input")


def oom_above(k: int) -> Callable[[torch.Tensor], None]:
    def behaviour(x: torch.Tensor) -> None:
        if len(x) > k:
            raise torch.OutOfMemoryError(f"batch of {len(x)} does not fit (at most {k})")
    return behaviour


def hang_until(event: threading.Event, timeout_s: float = 10.0) -> Callable[[torch.Tensor], None]:
    """Block the forward until `event` is set (never past `timeout_s`: tests cannot hang)."""
    def behaviour(x: torch.Tensor) -> None:
        event.wait(timeout_s)
    return behaviour


# -- the repository ------------------------------------------------------------------------
def faulty_model(root: Path) -> CoEModel:
    """Preliminary experts `a` and `b` (routing field `kind`), and `a` routes every output
    to the subsequent expert `det`. Architecture keys are the expert names."""
    arch = {"input_shape": [3, 8, 8], "labels": ["pass", "defect"]}
    spec = {
        "name": "faulty",
        "architectures": {k: {"factory": "fault_fixtures:FaultyNet", "args": {"key": k}, **arch}
                          for k in ("a", "b", "det")},
        "experts": [{"name": k, "architecture": k, "weights": f"weights/{k}.safetensors",
                     "stage": "subsequent" if k == "det" else "preliminary"}
                    for k in ("a", "b", "det")],
        "routing": {"first": {"field": "kind", "map": {"a": "a", "b": "b"}},
                    "next": {"a": {"pass": "det", "defect": "det"}}},
        "usage_prior": {"field": "kind", "counts": {"a": 1, "b": 1}},
    }
    torch.manual_seed(0)
    for expert in spec["experts"]:
        path = root / expert["weights"]
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(FaultyNet(expert["name"]).state_dict(), str(path))
    write_repository(root, spec)
    return open_repository(root, trust_code=True)  # its factories are code outside coserve


def request(request_id: str, kind: str, marked: bool = False) -> Request:
    x = torch.zeros(3, 8, 8)
    if marked:
        x[0, 0, 0] = MARKER
    return Request(request_id, {"kind": kind}, x)
