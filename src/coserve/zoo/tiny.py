"""`coserve zoo tiny DIR`: a small but complete CoE repository and a trace beside it, in
seconds. Twelve experts of a few MB (eight ResNet-18 classifiers, one per component
type, and four YOLO-style detectors shared by groups of types), two stages, a skewed
component mix. Weights are random but seeded, and each classifier's head bias is set so
that about PASS_RATE of its component images pass on to a detector, so routing depends
on real outputs."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from coserve.architectures import ResNetClassifier, YoloDetector
from coserve.trace import write_trace
from coserve.types import Request

INPUT_SHAPE = (3, 32, 32)
PASS_RATE = 0.85
# component type -> (relative count on the board, detector group)
COMPONENTS = {
    "R": (120, "det-passive"),
    "C": (90, "det-passive"),
    "L": (40, "det-passive"),
    "D": (25, "det-diode"),
    "Q": (12, "det-diode"),
    "U": (8, "det-ic"),
    "X": (3, "det-ic"),
    "F": (2, "det-misc"),
}
CLS_ARGS = {"depth": 18, "width": 16, "num_classes": 2}
DET_ARGS = {"depth_multiple": 0.33, "width_multiple": 0.25, "num_classes": 2}
NUM_TRACE_REQUESTS = 400
ARRIVAL_INTERVAL_S = 0.004


def component_image(component: str, generator: torch.Generator) -> torch.Tensor:
    """A synthetic component image [3, 32, 32]: a per-type pattern plus noise."""
    base = torch.Generator().manual_seed(ord(component))
    pattern = torch.rand(INPUT_SHAPE, generator=base)
    return (pattern + 0.5 * torch.randn(INPUT_SHAPE, generator=generator)).float()


def _calibrated_classifier(component: str, seed: int) -> ResNetClassifier:
    torch.manual_seed(seed)
    model = ResNetClassifier(**CLS_ARGS).eval()
    g = torch.Generator().manual_seed(seed + 1)
    sample = torch.stack([component_image(component, g) for _ in range(64)])  # [64, 3, 32, 32]
    with torch.inference_mode():
        logits = model(sample)  # [64, 2]
    margin = logits[:, 0] - logits[:, 1]  # > 0 means "pass"
    shift = -torch.quantile(margin, 1 - PASS_RATE).item()
    with torch.no_grad():
        model.fc.bias[0] += shift
    return model


def build_tiny(root: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Write the repository into `root` and its trace to `root/trace.jsonl`."""
    root = Path(root)
    (root / "weights").mkdir(parents=True, exist_ok=True)
    experts = []
    for k, component in enumerate(COMPONENTS):
        name = f"cls-{component}"
        model = _calibrated_classifier(component, seed * 1000 + k)
        save_file(model.state_dict(), root / "weights" / f"{name}.safetensors")
        experts.append({"name": name, "architecture": "cls-tiny",
                        "weights": f"weights/{name}.safetensors", "stage": "preliminary"})
    detectors = sorted({det for _, det in COMPONENTS.values()})
    for k, name in enumerate(detectors):
        torch.manual_seed(seed * 1000 + 500 + k)
        save_file(YoloDetector(**DET_ARGS).eval().state_dict(), root / "weights" / f"{name}.safetensors")
        experts.append({"name": name, "architecture": "det-tiny",
                        "weights": f"weights/{name}.safetensors", "stage": "subsequent"})
    spec = {
        "name": "tiny-pcb",
        "architectures": {
            "cls-tiny": {"factory": "coserve.architectures.resnet:ResNetClassifier",
                         "args": CLS_ARGS, "input_shape": list(INPUT_SHAPE),
                         "labels": ["pass", "defect"]},
            "det-tiny": {"factory": "coserve.architectures.yolo:YoloDetector",
                         "args": DET_ARGS, "input_shape": list(INPUT_SHAPE),
                         "labels": ["clear", "flagged"]},
        },
        "experts": experts,
        "routing": {
            "first": {"field": "component_type",
                      "map": {c: f"cls-{c}" for c in COMPONENTS}},
            "next": {f"cls-{c}": {"pass": det, "defect": "end"} for c, (_, det) in COMPONENTS.items()},
        },
        "usage_prior": {
            "field": "component_type",
            "counts": {c: n for c, (n, _) in COMPONENTS.items()},
            "label_probs": {f"cls-{c}": {"pass": PASS_RATE, "defect": round(1 - PASS_RATE, 6)}
                            for c in COMPONENTS},
        },
    }
    (root / "coe.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    trace = write_trace(root / "trace.jsonl", tiny_requests(seed))
    return root, trace


def tiny_requests(seed: int = 0, num_requests: int = NUM_TRACE_REQUESTS) -> list[Request]:
    """Requests drawn from the board's mix, one every ARRIVAL_INTERVAL_S."""
    g = torch.Generator().manual_seed(seed + 7)
    types = list(COMPONENTS)
    weights = torch.tensor([float(n) for n, _ in COMPONENTS.values()])
    picks = torch.multinomial(weights, num_requests, replacement=True, generator=g)
    return [
        Request(f"r{i:06d}", {"component_type": types[p]}, component_image(types[p], g),
                round(i * ARRIVAL_INTERVAL_S, 6))
        for i, p in enumerate(picks.tolist())
    ]
