"""`coserve zoo build synth`: a generated CoE unlike the circuit board, to test scheduling
on another shape.

- **Three stages**, `P` experts each (`s1-00`.. preliminary, `s2-..` and `s3-..`
  subsequent). A request's `kind` field (`k00`..) picks its one stage-1 expert.
- **Fan-out** through `routing.next`: every stage-1 and stage-2 expert has four labels,
  `stop` (the branch ends), `next` and `alt` (one expert of the next stage) and `fan`
  (two experts of the next stage at once). Expert `i` routes to position
  `(NUM_SLOTS * i + k) % P` of the next stage, `k` = 0 for `next`, 1 for `alt`, 2 and 3
  for `fan`. With `P` odd, every position receives exactly one slot of each `k`, so with
  labels spread evenly every expert is used about equally (1/P); with `P >= 8` the two
  branches of a fan never meet at one expert later. Stage-3 experts end every branch.
- **Sizes spread** over a few size classes (one `WideMLP` architecture each, log-spaced:
  3 MB to 150 MB by default, 2.8 GB in all; 40 KB to 320 KB tiny), on a light input
  `[3, 16, 16]`, so loading an expert dominates running it.
- **Labels by real inference**: weights are random but seeded; each expert's head bias is
  calibrated on the inputs routing really brings it (stage 1 on its kind's inputs, later
  stages on what earlier experts sent on), so that its labels are spread about evenly.
  The measured label shares are the usage prior's `label_probs`.
- **A shifting trace**, `trace.jsonl`: one request every ARRIVAL_INTERVAL_S; the first
  half (`fields.phase` 0) draws SHIFT_FOCUS of its requests from the first half of the
  kinds, the second half (`phase` 1) as much from the other kinds. The shift point is in
  `synth.json`, in a comment at the top of `coe.yaml`, and in every request's `phase`;
  `usage_prior.counts` is the whole trace's mix.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from coserve.architectures import WideMLP
from coserve.errors import ConfigError
from coserve.repository import write_repository
from coserve.trace import write_trace
from coserve.types import Request

INPUT_SHAPE = (3, 16, 16)
IN_FEATURES = math.prod(INPUT_SHAPE)
ROUTE_FIELD = "kind"
LABELS = ("stop", "next", "alt", "fan")
TARGET_LABEL_SHARE = 1 / len(LABELS)  # each label equally likely: 1 next-stage task per task
ROUTES: dict[str, tuple[int, ...]] = {"stop": (), "next": (0,), "alt": (1,), "fan": (2, 3)}
NUM_SLOTS = 4  # slots k per expert in (NUM_SLOTS * i + k) % P: the offsets in ROUTES
NUM_STAGES = 3
ARRIVAL_INTERVAL_S = 0.004
SHIFT_FOCUS = 0.9  # share of a phase's requests drawn from its own half of the kinds
MIN_CALIBRATION_INPUTS = 16  # an expert routing brings fewer gets random kinds' inputs too
MANIFEST_FILE = "synth.json"
TRACE_FILE = "trace.jsonl"


@dataclass(frozen=True)
class SynthSize:
    name: str
    experts_per_stage: int  # P: odd (even usage) and >= 9 (fan branches never meet)
    class_bytes: tuple[int, ...]  # the size classes, one architecture each, smallest first
    num_requests: int  # in the trace
    num_calibration: int  # calibration inputs per kind

    def __post_init__(self) -> None:
        p = self.experts_per_stage
        if p % 2 == 0 or p < 2 * NUM_SLOTS + 1:
            raise ConfigError(f"synth size {self.name!r}: experts_per_stage must be odd and "
                              f"at least {2 * NUM_SLOTS + 1}, got {p}")


def _log_spaced(smallest: int, largest: int, num: int) -> tuple[int, ...]:
    ratio = (largest / smallest) ** (1 / (num - 1))
    return tuple(round(smallest * ratio**k) for k in range(num))


SIZES = {
    "tiny": SynthSize("tiny", 9, _log_spaced(40_000, 320_000, 4), 360, 48),
    "default": SynthSize("default", 21, _log_spaced(3_000_000, 150_000_000, 6), 3000, 96),
}
SYNTH_SIZES = tuple(SIZES)


def synth_size(size: str) -> SynthSize:
    if size not in SIZES:
        raise ConfigError(f"unknown synth size {size!r}; choose one of {', '.join(SIZES)}")
    return SIZES[size]


def expert_name(stage: int, position: int) -> str:
    return f"s{stage}-{position:02d}"


def kind_name(position: int) -> str:
    return f"k{position:02d}"


def targets(position: int, label: str, experts_per_stage: int) -> tuple[int, ...]:
    """The next stage's positions an expert at `position` sends a task to on `label`."""
    return tuple((NUM_SLOTS * position + k) % experts_per_stage for k in ROUTES[label])


