"""Run the benchmark: every policy on the same repository, trace, budget, executors and
storage profile, one after another in this process with one cost model, plus a budget
sweep. Each row is the `coserve run --json` statistics plus `accuracy`."""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from coserve.engine.config import EngineConfig
from coserve.engine.results import Request, Result
from coserve.engine.run import run_trace
from coserve.loader.storage import measure_raw_bandwidth, storage_profile
from coserve.plan import CostModel
from coserve.repository import CoEModel

BENCH_POLICIES = ("samba", "samba-fifo", "samba-parallel", "coserve", "all-resident")
DEFECT_LABELS = frozenset({"defect", "flagged"})


def inspection_accuracy(results: Sequence[Result]) -> float | None:
    """Share of requests whose verdict (defective if any step's label is a defect label)
    matches the ground truth in fields['defect']; None without ground truth."""
    judged = [r for r in results if "defect" in r.fields]
    if not judged:
        return None
    right = sum(
        (any(s.label in DEFECT_LABELS for s in r.steps) == (r.fields["defect"] is not None))
        for r in judged if r.ok
    )
    return right / len(judged)


@dataclass
class BenchRun:
    metadata: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    sweep: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"metadata": self.metadata, "rows": self.rows, "sweep": self.sweep}


def bench_metadata(model: CoEModel, requests: Sequence[Request], config: EngineConfig,
                   trace: str, backlog: bool) -> dict[str, Any]:
    largest = max(model.experts.values(), key=lambda e: e.file_bytes)
    budget = config.resolve_budget(model.total_expert_bytes)
    pace = storage_profile(config.storage).read_bytes_per_s
    return {
        "repository": str(model.root),
        "model": model.name,
        "num_experts": len(model.experts),
        "total_expert_bytes": model.total_expert_bytes,
        "trace": trace,
        "num_requests": len(requests),
        "arrivals": "backlog (all at once)" if backlog else "trace offsets",
        "budget_bytes": budget,
        "budget_fraction": budget / model.total_expert_bytes if budget else None,
        "storage": config.storage,
        "storage_paced_bytes_per_s": pace,
        "raw_storage_bytes_per_s": measure_raw_bandwidth(largest.weights_path),
        "executors": [f"{e.processor}x{e.num_threads}t" for e in config.executors],
        "cpu_cores": os.cpu_count(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def run_bench(
    model: CoEModel,
    requests: Sequence[Request],
    config: EngineConfig,
    policies: Sequence[str] = BENCH_POLICIES,
    backlog: bool = True,
    sweep_fractions: Sequence[float] = (),
    sweep_policies: Sequence[str] = ("samba", "coserve"),
    peer: Callable[[], dict[str, Any]] | None = None,
    trace: str = "",
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> BenchRun:
    run = BenchRun(bench_metadata(model, requests, config, trace, backlog))
    costs: CostModel | None = None

    def one(cfg: EngineConfig) -> dict[str, Any]:
        nonlocal costs
        stats, results, costs = run_trace(model, requests, cfg, backlog, costs)
        return {**stats.to_dict(), "accuracy": inspection_accuracy(results)}

    for policy in policies:
        row = one(replace(config, policy=policy))
        run.rows.append(row)
        if on_row:
            on_row(row)
    if peer is not None:
        row = peer()
        run.rows.append(row)
        if on_row:
            on_row(row)
    for fraction in sweep_fractions:
        for policy in sweep_policies:
            cfg = replace(config, policy=policy, budget_bytes=None, budget_fraction=fraction)
            row = one(cfg)
            run.sweep.append({"budget_fraction": fraction, **row})
            if on_row:
                on_row({**row, "policy": f"{policy} @ {fraction:.0%}"})
    return run
