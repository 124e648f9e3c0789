"""A cluster of replicas on the simulator: the trace's requests split among N replicas by
a routing rule, each replica simulated on its own (the plan's machine, its own budget as
for one machine), cluster throughput = all requests / the slowest replica's wall time.

A replica runs whole requests: the one a request is routed to runs every expert on its
path, loading any it lacks. The partition decides where requests go and so which experts
each replica's pool mostly needs.

Routing is the ingress's own policy objects (`coserve.cluster.routing`): `partitioned`
sends a request to the owner of its first expert, spilled by `Partition.spill_order` when
the owner's queue is far longer; `random` is seeded uniform. The queues they see are a
deterministic fluid approximation, not the simulator's: each request adds its expected
executor seconds (the plan's per-item cost of its first expert plus the routing-weighted
cost of what follows), and a replica drains `num_executors` seconds of work per second of
arrival time. With `backlog` nothing drains, so spill keeps the replicas' predicted work
within the margin of each other.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from coserve.cluster.coupled import HANDOFF_HOP_S, CoupledCluster, replica_priors
from coserve.cluster.partition import (
    HANDOFF_SPILL_MARGIN_S,
    SPILL_MARGIN_S,
    Partition,
    placement_for,
    reach_probabilities,
    replica_traffic,
    replica_usage,
    task_work,
    wants_handoff,
)
from coserve.cluster.routing import ReplicaRouting, ReplicaView, check_routing, replica_routing
from coserve.errors import ConfigError
from coserve.stats import percentile

if TYPE_CHECKING:
    from coserve.config import EngineConfig
    from coserve.plan import CostModel
    from coserve.planfile import Plan
    from coserve.repository import CoEModel
    from coserve.types import Request

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
    num_spilled: int  # requests sent to a replica not holding their first expert
    num_failed: int
    scaling_efficiency: float  # throughput / (replicas x the one-replica throughput)
    num_handoffs: int = 0  # steps handed to another replica (step handoff)
    handoff: bool = False  # whether the row's replicas handed steps off

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


class FluidReplicas:
    """The partitioned router's view of the replicas: each one's queued executor seconds
    (drained `num_executors` seconds per second of arrival time) and which experts its
    pool holds (at first its held experts, hottest first, up to `budget_bytes`; then
    least recently used out as it loads more). A request's predicted switch seconds on a
    replica: `load_s` of each expert on its expected path that the pool lacks, weighted by
    P(reaching it); once a replica's expected visits of an expert reach one, it holds it."""

    def __init__(self, model: CoEModel, partition: Partition, traffic: Sequence[Mapping[str, float]],
                 load_s: Callable[[str], float], budget_bytes: int | None) -> None:
        self._model, self._load_s, self._budget = model, load_s, budget_bytes
        self._bytes = {e: s.num_bytes for e, s in model.experts.items()}
        self._reach: dict[str, dict[str, float]] = {}
        self.queued_s = [0.0] * partition.num_replicas
        self._visits: list[dict[str, float]] = [{} for _ in range(partition.num_replicas)]
        self.pools: list[OrderedDict[str, None]] = []
        for r in range(partition.num_replicas):
            held = sorted(partition.experts_held(r), key=lambda e: (-traffic[r].get(e, 0.0), e))
            self.pools.append(OrderedDict())
            for expert in reversed(held):  # the hottest last: most recently used
                self._hold(r, expert)

    def drain(self, seconds: float) -> None:
        self.queued_s = [max(0.0, q - seconds) for q in self.queued_s]

    def switch_s(self, first: Sequence[str]) -> list[float]:
        path = self._path(first)
        return [sum(p * self._load_s(e) for e, p in path.items() if e not in pool)
                for pool in self.pools]

    def add(self, replica: int, first: Sequence[str], work_s: float, switch_s: float) -> None:
        self.queued_s[replica] += work_s + switch_s
        visits = self._visits[replica]
        for expert, p in self._path(first).items():
            visits[expert] = visits.get(expert, 0.0) + p
            if expert in self.pools[replica]:
                self.pools[replica].move_to_end(expert)
            elif visits[expert] >= 1.0 - 1e-9:
                visits[expert] = 0.0
                self._hold(replica, expert)

    def _hold(self, replica: int, expert: str) -> None:
        pool = self.pools[replica]
        pool[expert] = None
        used = sum(self._bytes[e] for e in pool)
        while self._budget is not None and used > self._budget and len(pool) > 1:
            evicted, _ = pool.popitem(last=False)
            used -= self._bytes[evicted]

    def _path(self, first: Sequence[str]) -> dict[str, float]:
        key = "\0".join(first)
        if key not in self._reach:
            self._reach[key] = reach_probabilities(self._model, first)
        return self._reach[key]