def phase_kinds(experts_per_stage: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The kinds (stage-1 positions) each phase mostly draws from: the first half, the rest."""
    half = (experts_per_stage + 1) // 2
    return tuple(range(half)), tuple(range(half, experts_per_stage))


# -- inputs ---------------------------------------------------------------------------------
def kind_input(kind: int, generator: torch.Generator, seed: int = 0) -> torch.Tensor:
    """One input of `kind` [3, 16, 16]: the kind's fixed pattern plus noise."""
    pattern = torch.rand(INPUT_SHAPE, generator=torch.Generator().manual_seed(seed * 7919 + kind))
    return (pattern + 0.5 * torch.randn(INPUT_SHAPE, generator=generator)).float()


def synth_requests(size: str = "default", seed: int = 0,
                   num_requests: int | None = None) -> list[Request]:
    """The shifting trace: phase 0 then phase 1, one request every ARRIVAL_INTERVAL_S."""
    spec = synth_size(size)
    n = spec.num_requests if num_requests is None else num_requests
    g = torch.Generator().manual_seed(seed * 1_000_003 + 23)
    phases = phase_kinds(spec.experts_per_stage)
    requests = []
    for i in range(n):
        phase = 0 if i < n // 2 else 1
        own = torch.rand((), generator=g).item() < SHIFT_FOCUS
        pool = phases[phase] if own else phases[1 - phase]
        kind = pool[int(torch.randint(len(pool), (), generator=g))]
        requests.append(Request(f"r{i:06d}", {ROUTE_FIELD: kind_name(kind), "phase": phase},
                                kind_input(kind, g, seed), round(i * ARRIVAL_INTERVAL_S, 6)))
    return requests


# -- experts --------------------------------------------------------------------------------
def _size_classes(spec: SynthSize, seed: int) -> dict[str, int]:
    """expert -> size class: every class equally often over all experts, shuffled."""
    p, num_classes = spec.experts_per_stage, len(spec.class_bytes)
    g = torch.Generator().manual_seed(seed * 1_000_003 + 11)
    classes: dict[str, int] = {}
    for stage in range(1, NUM_STAGES + 1):
        order = torch.randperm(p, generator=g).tolist()
        for position, rank in enumerate(order):
            classes[expert_name(stage, position)] = (rank + (stage - 1) * p) % num_classes
    return classes


def _arch_name(size_class: int, spec: SynthSize) -> str:
    return f"mlp-{size_class}-w{_width(size_class, spec)}"


def _width(size_class: int, spec: SynthSize) -> int:
    return WideMLP.width_for_bytes(spec.class_bytes[size_class], len(LABELS), IN_FEATURES)


def _random_expert(width: int, generator: torch.Generator) -> WideMLP:
    with torch.device("meta"):  # no default init: every value is drawn below
        module = WideMLP(width, len(LABELS), IN_FEATURES)
    module = module.to_empty(device="cpu").eval()
    with torch.no_grad():
        module.hidden.weight.normal_(0, IN_FEATURES**-0.5, generator=generator)
        module.hidden.bias.normal_(0, 0.1, generator=generator)
        module.head.weight.normal_(0, width**-0.5, generator=generator)
        module.head.bias.zero_()
    return module


def fit_bias(logits: torch.Tensor, share: float = TARGET_LABEL_SHARE,
             num_steps: int = 300) -> torch.Tensor:
    """A bias [L] for logits [n, L] under which each label wins about `share` of the rows
    (the best of a damped fixed-point search, which argmax's steps keep from being exact)."""
    num_labels = logits.shape[1]
    target = torch.full((num_labels,), share)
    scale = float(logits.std()) or 1.0
    bias = torch.zeros(num_labels)
    best, best_error = bias.clone(), math.inf
    for step in range(num_steps):
        shares = _label_shares((logits + bias).argmax(dim=1), num_labels)
        error = float((shares - target).abs().max())
        if error < best_error:
            best, best_error = bias.clone(), error
        bias += scale * (target - shares) / (1 + step / 30)
    return best


def _label_shares(labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    return torch.bincount(labels, minlength=num_labels).float() / max(1, len(labels))


def _calibrated_expert(width: int, inputs: torch.Tensor, seed: int) -> tuple[WideMLP, list[int]]:
    """A seeded random expert whose labels on `inputs` [n, 3, 16, 16] are spread evenly,
    and those labels (from its own decode(), as the engine will decide them)."""
    module = _random_expert(width, torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        logits = module(inputs)  # [n, L]
        module.head.bias.copy_(fit_bias(logits))
        labels = [d.label_index for d in module.decode(module(inputs))]
    return module, labels


@dataclass(frozen=True)
class _BuiltExpert:
    name: str
    architecture: str
    stage: int
    label_probs: dict[str, float]


def _rounded_probs(shares: Sequence[float]) -> dict[str, float]:
    """label -> share at 4 decimals, the last one what makes them sum to 1 (the validator
    allows 1e-6, which rounding every share could exceed); rounded down, so it is >= 0."""
    probs = [math.floor(s * 10_000) / 10_000 for s in shares[:-1]]
    return dict(zip(LABELS, [*probs, round(1 - sum(probs), 4)], strict=True))


class _BuildContext:
    """What every stage of one build shares: the seed, the size classes, the calibration
    noise, the experts written so far and the progress callback."""

    def __init__(self, spec: SynthSize, seed: int,
                 progress: Callable[[str, int, int], None] | None) -> None:
        self.spec, self.seed, self.progress = spec, seed, progress
        self.classes = _size_classes(spec, seed)
        self.noise = torch.Generator().manual_seed(seed * 1_000_003 + 17)
        self.built: list[_BuiltExpert] = []

    def topped_up(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """At least MIN_CALIBRATION_INPUTS inputs: random kinds' fill in what routing lacks."""
        extra = [kind_input(int(torch.randint(self.spec.experts_per_stage, (), generator=self.noise)),
                            self.noise, self.seed)
                 for _ in range(MIN_CALIBRATION_INPUTS - len(inputs))]
        return inputs + extra

    def report(self, name: str) -> None:
        if self.progress is not None:
            total = NUM_STAGES * self.spec.experts_per_stage
            self.progress(f"weights/{name}.safetensors", len(self.built), total)


def _build_stage(root: Path, spec: SynthSize, stage: int, arriving: dict[int, list[torch.Tensor]],
                 ctx: _BuildContext) -> dict[int, list[torch.Tensor]]:
    """Write one stage's experts, each calibrated on what arrives at it; returns what each
    next-stage position receives."""
    sent: dict[int, list[torch.Tensor]] = {}
    for position in range(spec.experts_per_stage):
        name = expert_name(stage, position)
        size_class = ctx.classes[name]
        inputs = torch.stack(ctx.topped_up(arriving.get(position, [])))  # [n, 3, 16, 16]
        module, labels = _calibrated_expert(_width(size_class, spec), inputs,
                                            ctx.seed * 1_000_003 + stage * 1000 + position)
        save_file(module.state_dict(), root / "weights" / f"{name}.safetensors")
        shares = _label_shares(torch.tensor(labels), len(LABELS)).tolist()
        ctx.built.append(_BuiltExpert(name, _arch_name(size_class, spec), stage,
                                      _rounded_probs(shares)))
        ctx.report(name)
        for x, label in zip(inputs, labels, strict=True):
            for target in targets(position, LABELS[label], spec.experts_per_stage):
                sent.setdefault(target, []).append(x)
    return sent


# -- the repository -------------------------------------------------------------------------
def build_synth(root: str | Path, size: str = "default", seed: int = 0,
                progress: Callable[[str, int, int], None] | None = None) -> tuple[Path, Path]:
    """Write the repository into `root`, its trace to `root/trace.jsonl` and what the
    generator chose to `root/synth.json`; returns (root, trace). `progress(what, done,
    total)` is called as each expert is written."""
    spec = synth_size(size)
    root = Path(root)
    (root / "weights").mkdir(parents=True, exist_ok=True)
    ctx = _BuildContext(spec, seed, progress)
    arriving = {kind: [kind_input(kind, ctx.noise, seed) for _ in range(spec.num_calibration)]
                for kind in range(spec.experts_per_stage)}
    for stage in range(1, NUM_STAGES + 1):
        arriving = _build_stage(root, spec, stage, arriving, ctx)
    requests = synth_requests(size, seed)
    counts = {kind_name(k): 0 for k in range(spec.experts_per_stage)}
    for request in requests:
        counts[request.fields[ROUTE_FIELD]] += 1
    trace = write_trace(root / TRACE_FILE, requests)
    manifest = _manifest(spec, seed, requests)
    (root / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    # coe.yaml last: `coserve zoo build synth` takes a directory that holds one as built.
    file = write_repository(root, _repository_config(spec, ctx.built, counts))
    file.write_text(_header(manifest) + file.read_text(encoding="utf-8"), encoding="utf-8")
    return root, trace


def _repository_config(spec: SynthSize, built: Sequence[_BuiltExpert],
                       counts: dict[str, int]) -> dict[str, Any]:
    p = spec.experts_per_stage
    architectures = {
        _arch_name(c, spec): {"factory": "coserve.architectures.mlp:WideMLP",
                              "args": {"width": _width(c, spec), "num_labels": len(LABELS),
                                       "in_features": IN_FEATURES},
                              "input_shape": list(INPUT_SHAPE), "labels": list(LABELS)}
        for c in range(len(spec.class_bytes))
    }
    experts = [{"name": e.name, "architecture": e.architecture,
                "weights": f"weights/{e.name}.safetensors",
                "stage": "preliminary" if e.stage == 1 else "subsequent"} for e in built]
    next_table = {
        expert_name(stage, i): {label: [expert_name(stage + 1, t) for t in targets(i, label, p)]
                                or "end" for label in LABELS}
        for stage in range(1, NUM_STAGES) for i in range(p)
    }
    return {
        "name": f"synth-{spec.name}",
        "architectures": architectures,
        "experts": experts,
        "routing": {"first": {"field": ROUTE_FIELD,
                              "map": {kind_name(i): expert_name(1, i) for i in range(p)}},
                    "next": next_table},
        "usage_prior": {"field": ROUTE_FIELD, "counts": counts,
                        "label_probs": {e.name: e.label_probs for e in built}},
    }


def _manifest(spec: SynthSize, seed: int, requests: Sequence[Request]) -> dict[str, Any]:
    first, second = phase_kinds(spec.experts_per_stage)
    shift_index = len(requests) // 2
    return {
        "size": asdict(spec), "seed": seed, "num_stages": NUM_STAGES,
        "route_field": ROUTE_FIELD, "labels": list(LABELS),
        "routes": {label: list(offsets) for label, offsets in ROUTES.items()},
        "target": f"({NUM_SLOTS} * position + offset) % {spec.experts_per_stage}",
        "trace": {
            "file": TRACE_FILE, "num_requests": len(requests),
            "arrival_interval_s": ARRIVAL_INTERVAL_S, "shift_focus": SHIFT_FOCUS,
            "shift_index": shift_index,
            "shift_arrival_s": round(shift_index * ARRIVAL_INTERVAL_S, 6),
            "phase_kinds": [[kind_name(k) for k in first], [kind_name(k) for k in second]],
        },
    }


def _header(manifest: dict[str, Any]) -> str:
    trace = manifest["trace"]
    first, second = trace["phase_kinds"]
    return (
        f"# Generated by `coserve zoo build synth` (size {manifest['size']['name']}, seed "
        f"{manifest['seed']}); {MANIFEST_FILE} holds what the generator chose.\n"
        f"# {NUM_STAGES} stages; labels stop/next/alt/fan: end, one or two next-stage experts.\n"
        f"# {trace['file']} shifts at request {trace['shift_index']} (arrival "
        f"{trace['shift_arrival_s']} s): phase 0 draws {trace['shift_focus']:.0%} from kinds "
        f"{first[0]}..{first[-1]}, phase 1 from {second[0]}..{second[-1]}.\n"
        "# usage_prior.counts is the whole trace's mix.\n"
    )
