"""`coserve profile`: measure a repository on this machine into a plan file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from coserve.cli.options import add_trust_option, int_list, progress_bar

if TYPE_CHECKING:
    from coserve.planfile import Plan


def add_profile_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="measure a repository on this machine into a plan file",
                       description="Per architecture x processor: latency per batch size, max "
                                   "useful batch, linear fit, activation bytes; load speed per "
                                   "tier path; usage from the rules or a routed sample.")
    p.add_argument("repo", type=Path)
    p.add_argument("--out", type=Path, required=True, help="the plan file to write (JSON)")
    p.add_argument("--sample", type=Path, default=None,
                   help="a trace to route through the experts for usage (default: the rules)")
    p.add_argument("--sample-size", type=int, default=200, help="sample requests routed (default 200)")
    p.add_argument("--inputs", type=Path, default=None,
                   help="a trace whose inputs feed the latency curves (default: --sample's, else random)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op CPU threads while profiling (default: a default CPU executor's)")
    p.add_argument("--batch-sizes", default=None, help="e.g. 1,2,4,8 (default 1,2,3,4,6,8,12,16,24,32)")
    p.add_argument("--processors", default=None, help="cpu or cpu,cuda (default: cpu, plus cuda if present)")
    p.add_argument("--max-executors", type=int, default=None,
                   help="measure the slowdown of up to N executors of a kind at once (default: the cores, at most 4)")
    p.add_argument("--calibration-requests", type=int, default=2000,
                   help="requests each engine calibration run serves, the sample replayed (default 2000)")
    add_trust_option(p)
    p.set_defaults(func=cmd_profile)


def cmd_profile(args: argparse.Namespace) -> int:
    from coserve.errors import ConfigError
    from coserve.profiler import DEFAULT_BATCH_SIZES, profile_repository
    from coserve.repository import open_repository
    from coserve.trace import read_trace

    model = open_repository(args.repo, trust_code=args.trust_repo_code)
    sample = read_trace(args.sample)[: args.sample_size] if args.sample else None
    # Without --inputs, the sample's inputs are the realistic ones at hand.
    inputs = read_trace(args.inputs) if args.inputs else sample
    processors = [p.strip() for p in args.processors.split(",")] if args.processors else None
    batch_sizes = (int_list(args.batch_sizes, "--batch-sizes") if args.batch_sizes
                   else DEFAULT_BATCH_SIZES)
    bar, update = progress_bar(f"profiling {model.name}")
    with bar:
        plan = profile_repository(model, processors=processors, threads=args.threads,
                                  batch_sizes=batch_sizes, sample=sample, inputs_from=inputs,
                                  progress=update, max_executors=args.max_executors,
                                  calibration_requests=args.calibration_requests)
    try:
        plan.save(args.out)
    except OSError as exc:
        raise ConfigError(f"cannot write the plan to {args.out} ({exc.strerror}): "
                          f"give another --out") from None
    print_profile(plan)
    print(f"wrote {args.out}")
    return 0


def print_profile(plan: Plan) -> None:
    """The plan's measurements: one row per architecture and processor, then loads,
    the engine calibration and where usage came from."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"coserve profile: {plan.repository}")
    for h in ("arch", "processor", "K ms", "B ms", "max batch", "fit error %", "item MB",
              "footprint MB", "slowdown by executors"):
        table.add_column(h, justify="left" if h in ("arch", "processor") else "right")
    for kind, archs in plan.processors.items():
        for arch, p in archs.items():
            table.add_row(arch, f"{kind} ({plan.threads.get(kind, '?')} threads)",
                          f"{p.cost.k_s * 1e3:.2f}", f"{p.cost.b_s * 1e3:.2f}",
                          str(p.cost.max_batch), f"{p.fit_max_rel_error * 100:.1f}",
                          f"{p.cost.item_bytes / 1e6:.2f}", f"{p.footprint_bytes / 1e6:.2f}",
                          " ".join(f"{n}:{f:.2f}" for n, f in sorted(p.slowdown.items())))
    Console(width=120).print(table)
    for path, lp in plan.loads.items():
        print(f"load {path}: {lp.bytes_per_s / 1e6:.0f} MB/s + {lp.fixed_s * 1e3:.2f} ms fixed "
              f"({lp.samples} loads)")
    overhead = " ".join(f"{n}:{s * 1e6:.0f}" for n, s in sorted(plan.task_overhead_s.items()))
    print(f"engine calibration: per-task handling {overhead or '-'} us by executors; "
          f"submit {plan.submit_s * 1e6:.0f} us per request")
    print(f"usage: {plan.usage_source}")
