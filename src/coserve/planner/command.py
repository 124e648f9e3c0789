"""`coserve simulate` and `coserve plan`, and how a plan file reaches `run`, `bench` and
`serve` (`--plan`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from coserve.config import EngineConfig
from coserve.errors import ConfigError
from coserve.executors.spec import parse_executors
from coserve.planfile import Plan

PLOT_NAME = "capacity.png"


# -- --plan on run, bench, serve -----------------------------------------------------------
def add_plan_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plan", type=Path, default=None,
                   help="a plan file from `coserve profile` (and `coserve plan`): its costs and "
                        "usage; its recommended executors and memory split where not given here")


def load_plan(args: argparse.Namespace) -> Plan | None:
    return load_checked(args.plan) if getattr(args, "plan", None) else None


def load_checked(path: Path) -> Plan:
    """The plan, with a warning for each way this machine differs from the profiled one."""
    import os

    import torch

    plan = Plan.load(path)
    cuda = ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if torch.cuda.is_available() else [])
    for note in plan.machine_differences(os.cpu_count(), cuda):
        print(f"warning: {note}; profile this machine (coserve profile) for costs that hold here",
              file=sys.stderr)
    return plan


def apply_recommendation(config: EngineConfig, plan: Plan | None, args: argparse.Namespace) -> EngineConfig:
    """The plan's recommended executors, expert budget and activation memory, for each
    one the command line did not set."""
    rec = plan.recommended if plan else None
    if rec is None:
        return config
    if rec.storage != config.storage:
        print(f"warning: the plan's recommendation was predicted for storage {rec.storage!r}, "
              f"this run uses {config.storage!r}", file=sys.stderr)
    changes: dict[str, Any] = {}
    if not args.executors:
        changes["executors"] = parse_executors(rec.executors)
    if args.budget_bytes is None and args.budget_fraction is None:
        changes.update(budget_bytes=rec.budget_bytes, activation_bytes=rec.activation_bytes)
    return replace(config, **changes)


# -- coserve simulate ----------------------------------------------------------------------
def cmd_simulate(args: argparse.Namespace, config: EngineConfig) -> int:
    from coserve.report import print_table
    from coserve.repository import open_repository
    from coserve.simulator import simulate
    from coserve.trace import read_trace

    model = open_repository(args.repo)
    plan = load_checked(args.plan)
    requests = read_trace(args.trace)
    config = apply_recommendation(config, plan, args)
    stats, results = simulate(model, requests, config, backlog=args.backlog, plan=plan)
    if args.json:
        print(json.dumps(stats.to_dict(), indent=2))
    else:
        print_table([stats])
        print("simulated: no expert ran; times are the plan's costs on a virtual clock")
    return 0 if all(r.ok for r in results) else 1


def add_simulate_parser(sub: argparse._SubParsersAction, add_engine_options, policies: Sequence[str],
                        func) -> None:
    p = sub.add_parser("simulate", help="run a trace on the simulator (the plan's costs, a virtual clock)",
                       description="The engine's policies on a virtual clock with the plan's costs: "
                                   "the same options and --json keys as `coserve run`, in seconds.")
    p.add_argument("repo", type=Path)
    p.add_argument("trace", type=Path)
    p.add_argument("--plan", type=Path, required=True, help="the plan file (coserve profile)")
    p.add_argument("--policy", default="coserve", choices=policies)
    p.add_argument("--json", action="store_true", help="print the statistics as one JSON object")
    add_engine_options(p)
    p.set_defaults(func=func)


# -- coserve plan --------------------------------------------------------------------------
def cmd_plan(args: argparse.Namespace) -> int:
    from coserve.loader.storage import storage_profile
    from coserve.planner.planner import Planner, confirm, default_executor_options
    from coserve.repository import open_repository
    from coserve.trace import read_trace

    model = open_repository(args.repo)
    plan = load_checked(args.plan)
    requests = read_trace(args.trace)[: args.limit or None]
    storage_profile(args.storage)  # a bad name fails here, before any work
    base = EngineConfig(storage=args.storage)
    options = _options(args.executors_options) if args.executors_options else default_executor_options(plan)
    from rich.console import Console

    with Console(stderr=True).status("planning") as status:
        planner = Planner(model, plan, requests, base, progress=lambda what, done, _: status.update(
            f"simulated {done} configurations; now {what}"))
        memories = _memories(planner, args)
        curve = planner.capacity_curve(memories, options)
    _print_curve(curve, options)
    chosen = _choose(curve, args)
    if chosen is None:
        top = max(curve, key=lambda m: m.best.items_per_s).best
        print(f"no memory size reaches {args.target_throughput:g} requests/s on this machine: the "
              f"most predicted is {top.items_per_s:.1f} with {top.memory_bytes / 1e6:.0f} MB "
              f"({top.executors})")
        return 1
    best = chosen.best
    confirmed = None
    if args.confirm:
        finalists = sorted(chosen.candidates, key=lambda c: -c.items_per_s)[: args.confirm]
        measured = confirm(model, plan, requests, finalists, base)
        for c, rps in measured:
            print(f"confirm on the engine: {c.executors}, experts {c.budget_bytes / 1e6:.0f} MB: "
                  f"predicted {c.items_per_s:.1f}, measured {rps:.1f} requests/s")
        best, confirmed = max(measured, key=lambda m: m[1])
    rec = best.recommendation(args.storage, confirmed)
    out = args.out or args.plan
    plan.with_recommendation(rec).save(out)
    print(f"recommended for {rec.memory_bytes / 1e6:.0f} MB: executors {rec.executors}, "
          f"experts {rec.budget_bytes / 1e6:.0f} MB, activations {rec.activation_bytes / 1e6:.0f} MB "
          f"per executor; predicted {rec.predicted_items_per_s:.1f} requests/s"
          + (f", measured {confirmed:.1f}" if confirmed is not None else "")
          + f"; written to {out}")
    if args.report_dir:
        print(f"wrote {plot_capacity(curve, options, args.report_dir / PLOT_NAME, args)}")
    return 0


def _options(text: str) -> list[str]:
    options = [o.strip() for o in text.split(";") if o.strip()]
    for o in options:
        parse_executors(o)  # ConfigError names a bad one
    return options


def _memories(planner, args: argparse.Namespace) -> list[int]:
    """Memory sizes to predict: fractions of the given budget, or, for a target, a
    geometric sweep from the least that runs to all experts resident."""
    if args.budget_bytes is not None:
        if args.budget_bytes <= 0:
            raise ConfigError(f"--budget-bytes must be positive, got {args.budget_bytes}")
        # Smaller sizes than the least that runs are left out; the budget itself never is
        # (if it is too small, the planner says how much is needed).
        smaller = {int(args.budget_bytes * f) for f in (0.25, 0.5, 0.75)}
        return sorted({m for m in smaller if m >= planner.min_memory_bytes(1)} | {args.budget_bytes})
    if args.target_throughput <= 0:
        raise ConfigError(f"--target-throughput must be positive, got {args.target_throughput}")
    low, high = planner.min_memory_bytes(2), planner.full_memory_bytes(2)
    steps = args.points - 1
    return sorted({int(low * (high / low) ** (i / steps)) for i in range(steps + 1)})


def _choose(curve, args: argparse.Namespace):
    if args.budget_bytes is not None:
        return max(curve, key=lambda m: m.memory_bytes)
    return next((m for m in curve if m.best.items_per_s >= args.target_throughput), None)


def _print_curve(curve, options: Sequence[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="predicted requests/s (best split of each memory size)")
    table.add_column("memory MB", justify="right")
    for o in options:
        table.add_column(o, justify="right")
    table.add_column("best: experts MB / activations MB per executor", justify="right")
    for m in curve:
        by_option = {o: max((c for c in m.candidates if c.executors == o),
                            key=lambda c: c.items_per_s, default=None) for o in options}
        cells = [f"{c.items_per_s:.1f}" if c else "-" for c in by_option.values()]
        b = m.best
        table.add_row(f"{m.memory_bytes / 1e6:.0f}", *cells,
                      f"{b.executors}: {b.budget_bytes / 1e6:.0f} / {b.activation_bytes / 1e6:.0f}")
    Console(width=140).print(table)


def plot_capacity(curve, options: Sequence[str], path: Path, args: argparse.Namespace) -> Path:
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
    if args.target_throughput:
        ax.axhline(args.target_throughput, color="grey", linestyle="--", label="target")
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


def add_plan_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="choose executors and the memory split; capacity questions",
                       description="For each memory size, the decay-window search over the usage "
                                   "CDF for every executor option, on the simulator. Writes the "
                                   "recommendation into the plan file.")
    p.add_argument("repo", type=Path)
    p.add_argument("trace", type=Path, help="the workload to plan for")
    p.add_argument("--plan", type=Path, required=True, help="the plan file from `coserve profile`")
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--budget-bytes", type=int, help="memory for experts plus activations: the "
                      "best plan for it, and the curve over fractions of it")
    goal.add_argument("--target-throughput", type=float, help="requests/s wanted: the least "
                      "memory that reaches it")
    p.add_argument("--executors-options", default=None,
                   help="executor layouts to try, ';'-separated, e.g. 'cpu:1;cpu:2' (default: 1 to "
                        "the cores, at most 4, plus CUDA mixes when the plan has a GPU)")
    p.add_argument("--storage", default="none", help="storage profile: none, sata-530, nvme-3000")
    p.add_argument("--points", type=int, default=8, help="memory sizes swept for a target (default 8)")
    p.add_argument("--confirm", type=int, default=2,
                   help="run the best N candidates on the real engine and keep the best measured "
                        "(default 2; 0: trust the simulator)")
    p.add_argument("--limit", type=int, default=None, help="only the first N requests of the trace")
    p.add_argument("--out", type=Path, default=None, help="where to write the plan (default: --plan)")
    p.add_argument("--report-dir", type=Path, default=None, help=f"write {PLOT_NAME} here")
    p.set_defaults(func=cmd_plan)