def route_requests(
    model: CoEModel,
    requests: Sequence[Request],
    routing: ReplicaRouting,
    partition: Partition,
    *,
    cost: Callable[[str], float],
    num_executors: int,
    backlog: bool,
    load_s: Callable[[str], float] | None = None,
    budget_bytes: int | None = None,
) -> tuple[list[list[Request]], int]:
    """Each replica's sub-trace (arrival offsets kept) and the number spilled (sent to a
    replica not holding their first expert). `routing` sees the fluid queues
    (`FluidReplicas`); with `load_s`, also each replica's predicted switch seconds."""
    shares: list[list[Request]] = [[] for _ in range(partition.num_replicas)]
    traffic = replica_traffic(model, partition)
    fluid = FluidReplicas(model, partition, traffic, load_s or (lambda e: 0.0), budget_bytes)
    last_s, num_spilled = 0.0, 0
    for request in sorted(requests, key=lambda r: (0.0 if backlog else r.arrival_s)):
        now = 0.0 if backlog else request.arrival_s
        fluid.drain((now - last_s) * num_executors)
        last_s = now
        first = model.router.first(request.fields)
        switch_s = fluid.switch_s(first) if load_s is not None else None
        replica = routing.choose(first, ReplicaView(partition, fluid.queued_s, switch_s))
        num_spilled += replica not in partition.holders_of(first[0])
        fluid.add(replica, first, sum(cost(e) for e in first),
                  switch_s[replica] if switch_s is not None else 0.0)
        shares[replica].append(request)
    return shares, num_spilled


@dataclass(frozen=True)
class ClusterSetup:
    """What every replica shares: the model, its engine config and plan, arrivals.
    `replicate`: partitioned routing may hold a hot or shared expert on several replicas.
    `spill_switches`: its spill estimate counts predicted switches (`FluidReplicas`).
    Both off by default: measured worse on board A and synth (README).
    `scale_load`: N replicas get N copies of the trace overlaid (weak scaling).
    `handoff` (on, off or auto: `wants_handoff` per replica count): each replica runs
    only the steps of the experts it holds and hands the rest on
    (`coserve.cluster.coupled`, `hop_s` a hop); partitioned routing only. `margin_s`
    None: SPILL_MARGIN_S, or HANDOFF_SPILL_MARGIN_S with handoff."""

    model: CoEModel
    config: EngineConfig
    plan: Plan
    backlog: bool = False
    margin_s: float | None = None
    seed: int = 0
    replicate: bool = False
    spill_switches: bool = False
    scale_load: bool = False
    handoff: str = "off"
    hop_s: float = HANDOFF_HOP_S


def overlay(requests: Sequence[Request], copies: int) -> list[Request]:
    """`copies` copies of the trace at the same offsets (ids suffixed with @k), in arrival
    order: `copies` times the arrival rate with the same mix."""
    if copies <= 1:
        return list(requests)
    tiled = [replace(r, request_id=f"{r.request_id}@{k}") for k in range(copies) for r in requests]
    return sorted(tiled, key=lambda r: r.arrival_s)


