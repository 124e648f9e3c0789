"""A cluster of replicas on the simulator: the trace's requests split among N replicas by
a routing rule, each replica simulated on its own (the plan's machine, its own budget as
for one machine), cluster throughput = all requests / the slowest replica's wall time.

A replica runs whole requests: the one a request is routed to runs every expert on its
path, loading any it lacks. The partition decides where requests go and so which experts
each replica's pool mostly needs.

Routing:
- `partitioned`: to the owner of the request's first expert (`Partition.replica_for`),
  spilled by `Partition.spill_order` when the owner's queue is far longer. The queues
  are a deterministic fluid approximation, not the simulator's: each request adds its
  expected executor seconds (the plan's per-item cost of its first expert plus the
  routing-weighted cost of what follows), and a replica drains `num_executors` seconds
  of work per second of arrival time. With `backlog` nothing drains, so spill keeps the
  replicas' predicted work within the margin of each other.
- `random`: uniform over replicas, seeded.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from coserve.cluster.partition import SPILL_MARGIN_S, Partition, partition_experts
from coserve.errors import ConfigError
from coserve.stats import percentile

if TYPE_CHECKING:
    from coserve.config import EngineConfig
    from coserve.plan import CostModel
    from coserve.planfile import Plan
    from coserve.repository import CoEModel
    from coserve.types import Request

ROUTINGS = ("partitioned", "random")


@dataclass(frozen=True)
class ClusterRow:
    """One cluster configuration's simulated outcome."""

    replicas: int
    routing: str
    num_requests: int
    wall_s: float  # the slowest replica's
    throughput_rps: float  # num_requests / wall_s
    num_switches: int  # all replicas together
    switches_per_request: float
    latency_p99_s: float  # over all requests of all replicas
    bytes_read: int
    max_replica_share: float  # requests on the busiest replica / num_requests
    num_spilled: int  # partitioned: requests not sent to their first expert's owner
    num_failed: int
    scaling_efficiency: float  # throughput / (replicas x the one-replica throughput)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def tile(requests: Sequence[Request], times: int) -> list[Request]:
    """The trace `times` times back to back: copy k at its own offsets plus k spans (a
    span is the last arrival plus the mean gap), ids suffixed with #k."""
    if times < 1:
        raise ConfigError(f"repeat must be at least 1, got {times}")
    if times == 1 or not requests:
        return list(requests)
    last = max(r.arrival_s for r in requests)
    span = last + last / max(1, len(requests) - 1)
    return [replace(r, request_id=f"{r.request_id}#{k}", arrival_s=r.arrival_s + k * span)
            for k in range(times) for r in requests]


def expected_cost(model: CoEModel, costs: CostModel, processor: str) -> Callable[[str], float]:
    """expected_cost(first) = executor seconds a request starting at `first` is expected
    to take: each expert's per-item cost and task overhead, weighted by P(reaching it)."""
    memo: dict[str, float] = {}

    def cost(expert: str) -> float:
        if expert not in memo:
            total = costs.per_item_s(expert, processor) + costs.task_overhead_s
            probs = model.label_probs.get(expert, {})
            for label, targets in model.router.next_table.get(expert, {}).items():
                total += probs.get(label, 0.0) * sum(cost(t) for t in targets)
            memo[expert] = total
        return memo[expert]

    return cost


def route_requests(
    model: CoEModel,
    requests: Sequence[Request],
    routing: str,
    partition: Partition,
    *,
    cost: Callable[[str], float],
    num_executors: int,
    backlog: bool,
    margin_s: float = SPILL_MARGIN_S,
    seed: int = 0,
) -> tuple[list[list[Request]], int]:
    """Each replica's sub-trace (arrival offsets kept) and the number spilled."""
    n = partition.num_replicas
    shares: list[list[Request]] = [[] for _ in range(n)]
    if routing == "random":
        rng = random.Random(seed)
        for request in requests:
            shares[rng.randrange(n)].append(request)
        return shares, 0
    if routing != "partitioned":
        raise ConfigError(f"unknown routing {routing!r}: choose from {', '.join(ROUTINGS)}")
    queued_s = [0.0] * n
    last_s, num_spilled = 0.0, 0
    for request in sorted(requests, key=lambda r: (0.0 if backlog else r.arrival_s)):
        now = 0.0 if backlog else request.arrival_s
        drained = (now - last_s) * num_executors
        queued_s = [max(0.0, q - drained) for q in queued_s]
        last_s = now
        first = model.router.first(request.fields)
        replica = partition.spill_order(first, queued_s, margin_s)[0]
        num_spilled += replica != partition.replica_for(first)
        queued_s[replica] += sum(cost(e) for e in first)
        shares[replica].append(request)
    return shares, num_spilled


