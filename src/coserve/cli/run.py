"""`coserve run` (one policy), `coserve bench` (every policy in each arrival mode, a
budget sweep, reports) and `coserve demo` (bench on the default pcb zoo without the
sweep; `--tiny`: the tiny CoE in seconds, without a plan or reports)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coserve.bench import ARRIVAL_MODES
from coserve.cli.cache import (
    bench_plan,
    bench_plan_path,
    bench_report_dir,
    board_trace,
    default_pcb_root,
    ensure_pcb,
    ensure_tiny,
)
from coserve.cli.options import (
    BENCH_BUDGET_FRACTION,
    BENCH_STORAGE,
    BENCH_SWEEP,
    DEFAULT_PCB_SIZE,
    PCB_SIZES,
    PEER_MAX_INFLIGHT,
    TINY_BUDGET_FRACTION,
    add_engine_options,
    add_json_option,
    add_plan_option,
    add_policy_option,
    add_trust_option,
    engine_config,
    load_plan,
    planned_config,
)
from coserve.errors import ConfigError
from coserve.policies import DEFAULT_POLICY, POLICY_NAMES

if TYPE_CHECKING:
    from coserve.bench.runner import BenchRun
    from coserve.config import EngineConfig
    from coserve.repository import CoEModel
    from coserve.stats import EngineStats
    from coserve.types import Request


# -- coserve run -----------------------------------------------------------------------------
def add_run_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a trace against a repository and print statistics")
    p.add_argument("repo", type=Path)
    p.add_argument("trace", type=Path)
    add_policy_option(p)
    add_json_option(p)
    add_engine_options(p, backlog=True)
    add_plan_option(p)
    add_trust_option(p)
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from coserve.engine.run import run_trace
    from coserve.repository import open_repository
    from coserve.trace import read_trace

    model = open_repository(args.repo, trust_code=args.trust_repo_code)
    requests = read_trace(args.trace)
    config, plan = planned_config(args, args.policy)
    stats, results, _ = run_trace(model, requests, config, args.backlog, plan=plan)
    print_stats(stats, as_json=args.json)
    if not args.json:
        for r in (r for r in results if not r.ok):
            print(f"request {r.request_id} failed: {r.error}", file=sys.stderr)
    return 0 if all(r.ok for r in results) else 1


def print_stats(stats: EngineStats, *, as_json: bool) -> None:
    """`--json`: one JSON object on stdout; otherwise the statistics table."""
    from coserve.report import print_table

    if as_json:
        print(json.dumps(stats.to_dict(), indent=2))
    else:
        print_table([stats])


# -- coserve bench and coserve demo ------------------------------------------------------------
def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="policies side by side: table, JSON, markdown, plots")
    _add_bench_options(p, sweep=BENCH_SWEEP)
    p.set_defaults(func=cmd_bench)


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the circuit-board inspection workload: the baselines "
                                    "and coserve side by side (builds the pcb zoo on first use)")
    p.add_argument("--tiny", action="store_true",
                   help="the 12-expert tiny CoE instead (seconds); refuses REPO, TRACE, --size, "
                        "--sweep, --ray, --max-inflight, --repeat, --plan and --report-dir")
    _add_bench_options(p, sweep="")
    p.set_defaults(func=cmd_demo)


def _add_bench_options(p: argparse.ArgumentParser, sweep: str) -> None:
    p.add_argument("repo", type=Path, nargs="?", default=None, help="default: the pcb zoo in the cache")
    p.add_argument("trace", type=Path, nargs="?", default=None, help="default: the board-A task")
    p.add_argument("--size", default=None, choices=PCB_SIZES,
                   help=f"pcb zoo size when no repository is given (default {DEFAULT_PCB_SIZE})")
    p.add_argument("--policies", default=",".join(POLICY_NAMES), help="comma-separated policies to run")
    p.add_argument("--sweep", default=sweep, help="budget fractions for the sweep, e.g. 0.1,0.2 ('' for none)")
    p.add_argument("--ray", action="store_true", help="add the Ray Serve multiplexing peer row")
    p.add_argument("--max-inflight", type=int, default=None,
                   help=f"the Ray peer's in-flight window (default {PEER_MAX_INFLIGHT})")
    p.add_argument("--arrivals", default=None,
                   help=f"arrival modes to run, comma-separated: backlog (every request at once), "
                        f"trace (at the trace's offsets) (default {','.join(ARRIVAL_MODES)})")
    p.add_argument("--realtime", action="store_true", help="the same as --arrivals trace")
    p.add_argument("--limit", type=int, default=None, help="only the first N requests")
    p.add_argument("--json-out", type=Path, default=None, help="write run metadata and rows to this JSON file")
    p.add_argument("--report-dir", type=Path, default=None, help="markdown report and PNG plots")
    p.add_argument("--repeat", type=int, default=1,
                   help="run every policy row N times, in rounds; each row is the median run")
    p.add_argument("--no-plan", action="store_true",
                   help="no coserve (planned) row and no simulated twins (skips profiling)")
    p.add_argument("--cap", action="store_true",
                   help="add the cost-accuracy-performance figures per row (memory per tier, "
                        "bytes moved, $ per 1,000 images, S-MBU) and cap.png, bandwidth.png")
    p.add_argument("--precisions", default="",
                   help="run every policy row once per stored precision, e.g. fp32,int8,auto "
                        "(variants from `coserve repo quantize`; default: --precision alone)")
    add_engine_options(p, backlog=False)
    add_plan_option(p, help="the plan for the coserve (planned) row and the simulated twins "
                            "(default: REPO/plan.json, profiled on first use)")
    add_trust_option(p)
    p.set_defaults(storage=BENCH_STORAGE)


def cmd_demo(args: argparse.Namespace) -> int:
    """The pcb workload through `bench` (no sweep), or the tiny CoE with --tiny."""
    return cmd_demo_tiny(args) if args.tiny else cmd_bench(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from coserve.bench.report import write_reports
    from coserve.bench.runner import run_bench

    policies = policy_list(args.policies)
    arrivals = arrival_modes(args)
    sweep = float_list(args.sweep, "--sweep")
    repo, trace, model, requests = _bench_workload(args)
    config = engine_config(args, DEFAULT_POLICY, default_budget_fraction=BENCH_BUDGET_FRACTION)
    peer = _ray_peer(args, model, requests, config) if args.ray else None
    plan = None
    if not args.no_plan and DEFAULT_POLICY in policies:
        plan = load_plan(args.plan) if args.plan else bench_plan(model, repo, requests)
    run = run_bench(model, requests, config, policies=policies, arrivals=arrivals,
                    sweep_fractions=sweep, peer=peer, trace=str(trace), plan=plan,
                    repeat=args.repeat, on_row=_print_row,
                    precisions=precision_list(getattr(args, "precisions", "")))
    if plan is not None:
        run.metadata["plan"] = str(args.plan or bench_plan_path(repo))
    if args.cap:
        from coserve.bench.cap import add_cap, cap_markdown

        add_cap(run, model, config, sum(e.num_threads for e in config.executors))
    _print_bench(run, model.name)
    if args.cap:
        print("\n".join(cap_markdown(run)))
    for path in write_reports(run, args.json_out, args.report_dir or bench_report_dir(model.name)):
        print(f"wrote {path}")
    return 0


def precision_list(text: str) -> tuple[str, ...]:
    """`--precisions fp32,int8`: the modes, checked; ConfigError listing the valid ones."""
    from coserve.manager.precision import PRECISION_MODES

    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in modes if m not in PRECISION_MODES]
    if unknown:
        raise ConfigError(f"--precisions {text!r}: {', '.join(unknown)} unknown; choose from "
                          f"{', '.join(PRECISION_MODES)}")
    return modes


def _bench_workload(args: argparse.Namespace) -> tuple[Path, Path, CoEModel, list[Request]]:
    """REPO and TRACE, else the cached pcb zoo of --size and its board-A task."""
    from coserve.repository import open_repository
    from coserve.trace import read_trace

    size = args.size or DEFAULT_PCB_SIZE
    repo = args.repo or ensure_pcb(default_pcb_root(size), size)
    trace = args.trace or board_trace(repo)
    model = open_repository(repo, trust_code=args.trust_repo_code)
    return repo, trace, model, read_trace(trace)[: args.limit or None]


def _ray_peer(args: argparse.Namespace, model: CoEModel, requests: Sequence[Request],
              config: EngineConfig) -> Callable[[bool], dict[str, Any]]:
    """The Ray Serve peer's row in an arrival mode (True: a backlog), run when the bench
    gets to it; its late answers are counted against the engine's latency target."""
    from coserve.bench.ray_peer import RayPeerConfig, ray_available, run_ray_peer_results
    from coserve.bench.runner import inspection_accuracy

    if not ray_available():
        raise ConfigError("--ray needs Ray Serve: pip install 'coserve[ray]'")
    max_inflight = PEER_MAX_INFLIGHT if args.max_inflight is None else args.max_inflight

    def peer(backlog: bool) -> dict[str, Any]:
        peer_config = RayPeerConfig(budget_bytes=config.resolve_budget(model.total_expert_bytes),
                                    storage=config.storage, max_inflight=max_inflight,
                                    realtime=not backlog)
        stats, results = run_ray_peer_results(model, requests, peer_config)
        late = sum(r.latency_s > config.latency_target_s for r in results)
        return {**stats.to_dict(), "accuracy": inspection_accuracy(results),
                "deadline_misses": late, "num_deadline_misses": late,
                "deadline_miss_rate": late / len(results) if results else 0.0}

    return peer


