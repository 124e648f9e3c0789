"""`coserve simulate` (a trace on the simulator) and `coserve plan` (executors and the
memory split; capacity questions). The planning is in coserve.planner."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from coserve.cli.options import (
    add_engine_options,
    add_json_option,
    add_plan_option,
    add_policy_option,
    add_trust_option,
    load_plan,
    planned_config,
)
from coserve.cli.run import print_stats
from coserve.planner.recommend import PLOT_NAME

if TYPE_CHECKING:
    from coserve.planfile import Plan, Recommendation
    from coserve.planner.planner import Candidate, MemoryPlan


# -- coserve simulate ----------------------------------------------------------------------
def add_simulate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="run a trace on the simulator (the plan's costs, a virtual clock)",
                       description="The engine's policies on a virtual clock with the plan's costs: "
                                   "the same options and --json keys as `coserve run`, in seconds.")
    p.add_argument("repo", type=Path)
    p.add_argument("trace", type=Path)
    add_plan_option(p, required=True, help="the plan file (coserve profile)")
    add_policy_option(p)
    add_json_option(p)
    add_engine_options(p, backlog=True)
    add_trust_option(p)
    p.set_defaults(func=cmd_simulate)


def cmd_simulate(args: argparse.Namespace) -> int:
    from coserve.repository import open_repository
    from coserve.simulator import simulate
    from coserve.trace import read_trace

    model = open_repository(args.repo, trust_code=args.trust_repo_code)
    config, plan = planned_config(args, args.policy)
    requests = read_trace(args.trace)
    stats, results = simulate(model, requests, config, backlog=args.backlog, plan=plan)
    print_stats(stats, as_json=args.json)
    if not args.json:
        print("simulated: no expert ran; times are the plan's costs on a virtual clock")
    return 0 if all(r.ok for r in results) else 1


# -- coserve plan --------------------------------------------------------------------------
def add_plan_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="choose executors and the memory split; capacity questions",
                       description="For each memory size, the decay-window search over the usage "
                                   "CDF for every executor option, on the simulator. Writes the "
                                   "recommendation into the plan file.")
    p.add_argument("repo", type=Path)
    p.add_argument("trace", type=Path, help="the workload to plan for")
    add_plan_option(p, required=True, help="the plan file from `coserve profile`")
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--budget-bytes", type=int, help="memory for experts plus activations: the "
                      "best plan for it, and the curve over fractions of it")
    goal.add_argument("--target-throughput", type=float, help="requests/s wanted: the least "
                      "memory that reaches it")
    p.add_argument("--executors-options", default=None,
                   help="executor layouts to try, ';'-separated, e.g. 'cpu:1;cpu:2' (default: 1 to "
                        "the cores, at most 4, plus CUDA mixes when the plan has a GPU)")
    p.add_argument("--storage", default="none", help="storage profile: none, sata-530, nvme-3000")
    p.add_argument("--gpu-memory-bytes", default=None,
                   help="each GPU's memory for experts plus activations, for options with GPU "
                        "executors: bytes (12e9), a fraction of its memory (0.8), or per GPU "
                        "(cuda:0=12e9,cuda:1=0.8) (default: this machine's GPUs' free memory "
                        "less 1 GiB; without a GPU, GPU options are left out)")
    p.add_argument("--points", type=int, default=8, help="memory sizes swept for a target (default 8)")
    p.add_argument("--confirm", type=int, default=2,
                   help="run the best N candidates on the real engine and keep the best measured "
                        "(default 2; 0: trust the simulator)")
    p.add_argument("--limit", type=int, default=None, help="only the first N requests of the trace")
    p.add_argument("--out", type=Path, default=None, help="where to write the plan (default: --plan)")
    p.add_argument("--report-dir", type=Path, default=None, help=f"write {PLOT_NAME} here")
    add_trust_option(p)
    p.set_defaults(func=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    from coserve.config import EngineConfig
    from coserve.loader.storage import storage_profile
    from coserve.planner.planner import confirm, default_executor_options
    from coserve.planner.recommend import choose_memory, gpu_memory_bytes, plot_capacity
    from coserve.repository import open_repository
    from coserve.trace import read_trace

    model = open_repository(args.repo, trust_code=args.trust_repo_code)
    plan = load_plan(args.plan)
    requests = read_trace(args.trace)[: args.limit or None]
    storage_profile(args.storage)  # a bad name fails here, before any work
    base = EngineConfig(storage=args.storage)
    gpu_memory = gpu_memory_bytes(args.gpu_memory_bytes)
    if gpu_memory and any("cuda" in o for o in options_text(args)):
        print("GPU memory for experts plus activations (the same at every size below): "
              + ", ".join(f"{d} {b / 1e6:.0f} MB" for d, b in gpu_memory.items()))
    options = (executor_options(args.executors_options, gpu_memory) if args.executors_options
               else _known_options(default_executor_options(plan), gpu_memory))
    curve = _capacity_curve(model, plan, requests, base, options, gpu_memory, args)
    print_curve(curve, options)
    chosen = choose_memory(curve, budget_bytes=args.budget_bytes,
                           target_throughput=args.target_throughput)
    if chosen is None:
        top = max(curve, key=lambda m: m.best.items_per_s).best
        print(f"no memory size reaches {args.target_throughput:g} requests/s on this machine: the "
              f"most predicted is {top.items_per_s:.1f} with {top.memory_bytes / 1e6:.0f} MB "
              f"({top.executors})")
        return 1
    best, confirmed = chosen.best, None
    if args.confirm:
        finalists = sorted(chosen.candidates, key=lambda c: -c.items_per_s)[: args.confirm]
        best, confirmed = _confirm(confirm(model, plan, requests, finalists, base))
    _write_recommendation(plan, best, confirmed, args)
    if args.report_dir:
        print(f"wrote {plot_capacity(curve, options, args.report_dir / PLOT_NAME, args.target_throughput)}")
    return 0


def _capacity_curve(model, plan: Plan, requests, base, options: Sequence[str],
                    gpu_memory: dict[str, int], args: argparse.Namespace) -> list[MemoryPlan]:
    """The best split of each memory size the question asks about, with a status line."""
    from rich.console import Console

    from coserve.planner.planner import Planner
    from coserve.planner.recommend import memory_sizes

    with Console(stderr=True).status("planning") as status:
        planner = Planner(model, plan, requests, base, progress=lambda what, done, _: status.update(
            f"simulated {done} configurations; now {what}"), gpu_memory_bytes=gpu_memory)
        memories = memory_sizes(planner, budget_bytes=args.budget_bytes,
                                target_throughput=args.target_throughput, num_points=args.points)
        return planner.capacity_curve(memories, options)


def _confirm(measured: Sequence[tuple[Candidate, float]]) -> tuple[Candidate, float]:
    """Each finalist as predicted and as measured on the engine; the best measured."""
    for c, rps in measured:
        print(f"confirm on the engine: {c.executors}, experts {c.budget_bytes / 1e6:.0f} MB: "
              f"predicted {c.items_per_s:.1f}, measured {rps:.1f} requests/s")
    return max(measured, key=lambda m: m[1])


def _write_recommendation(plan: Plan, best: Candidate, confirmed: float | None,
                          args: argparse.Namespace) -> None:
    rec = best.recommendation(args.storage, confirmed)
    out = args.out or args.plan
    plan.with_recommendation(rec).save(out)
    if rec.pools:
        split = "; ".join(f"{p.device} x{p.num_executors}: experts {p.budget_bytes / 1e6:.0f} MB, "
                          f"activations {p.activation_bytes / 1e6:.0f} MB per executor"
                          for p in rec.pools)
    else:
        split = (f"experts {rec.budget_bytes / 1e6:.0f} MB, activations "
                 f"{rec.activation_bytes / 1e6:.0f} MB per executor")
    print(f"recommended for {rec.memory_bytes / 1e6:.0f} MB: executors {rec.executors}, {split}; "
          f"predicted {rec.predicted_items_per_s:.1f} requests/s"
          + (f", measured {confirmed:.1f}" if confirmed is not None else "")
          + f"; written to {out}")
    print(f"  as options: {recommended_options(rec)}")


def recommended_options(rec: Recommendation) -> str:
    """The recommendation as the engine's command-line options."""
    cpu = next((p for p in rec.pools if p.device == "cpu"), None)
    gpus = ",".join(f"{p.device}={p.budget_bytes}" for p in rec.pools if p.device != "cpu")
    budget = cpu.budget_bytes if cpu else rec.budget_bytes
    return f"--executors {rec.executors} --budget-bytes {budget}" + (
        f" --gpu-budget-bytes {gpus}" if gpus else "")


