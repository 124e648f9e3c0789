"""Faulty expert architectures for scripts/faults.py (and tests/test_faults.py).

A fault repository (built by `faults.build_fault_repo`) names these by import path
("fault_experts:RaisingResNet"), so the server must have this directory on its
PYTHONPATH, and, since this is code outside `coserve.`, be run with
`--trust-repo-code` where the server has that flag. Each subclasses the tiny CoE's
classifier, so the tiny classifier's weights fit.

Faults that must be switched on and off while the server runs read marker files in
$COSERVE_FAULT_DIR: `hang` (HangingResNet blocks while it exists) and `stall` (a
storage read of a weight file whose name starts with `f-stall` blocks while it exists).
Removing a marker releases what it holds, so the harness can always let a server exit.
"""

from __future__ import annotations

import _thread
import os
import time
from pathlib import Path

import torch

from coserve.architectures import ResNetClassifier

FAULT_DIR_ENV = "COSERVE_FAULT_DIR"
HOLD_AT_MOST_S = 600.0  # a marker left behind never holds a thread forever
POLL_S = 0.05
STALL_PREFIX = "f-stall"


def marker(name: str) -> Path | None:
    root = os.environ.get(FAULT_DIR_ENV)
    return Path(root) / name if root else None


def hold_while(name: str) -> None:
    """Block while the marker file `name` exists (at most HOLD_AT_MOST_S)."""
    path = marker(name)
    deadline = time.monotonic() + HOLD_AT_MOST_S
    while path is not None and path.exists() and time.monotonic() < deadline:
        time.sleep(POLL_S)


class InjectedBaseException(BaseException):
    """Not an Exception: what a `except Exception` guard lets through."""


class RaisingResNet(ResNetClassifier):
    """Its forward always raises, like an expert whose code is broken."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("injected fault: this expert's forward raises")


class BaseExceptionResNet(ResNetClassifier):
    """Its forward raises a BaseException subclass (as KeyboardInterrupt or a C
    extension's odd exception would)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise InjectedBaseException("injected fault: a BaseException from forward")


class ThreadExitResNet(ResNetClassifier):
    """Its forward ends the calling thread (`_thread.exit()` raises SystemExit, which
    `threading` swallows silently): the executor thread dies without a traceback."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _thread.exit()
        raise AssertionError("unreachable")


class HangingResNet(ResNetClassifier):
    """Its forward blocks while the `hang` marker exists (a deadlocked kernel, a
    forward waiting on a device that never answers)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hold_while("hang")
        return super().forward(x)


class OomOnRunResNet(ResNetClassifier):
    """Runs out of memory for batches over `oom_over_batch` items, as a GPU expert
    does when the batch's activations do not fit: raises torch.OutOfMemoryError."""

    def __init__(self, oom_over_batch: int = 1, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.oom_over_batch = oom_over_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [N, 3, H, W]
        if x.shape[0] > self.oom_over_batch:
            raise torch.OutOfMemoryError(
                f"injected: out of memory running a batch of {x.shape[0]} "
                f"(fits {self.oom_over_batch})")
        return super().forward(x)


class BallastResNet(ResNetClassifier):
    """The tiny classifier plus a `ballast` buffer of `ballast_elems` float32 values the
    forward ignores: an expert as large as wanted (its weight file is written sparse)."""

    def __init__(self, ballast_elems: int = 1, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.register_buffer("ballast", torch.zeros(ballast_elems))


class StallResNet(ResNetClassifier):
    """A plain classifier: naming it makes the server import this module, which patches
    the storage layer (below) so that reads of `f-stall*` weight files hang."""


def _patch_storage_open() -> None:
    """Wrap coserve's weight-file open so that opening an `f-stall*` file blocks while
    the `stall` marker exists: a storage read that never returns (a stalled NFS mount,
    a dying disk). A named FIFO cannot stand in for it: Storage.read refuses anything
    that is not a regular file before opening it."""
    from coserve.loader import storage

    original = storage._open
    if getattr(original, "_fault_patched", False):
        return

    def stalling_open(path: Path, flags: int) -> int:
        if Path(path).name.startswith(STALL_PREFIX):
            hold_while("stall")
        return original(path, flags)

    stalling_open._fault_patched = True  # type: ignore[attr-defined]
    storage._open = stalling_open


_patch_storage_open()