def scale_rate(requests: Sequence[Request], factor: float) -> list[Request]:
    """Arrival offsets divided by `factor`: `factor` times the arrival rate."""
    if factor <= 0:
        raise ConfigError(f"rate scale must be positive, got {factor}")
    return [replace(r, arrival_s=r.arrival_s / factor) for r in requests]


def simulate_cluster(
    setup: ClusterSetup,
    requests: Sequence[Request],
    replicas: Sequence[int],
    routings: Sequence[str],
    progress: Callable[[str, int, int], None] | None = None,
) -> list[ClusterRow]:
    """One row per (replicas, routing); scaling efficiency against the one-replica row of
    the same routing (simulated even when 1 is not in `replicas`)."""
    for routing in routings:
        check_routing(routing)
    if not replicas or min(replicas) < 1:
        raise ConfigError(f"replicas must be counts of at least 1, got {list(replicas)}")
    plan = _RoutingPlan.of(setup)
    counts = sorted(set(replicas) | {1})
    rows: dict[tuple[int, str], ClusterRow] = {}
    jobs = [(n, r) for r in routings for n in counts]
    for done, (n, routing) in enumerate(jobs):
        if progress:
            progress(f"{n} replica(s), {routing}", done, len(jobs))
        offered = overlay(requests, n) if setup.scale_load else list(requests)
        rows[n, routing] = simulate_partition(setup, offered, plan.partition(n), routing=routing,
                                              single=rows.get((1, routing)), plan=plan)
    return [rows[n, r] for r in routings for n in sorted(set(replicas))]


def simulate_partition(
    setup: ClusterSetup,
    requests: Sequence[Request],
    partition: Partition,
    *,
    routing: str = "partitioned",
    prior_partition: Partition | None = None,
    single: ClusterRow | None = None,
    plan: _RoutingPlan | None = None,
) -> ClusterRow:
    """One cluster run: `requests` routed by `routing` over `partition`, each replica
    simulated on its own. With a routing that uses the partition, each replica's engine
    starts from the prior of `prior_partition` (default `partition`): pass the partition
    the replicas were started with to model a repartition they were not told about (the
    ingress's replicas warm the experts they now own by being routed their requests).
    Efficiency against `single` (the one-replica row), else 1."""
    plan = plan or _RoutingPlan.of(setup)
    n = partition.num_replicas
    handoff = plan.handoff(n) and replica_routing(routing).uses_partition
    margin_s = setup.margin_s if setup.margin_s is not None else (
        HANDOFF_SPILL_MARGIN_S if handoff else SPILL_MARGIN_S)
    policy = replica_routing(routing, margin_s=margin_s, seed=setup.seed + n)
    if handoff:
        return _run_coupled(setup, requests, partition, prior_partition or partition,
                            routing, policy, plan, single)
    shares, spilled = route_requests(
        setup.model, requests, policy, partition, cost=plan.cost,
        num_executors=plan.num_executors, backlog=setup.backlog,
        load_s=plan.load_s if setup.spill_switches else None, budget_bytes=plan.budget_bytes)
    started = prior_partition or partition
    priors = ([replica_usage(setup.model, started, r, plan.usage) for r in range(n)]
              if policy.uses_partition and n > 1 else [None] * n)
    return _run_replicas(setup, n, routing, shares, spilled, priors, single)