def options_text(args: argparse.Namespace) -> list[str]:
    """The executor options asked for by name (empty: the defaults)."""
    return [o for o in (args.executors_options or "").split(";") if o.strip()]


def _known_options(options: Sequence[str], gpu_memory: dict[str, int]) -> list[str]:
    """The default options whose GPUs have a known memory."""
    import sys

    known = [o for o in options if all(d == "cpu" or d in gpu_memory or "cuda" in gpu_memory
                                       for d in _devices(o))]
    if len(known) < len(options):
        print("note: GPU options left out: no GPU memory known (give --gpu-memory-bytes)",
              file=sys.stderr)
    return known


def _devices(option: str) -> list[str]:
    from coserve.planner.planner import devices_of

    return list(devices_of(option))


def executor_options(text: str, gpu_memory: dict[str, int] | None = None) -> list[str]:
    """'cpu:1;cpu:2' as executor layouts, each checked (ConfigError names a bad one, or
    a GPU whose memory is not known)."""
    from coserve.errors import ConfigError

    options = [o.strip() for o in text.split(";") if o.strip()]
    memory = gpu_memory or {}
    for o in options:
        unknown = [d for d in _devices(o) if d != "cpu" and d not in memory and "cuda" not in memory]
        if unknown:
            raise ConfigError(f"executor option {o!r} runs on {unknown[0]}, whose memory is not "
                              f"known here: give --gpu-memory-bytes (e.g. 12e9)")
    return options


def print_curve(curve: Sequence[MemoryPlan], options: Sequence[str]) -> None:
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
        splits = [(p.device, p.budget_bytes, p.activation_bytes) for p in b.pools] if len(
            b.pools) > 1 else [(b.executors, b.budget_bytes, b.activation_bytes)]
        table.add_row(f"{m.memory_bytes / 1e6:.0f}", *cells, ", ".join(
            f"{d}: {w / 1e6:.0f} / {a / 1e6:.0f}" for d, w, a in splits))
    Console(width=140).print(table)
