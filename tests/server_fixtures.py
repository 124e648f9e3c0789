"""Experts with injected behaviour for the server tests. Each subclasses the tiny CoE's
classifier, so the tiny weights fit; test repositories name them by import path
("server_fixtures:RaisingResNet"); pytest (and the subprocess tests, via PYTHONPATH) put
tests/ on sys.path."""

from __future__ import annotations

import threading
import time

import torch

from coserve.architectures import ResNetClassifier

GATE = threading.Event()  # GatedResNet waits for it (in-process servers only)
GATE_TIMEOUT_S = 30.0
SLOW_FORWARD_S = 0.5


class RaisingResNet(ResNetClassifier):
    """Its forward always raises, like an expert whose code is broken."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("injected fault: this expert's forward raises")


class GatedResNet(ResNetClassifier):
    """Its forward waits until the test opens GATE: holds the engine deterministically."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not GATE.wait(GATE_TIMEOUT_S):
            raise RuntimeError("the test never opened the gate")
        return super().forward(x)


class SlowResNet(ResNetClassifier):
    """Each batch takes SLOW_FORWARD_S more: requests stay in flight long enough to
    send a signal while they are."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(SLOW_FORWARD_S)
        return super().forward(x)
