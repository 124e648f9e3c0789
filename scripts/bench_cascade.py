"""A confidence cascade against the full classifiers, side by side: the pcb zoo and its
cascade build (`coserve zoo build pcb --cascade`: the same full classifiers and
detectors, plus a small classifier per detector group that escalates unsure answers)
on the same board trace, budget in bytes, executors and storage profile, in
interleaved rounds (a slow spell of a shared machine falls on both). Prints per arrival
mode: images/s (median of the rounds, every round's beside it), MB read, switches,
inspection accuracy against the generator's ground truth, the share of requests
escalated, p99, and the cascade's ratios to the plain zoo.

    python scripts/bench_cascade.py PLAIN CASCADE [--trace T] [--budget-fraction 0.2]
        [--storage sata-530] [--executors cpu:2] [--arrivals backlog,trace] [--repeat 3]
        [--json OUT]

The budget is a fraction of the PLAIN zoo's expert bytes, in bytes for both (the
cascade's small classifiers add about 1% to the bytes at rest)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from coserve import EngineConfig, open_repository, parse_executors, read_trace
from coserve.bench.runner import inspection_accuracy
from coserve.engine.run import run_trace


def one_run(repo: Any, requests: list, config: EngineConfig, backlog: bool) -> dict[str, Any]:
    stats, results, _ = run_trace(repo, requests, config, backlog)
    return {"throughput_rps": stats.throughput_rps, "bytes_read": stats.bytes_read,
            "num_switches": stats.num_switches, "latency_p99_s": stats.latency_p99_s,
            "accuracy": inspection_accuracy(results), "escalated": stats.escalated_share,
            "failed": sum(not r.ok for r in results)}


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(runs, key=lambda r: r["throughput_rps"])
    return {**ordered[(len(ordered) - 1) // 2], "runs": [r["throughput_rps"] for r in runs]}


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    zoos = {"full classifiers": open_repository(args.plain),
            "cascade": open_repository(args.cascade)}
    requests = read_trace(args.trace or Path(args.plain) / "trace-A.jsonl")
    budget = int(args.budget_fraction * zoos["full classifiers"].total_expert_bytes)
    config = EngineConfig(budget_bytes=budget, executors=parse_executors(args.executors),
                          storage=args.storage)
    rows = []
    for mode in args.arrivals.split(","):
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in zoos}
        for _ in range(args.repeat):
            for name, model in zoos.items():
                runs[name].append(one_run(model, requests, config, mode == "backlog"))
                print(f"  {mode:8s} {name:17s} {runs[name][-1]['throughput_rps']:7.1f} img/s",
                      file=sys.stderr, flush=True)
        for name in zoos:
            rows.append({"arrivals": mode, "zoo": name, "budget_bytes": budget,
                         **median_row(runs[name])})
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print("| arrivals | zoo | img/s (vs full) | rounds | MB read (vs full) | switches | "
          "accuracy | escalated | p99 s |")
    print("|---|---|---|---|---|---|---|---|---|")
    base: dict[str, dict[str, Any]] = {}
    for row in rows:
        ref = base.setdefault(row["arrivals"], row)
        ratio = row["throughput_rps"] / ref["throughput_rps"]
        read = row["bytes_read"] / max(ref["bytes_read"], 1)
        escalated = "-" if row["escalated"] is None else f"{row['escalated']:.1%}"
        print(f"| {row['arrivals']} | {row['zoo']} | {row['throughput_rps']:.1f} ({ratio:.2f}x) | "
              f"{'; '.join(f'{r:.1f}' for r in row['runs'])} | {row['bytes_read'] / 1e6:.0f} "
              f"({read - 1:+.0%}) | {row['num_switches']} | {row['accuracy']:.2%} | {escalated} | "
              f"{row['latency_p99_s']:.2f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plain")
    parser.add_argument("cascade")
    parser.add_argument("--trace", default=None, help="default: PLAIN/trace-A.jsonl")
    parser.add_argument("--budget-fraction", type=float, default=0.2)
    parser.add_argument("--storage", default="sata-530")
    parser.add_argument("--executors", default="cpu:2")
    parser.add_argument("--arrivals", default="backlog,trace")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    rows = measure(args)
    print(f"budget {rows[0]['budget_bytes'] / 1e6:.0f} MB ({args.budget_fraction:.0%} of the "
          f"full zoo), storage {args.storage}, executors {args.executors}, "
          f"median of {args.repeat} interleaved rounds")
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
