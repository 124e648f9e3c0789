"""`coserve zoo build pcb`: a generated circuit-board inspection CoE in the shape of the
reference deployment (DESIGN.md, "Sizes to keep in mind").

- Two boards (A and B) with bills of materials over a shared set of component types and
  a skewed count per type; `boards.yaml` beside `coe.yaml` keeps them, for traces.
- One ResNet-family classification expert per component type, trained cheaply on its own
  rendered component images so that it really decides pass/defect.
- YOLO-style detection experts of two sizes, each shared by several component types of
  one family, run only when the classifier passes the component.

Sizes: `tiny` (tests, seconds), `default` (a few minutes and ~2 GB on two cores),
`reference` (the reference's expert count and per-expert sizes: ~350 ResNet-101
classifiers, YOLOv5m/l detectors, ~60 GB; for machines with the disk for it)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import save_file

from coserve.architectures import ResNetClassifier, YoloDetector
from coserve.engine.results import Request
from coserve.repository import write_repository

BOARDS_FILE = "boards.yaml"
DEFECT_RATE = 0.1
BOARD_A_SHARE = 0.75  # of all component types, board A uses this share; B overlaps it


@dataclass(frozen=True)
class PcbSize:
    name: str
    num_types: int
    image_size: int
    cls_depth: int
    cls_width: int
    num_small_detectors: int
    num_large_detectors: int
    small_det: tuple[float, float]  # YOLO (depth_multiple, width_multiple)
    large_det: tuple[float, float]
    num_train: int  # training images per classifier


SIZES = {
    "tiny": PcbSize("tiny", 12, 64, 10, 16, 3, 1, (0.33, 0.125), (0.33, 0.1875), 192),
    "default": PcbSize("default", 120, 64, 18, 32, 10, 6, (0.33, 0.5), (0.67, 0.75), 384),
    "reference": PcbSize("reference", 350, 64, 101, 64, 24, 16, (0.67, 0.75), (1.0, 1.0), 384),
}
LARGE_FAMILIES = ("ic", "connector")  # parts that need the larger detector


def pcb_size(name: str) -> PcbSize:
    from coserve.errors import ConfigError

    if name not in SIZES:
        raise ConfigError(f"unknown zoo size {name!r}; choose one of {', '.join(SIZES)}")
    return SIZES[name]


def boards(types: list[str], seed: int) -> dict[str, dict[str, int]]:
    """Bills of materials: component type -> count per board, Zipf-skewed, board B
    sharing about half of board A's types."""
    rng = np.random.default_rng(seed + 11)
    n_a = max(2, int(BOARD_A_SHARE * len(types)))
    order = [types[i] for i in rng.permutation(len(types))]
    a_types = order[:n_a]
    b_types = a_types[: n_a // 2] + order[n_a:]

    def counts(ts: list[str]) -> dict[str, int]:
        ranks = rng.permutation(len(ts)) + 1
        return {t: max(1, int(round(400 / r**1.1))) for t, r in zip(ts, ranks, strict=True)}

    return {"A": counts(a_types), "B": counts(b_types)}


def _detector_groups(types: list[str], size: PcbSize, family_of: Callable[[str], str]) -> dict[str, str]:
    """component type -> detector expert; detectors are per family and size class,
    several component types sharing one."""
    small = [t for t in types if family_of(t) not in LARGE_FAMILIES]
    large = [t for t in types if family_of(t) in LARGE_FAMILIES]
    mapping: dict[str, str] = {}
    for kind, group, num in (("s", small, size.num_small_detectors), ("m", large, size.num_large_detectors)):
        group = sorted(group, key=lambda t: (family_of(t), t))
        per = max(1, math.ceil(len(group) / max(1, num)))
        for i, t in enumerate(group):
            mapping[t] = f"det-{kind}{i // per:02d}-{family_of(group[(i // per) * per])}"
    return mapping


def build_pcb(
    root: str | Path,
    size: str = "default",
    seed: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
) -> Path:
    """Write the repository into `root`; `progress(what, done, total)` is called per expert."""
    from coserve.zoo.pcb_images import component_types, family_of
    from coserve.zoo.pcb_train import train_classifier

    spec = pcb_size(size)
    root = Path(root)
    (root / "weights").mkdir(parents=True, exist_ok=True)
    types = component_types(spec.num_types, seed=seed)
    det_of = _detector_groups(types, spec, family_of)
    detectors = sorted(set(det_of.values()))
    total = len(types) + len(detectors)
    experts, accuracies = [], {}
    cls_args = {"depth": spec.cls_depth, "width": spec.cls_width, "num_classes": 2}
    for k, t in enumerate(types):
        name = f"cls-{t}"
        torch.manual_seed(seed * 100_003 + k)
        model = ResNetClassifier(**cls_args).eval()
        # One intra-op thread: on a small machine more threads make training several times
        # slower (OpenMP workers spinning on shared cores).
        report = train_classifier(model, t, seed=seed * 100_003 + k, num_train=spec.num_train,
                                  size=spec.image_size, num_threads=1)
        accuracies[name] = round(report.accuracy_at_10pct, 4)
        save_file(model.state_dict(), root / "weights" / f"{name}.safetensors")
        experts.append({"name": name, "architecture": "classifier",
                        "weights": f"weights/{name}.safetensors", "stage": "preliminary"})
        if progress:
            progress(name, k + 1, total)
    for k, name in enumerate(detectors):
        torch.manual_seed(seed * 100_003 + 50_000 + k)
        arch = "detector-m" if name.startswith("det-m") else "detector-s"
        dm, wm = spec.large_det if arch == "detector-m" else spec.small_det
        save_file(YoloDetector(dm, wm, num_classes=2).eval().state_dict(),
                  root / "weights" / f"{name}.safetensors")
        experts.append({"name": name, "architecture": arch,
                        "weights": f"weights/{name}.safetensors", "stage": "subsequent"})
        if progress:
            progress(name, len(types) + k + 1, total)
    bom = boards(types, seed)
    shape = [3, spec.image_size, spec.image_size]
    det_arch = {
        f"detector-{k}": {"factory": "coserve.architectures.yolo:YoloDetector",
                          "args": {"depth_multiple": dm, "width_multiple": wm, "num_classes": 2},
                          "input_shape": shape, "labels": ["clear", "flagged"]}
        for k, (dm, wm) in (("s", spec.small_det), ("m", spec.large_det))
    }
    write_repository(root, {
        "name": f"pcb-{size}",
        "architectures": {
            "classifier": {"factory": "coserve.architectures.resnet:ResNetClassifier",
                           "args": cls_args, "input_shape": shape, "labels": ["pass", "defect"]},
            **det_arch,
        },
        "experts": experts,
        "routing": {
            "first": {"field": "component_type", "map": {t: f"cls-{t}" for t in types}},
            "next": {f"cls-{t}": {"pass": det_of[t], "defect": "end"} for t in types},
        },
        "usage_prior": {
            "field": "component_type",
            "counts": {t: bom["A"].get(t, 0) for t in types},
            "label_probs": {f"cls-{t}": {"pass": 1 - DEFECT_RATE, "defect": DEFECT_RATE}
                            for t in types},
        },
    })
    (root / BOARDS_FILE).write_text(yaml.safe_dump({
        "size": size, "seed": seed, "image_size": spec.image_size, "defect_rate": DEFECT_RATE,
        "boards": bom, "classifier_accuracy_at_10pct": accuracies,
    }, sort_keys=False))
    return root


# The reference inspection tasks: (board, number of component images).
TASKS = {"A": ("A", 2500), "B": ("B", 3500)}
ARRIVAL_INTERVAL_S = 0.004  # one component image every 4 ms


def pcb_requests(
    root: str | Path,
    board: str = "A",
    num_requests: int | None = None,
    interval_s: float = ARRIVAL_INTERVAL_S,
    seed: int = 0,
    defect_rate: float | None = None,
) -> list[Request]:
    """Component images drawn from a board's bill of materials, rendered with defects at
    the zoo's defect rate; `fields` carry component_type, board and the ground truth
    (`defect`: the injected defect kind, or None). interval_s=0 makes a backlog."""
    from coserve.errors import ConfigError
    from coserve.zoo.pcb_images import sample_component

    meta = yaml.safe_load((Path(root) / BOARDS_FILE).read_text())
    if board not in meta["boards"]:
        raise ConfigError(f"unknown board {board!r}; this zoo has {sorted(meta['boards'])}")
    bom = meta["boards"][board]
    num_requests = num_requests or TASKS[board][1]
    rate = meta["defect_rate"] if defect_rate is None else defect_rate
    rng = np.random.default_rng(seed + 1000 * ord(board))
    types = list(bom)
    p = np.array([bom[t] for t in types], dtype=float)
    picks = rng.choice(len(types), size=num_requests, p=p / p.sum())
    requests = []
    for i, k in enumerate(picks):
        image, defect = sample_component(types[k], rng, defect_rate=rate, size=meta["image_size"])
        fields = {"component_type": types[k], "board": board, "defect": defect}
        requests.append(Request(f"{board}{i:06d}", fields, image, round(i * interval_s, 6)))
    return requests