def _print_row(row: dict[str, Any]) -> None:
    print(f"  {row['policy']} [{row.get('arrivals', '-')}]: {row['throughput_rps']:.1f} images/s, "
          f"{row['num_switches']} switches", flush=True)


def _print_bench(run: BenchRun, model_name: str) -> None:
    """The rows, grouped by arrival mode, and what they share."""
    from rich.console import Console
    from rich.table import Table

    from coserve.bench.report import table_rows

    header, body = table_rows(run.rows)
    table = Table(title=f"coserve bench: {model_name}")
    for h in header:
        table.add_column(h, justify="left" if h in ("policy", "arrivals") else "right")
    modes = [r.get("arrivals") for r in run.rows]
    for i, row in enumerate(body):
        table.add_row(*row, end_section=i + 1 < len(body) and modes[i + 1] != modes[i])
    Console(width=160).print(table)
    m = run.metadata
    budget = ("unlimited" if m["budget_bytes"] is None else
              f"{_size(m['budget_bytes'])} = {m['budget_fraction']:.0%}")
    print(f"budget {budget} of {_size(m['total_expert_bytes'])}; "
          f"storage {m['storage']}; raw storage read {m['raw_storage_bytes_per_s'] / 1e6:.0f} MB/s; "
          f"{m['cpu_cores']} cores; {m['num_requests']} requests, arrivals {', '.join(m['arrivals'])}")
    print(f"switch floor {m['switch_floor']}: experts the trace needs ({m['num_experts_needed']}) "
          f"that coserve's initial placement does not hold; late: answered after "
          f"{m['latency_target_s']:g} s")


