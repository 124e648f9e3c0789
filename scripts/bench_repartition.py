#!/usr/bin/env python
"""A usage shift on the cluster simulator (issue 13: the partition recomputed when usage
shifts, moving as few experts as possible). Prints one table.

N replicas are deployed with the partition for the plan's usage (as `coserve serve
--replicas N` computes it); then the mix shifts: the trace is resampled (seeded, same
length, same arrival offsets) so that the preliminary experts replica 0 owns get
`--boost` times their share. The ingress's `Rebalancer` observes the shifted trace's
first experts and decides; each row routes the same shifted trace:

  stale       by the deployed partition (what the ingress did before repartitioning)
  rebalanced  by the partition the Rebalancer moved to (`repartition`: few moves)
  fresh       by `partition_experts` for the shifted usage, from scratch (many moves)

Each replica's engine starts from the *deployed* partition's prior in every row: the
ingress does not tell replicas about a repartition, they warm the experts they now own
by being routed their requests. Efficiency is against one replica on the same trace.

    python scripts/bench_repartition.py --replicas 4 --boost 4 --backlog
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from coserve.cli.options import (
    add_engine_options,
    add_plan_option,
    add_policy_option,
    planned_config,
)
from coserve.cluster.partition import Partition, num_moved, partition_experts
from coserve.cluster.rebalance import RebalanceConfig, Rebalancer, usage_from_first
from coserve.cluster.simulate import ClusterRow, ClusterSetup, simulate_partition
from coserve.repository import CoEModel, open_repository
from coserve.trace import read_trace
from coserve.types import Request

ZOO = Path.home() / ".cache/coserve/zoo/pcb-default"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repo", type=Path, default=ZOO, help="default: the pcb zoo")
    p.add_argument("--trace", type=Path, default=None, help="default: the pcb zoo's board-A trace")
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--boost", type=float, default=4.0,
                   help="replica 0's preliminary experts get this many times their share")
    p.add_argument("--seed", type=int, default=0, help="of the resampling")
    p.add_argument("--weight", choices=("bytes", "seconds"), default="bytes",
                   help="what the partitions balance: usage x bytes (the ingress's, default) "
                        "or the plan's executor seconds (`cluster simulate`'s)")
    add_plan_option(p, required=False, help="default: the pcb zoo's plan.json")
    add_policy_option(p)
    add_engine_options(p, backlog=True)
    args = p.parse_args(argv)
    args.trace = args.trace or args.repo / "trace-A.jsonl"
    args.plan = args.plan or args.repo / "plan.json"
    return args


def shifted(model: CoEModel, requests: list[Request], owned: frozenset[str], boost: float,
            seed: int) -> list[Request]:
    """The trace resampled with `owned` first experts `boost` times as likely."""
    rng = random.Random(seed)
    weights = [boost if model.router.first(r.fields)[0] in owned else 1.0 for r in requests]
    picks = rng.choices(range(len(requests)), weights, k=len(requests))
    return [replace(requests[i], request_id=f"{requests[i].request_id}~{k}",
                    arrival_s=requests[k].arrival_s) for k, i in enumerate(picks)]


def request_seconds(setup: ClusterSetup) -> Callable[[str], float]:
    """cost(e): the expected executor seconds of a request starting at e (the plan's
    costs, what `coserve cluster simulate` partitions by); 0 for subsequent experts (their
    seconds are in their parents' requests)."""
    from coserve.assembly import Assembly
    from coserve.cluster.simulate import expected_cost

    assembly = Assembly.of(setup.model, setup.config, plan=setup.plan)
    assert assembly.costs is not None
    seconds = expected_cost(setup.model, assembly.costs, assembly.processors[0])
    model = setup.model
    return lambda e: 0.0 if model.predecessors(e) else seconds(e)


def weight_of(usage: Mapping[str, float], cost: Callable[[str], float] | None):
    """The partition's weight under `usage` (None: its default, usage x bytes)."""
    return None if cost is None else (lambda e: usage.get(e, 0.0) * cost(e))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = open_repository(args.repo)
    config, plan = planned_config(args, args.policy)
    assert plan is not None
    setup = ClusterSetup(model, config, plan, backlog=args.backlog)
    n = args.replicas
    cost = None if args.weight == "bytes" else request_seconds(setup)
    # As the ingress's driver does (with --weight bytes).
    deployed = partition_experts(model, n, usage=plan.usage, weight=weight_of(plan.usage, cost))
    roots = frozenset(e for e in deployed.experts_of(0) if not model.predecessors(e))
    requests = shifted(model, read_trace(args.trace), roots, args.boost, args.seed)
    rebalancer = Rebalancer(model, deployed, RebalanceConfig(
        window_s=1e9, min_requests=len(requests) // 2, check_interval_s=0), usage=plan.usage,
        cost=cost)
    for r in requests:
        rebalancer.observe(model.router.first(r.fields), r.arrival_s)
    change = rebalancer.check(requests[-1].arrival_s)
    usage = usage_from_first(model, rebalancer.window.first_usage(requests[-1].arrival_s))
    fresh = partition_experts(model, n, usage=usage, weight=weight_of(usage, cost))
    single = simulate_partition(setup, requests, Partition(1, dict.fromkeys(model.experts, 0)))
    rows = {"stale": deployed, "rebalanced": rebalancer.partition, "fresh": fresh}
    print(f"{len(requests)} requests, replica 0's {len(roots)} preliminary experts x{args.boost:g}; "
          f"{n} replicas; {'backlog' if args.backlog else 'at offsets'}; policy {config.policy}; "
          f"partitions balance {args.weight}")
    if change is None:
        print(f"the Rebalancer kept the partition (predicted imbalance {rebalancer.imbalance:.2f})")
    else:
        print(f"the Rebalancer moved {change.num_moved} expert(s): predicted imbalance "
              f"{change.imbalance_before:.2f} -> {change.imbalance_after:.2f}")
    print("| partition | experts moved | req/s | efficiency | switches/req | read MB | busiest | p99 s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, partition in rows.items():
        row: ClusterRow = simulate_partition(setup, requests, partition, prior_partition=deployed,
                                             single=single)
        print(f"| {name} | {num_moved(deployed, partition)} | {row.throughput_rps:.1f} | "
              f"{row.scaling_efficiency:.2f} | {row.switches_per_request:.3f} | "
              f"{row.bytes_read / 1e6:.0f} | {row.max_replica_share:.0%} | {row.latency_p99_s:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
