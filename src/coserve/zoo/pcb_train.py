"""Cheap training of one pass/defect classification expert on its own component images.

A zoo holds a hundred or more classifiers and is built on a small CPU, so each expert gets
a second or two. Random convolutional features with a fitted linear head are not enough
for this task (70-75% balanced accuracy measured: a defect is small, comes in five kinds,
and a linear head over globally pooled random features cannot tell "unlike a clean part"
from nuisance), and training a ResNet from its random initialisation takes 10-20 s per
expert. So every expert is built from three parts:

1. its own random initialisation (the caller seeds it), kept in all but a few channels;
2. a *defect lane*: LANE_WIDTH channels of the stem and the first residual block that
   carry a small defect-detector network, pretrained once over many component types
   (`pretrain_lane`, shipped as package data: `SHIPPED_LANE_FILE`) and fine-tuned for
   about a second on the expert's own component type. Later stages pass the lane
   through to the pooled features (averaging when they downsample), so the lane is plain
   ResNet weights: the model stays a `ResNetClassifier` with an unchanged state_dict layout;
3. BatchNorm statistics calibrated on the expert's own images (all channels but the
   lane's), and `.fc` fitted as an L2-regularised logistic regression on the pooled lane
   features (the random channels still run, but get zero weight: they only add noise).

Measured on 20 component types of the default zoo at 64x64: 95% balanced accuracy on
average (88% for the worst, fine-pitch ICs, whose solder bridges are a pixel or two),
97.5% at a 10% defect rate. The lane was pretrained at 64x64; other sizes work, less well.
Models that cannot hold the lane (bottleneck ResNets, widths below LANE_WIDTH, non-RGB)
get parts 1 and 3 only, and their reports say so (`method="random-features"`).
Label 0 is "pass", 1 is "defect".
"""

from __future__ import annotations

import copy
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load, save_file
from torch import nn
from torch.nn import functional as F

from coserve.architectures import ResNetClassifier
from coserve.architectures.resnet import BasicBlock
from coserve.zoo.pcb_images import DEFECT_KINDS, balanced_defects, component_types, render_batch

PASS, DEFECT = 0, 1
DEPLOYED_DEFECT_RATE = 0.1  # the share of defective components on a real line
NUM_EVAL = 200  # held-out images for the report, half of them defective
L2_PENALTY = 1e-3  # on standardised features: keeps the head small and the fit stable
LBFGS_STEPS = 100
LANE_WIDTH = 16  # channels the defect lane takes from the stem and the first stage
FINETUNE_STEPS = 48  # batches of FINETUNE_BATCH: ~1 s on one core for ~1 point of accuracy
FINETUNE_BATCH = 32
FINETUNE_LR = 2e-3
_BN_EPS = 1e-5  # torch's default, which every BatchNorm here uses
SHIPPED_LANE_FILE = "data/defect_lane.safetensors"  # in this package: the pretrained lane


@dataclass(frozen=True)
class TrainReport:
    """How well one trained expert agrees with the image generator's ground truth."""

    component_type: str
    method: str  # "lane" or "random-features" (the model cannot hold the lane)
    accuracy_balanced: float  # on NUM_EVAL held-out images, half of them defective
    accuracy_at_10pct: float  # expected at DEPLOYED_DEFECT_RATE, from per-class accuracies
    recall_by_kind: dict[str, float]  # share of each defect kind flagged as a defect
    train_s: float  # wall time of training (rendering, fine-tuning, calibration, fit)


def train_classifier(
    model: ResNetClassifier,
    component_type: str | Sequence[str],
    seed: int,
    num_train: int = 384,
    size: int = 64,
    *,
    num_threads: int | None = None,
    lane: DefectLane | None = None,
    finetune_steps: int = FINETUNE_STEPS,
) -> TrainReport:
    """Make `model` (freshly initialised by the caller) decide pass/defect for
    `component_type`, in place, from `num_train` rendered images, half of them defective
    (several types: a mix, entry i of the i-th type in turn; a cascade's cheap expert).

    `lane` defaults to the shipped pretrained lane. Deterministic for a given seed, initial
    model and thread count; uses `num_threads` torch threads (default: the cores this
    process may run on) and restores the setting after. Touches no global RNG."""
    if num_train < 16:
        raise ValueError(f"num_train must be at least 16 images (a few hundred is usual); got {num_train}")
    rng = np.random.default_rng([seed, 0x7EA1])
    with _torch_threads(num_threads):
        start = time.perf_counter()
        labels = balanced_defects(num_train, rng)
        images = render_mix(component_type, labels, rng, size)  # [N, 3, S, S]
        targets = torch.tensor([d is not None for d in labels], dtype=torch.float32)  # [N]
        frozen: dict[nn.BatchNorm2d, int] = {}
        method = "random-features"
        if can_hold_lane(model):
            tuned = copy.deepcopy(lane) if lane is not None else shipped_lane()
            finetune_lane(tuned, images, targets, finetune_steps, torch.Generator().manual_seed(seed))
            frozen = embed_lane(model, tuned)
            method = "lane"
        features = calibrate_and_extract(model, images, frozen)  # [N, F]
        # With a lane, the head reads the lane alone: the random channels only add noise.
        fit_head(model.fc, features, targets, num_used=LANE_WIDTH if frozen else None)
        model.eval()
        train_s = time.perf_counter() - start
        return _evaluate(model, component_type, rng, size, method, train_s)


