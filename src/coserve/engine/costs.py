"""The cost model the engine runs with until the offline profiler provides a plan: a
quick built-in measurement (a few forward passes per architecture x processor, one read
of a weight file) or the stated defaults."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch

from coserve.loader.storage import Storage, measure_raw_bandwidth
from coserve.plan import DEFAULT_MAX_BATCH, ArchCost, CostModel, processor_kind

PROBE_BATCH = 8
NUM_REPEATS = 3


def default_costs(model) -> CostModel:
    return CostModel(
        arch_of={e.name: e.architecture for e in model.experts.values()},
        expert_bytes={e.name: e.num_bytes for e in model.experts.values()},
        arch_costs={},
        source="defaults (no plan, no measurement)",
    )


def measure_costs(model, processors: Sequence[str], storage: Storage) -> CostModel:
    """K, B from batch 1 and batch PROBE_BATCH on random weights; activation bytes per item
    from the outputs of every module at batch 1; storage bandwidth from the profile's pace
    or a raw read of the largest weight file."""
    arch_costs: dict[tuple[str, str], ArchCost] = {}
    for kind in sorted({processor_kind(p) for p in processors}):
        device = "cuda:0" if kind == "cuda" else "cpu"
        for name, spec in model.architectures.items():
            arch_costs[(name, kind)] = _measure_arch(spec, device)
    largest = max(model.experts.values(), key=lambda e: e.file_bytes)
    raw_bps = measure_raw_bandwidth(largest.weights_path)
    paced_bps = storage.profile.read_bytes_per_s
    return CostModel(
        arch_of={e.name: e.architecture for e in model.experts.values()},
        expert_bytes={e.name: e.num_bytes for e in model.experts.values()},
        arch_costs=arch_costs,
        storage_bytes_per_s=min(raw_bps, paced_bps) if paced_bps else raw_bps,
        source="quick measurement at start-up (no plan)",
    )


def _measure_arch(spec, device: str) -> ArchCost:
    module = spec.build(device=device).eval()
    t1 = _time_forward(module, spec.input_shape, 1, device)
    tn = _time_forward(module, spec.input_shape, PROBE_BATCH, device)
    k_s = max((tn - t1) / (PROBE_BATCH - 1), 1e-6)
    b_s = max(t1 - k_s, 0.0)
    return ArchCost(k_s, b_s, DEFAULT_MAX_BATCH, leaf_output_bytes(module, spec, device))


def _time_forward(module: torch.nn.Module, input_shape, n: int, device: str) -> float:
    x = torch.randn(n, *input_shape, device=device)  # [N, C, H, W]
    times = []
    with torch.inference_mode():
        module(x)  # warm-up: first calls pay allocator and kernel selection costs
        for _ in range(NUM_REPEATS):
            t0 = time.perf_counter()
            module(x)
            if device != "cpu":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def leaf_output_bytes(module: torch.nn.Module, spec, device: str) -> int:
    """Sum of every leaf module's output bytes for one item: an upper bound on the
    activation memory a batch item needs (nothing is freed early in this count)."""
    total = 0

    def hook(_mod, _inp, out) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() * out.element_size()

    leaves = [m for m in module.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.inference_mode():
            module(torch.randn(1, *spec.input_shape, device=device))
    finally:
        for h in handles:
            h.remove()
    return max(total, 1)
