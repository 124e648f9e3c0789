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
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import yaml
from safetensors.torch import save_file

from coserve.architectures import ResNetClassifier, YoloDetector
from coserve.repository import write_repository
from coserve.types import Request

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
    num_workers: int | None = None,
    cascade: bool = False,
) -> Path:
    """Write the repository into `root`; `progress(what, done, total)` is called in this
    process as each expert is written. Experts are built by `num_workers` processes
    (default: one per core this process may use; 1: in this process), each expert from
    its own seed, so the files are the same whatever the number of workers. `cascade`:
    add a small classifier per detector group that answers first and escalates to the
    full classifiers when unsure (`coserve.zoo.pcb_cascade`); the other experts' weights
    are those of the zoo without it."""
    from coserve.zoo.pcb_cascade import lite_jobs, with_cascade
    from coserve.zoo.pcb_images import component_types, family_of

    spec = pcb_size(size)
    num_workers = _num_workers(num_workers)
    root = Path(root)
    (root / "weights").mkdir(parents=True, exist_ok=True)
    types = component_types(spec.num_types, seed=seed)
    det_of = _detector_groups(types, spec, family_of)
    jobs = _expert_jobs(root, spec, types, sorted(set(det_of.values())), seed)
    lites = lite_jobs(root, det_of, seed, spec.num_train, spec.image_size) if cascade else []
    outcomes = _run_jobs([*lites, *jobs], num_workers, progress)
    bom = boards(types, seed)
    config = _repository_config(size, spec, types, det_of, jobs, bom)
    meta: dict[str, Any] = {"classifier_accuracy_at_10pct": {
        job.name: outcomes[job.name] for job in jobs if job.name in outcomes}}
    if cascade:
        shape = [3, spec.image_size, spec.image_size]
        config = with_cascade(config, lites, {j.name: outcomes[j.name] for j in lites}, det_of, shape)
        meta["cascade_at_10pct"] = {j.name: outcomes[j.name].as_dict() for j in lites}
    write_repository(root, config)
    (root / BOARDS_FILE).write_text(yaml.safe_dump({
        "size": size, "seed": seed, "image_size": spec.image_size, "defect_rate": DEFECT_RATE,
        "boards": bom, **meta,
    }, sort_keys=False))
    return root


def _cls_args(spec: PcbSize) -> dict[str, int]:
    return {"depth": spec.cls_depth, "width": spec.cls_width, "num_classes": 2}


@dataclass(frozen=True)
class _ClassifierJob:
    """One classifier to initialise from `seed`, fine-tune and write: picklable, so a
    worker process can run it."""

    name: str
    component_type: str
    seed: int
    cls_args: dict[str, int]
    num_train: int
    image_size: int
    path: Path

    architecture = "classifier"
    stage = "preliminary"

    def run(self) -> float:
        """Writes the weights; returns the expected accuracy at the deployed defect rate."""
        from coserve.zoo.pcb_train import train_classifier

        torch.manual_seed(self.seed)
        model = ResNetClassifier(**self.cls_args).eval()
        # One intra-op thread: on a small machine more threads make training several times
        # slower (OpenMP workers spinning on shared cores).
        report = train_classifier(model, self.component_type, seed=self.seed,
                                  num_train=self.num_train, size=self.image_size, num_threads=1)
        save_file(model.state_dict(), self.path)
        return round(report.accuracy_at_10pct, 4)


@dataclass(frozen=True)
class _DetectorJob:
    """One detector, randomly initialised from `seed` (which detector runs is decided by
    inference on the classifier's output, not by its own weights), written."""

    name: str
    architecture: str  # "detector-s" or "detector-m"
    seed: int
    depth_multiple: float
    width_multiple: float
    path: Path

    stage = "subsequent"

    def run(self) -> None:
        torch.manual_seed(self.seed)
        detector = YoloDetector(self.depth_multiple, self.width_multiple, num_classes=2)
        save_file(detector.eval().state_dict(), self.path)