def policy_list(text: str) -> list[str]:
    """'samba,coserve' as policy names, each checked before any work starts."""
    policies = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICY_NAMES]
    if unknown or not policies:
        raise ConfigError(f"--policies {text!r}: give policies separated by commas, from "
                          f"{', '.join(POLICY_NAMES)}")
    return policies


def _size(num_bytes: float) -> str:
    return f"{num_bytes / 1e9:.2f} GB" if num_bytes >= 1e9 else f"{num_bytes / 1e6:.1f} MB"


def arrival_modes(args: argparse.Namespace) -> tuple[str, ...]:
    """--arrivals as modes in the order given (default: all of them); --realtime means
    --arrivals trace. ConfigError before any work for an unknown mode or a contradiction."""
    if args.realtime:
        if args.arrivals not in (None, "trace"):
            raise ConfigError(f"--realtime means --arrivals trace, but --arrivals {args.arrivals!r} "
                              f"is given too: drop one of them")
        return ("trace",)
    text = ",".join(ARRIVAL_MODES) if args.arrivals is None else args.arrivals
    modes = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = [m for m in modes if m not in ARRIVAL_MODES]
    if unknown or not modes:
        raise ConfigError(f"--arrivals {text!r}: give {' or '.join(ARRIVAL_MODES)}, or both "
                          f"separated by a comma")
    return modes


