"""Using the planner's answers: which memory sizes a question asks about, which one
answers it, the capacity plot, and a plan's recommendation applied to an engine config.
The command line (`coserve plan`, `--plan`) is in coserve.cli.plan and coserve.cli.options."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coserve.config import EngineConfig
from coserve.errors import ConfigError
from coserve.executors.budgets import (
    CUDA_RESERVE_BYTES,
    DeviceBudget,
    TorchDevices,
    parse_gpu_budgets,
)
from coserve.executors.spec import parse_executors
from coserve.planfile import Plan

if TYPE_CHECKING:
    from coserve.planner.planner import MemoryPlan, Planner

PLOT_NAME = "capacity.png"


def recommendation_warnings(config: EngineConfig, plan: Plan) -> list[str]:
    """Ways the plan's recommendation was predicted for another setting than `config`."""
    rec = plan.recommended
    if rec is None or rec.storage == config.storage:
        return []
    return [f"the plan's recommendation was predicted for storage {rec.storage!r}, "
            f"this run uses {config.storage!r}"]


def apply_recommendation(config: EngineConfig, plan: Plan | None, *, keep_executors: bool,
                         keep_budget: bool) -> EngineConfig:
    """The plan's recommended executors, and its expert budget with activation memory
    (each device's, when it planned several), each unless the caller keeps its own."""
    rec = plan.recommended if plan else None
    if rec is None:
        return config
    changes: dict[str, Any] = {}
    if not keep_executors:
        changes["executors"] = parse_executors(rec.executors)
    if not keep_budget:
        cpu = next((p for p in rec.pools if p.device == "cpu"), None)
        changes.update(budget_bytes=cpu.budget_bytes if cpu else rec.budget_bytes,
                       budget_fraction=None,
                       activation_bytes=cpu.activation_bytes if cpu else rec.activation_bytes,
                       device_budgets=tuple(
                           DeviceBudget(p.device, budget_bytes=p.budget_bytes,
                                        activation_bytes=p.activation_bytes)
                           for p in rec.pools if p.device != "cpu"))
    return replace(config, **changes)


def gpu_memory_bytes(text: str | None) -> dict[str, int]:
    """--gpu-memory-bytes as {device or 'cuda': bytes}; by default this machine's GPUs'
    free memory less the CUDA reserve (none without a GPU)."""
    devices = TorchDevices()
    if text is None:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return {f"cuda:{i}": devices.memory_bytes(f"cuda:{i}")[0] - CUDA_RESERVE_BYTES
                for i in range(count)}
    memory = {}
    for b in parse_gpu_budgets(text):
        if b.budget_bytes is not None:
            memory[b.device] = b.budget_bytes
        else:
            device = b.device if ":" in b.device else "cuda:0"
            memory[b.device] = int((b.memory_fraction or 0) * devices.memory_bytes(device)[1])
    return memory


def memory_sizes(planner: Planner, *, budget_bytes: int | None = None,
                 target_throughput: float | None = None, num_points: int = 8) -> list[int]:
    """Memory sizes to predict: fractions of the given budget, or, for a target, a
    geometric sweep of `num_points` from the least that runs to all experts resident."""
    if budget_bytes is not None:
        if budget_bytes <= 0:
            raise ConfigError(f"--budget-bytes must be positive, got {budget_bytes}")
        # Smaller sizes than the least that runs are left out; the budget itself never is
        # (if it is too small, the planner says how much is needed).
        smaller = {int(budget_bytes * f) for f in (0.25, 0.5, 0.75)}
        return sorted({m for m in smaller if m >= planner.min_memory_bytes(1)} | {budget_bytes})
    if target_throughput is None or target_throughput <= 0:
        raise ConfigError(f"--target-throughput must be positive, got {target_throughput}")
    if num_points < 2:
        raise ConfigError(f"--points must be at least 2 memory sizes, got {num_points}")
    low, high = planner.min_memory_bytes(2), planner.full_memory_bytes(2)
    steps = num_points - 1
    return sorted({int(low * (high / low) ** (i / steps)) for i in range(steps + 1)})


def choose_memory(curve: Sequence[MemoryPlan], *, budget_bytes: int | None = None,
                  target_throughput: float | None = None) -> MemoryPlan | None:
    """The answer: the budget itself, or the least memory that reaches the target (None
    when none does)."""
    if budget_bytes is not None:
        return max(curve, key=lambda m: m.memory_bytes)
    return next((m for m in curve if m.best.items_per_s >= (target_throughput or 0)), None)


def plot_capacity(curve: Sequence[MemoryPlan], options: Sequence[str], path: Path,
                  target_throughput: float | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for o in options:
        xs, ys = [], []
        for m in curve:
            cs = [c.items_per_s for c in m.candidates if c.executors == o]
            if cs:
                xs.append(m.memory_bytes / 1e6)
                ys.append(max(cs))
        ax.plot(xs, ys, marker="o", label=o)
    if target_throughput:
        ax.axhline(target_throughput, color="grey", linestyle="--", label="target")
    ax.set_xlabel("memory for experts + activations (MB)")
    ax.set_ylabel("predicted requests/s")
    ax.set_title("coserve plan: predicted throughput by memory and executors")
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