def render_mix(
    component_type: str | Sequence[str], defects: Sequence[str | None], rng: np.random.Generator,
    size: int,
) -> torch.Tensor:
    """`render_batch` of one type, or of several: entry i is of type i mod len(types)."""
    types = [component_type] if isinstance(component_type, str) else list(component_type)
    if len(types) == 1:
        return render_batch(types[0], defects, rng, size)
    images = torch.empty(len(defects), 3, size, size)  # [N, 3, S, S]
    for k, kind in enumerate(types):
        rows = list(range(k, len(defects), len(types)))
        if rows:
            images[rows] = render_batch(kind, [defects[i] for i in rows], rng, size)
    return images


@contextmanager
def _torch_threads(num_threads: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads or len(os.sched_getaffinity(0)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------
# The defect lane.


class DefectLane(nn.Module):
    """A small defect detector shaped like a ResNet's stem and first residual block, so
    that it can live in LANE_WIDTH channels of one: conv 7x7/2 -> BN -> ReLU -> max pool
    -> BasicBlock; output: the block's feature maps averaged over space [N, width]."""

    def __init__(self, width: int = LANE_WIDTH) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.block = BasicBlock(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)  # [N, k, S/4, S/4]
        return self.block(x).mean((2, 3))  # [N, k]


def can_hold_lane(model: ResNetClassifier, width: int = LANE_WIDTH) -> bool:
    """Whether `model` has room for a lane: RGB basic-block ResNets at least `width` wide."""
    return (isinstance(model.layer1[0], BasicBlock) and model.conv1.out_channels >= width
            and model.conv1.in_channels == 3)


def finetune_lane(
    lane: DefectLane, images: torch.Tensor, targets: torch.Tensor, steps: int, generator: torch.Generator
) -> None:
    """Adapts a pretrained lane to one component type: `steps` Adam steps on minibatches of
    `images` [N, 3, S, S] with a logistic head on its standardised pooled output. BatchNorm
    runs in train mode, so its statistics move to this type's images too."""
    if steps <= 0:
        return
    with torch.no_grad():
        lane.eval()
        pooled = lane(images)  # [N, k]
    mean, std = pooled.mean(0), pooled.std(0).clamp_min(1e-6)
    head_w = torch.zeros(len(mean), requires_grad=True)
    head_b = torch.zeros((), requires_grad=True)
    opt = torch.optim.Adam([*lane.parameters(), head_w, head_b], lr=FINETUNE_LR)
    lane.train()
    for _ in range(steps):
        idx = torch.randint(0, len(images), (FINETUNE_BATCH,), generator=generator)
        logits = ((lane(images[idx]) - mean) / std) @ head_w + head_b  # [B]
        loss = F.binary_cross_entropy_with_logits(logits, targets[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    lane.eval()


def embed_lane(model: ResNetClassifier, lane: DefectLane) -> dict[nn.BatchNorm2d, int]:
    """Writes `lane` into the first `k` channels of `model` (see the module docstring) and
    returns, per BatchNorm, how many leading channels are the lane's and must keep their
    statistics when the rest is calibrated."""
    k = lane.conv1.out_channels
    frozen: dict[nn.BatchNorm2d, int] = {}
    with torch.no_grad():
        model.conv1.weight[:k] = lane.conv1.weight
        frozen[model.bn1] = _copy_bn(model.bn1, lane.bn1, k)
        first = model.layer1[0]
        for conv, bn, src_conv, src_bn in ((first.conv1, first.bn1, lane.block.conv1, lane.block.bn1),
                                           (first.conv2, first.bn2, lane.block.conv2, lane.block.bn2)):
            conv.weight[:k] = 0.0
            conv.weight[:k, :k] = src_conv.weight
            frozen[bn] = _copy_bn(bn, src_bn, k)
        for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
            for i, block in enumerate(stage):
                if stage is model.layer1 and i == 0:
                    continue
                frozen.update(_pass_lane(block, k) if i == 0 else _skip_lane(block, k))
    return frozen


def _copy_bn(dst: nn.BatchNorm2d, src: nn.BatchNorm2d, k: int) -> int:
    dst.weight[:k] = src.weight
    dst.bias[:k] = src.bias
    dst.running_mean[:k] = src.running_mean
    dst.running_var[:k] = src.running_var
    return k


def _set_bn(bn: nn.BatchNorm2d, k: int, scale: float) -> int:
    """Lane channels of `bn` become `scale` times identity (eval mode): 1 passes, 0 blocks."""
    bn.weight[:k] = scale
    bn.bias[:k] = 0.0
    bn.running_mean[:k] = 0.0
    bn.running_var[:k] = 1.0 - _BN_EPS
    return k


def _skip_lane(block: BasicBlock, k: int) -> dict[nn.BatchNorm2d, int]:
    """A block that keeps its input shape passes the lane through: zero residual on it."""
    return {block.bn2: _set_bn(block.bn2, k, 0.0)}


def _pass_lane(block: BasicBlock, k: int) -> dict[nn.BatchNorm2d, int]:
    """A downsampling block carries the lane through its residual branch as a 3x3 average
    with stride 2 (a 1x1 stride-2 shortcut would drop 3 of every 4 positions), and its
    shortcut adds nothing to the lane."""
    lane = torch.arange(k)
    block.conv1.weight[:k] = 0.0
    block.conv1.weight[lane, lane] = 1.0 / 9.0
    block.conv2.weight[:k] = 0.0
    block.conv2.weight[lane, lane, 1, 1] = 1.0
    shortcut_conv, shortcut_bn = block.downsample
    shortcut_conv.weight[:k] = 0.0
    return {block.bn1: _set_bn(block.bn1, k, 1.0), block.bn2: _set_bn(block.bn2, k, 1.0),
            shortcut_bn: _set_bn(shortcut_bn, k, 1.0)}


# ---------------------------------------------------------------------------------------
# Calibration and the head.


def calibrate_and_extract(
    model: ResNetClassifier, images: torch.Tensor, frozen: dict[nn.BatchNorm2d, int] | None = None
) -> torch.Tensor:
    """Sets every BatchNorm's running statistics from `images` [N, 3, S, S] (all channels
    but the leading `frozen[bn]` ones) and returns their pooled features [N, F], the input
    of `model.fc`.

    One eval-mode pass: a hook gives each BatchNorm the statistics of its own input just
    before it normalises, so the features equal what the calibrated model computes."""
    frozen = frozen or {}
    captured: list[torch.Tensor] = []
    hooks = [model.fc.register_forward_hook(lambda _m, args, _out: captured.append(args[0]))]
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            hooks.append(m.register_forward_pre_hook(_calibrating_hook(frozen.get(m, 0))))
    try:
        model.eval()
        with torch.no_grad():
            model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return captured[0]


def _calibrating_hook(num_frozen: int) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
    def hook(bn: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0]  # [N, C, H, W]
        bn.running_mean[num_frozen:] = x.mean((0, 2, 3))[num_frozen:]
        bn.running_var[num_frozen:] = x.var((0, 2, 3), unbiased=False)[num_frozen:]

    return hook


def fit_head(
    fc: nn.Linear, features: torch.Tensor, targets: torch.Tensor, num_used: int | None = None
) -> None:
    """Fits `fc` [2, F] as a logistic regression of `targets` [N] (1 = defect) on the
    leading `num_used` (default: all) of `features` [N, F], standardising inside and
    folding that into weight and bias; the other features get zero weight."""
    used = features[:, :num_used]  # [N, U]
    mean = used.mean(0)  # [U]
    std = used.std(0).clamp_min(1e-6)  # [U]
    z = (used - mean) / std  # [N, U]
    w = torch.zeros(z.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=LBFGS_STEPS, line_search_fn="strong_wolfe")

    def loss_fn() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(z @ w + b, targets) + L2_PENALTY * (w * w).sum()
        loss.backward()
        return loss

    opt.step(loss_fn)
    with torch.no_grad():
        w_raw = torch.zeros(features.shape[1])  # [F]
        w_raw[: z.shape[1]] = w / std
        b_raw = b - (w_raw[: z.shape[1]] * mean).sum()
        # Two logits whose softmax is sigmoid(w.x + b) for "defect".
        fc.weight.copy_(torch.stack([-w_raw, w_raw]) / 2)
        fc.bias.copy_(torch.stack([-b_raw, b_raw]) / 2)


def _evaluate(
    model: ResNetClassifier, component_type: str | Sequence[str], rng: np.random.Generator,
    size: int, method: str, train_s: float,
) -> TrainReport:
    labels = balanced_defects(NUM_EVAL, rng)
    images = render_mix(component_type, labels, rng, size)  # [M, 3, S, S]
    with torch.inference_mode():
        predicted = model(images).argmax(1).tolist()  # [M]
    right = np.array([(p == DEFECT) == (d is not None) for p, d in zip(predicted, labels, strict=True)])
    kinds = np.array([d or "" for d in labels])
    specificity = float(right[kinds == ""].mean())
    sensitivity = float(right[kinds != ""].mean())
    return TrainReport(
        component_type=component_type if isinstance(component_type, str) else "+".join(component_type),
        method=method,
        accuracy_balanced=float(right.mean()),
        accuracy_at_10pct=(1 - DEPLOYED_DEFECT_RATE) * specificity + DEPLOYED_DEFECT_RATE * sensitivity,
        recall_by_kind={k: float(right[kinds == k].mean()) for k in DEFECT_KINDS},
        train_s=train_s,
    )


# ---------------------------------------------------------------------------------------
# Pretraining the lane (offline: its result ships as SHIPPED_LANE_FILE).

LANE_PRETRAIN_TYPES_SEED = 999  # types unlike any zoo's (names differ, so appearances do)


def pretrain_lane(
    num_types: int = 160,
    images_per_type: int = 48,
    num_epochs: int = 20,
    seed: int = 0,
    size: int = 64,
    log: Callable[[str], None] | None = None,
) -> DefectLane:
    """Trains a DefectLane over `num_types` component types, fresh images every epoch,
    with one logistic head per type plus one shared head (which pushes the lane towards
    type-independent defect evidence). Minutes on one core; deterministic for a seed and
    thread count."""
    types = component_types(num_types, seed=LANE_PRETRAIN_TYPES_SEED)
    lane = _new_lane(seed)
    norm = nn.BatchNorm1d(LANE_WIDTH, affine=False)  # standardises pooled features per batch
    head_w = torch.zeros(num_types + 1, LANE_WIDTH, requires_grad=True)  # last row: shared head
    head_b = torch.zeros(num_types + 1, requires_grad=True)
    batch = 64
    steps_per_epoch = num_types * images_per_type // batch
    opt = torch.optim.Adam([*lane.parameters(), head_w, head_b], lr=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-2, total_steps=num_epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    lane.train()
    for epoch in range(num_epochs):
        images, targets, type_idx = _pretrain_data(types, images_per_type, [seed, epoch], size)
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * batch : (step + 1) * batch]
            logits = norm(lane(images[idx])) @ head_w.T + head_b  # [B, T + 1]
            own = logits.gather(1, type_idx[idx, None])[:, 0]
            loss = (F.binary_cross_entropy_with_logits(own, targets[idx])
                    + 0.5 * F.binary_cross_entropy_with_logits(logits[:, -1], targets[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        if log:
            log(f"epoch {epoch + 1}/{num_epochs}: loss {total / steps_per_epoch:.3f}")
    return lane.eval()


def _pretrain_data(
    types: list[str], per_type: int, seed: list[int], size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images, targets, type_idx = [], [], []
    for i, component_type in enumerate(types):
        rng = np.random.default_rng([*seed, i])
        labels = balanced_defects(per_type, rng)
        images.append(render_batch(component_type, labels, rng, size))
        targets.append(torch.tensor([d is not None for d in labels], dtype=torch.float32))
        type_idx.append(torch.full((per_type,), i))
    return torch.cat(images), torch.cat(targets), torch.cat(type_idx)


def save_lane(lane: DefectLane, path: str | Path) -> None:
    """Writes the lane's state as safetensors, floats rounded to float16 (the precision
    the shipped lane has always had; it halves the file)."""
    state = {name: t.detach().to(torch.float16) if t.is_floating_point() else t.detach()
             for name, t in lane.state_dict().items()}
    save_file({name: t.contiguous() for name, t in state.items()}, str(path),
              metadata={"produced_by": "python -m coserve.zoo.pcb_train (pretrain_lane defaults)"})


def _new_lane(seed: int = 0) -> DefectLane:
    # Module construction draws its initial weights from torch's global RNG; keep that
    # untouched so training an expert does not shift the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DefectLane()


@lru_cache(maxsize=1)
def _shipped_state() -> dict[str, torch.Tensor]:
    # Package data read as bytes (works from a wheel or a zip too); safetensors, no pickle.
    blob = resources.files("coserve.zoo").joinpath(SHIPPED_LANE_FILE).read_bytes()
    return {name: t.float() if t.is_floating_point() else t for name, t in load(blob).items()}


def shipped_lane() -> DefectLane:
    """A fresh copy of the pretrained lane that ships with coserve."""
    lane = _new_lane()
    lane.load_state_dict(_shipped_state())
    return lane.eval()


if __name__ == "__main__":
    # Regenerates the shipped lane (one torch thread, ~5 min):
    #   python -m coserve.zoo.pcb_train src/coserve/zoo/data/defect_lane.safetensors
    if len(sys.argv) != 2:
        sys.exit("usage: python -m coserve.zoo.pcb_train OUT.safetensors")
    trained = pretrain_lane(log=lambda line: print(line, file=sys.stderr, flush=True))
    save_lane(trained, sys.argv[1])