def float_list(text: str, what: str) -> list[float]:
    """'0.1,0.2' as numbers ('' for none); `what` names the option in the error."""
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"cannot read {what} {text!r}: give numbers separated by commas, "
                          f"e.g. 0.1,0.2") from None


# -- coserve demo --tiny ---------------------------------------------------------------------
def tiny_refusals(args: argparse.Namespace) -> list[str]:
    """The demo options `--tiny` cannot honour, where given: it compares the policies on
    the cached tiny CoE and its own trace, without a plan, a peer, a sweep or reports."""
    given = {
        "REPO": args.repo is not None,
        "TRACE": args.trace is not None,
        "--size": args.size is not None,
        "--sweep": bool(args.sweep),
        "--ray": args.ray,
        "--max-inflight": args.max_inflight is not None,
        "--repeat": args.repeat != 1,
        "--plan": args.plan is not None,
        "--report-dir": args.report_dir is not None,
    }
    return [option for option, is_given in given.items() if is_given]


def cmd_demo_tiny(args: argparse.Namespace) -> int:
    """The bench on the tiny CoE and its own trace, in each arrival mode: no plan, no
    peer, no sweep, no reports (only --json-out)."""
    from coserve.bench.report import write_reports
    from coserve.bench.runner import run_bench
    from coserve.repository import open_repository
    from coserve.trace import read_trace

    refused = tiny_refusals(args)
    if refused:
        raise ConfigError(f"demo --tiny cannot honour {', '.join(refused)}: it compares the "
                          f"policies on the tiny CoE and its own trace; drop "
                          f"{'it' if len(refused) == 1 else 'them'}, or run `coserve demo` "
                          f"without --tiny")
    policies = policy_list(args.policies)
    arrivals = arrival_modes(args)
    root = ensure_tiny()
    model = open_repository(root, trust_code=args.trust_repo_code)
    requests = read_trace(root / "trace.jsonl")[: args.limit or None]
    config = engine_config(args, DEFAULT_POLICY, default_budget_fraction=TINY_BUDGET_FRACTION)
    run = run_bench(model, requests, config, policies=policies, arrivals=arrivals,
                    trace=str(root / "trace.jsonl"), on_row=_print_row,
                    precisions=precision_list(args.precisions))
    _print_tiny_header(model, len(requests), args, run.metadata["raw_storage_bytes_per_s"])
    _print_bench(run, model.name)
    for path in write_reports(run, args.json_out, None):
        print(f"wrote {path}")
    return 0


def _print_tiny_header(model: CoEModel, num_requests: int, args: argparse.Namespace,
                       raw_bps: float) -> None:
    from coserve.loader.storage import storage_profile

    pace = storage_profile(args.storage).read_bytes_per_s
    paced = f", reads paced to {pace / 1e6:.0f} MB/s" if pace else ""
    print(f"{model.name}: {len(model.experts)} experts, {model.total_expert_bytes / 1e6:.1f} MB; "
          f"{num_requests} requests; storage profile {args.storage}; "
          f"raw storage read {raw_bps / 1e6:.0f} MB/s (O_DIRECT, measured now{paced}); "
          f"{os.cpu_count()} cores")

