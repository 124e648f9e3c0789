"""Options several commands share, and how they become an EngineConfig.

Parsers read; nothing here writes to the parsed arguments: a command's own defaults (a
budget fraction, say) are passed to `engine_config`, never stored back into `args`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coserve.policies import DEFAULT_POLICY, POLICY_NAMES

if TYPE_CHECKING:
    from rich.progress import Progress

    from coserve.config import EngineConfig
    from coserve.planfile import Plan

# The pcb zoo sizes, kept here so that building the parser does not import torch (the
# zoo module does); tests/test_cli.py checks they are coserve.zoo.pcb.SIZES.
PCB_SIZES = ("tiny", "default", "reference")
DEFAULT_PCB_SIZE = "default"
BENCH_STORAGE = "sata-530"  # bench and demo pace reads to the reference SATA SSD
BENCH_BUDGET_FRACTION = 0.2  # bench and demo, when no budget is given
TINY_BUDGET_FRACTION = 0.3  # demo --tiny, when no budget is given
BENCH_SWEEP = "0.1,0.2,0.3,0.5"  # budget fractions `coserve bench` sweeps by default
PEER_MAX_INFLIGHT = 16  # the Ray peer's in-flight window unless --max-inflight says


def add_engine_options(p: argparse.ArgumentParser, *, backlog: bool) -> None:
    """The engine's budget, executors, storage pacing and starvation bound; `--backlog`
    only where a trace is replayed at its arrival offsets by default."""
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget-bytes", type=int, help="bytes of expert weights the CPU executors' pool may hold (all of them together), and each GPU's unless --gpu-budget-bytes says")
    budget.add_argument("--budget-fraction", type=float, help="the budget as a fraction of all expert bytes, e.g. 0.3")
    p.add_argument("--gpu-budget-bytes", default=None, help="expert weights per GPU, split over its executors: bytes (12e9), a fraction of its memory (0.8), or per GPU (cuda:0=12e9,cuda:1=0.8); checked against its free memory less 1 GiB (default: as --budget-bytes)")
    p.add_argument("--host-cache-bytes", type=int, default=None, help="host-RAM cache in front of GPU pools; 0: none (default: none without a GPU executor, else half of all expert bytes, at most a quarter of RAM)")
    p.add_argument("--executors", default=None, help="executors, e.g. 'cpu:2' or 'cpu:1,cuda:0:2' (default: cpu:min(2, cores))")
    p.add_argument("--storage", default="none", help="storage profile pacing expert reads: none, sata-530, nvme-3000 (default: none)")
    p.add_argument("--max-defer-s", type=float, default=None, help="coserve-paper's starvation bound: how long a queued task may be overtaken (default 5)")
    p.add_argument("--latency-target-s", type=float, default=None, help="coserve: when a request should be answered, unless it says; its group goes first as the deadline nears (default 5)")
    p.add_argument("--batch-deadline-s", type=float, default=None, help="a batch (one forward, or loading its expert) running longer marks its executor stuck: its requests fail, its queue moves to the other executors; 0: no watchdog (default 60)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16", "int8", "auto"),
                   help="the stored precision every expert load reads (a variant written by "
                        "`coserve repo quantize`, expanded to fp32 in memory), or auto: the "
                        "variant measured to load soonest whenever work waits on the executor, "
                        "fp32 when nothing waits, upgrades when idle (default fp32)")
    if backlog:
        p.add_argument("--backlog", action="store_true", help="submit every request at once instead of at its arrival offset")
    p.add_argument("--no-measure", action="store_true", help="skip the start-up cost measurement and use default costs")


def add_trust_option(p: argparse.ArgumentParser) -> None:
    """Every command that opens a repository: its own code runs only when trusted."""
    p.add_argument("--trust-repo-code", action="store_true",
                   help="let the repository import and run its own code (factories, routing "
                        "callables outside coserve) and read weights outside its folder; only "
                        "for repositories you trust")


def add_policy_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", default=DEFAULT_POLICY, choices=POLICY_NAMES,
                   help=f"the policy set (default {DEFAULT_POLICY})")


def add_json_option(p: argparse.ArgumentParser) -> None:
    """`--json` means one thing everywhere: the statistics as JSON on stdout."""
    p.add_argument("--json", action="store_true", help="print the statistics as one JSON object")


def add_plan_option(p: argparse.ArgumentParser, *, required: bool = False,
                    help: str | None = None) -> None:
    p.add_argument("--plan", type=Path, default=None, required=required,
                   help=help or "a plan file from `coserve profile` (and `coserve plan`): its costs "
                                "and usage; its recommended executors and memory split where not "
                                "given here")


def engine_config(args: argparse.Namespace, policy: str = DEFAULT_POLICY, *,
                  default_budget_fraction: float | None = None) -> EngineConfig:
    """The engine options as a config; `default_budget_fraction` where no budget is given."""
    from coserve.config import EngineConfig
    from coserve.executors.budgets import parse_gpu_budgets
    from coserve.executors.spec import parse_executors

    budget_fraction = args.budget_fraction
    if args.budget_bytes is None and budget_fraction is None:
        budget_fraction = default_budget_fraction
    kwargs: dict[str, Any] = {
        "policy": policy,
        "budget_bytes": args.budget_bytes,
        "budget_fraction": budget_fraction,
        "storage": args.storage,
        "measure_costs": not args.no_measure,
        "precision": getattr(args, "precision", "fp32"),
    }
    if args.executors:
        kwargs["executors"] = parse_executors(args.executors)
    if getattr(args, "gpu_budget_bytes", None):
        kwargs["device_budgets"] = parse_gpu_budgets(args.gpu_budget_bytes)
    if getattr(args, "host_cache_bytes", None) is not None:
        kwargs["host_cache_bytes"] = args.host_cache_bytes
    if args.max_defer_s is not None:
        kwargs["max_defer_s"] = args.max_defer_s
    if args.latency_target_s is not None:
        kwargs["latency_target_s"] = args.latency_target_s
    if args.batch_deadline_s is not None:
        kwargs["batch_deadline_s"] = args.batch_deadline_s or None  # 0: no watchdog
    return EngineConfig(**kwargs)


def load_plan(path: Path) -> Plan:
    """The plan, with a warning for each way this machine differs from the profiled one."""
    import os
    import sys

    import torch

    from coserve.planfile import Plan

    plan = Plan.load(path)
    cuda = ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if torch.cuda.is_available() else [])
    for note in plan.machine_differences(os.cpu_count(), cuda):
        print(f"warning: {note}; profile this machine (coserve profile) for costs that hold here",
              file=sys.stderr)
    return plan


def planned_config(args: argparse.Namespace, policy: str, **overrides: Any) -> tuple[EngineConfig, Plan | None]:
    """The engine options with `--plan`'s costs: its recommended executors and memory
    split fill in what the command line did not set (run, simulate, serve)."""
    import sys

    from coserve.planner.recommend import apply_recommendation, recommendation_warnings

    config = replace(engine_config(args, policy), **overrides)
    if args.plan is None:
        return config, None
    plan = load_plan(args.plan)
    for warning in recommendation_warnings(config, plan):
        print(f"warning: {warning}", file=sys.stderr)
    budget_given = (args.budget_bytes is not None or args.budget_fraction is not None
                    or bool(getattr(args, "gpu_budget_bytes", None)))
    return apply_recommendation(config, plan, keep_executors=bool(args.executors),
                                keep_budget=budget_given), plan


def int_list(text: str, what: str) -> tuple[int, ...]:
    """'1,2,4' as integers; `what` names the option in the error."""
    from coserve.errors import ConfigError

    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"cannot read {what} {text!r}: give integers separated by commas, "
                          f"e.g. 1,2,4,8") from None


def progress_bar(label: str) -> tuple[Progress, Callable[[str, int, int], None]]:
    """A rich progress bar (use it as a context) and its `progress(what, done, total)`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.description}"))
    task = bar.add_task("", total=None)

    def update(what: str, done: int, total: int) -> None:
        bar.update(task, completed=done, total=total, description=what)

    return bar, update