class _Job(Protocol):
    """An expert to build in a worker process (_ClassifierJob, _DetectorJob, LiteJob)."""

    name: str

    def run(self) -> Any:
        """Build and write the expert; what it returns is reported (or None)."""
        ...


def _expert_jobs(
    root: Path, spec: PcbSize, types: list[str], detectors: list[str], seed: int
) -> list[_Job]:
    """Every expert of the zoo, classifiers first; the k-th classifier's seed is
    seed * 100_003 + k, the k-th detector's seed * 100_003 + 50_000 + k."""
    jobs: list[_Job] = [
        _ClassifierJob(f"cls-{t}", t, seed * 100_003 + k, _cls_args(spec), spec.num_train,
                       spec.image_size, root / "weights" / f"cls-{t}.safetensors")
        for k, t in enumerate(types)
    ]
    for k, name in enumerate(detectors):
        arch = "detector-m" if name.startswith("det-m") else "detector-s"
        dm, wm = spec.large_det if arch == "detector-m" else spec.small_det
        jobs.append(_DetectorJob(name, arch, seed * 100_003 + 50_000 + k, dm, wm,
                                 root / "weights" / f"{name}.safetensors"))
    return jobs


def _num_workers(num_workers: int | None) -> int:
    if num_workers is None:
        return len(os.sched_getaffinity(0))
    if num_workers < 1:
        from coserve.errors import ConfigError

        raise ConfigError(f"num_workers must be at least 1 (or None: one per core), got {num_workers}")
    return num_workers


def _run_jobs(
    jobs: list[_Job], num_workers: int, progress: Callable[[str, int, int], None] | None
) -> dict[str, Any]:
    """Runs every job, in worker processes unless one worker is asked for; returns what
    each job's run returned (a classifier's accuracy, a cascade expert's calibration)
    in job order, for those that returned something."""
    outcomes: dict[str, Any] = {}
    for job, outcome in _completed(jobs, min(num_workers, len(jobs))):
        outcomes[job.name] = outcome
        if progress:
            progress(job.name, len(outcomes), len(jobs))
    return {job.name: outcome for job in jobs if (outcome := outcomes[job.name]) is not None}


def _completed(jobs: list[_Job], num_workers: int) -> Iterator[tuple[_Job, Any]]:
    """(job, what its run returned) as each finishes."""
    if num_workers <= 1:
        for job in jobs:
            yield job, job.run()
        return
    # spawn, not fork: a forked child inherits the parent's OpenMP thread pool state,
    # which can hang torch in the child once the parent has run a parallel op.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(num_workers, mp_context=context, initializer=torch.set_num_threads,
                             initargs=(1,)) as pool:
        futures = {pool.submit(job.run): job for job in jobs}
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:  # on an error (or the caller stopping early), start nothing more
            for future in futures:
                future.cancel()


def _repository_config(
    size: str, spec: PcbSize, types: list[str], det_of: dict[str, str], jobs: list[_Job],
    bom: dict[str, dict[str, int]],
) -> dict[str, Any]:
    """coe.yaml: the architectures, every expert in job order, the routing rules and the
    usage prior (board A's counts, the deployed defect rate)."""
    shape = [3, spec.image_size, spec.image_size]
    det_arch = {
        f"detector-{k}": {"factory": "coserve.architectures.yolo:YoloDetector",
                          "args": {"depth_multiple": dm, "width_multiple": wm, "num_classes": 2},
                          "input_shape": shape, "labels": ["clear", "flagged"]}
        for k, (dm, wm) in (("s", spec.small_det), ("m", spec.large_det))
    }
    return {
        "name": f"pcb-{size}",
        "architectures": {
            "classifier": {"factory": "coserve.architectures.resnet:ResNetClassifier",
                           "args": _cls_args(spec), "input_shape": shape,
                           "labels": ["pass", "defect"]},
            **det_arch,
        },
        "experts": [{"name": job.name, "architecture": job.architecture,
                     "weights": f"weights/{job.name}.safetensors", "stage": job.stage}
                    for job in jobs],
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
    }


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
