"""`coserve cluster simulate`: N replicas on the simulator, requests split by routing.
The cluster logic is in coserve.cluster."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from coserve.cli.options import (
    add_engine_options,
    add_plan_option,
    add_policy_option,
    add_trust_option,
    int_list,
    planned_config,
    progress_bar,
)

if TYPE_CHECKING:
    from coserve.cluster.simulate import ClusterRow


def add_cluster_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cluster", help="several replicas: `cluster simulate` on the simulator",
                       description="Beyond one machine. `coserve cluster simulate REPO TRACE "
                                   "--plan P`: the trace split among N replicas, each simulated "
                                   "with the plan's machine and its own budget.")
    words = p.add_subparsers(dest="cluster_command", required=True)
    s = words.add_parser("simulate", help="N replicas on the simulator: throughput, switches, "
                                          "scaling efficiency", allow_abbrev=False,
                         description="Each replica simulated on its own with its share of the "
                                     "trace (arrival offsets kept); cluster throughput = "
                                     "requests / the slowest replica's wall time.")
    s.add_argument("repo", type=Path)
    s.add_argument("trace", type=Path)
    add_plan_option(s, required=True, help="the plan file (coserve profile): every replica's machine")
    s.add_argument("--replicas", default="1,2,4,8", help="replica counts, e.g. 1,2,4,8 (default)")
    s.add_argument("--routing", default="partitioned,random",
                   help="partitioned (the first expert's owner, spill when its queue is far "
                        "longer) and/or random (seeded uniform); default both")
    s.add_argument("--spill-margin-s", type=float, default=None,
                   help="partitioned: spill once the owner's predicted queue is this many "
                        "seconds longer than the shortest (default 0.5; 2 where steps are "
                        "handed off)")
    s.add_argument("--repeat", type=int, default=1,
                   help="the trace K times back to back at its own offsets (default 1)")
    s.add_argument("--rate-scale", type=float, default=1.0,
                   help="arrival offsets divided by S: S times the trace's arrival rate "
                        "(default 1)")
    s.add_argument("--scale-load", action="store_true",
                   help="N replicas get N copies of the trace overlaid (N times the "
                        "requests and the arrival rate): weak scaling")
    s.add_argument("--replicate", action="store_true",
                   help="partitioned: hot and widely shared experts held by several replicas "
                        "(within each replica's budget)")
    s.add_argument("--spill-switches", action="store_true",
                   help="partitioned: the spill estimate adds the predicted switch seconds "
                        "of replicas whose pool lacks the request's experts")
    s.add_argument("--handoff", choices=("auto", "on", "off"), default="auto",
                   help="partitioned: on, each replica runs only the steps of the experts it "
                        "holds and hands the others to their replica (for CoEs with fan-out; "
                        "replicas simulated together on one clock); off: a replica runs whole "
                        "requests; auto (default): on where whole requests would make the "
                        "replicas reach 1.5 copies of the model's bytes or more")
    s.add_argument("--hop-s", type=float, default=None,
                   help="with handoff: seconds from a part's end to its continuation queued "
                        "on the next replica (default 0.002)")
    s.add_argument("--seed", type=int, default=0, help="random routing's seed (default 0)")
    s.add_argument("--json", type=Path, default=None, dest="json_out",
                   help="write {\"rows\": [...]} to this file")
    add_policy_option(s)
    add_engine_options(s, backlog=True)
    add_trust_option(s)
    s.set_defaults(func=cmd_cluster_simulate)


def cmd_cluster_simulate(args: argparse.Namespace) -> int:
    from coserve.cluster.coupled import HANDOFF_HOP_S
    from coserve.cluster.simulate import ClusterSetup, scale_rate, simulate_cluster, tile
    from coserve.errors import ConfigError
    from coserve.repository import open_repository
    from coserve.trace import read_trace

    model = open_repository(args.repo, trust_code=args.trust_repo_code)
    config, plan = planned_config(args, args.policy)
    assert plan is not None  # --plan is required
    requests = scale_rate(tile(read_trace(args.trace), args.repeat), args.rate_scale)
    routings = [r.strip() for r in args.routing.split(",") if r.strip()]
    if not routings:
        raise ConfigError("--routing names no routing: give partitioned, random or both")
    if args.spill_margin_s is not None and not args.spill_margin_s >= 0:
        raise ConfigError(f"--spill-margin-s must be >= 0 seconds, got {args.spill_margin_s}")
    hop_s = HANDOFF_HOP_S if args.hop_s is None else args.hop_s
    if not hop_s >= 0:
        raise ConfigError(f"--hop-s must be >= 0 seconds, got {args.hop_s}")
    setup = ClusterSetup(model, config, plan, backlog=args.backlog, margin_s=args.spill_margin_s,
                         seed=args.seed, replicate=args.replicate,
                         spill_switches=args.spill_switches,
                         scale_load=args.scale_load, handoff=args.handoff, hop_s=hop_s)
    bar, progress = progress_bar("simulating replicas")
    with bar:
        rows = simulate_cluster(setup, requests, int_list(args.replicas, "--replicas"), routings,
                                progress=progress)
    print_cluster_table(rows)
    arrivals = " at once" if args.backlog else f" at their offsets / {args.rate_scale:g}"
    per = " x N replicas (overlaid)" if args.scale_load else ""
    print(f"{len(requests)} requests{per}{arrivals}; "
          f"policy {config.policy}; per-replica budget as for one machine; simulated")
    if args.json_out is not None:
        doc = {"repo": str(args.repo), "trace": str(args.trace), "repeat": args.repeat,
               "rate_scale": args.rate_scale, "scale_load": args.scale_load,
               "replicate": args.replicate, "spill_switches": args.spill_switches,
               "handoff": args.handoff, "hop_s": hop_s, "backlog": args.backlog,
               "policy": config.policy,
               "rows": [r.to_dict() for r in rows]}
        args.json_out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0 if all(r.num_failed == 0 for r in rows) else 1


def print_cluster_table(rows: Sequence[ClusterRow]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="coserve cluster (simulated)")
    for col in ("replicas", "routing", "req/s", "efficiency", "switches", "switches/req",
                "p99 s", "read MB", "busiest", "spilled", "handoffs", "failed"):
        table.add_column(col, justify="left" if col == "routing" else "right")
    for r in rows:
        table.add_row(str(r.replicas), r.routing, f"{r.throughput_rps:.1f}",
                      f"{r.scaling_efficiency:.2f}", str(r.num_switches),
                      f"{r.switches_per_request:.3f}", f"{r.latency_p99_s:.2f}",
                      f"{r.bytes_read / 1e6:.0f}", f"{r.max_replica_share:.0%}",
                      str(r.num_spilled), str(r.num_handoffs), str(r.num_failed))
    Console(width=140).print(table)
