"""The pcb zoo's confidence cascade (`coserve zoo build pcb --cascade`): one small
classifier per detector group (a family, split where the family has several detectors),
trained on a mix of its component types, answers first; an answer whose top score is
below the group's threshold escalates to the component's own full classifier
(`routing.cascade`, docs/repository.md).

Each threshold is calibrated when the expert is built, on held-out rendered images of
its types: the lowest top score above which the small classifier's answers are at least
CASCADE_TARGET accurate at the deployed defect rate. The share it escalates, and its
pass/defect shares, become the usage prior's `label_probs` (`low_confidence` included),
so usage probabilities and two-stage eviction see the escalation edges with their
traffic."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from coserve.architectures import ResNetClassifier
from coserve.types import LOW_CONFIDENCE

CASCADE_TARGET = 0.99  # accuracy at the deployed defect rate the sure answers must reach
LITE_DEPTH = 10  # ResNet-10 at the defect lane's width: the lane is the whole network
NUM_CALIBRATION = 160  # held-out images per component type for the threshold
LITE_PREFIX = "cls-lite-"


def lite_args() -> dict[str, int]:
    from coserve.zoo.pcb_train import LANE_WIDTH

    return {"depth": LITE_DEPTH, "width": LANE_WIDTH, "num_classes": 2}


@dataclass(frozen=True)
class Calibration:
    """A cascade expert's threshold and, at the deployed defect rate, what it does."""

    threshold: float
    escalated: float  # share of answers below the threshold
    sure_accuracy: float  # accuracy of the answers at or above it
    accuracy: float  # the small classifier's own accuracy on every answer
    label_probs: dict[str, float]  # pass, defect (sure answers) and low_confidence

    def as_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "escalated": round(self.escalated, 4),
                "sure_accuracy": round(self.sure_accuracy, 4),
                "accuracy": round(self.accuracy, 4)}


def calibrate(
    top: torch.Tensor, defect_said: torch.Tensor, is_defect: torch.Tensor, defect_rate: float,
    target: float = CASCADE_TARGET,
) -> Calibration:
    """The lowest threshold whose sure answers reach `target` accuracy, from per-image
    top scores [N], predictions [N] (True: defect) and ground truth [N], each class
    weighted to `defect_rate`. 1.0 (escalate everything) if no threshold reaches it."""
    n_defect = max(1, int(is_defect.sum()))
    n_clean = max(1, len(is_defect) - n_defect)
    weight = torch.where(is_defect, defect_rate / n_defect, (1 - defect_rate) / n_clean)  # [N]
    right = (defect_said == is_defect).double() * weight  # [N]
    order = torch.argsort(top, descending=True)
    # Sure answers are a prefix of the images by descending top score.
    sure_accuracy = torch.cumsum(right[order], 0) / torch.cumsum(weight[order], 0)  # [N]
    reaching = torch.nonzero(sure_accuracy >= target).flatten()
    if len(reaching) == 0:
        threshold = 1.0
    else:
        last = int(reaching[-1])  # the longest prefix that is accurate enough
        threshold = float(top[order[last]])
    sure = top >= threshold
    escalated = round(float(weight[~sure].sum()), 6)
    passed = round(float(weight[sure & ~defect_said].sum()), 6)
    return Calibration(
        threshold=threshold, escalated=escalated,
        sure_accuracy=float(right[sure].sum() / max(float(weight[sure].sum()), 1e-12)),
        accuracy=float(right.sum()),
        label_probs={"pass": passed, "defect": round(1 - escalated - passed, 6),
                     LOW_CONFIDENCE: escalated},
    )


@dataclass(frozen=True)
class LiteJob:
    """One cascade expert to train on its types, calibrate and write: picklable, so a
    worker process can run it."""

    name: str
    component_types: tuple[str, ...]
    seed: int
    num_train: int
    image_size: int
    path: Path

    architecture = "classifier-lite"
    stage = "preliminary"

    def run(self) -> Calibration:
        from coserve.zoo.pcb_train import DEPLOYED_DEFECT_RATE, train_classifier

        torch.manual_seed(self.seed)
        model = ResNetClassifier(**lite_args()).eval()
        train_classifier(model, self.component_types, seed=self.seed,
                         num_train=self.num_train * 2, size=self.image_size, num_threads=1)
        save_file(model.state_dict(), self.path)
        return _held_out(model, self.component_types, self.seed, self.image_size,
                         DEPLOYED_DEFECT_RATE)


def _held_out(
    model: ResNetClassifier, types: Sequence[str], seed: int, size: int, defect_rate: float
) -> Calibration:
    from coserve.zoo.pcb_images import balanced_defects
    from coserve.zoo.pcb_train import DEFECT, render_mix

    rng = np.random.default_rng([seed, 0xCA5C])
    defects = balanced_defects(NUM_CALIBRATION * len(types), rng)
    images = render_mix(types, defects, rng, size)  # [M, 3, S, S]
    with torch.inference_mode():
        probs = model(images).softmax(1)  # [M, 2]
    top, said = probs.max(1)  # [M], [M]
    is_defect = torch.tensor([d is not None for d in defects])
    return calibrate(top, said == DEFECT, is_defect, defect_rate)


def lite_jobs(
    root: Path, det_of: Mapping[str, str], seed: int, num_train: int, image_size: int
) -> list[LiteJob]:
    """One per detector; the k-th one's seed is seed * 100_003 + 80_000 + k (the other
    experts' seeds are those of a zoo without a cascade, so their weights are too)."""
    groups: dict[str, list[str]] = {}
    for kind, detector in det_of.items():
        groups.setdefault(detector, []).append(kind)
    jobs = []
    for k, detector in enumerate(sorted(groups)):
        name = LITE_PREFIX + detector.removeprefix("det-")
        jobs.append(LiteJob(name, tuple(sorted(groups[detector])), seed * 100_003 + 80_000 + k,
                            num_train, image_size, root / "weights" / f"{name}.safetensors"))
    return jobs


def with_cascade(
    config: dict[str, Any], jobs: Sequence[LiteJob], calibrations: Mapping[str, Calibration],
    det_of: Mapping[str, str], shape: list[int],
) -> dict[str, Any]:
    """coe.yaml of the zoo with its cascade: requests start at their group's small
    classifier; the full classifiers become subsequent, reached by escalation."""
    lite_of = {kind: job.name for job in jobs for kind in job.component_types}
    routing = config["routing"]
    experts = [{**e, "stage": "subsequent"} if e["name"].startswith("cls-") else e
               for e in config["experts"]]
    return {
        **config,
        "name": f"{config['name']}-cascade",
        "architectures": {**config["architectures"], LiteJob.architecture: {
            "factory": "coserve.architectures.resnet:ResNetClassifier", "args": lite_args(),
            "input_shape": shape, "labels": ["pass", "defect"]}},
        "experts": [{"name": job.name, "architecture": job.architecture,
                     "weights": f"weights/{job.name}.safetensors", "stage": job.stage}
                    for job in jobs] + experts,
        "routing": {
            "first": {"field": routing["first"]["field"], "map": lite_of},
            "next": {**{job.name: {"pass": det_of[job.component_types[0]], "defect": "end"}
                        for job in jobs}, **routing["next"]},
            "cascade": {job.name: {"threshold": calibrations[job.name].threshold,
                                   "escalate": {kind: f"cls-{kind}" for kind in job.component_types}}
                        for job in jobs},
        },
        "usage_prior": {**config["usage_prior"], "label_probs": {
            **{job.name: calibrations[job.name].label_probs for job in jobs},
            **config["usage_prior"]["label_probs"]}},
    }