@dataclass(frozen=True)
class _RoutingPlan:
    """What the partitioned router predicts with, from the plan as the simulator reads
    it (the storage's pace included): executor seconds of a request starting at an
    expert, seconds to load one, one replica's pool budget, the repository's usage prior
    (what the partition has always balanced by)."""

    setup: ClusterSetup
    cost: Callable[[str], float]
    load_s: Callable[[str], float]
    num_executors: int
    budget_bytes: int | None
    usage: Mapping[str, float]
    step_work: Callable[[str], float]  # an expert's work with handoff (`task_work`)

    @classmethod
    def of(cls, setup: ClusterSetup) -> _RoutingPlan:
        from coserve.assembly import Assembly

        assembly = Assembly.of(setup.model, setup.config, plan=setup.plan)
        costs = assembly.costs
        assert costs is not None  # the plan gives them
        processor = assembly.processors[0]
        return cls(setup, expected_cost(setup.model, costs, processor),
                   lambda e: costs.load_s(e, processor, from_host=False),
                   len(assembly.processors), assembly.budget_bytes, setup.model.usage,
                   task_work(setup.model.usage, costs, processor))

    def handoff(self, num_replicas: int) -> bool:
        """Whether this setup hands steps off at `num_replicas`."""
        return wants_handoff(self.setup.handoff, self.setup.model, num_replicas, self.usage)

    def partition(self, num_replicas: int) -> Partition:
        handoff = self.handoff(num_replicas)
        weight = (self.step_work if handoff
                  else _work_weight(self.setup.model, self.cost, self.usage))
        return placement_for(handoff).partition(
            self.setup.model, num_replicas, self.usage, weight,
            max_copies=num_replicas if self.setup.replicate else 1,
            budget_bytes=self.budget_bytes)


def _work_weight(model: CoEModel, cost: Callable[[str], float],
                 usage: Mapping[str, float]) -> Callable[[str], float]:
    """A preliminary expert's work: P(it starts a request) x the request's expected
    executor seconds (its subsequent experts' cost included, so they weigh nothing more)."""
    def weight(expert: str) -> float:
        return 0.0 if model.predecessors(expert) else usage.get(expert, 0.0) * cost(expert)

    return weight


def _run_replicas(setup: ClusterSetup, n: int, routing: str, shares: Sequence[Sequence[Request]],
                  spilled: int, priors: Sequence[Mapping[str, float] | None],
                  single: ClusterRow | None) -> ClusterRow:
    from coserve.simulator import simulate

    stats, latencies = [], []
    for share, prior in zip(shares, priors, strict=True):
        if not share:
            continue
        s, results = simulate(setup.model, share, setup.config, backlog=setup.backlog,
                              plan=setup.plan, usage=prior)
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




def _run_coupled(setup: ClusterSetup, requests: Sequence[Request], partition: Partition,
                 started: Partition, routing: str, policy: ReplicaRouting, plan: _RoutingPlan,
                 single: ClusterRow | None) -> ClusterRow:
    from coserve.simulator import Simulator

    sims = [Simulator(setup.model, setup.config, plan=setup.plan, usage=prior)
            for prior in replica_priors(started, plan.usage)]
    cluster = CoupledCluster(sims, partition, policy, hop_s=setup.hop_s, load_s=plan.load_s,
                             latency_target_s=setup.config.latency_target_s)
    out = cluster.run(requests, setup.backlog)
    n, num_requests = partition.num_replicas, len(requests)
    throughput = num_requests / out.wall_s if out.wall_s > 0 else 0.0
    switches = sum(s.num_switches for s in out.stats)
    base = single.throughput_rps if single else throughput
    parts = sum(out.parts_per_replica)
    return ClusterRow(
        replicas=n, routing=routing, num_requests=num_requests, wall_s=out.wall_s,
        throughput_rps=throughput, num_switches=switches,
        switches_per_request=switches / num_requests if num_requests else 0.0,
        latency_p99_s=percentile([r.latency_s for r in out.results.values() if r.ok], 99),
        bytes_read=sum(s.bytes_read for s in out.stats),
        max_replica_share=max(out.parts_per_replica) / parts if parts else 0.0,
        num_spilled=out.num_spilled,
        num_failed=sum(not r.ok for r in out.results.values()),
        scaling_efficiency=throughput / (n * base) if base > 0 else 0.0,
        num_handoffs=out.num_handoffs, handoff=n > 1,
    )
