"""The `coserve` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from coserve.errors import CoserveError

DEMO_POLICIES = ("samba", "samba-fifo", "samba-parallel", "coserve", "all-resident")


def cache_dir() -> Path:
    """Where generated zoos and traces go: $COSERVE_CACHE, else ~/.cache/coserve."""
    return Path(os.environ.get("COSERVE_CACHE", Path.home() / ".cache" / "coserve"))


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget-bytes", type=int, help="bytes of expert weights the executing pools may hold (all executors together)")
    budget.add_argument("--budget-fraction", type=float, help="the budget as a fraction of all expert bytes, e.g. 0.3")
    p.add_argument("--executors", default=None, help="executors, e.g. 'cpu:2' or 'cpu:1,cuda:0:2' (default: cpu:min(2, cores))")
    p.add_argument("--storage", default="none", help="storage profile pacing expert reads: none, sata-530, nvme-3000 (default: none)")
    p.add_argument("--max-defer-s", type=float, default=None, help="starvation bound: how long a queued task may be overtaken (default 5)")
    p.add_argument("--backlog", action="store_true", help="submit every request at once instead of at its arrival offset")
    p.add_argument("--no-measure", action="store_true", help="skip the start-up cost measurement and use default costs")


def _engine_config(args: argparse.Namespace, policy: str):
    from coserve.engine.config import EngineConfig, parse_executors

    kwargs = {
        "policy": policy,
        "budget_bytes": args.budget_bytes,
        "budget_fraction": args.budget_fraction,
        "storage": args.storage,
        "measure_costs": not args.no_measure,
    }
    if args.executors:
        kwargs["executors"] = parse_executors(args.executors)
    if args.max_defer_s is not None:
        kwargs["max_defer_s"] = args.max_defer_s
    return EngineConfig(**kwargs)


def cmd_zoo(args: argparse.Namespace) -> int:
    from coserve.zoo.tiny import build_tiny

    root, trace = build_tiny(args.dir, seed=args.seed)
    print(f"wrote repository {root} and trace {trace}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from coserve.engine.run import run_trace
    from coserve.report import print_table
    from coserve.repository import open_repository
    from coserve.trace import read_trace

    model = open_repository(args.repo)
    requests = read_trace(args.trace)
    stats, results, _ = run_trace(model, requests, _engine_config(args, args.policy), args.backlog)
    if args.json:
        print(json.dumps(stats.to_dict(), indent=2))
    else:
        print_table([stats])
        for r in (r for r in results if not r.ok):
            print(f"request {r.request_id} failed: {r.error}", file=sys.stderr)
    return 0 if all(r.ok for r in results) else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from coserve.engine.run import compare_policies
    from coserve.loader.storage import measure_raw_bandwidth, storage_profile
    from coserve.report import print_table
    from coserve.repository import open_repository
    from coserve.trace import read_trace
    from coserve.zoo.tiny import build_tiny

    root = cache_dir() / "zoo" / "tiny"
    if not (root / "coe.yaml").is_file():
        print(f"building the tiny CoE into {root} ...")
        build_tiny(root)
    model = open_repository(root)
    requests = read_trace(root / "trace.jsonl")
    if args.budget_bytes is None and args.budget_fraction is None:
        args.budget_fraction = 0.3
    args.backlog = True
    config = _engine_config(args, "coserve")
    largest = max(model.experts.values(), key=lambda e: e.file_bytes)
    raw_bps = measure_raw_bandwidth(largest.weights_path)
    rows = compare_policies(model, requests, config, DEMO_POLICIES, backlog=True)
    pace = storage_profile(args.storage).read_bytes_per_s
    paced = f", reads paced to {pace / 1e6:.0f} MB/s" if pace else ""
    print(f"{model.name}: {len(model.experts)} experts, {model.total_expert_bytes / 1e6:.1f} MB; "
          f"{len(requests)} requests submitted at once; storage profile {args.storage}; "
          f"raw storage read {raw_bps / 1e6:.0f} MB/s (O_DIRECT, measured now{paced}); "
          f"{os.cpu_count()} cores")
    print_table(rows, baseline="samba")
    if args.json:
        Path(args.json).write_text(json.dumps({"raw_storage_bytes_per_s": raw_bps,
                                               "rows": [r.to_dict() for r in rows]}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coserve", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log engine decisions")
    sub = parser.add_subparsers(dest="command", required=True)

    zoo = sub.add_parser("zoo", help="generate a model repository")
    zoo_sub = zoo.add_subparsers(dest="kind", required=True)
    tiny = zoo_sub.add_parser("tiny", help="a dozen small experts and a sample trace, in seconds")
    tiny.add_argument("dir", type=Path)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=cmd_zoo)

    run = sub.add_parser("run", help="run a trace against a repository and print statistics")
    run.add_argument("repo", type=Path)
    run.add_argument("trace", type=Path)
    run.add_argument("--policy", default="coserve", choices=DEMO_POLICIES)
    run.add_argument("--json", action="store_true", help="print the statistics as one JSON object")
    _add_engine_options(run)
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="build the tiny CoE and compare the baselines with coserve")
    demo.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    _add_engine_options(demo)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except CoserveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