@dataclass(frozen=True)
class ClusterSetup:
    """What every replica shares: the model, its engine config and plan, arrivals."""

    model: CoEModel
    config: EngineConfig
    plan: Plan
    backlog: bool = False
    margin_s: float = SPILL_MARGIN_S
    seed: int = 0


def simulate_cluster(
    setup: ClusterSetup,
    requests: Sequence[Request],
    replicas: Sequence[int],
    routings: Sequence[str],
    progress: Callable[[str, int, int], None] | None = None,
) -> list[ClusterRow]:
    """One row per (replicas, routing); scaling efficiency against the one-replica row of
    the same routing (simulated even when 1 is not in `replicas`)."""
    from coserve.plan import executors_per_kind

    for routing in routings:
        if routing not in ROUTINGS:
            raise ConfigError(f"unknown routing {routing!r}: choose from {', '.join(ROUTINGS)}")
    if not replicas or min(replicas) < 1:
        raise ConfigError(f"replicas must be counts of at least 1, got {list(replicas)}")
    processors = [e.processor for e in setup.config.executors]
    costs = setup.plan.cost_model(setup.model, executors_per_kind=executors_per_kind(processors))
    cost = expected_cost(setup.model, costs, processors[0])
    weight = _work_weight(setup.model, cost)
    counts = sorted(set(replicas) | {1})
    rows: dict[tuple[int, str], ClusterRow] = {}
    jobs = [(n, r) for r in routings for n in counts]
    for done, (n, routing) in enumerate(jobs):
        if progress:
            progress(f"{n} replica(s), {routing}", done, len(jobs))
        partition = partition_experts(setup.model, n, weight=weight)
        shares, spilled = route_requests(
            setup.model, requests, routing, partition, cost=cost, num_executors=len(processors),
            backlog=setup.backlog, margin_s=setup.margin_s, seed=setup.seed + n)
        rows[n, routing] = _run_replicas(setup, n, routing, shares, spilled,
                                         rows.get((1, routing)))
    return [rows[n, r] for r in routings for n in sorted(set(replicas))]


def _work_weight(model: CoEModel, cost: Callable[[str], float]) -> Callable[[str], float]:
    """A preliminary expert's work: P(it starts a request) x the request's expected
    executor seconds (its subsequent experts' cost included, so they weigh nothing more)."""
    def weight(expert: str) -> float:
        return 0.0 if model.predecessors(expert) else model.usage.get(expert, 0.0) * cost(expert)

    return weight


def _run_replicas(setup: ClusterSetup, n: int, routing: str, shares: Sequence[Sequence[Request]],
                  spilled: int, single: ClusterRow | None) -> ClusterRow:
    from coserve.simulator import simulate

    stats, latencies = [], []
    for share in shares:
        if not share:
            continue
        s, results = simulate(setup.model, share, setup.config, backlog=setup.backlog,
                              plan=setup.plan)
        stats.append(s)
        latencies.extend(r.latency_s for r in results if r.ok)
    num_requests = sum(len(s) for s in shares)
    wall_s = max((s.wall_s for s in stats), default=0.0)
    throughput = num_requests / wall_s if wall_s > 0 else 0.0
    switches = sum(s.num_switches for s in stats)
    base = single.throughput_rps if single else throughput
    return ClusterRow(
        replicas=n, routing=routing, num_requests=num_requests, wall_s=wall_s,
        throughput_rps=throughput, num_switches=switches,
        switches_per_request=switches / num_requests if num_requests else 0.0,
        latency_p99_s=percentile(latencies, 99),
        bytes_read=sum(s.bytes_read for s in stats),
        max_replica_share=max(len(s) for s in shares) / num_requests if num_requests else 0.0,
        num_spilled=spilled, num_failed=sum(s.num_failed for s in stats),
        scaling_efficiency=throughput / (n * base) if base > 0 else 0.0,
    )


