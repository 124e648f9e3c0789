"""Dependency-aware placement of experts over replicas: a preliminary expert lives where
its likely subsequent experts live, a shared subsequent expert where most of its parents'
traffic is, and each replica carries about 1/N of the work and 1/N of the bytes.

Pure Python (no torch, no Ray): the Ray Serve ingress and `coserve cluster simulate` both
use it.

The unit of placement is a *family*: a preliminary expert with the share of each
subsequent expert that its traffic reaches (P(parent) x P(parent routes to it) over all
parents' traffic). Families are placed largest first on the replica that keeps the larger
of (work share, byte share) smallest; then each subsequent expert goes to the replica
that sends it most traffic, unless that replica's bytes would pass the tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from coserve.types import LOW_CONFIDENCE

if TYPE_CHECKING:
    from coserve.plan import CostModel
    from coserve.repository import CoEModel

# A replica may carry this much more than 1/N of the work (or the bytes) before the
# partition moves an expert off it; 10% keeps a per-replica budget sized for 1/N useful.
BALANCE_TOLERANCE = 0.10
# A request goes to its owner unless the owner's queue is this much longer than the
# shortest one: below it, the owner's resident experts save more than the wait costs.
# Simulated on board A (backlog, 8 replicas): 2 s never spilled the hottest expert's 24%
# of requests (efficiency 0.70), 0.1 s spilled too much (0.80), 0.5 s gave 0.87.
SPILL_MARGIN_S = 0.5
# With step handoff a spilled step runs where its expert is not held (a load that evicts
# an owned expert); a backlog's first wave also queues unevenly (the preliminary experts'
# work, not the later levels'), which it evens out itself. Simulated on synth (9,000
# requests, 20% budget, sata-530): efficiency 0.75 / 0.93 / 0.91 at 2 / 4 / 8 replicas
# with 0.5 s, 0.85 / 0.94 / 0.91 with 1 s, 0.90 / 0.94 / 0.92 with 2 s, the same with 5 s.
HANDOFF_SPILL_MARGIN_S = 2.0
# `handoff auto` hands steps off when replicas running whole requests would reach this many
# copies of the model's bytes between them (`whole_request_reach`): board A reaches 0.84 /
# 0.91 / 0.96 at 2 / 4 / 8 replicas (its families are private), synth 1.61 / 2.51 / 4.15
# (each first-stage expert leads to most of the later stages).
HANDOFF_REACH = 1.5
HANDOFF_MODES = ("auto", "on", "off")
# Usage prior of the experts another replica owns, relative to their model prior: small,
# so a replica's initial placement prefers its own, but not zero (eviction still orders
# them among themselves).
FOREIGN_USAGE_SCALE = 0.01


@dataclass(frozen=True)
class Partition:
    """Who owns which expert. `owner` maps every expert to a replica in [0, num_replicas);
    `holders` optionally names more replicas holding an expert (a hot preliminary expert
    served by several replicas, a shared subsequent expert kept where much of its traffic
    is); the owner always holds its expert."""

    num_replicas: int
    owner: Mapping[str, int]
    holders: Mapping[str, frozenset[int]] = field(default_factory=dict)
    _members: tuple[frozenset[str], ...] = field(init=False, repr=False, compare=False)
    _held: tuple[frozenset[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.num_replicas < 1:
            raise ValueError(f"num_replicas must be at least 1, got {self.num_replicas}")
        bad = sorted(e for e, r in self.owner.items() if not 0 <= r < self.num_replicas)
        bad += sorted(e for e, rs in self.holders.items()
                      if e not in self.owner or any(not 0 <= r < self.num_replicas for r in rs))
        if bad:
            raise ValueError(f"experts {bad[:5]} are owned by no replica in "
                             f"[0, {self.num_replicas}): give each an owner below num_replicas")
        holders = {e: frozenset(self.holders.get(e, ())) | {r} for e, r in self.owner.items()}
        members: list[set[str]] = [set() for _ in range(self.num_replicas)]
        held: list[set[str]] = [set() for _ in range(self.num_replicas)]
        for expert, replica in self.owner.items():
            members[replica].add(expert)
            for r in holders[expert]:
                held[r].add(expert)
        object.__setattr__(self, "owner", MappingProxyType(dict(self.owner)))
        object.__setattr__(self, "holders", MappingProxyType(holders))
        object.__setattr__(self, "_members", tuple(frozenset(m) for m in members))
        object.__setattr__(self, "_held", tuple(frozenset(h) for h in held))

    def experts_of(self, replica: int) -> frozenset[str]:
        """The experts `replica` owns."""
        return self._members[replica]

    def experts_held(self, replica: int) -> frozenset[str]:
        """The experts `replica` owns or holds a copy of."""
        return self._held[replica]

    def holders_of(self, expert: str) -> frozenset[int]:
        """The replicas holding `expert` (its owner among them)."""
        return self.holders[expert]

    def replica_for(self, first: Sequence[str]) -> int:
        """The replica owning a request's first expert (the first one's, on a fan-out)."""
        if isinstance(first, str) or not first:
            raise ValueError(f"first must be a non-empty sequence of expert names, got {first!r}")
        return self.owner[first[0]]

    def spill_order(self, first: Sequence[str], loads: Sequence[float],
                    margin_s: float = SPILL_MARGIN_S,
                    switch_s: Sequence[float] | None = None) -> list[int]:
        """Replicas in preference order for a request. Home is the least loaded replica
        holding its first expert (the owner on ties); each replica's cost is its queued
        work (`loads`, seconds) plus, when given, `switch_s`: the seconds of loads the
        request would cost it. Home comes first unless its cost is more than `margin_s`
        above the cheapest replica's; then the others by the min-max rule (least cost
        first, ties to the lower index)."""
        n = self.num_replicas
        if len(loads) != n or (switch_s is not None and len(switch_s) != n):
            raise ValueError(f"loads has {len(loads)} entries for {n} replicas: "
                             "give each replica's queued work in seconds")
        owner = self.replica_for(first)
        home = min(self.holders[first[0]], key=lambda r: (loads[r], r != owner, r))
        cost = [loads[r] + (switch_s[r] if switch_s is not None else 0.0) for r in range(n)]
        by_cost = sorted(range(n), key=lambda r: (cost[r], r))
        if cost[home] - cost[by_cost[0]] > margin_s:
            return by_cost
        return [home] + [r for r in by_cost if r != home]


@dataclass(frozen=True)
class _Family:
    """A preliminary expert with its attributed work and bytes."""

    root: str
    work: float
    num_bytes: float
    reach: Mapping[str, float]  # descendant -> the fraction of its traffic due to root


class _Graph:
    """The routing graph with traffic: P(expert) and P(parent routes to child)."""

    def __init__(self, model: CoEModel, usage: Mapping[str, float],
                 weight: Callable[[str], float]) -> None:
        self.experts = sorted(model.experts)
        self.num_bytes = {e: float(model.experts[e].num_bytes) for e in self.experts}
        self.work = {e: float(weight(e)) for e in self.experts}
        self.usage = {e: float(usage.get(e, 0.0)) for e in self.experts}
        self.children: dict[str, dict[str, float]] = {e: {} for e in self.experts}
        self.parents: dict[str, dict[str, float]] = {e: {} for e in self.experts}
        for parent in self.experts:
            probs = model.label_probs.get(parent, {})
            for label, targets in model.router.next_table.get(parent, {}).items():
                for child in targets:
                    # Traffic parent -> child: P(parent) x P(label | parent).
                    self._edge(parent, child, usage.get(parent, 0.0) * probs.get(label, 0.0))
            rule = model.router.cascade.get(parent)
            for child in sorted(rule.all_targets if rule is not None else ()):
                # An escalation reaches each target from its own requests only: at most
                # the child's usage, at most the parent's unsure share.
                unsure = usage.get(parent, 0.0) * probs.get(LOW_CONFIDENCE, 0.0)
                self._edge(parent, child, min(unsure, usage.get(child, 0.0)))
        self.roots = [e for e in self.experts if not self.parents[e]]

    def _edge(self, parent: str, child: str, flow: float) -> None:
        self.children[parent][child] = self.children[parent].get(child, 0.0) + flow
        self.parents[child][parent] = self.parents[child].get(parent, 0.0) + flow

    def share(self, parent: str, child: str) -> float:
        """The fraction of `child`'s incoming traffic that comes from `parent`."""
        total = sum(self.parents[child].values())
        if total <= 0:
            return 1.0 / len(self.parents[child])
        return self.parents[child].get(parent, 0.0) / total

    def families(self) -> list[_Family]:
        """One family per expert nobody routes to; children (and theirs) attributed by
        traffic share."""
        result = []
        for root in self.roots:
            work, num_bytes = self.work[root], self.num_bytes[root]
            reach = self._reach(root)
            for child, fraction in reach.items():
                work += fraction * self.work[child]
                num_bytes += fraction * self.num_bytes[child]
            result.append(_Family(root, work, num_bytes, MappingProxyType(reach)))
        return result

    def _reach(self, root: str) -> dict[str, float]:
        """Descendants of `root` with the fraction of each one's traffic due to it."""
        reached: dict[str, float] = {}
        frontier = [(root, 1.0)]
        while frontier:
            node, fraction = frontier.pop()
            for child in sorted(self.children[node]):
                part = fraction * self.share(node, child)
                reached[child] = reached.get(child, 0.0) + part
                frontier.append((child, part))
        return reached


class _Loads:
    """Per-replica work and bytes, normalised so 1.0 is an even 1/N share."""

    def __init__(self, num_replicas: int, total_work: float, total_bytes: float,
                 num_sharing: int | None = None) -> None:
        """`num_sharing`: the replicas the totals are shared by (default all)."""
        self.work = [0.0] * num_replicas
        self.bytes = [0.0] * num_replicas
        sharing = num_sharing or num_replicas
        self._work_unit = max(total_work, 1e-300) / sharing
        self._bytes_unit = max(total_bytes, 1e-300) / sharing

    def cost(self, replica: int, work: float = 0.0, num_bytes: float = 0.0) -> float:
        """The larger of work share and byte share on `replica` after adding these."""
        return max((self.work[replica] + work) / self._work_unit,
                   (self.bytes[replica] + num_bytes) / self._bytes_unit)

    def size(self, work: float, num_bytes: float) -> float:
        """The larger of work share and byte share of one family on its own."""
        return max(work / self._work_unit, num_bytes / self._bytes_unit)

    def add(self, replica: int, work: float, num_bytes: float) -> None:
        self.work[replica] += work
        self.bytes[replica] += num_bytes

    def bytes_share(self, replica: int, num_bytes: float = 0.0) -> float:
        return (self.bytes[replica] + num_bytes) / self._bytes_unit


def default_weight(model: CoEModel, usage: Mapping[str, float]) -> Callable[[str], float]:
    """usage x num_bytes: the bytes an expert costs the replica per request, a proxy for
    both its share of the switching and its share of the pool."""
    return lambda expert: usage.get(expert, 0.0) * model.experts[expert].num_bytes


def partition_experts(
    model: CoEModel,
    num_replicas: int,
    usage: Mapping[str, float] | None = None,
    weight: Callable[[str], float] | None = None,
    *,
    max_copies: int = 1,
    budget_bytes: int | None = None,
) -> Partition:
    """A dependency-aware partition of `model`'s experts over `num_replicas` replicas.
    `usage` defaults to the model's prior; `weight(expert)` (the work an expert brings a
    replica) defaults to usage x num_bytes. With `max_copies` > 1 replication is on: a
    preliminary expert with more than an even share of the work is held by up to that
    many replicas, and a subsequent expert by every replica that sends it at least 1/N
    of its traffic and has room for it among its hottest experts within `budget_bytes`
    (one replica's pool; None: no limit). Deterministic."""
    if max_copies < 1:
        raise ValueError(f"max_copies must be at least 1, got {max_copies}")
    return _place(model, num_replicas, usage, weight, previous=None,
                  max_copies=max_copies, budget_bytes=budget_bytes)


def partition_steps(
    model: CoEModel,
    num_replicas: int,
    usage: Mapping[str, float] | None = None,
    weight: Callable[[str], float] | None = None,
    *,
    previous: Partition | None = None,
    down: Collection[int] = (),
) -> Partition:
    """A partition for step handoff, where each expert's steps run where it lives:
    experts are placed one by one, not in families. Each replica gets about 1/N of every
    routing level's bytes (a level: the longest path from a preliminary expert) and 1/N
    of the work; among the replicas within the tolerance of the best, the one its placed
    parents send most traffic from (fewer hops). Per level, because a level's experts
    are busy together: a backlog passes through the levels in waves, and a level's 1/N
    then fits a pool sized for 1/N of the model (synth, 2 replicas: one replica read 2x
    the other's bytes when it held 62% of the last stage). With `previous`, an expert
    stays with its owner there whenever that replica is within the tolerance (a usage
    shift moves few experts); with `down` too, only the experts of the replicas that are
    down move (re-homing), and those replicas get nothing. Deterministic."""
    up = [r for r in range(num_replicas) if r not in down]
    if not up:
        raise ValueError(f"no replica of {num_replicas} is up to place experts on")
    usage = model.usage if usage is None else usage
    graph = _Graph(model, usage, weight or default_weight(model, usage))
    levels = _levels(graph)
    owner: dict[str, int] = {}
    work = _Loads(num_replicas, sum(graph.work.values()), 1.0, len(up))
    for depth in sorted(set(levels.values())):
        members = sorted((e for e in graph.experts if levels[e] == depth),
                         key=lambda e: (-graph.num_bytes[e], e))
        level = _Loads(num_replicas, 1.0, sum(graph.num_bytes[e] for e in members), len(up))
        for expert in members:
            w, b = graph.work[expert], graph.num_bytes[expert]
            score = {r: max(work.cost(r, w), level.bytes_share(r, b)) for r in up}
            best = min(score.values())
            near = [r for r in up if score[r] <= best * (1 + BALANCE_TOLERANCE)]
            traffic = _parent_traffic(graph, owner, expert, num_replicas)
            kept = previous.owner.get(expert) if previous is not None else None
            if down and kept in score:  # re-homing: what is on a replica up stays there
                near = [kept]
            chosen = min(near, key=lambda r: (r != kept, -traffic[r], score[r], r))
            owner[expert] = chosen
            work.add(chosen, w, 0.0)
            level.add(chosen, 0.0, b)
    return Partition(num_replicas, owner)


def step_loads(model: CoEModel, partition: Partition,
               usage: Mapping[str, float] | None = None,
               weight: Callable[[str], float] | None = None) -> list[float]:
    """With step handoff: the work (`weight`, default usage x bytes) of the experts each
    replica owns, the measure `partition_steps` balances."""
    usage = model.usage if usage is None else usage
    weight = weight or default_weight(model, usage)
    loads = [0.0] * partition.num_replicas
    for expert, replica in partition.owner.items():
        loads[replica] += weight(expert)
    return loads


def task_work(usage: Mapping[str, float], costs: CostModel,
              processor: str) -> Callable[[str], float]:
    """An expert's work with step handoff: its usage x the executor seconds of one of its
    tasks on `processor` (the plan's per-item cost and per-task handling)."""
    return lambda e: usage.get(e, 0.0) * (costs.per_item_s(e, processor) + costs.task_overhead_s)


class FamilyPlacement:
    """Replicas run whole requests: families of experts (`partition_experts`)."""

    def partition(self, model: CoEModel, num_replicas: int, usage: Mapping[str, float] | None,
                  weight: Callable[[str], float] | None, *, max_copies: int = 1,
                  budget_bytes: int | None = None) -> Partition:
        return partition_experts(model, num_replicas, usage, weight, max_copies=max_copies,
                                 budget_bytes=budget_bytes)

    def repartition(self, old: Partition, model: CoEModel, usage: Mapping[str, float],
                    weight: Callable[[str], float] | None) -> Partition:
        return repartition(old, model, usage, weight)

    def rehome(self, target: Partition, model: CoEModel, usage: Mapping[str, float],
               down: Collection[int], weight: Callable[[str], float] | None) -> Partition:
        return rehome(target, model, usage, down, weight)

    def loads(self, model: CoEModel, partition: Partition, usage: Mapping[str, float],
              weight: Callable[[str], float] | None) -> list[float]:
        return replica_loads(model, partition, usage, weight)


class StepPlacement:
    """Step handoff: expert by expert (`partition_steps`), sticking to the old owners.
    One owner per expert: copies (`max_copies`) are not made."""

    def partition(self, model: CoEModel, num_replicas: int, usage: Mapping[str, float] | None,
                  weight: Callable[[str], float] | None, *, max_copies: int = 1,
                  budget_bytes: int | None = None) -> Partition:
        return partition_steps(model, num_replicas, usage, weight)

    def repartition(self, old: Partition, model: CoEModel, usage: Mapping[str, float],
                    weight: Callable[[str], float] | None) -> Partition:
        return partition_steps(model, old.num_replicas, usage, weight, previous=old)

    def rehome(self, target: Partition, model: CoEModel, usage: Mapping[str, float],
               down: Collection[int], weight: Callable[[str], float] | None) -> Partition:
        if not down:
            return target
        return partition_steps(model, target.num_replicas, usage, weight, previous=target,
                               down=down)

    def loads(self, model: CoEModel, partition: Partition, usage: Mapping[str, float],
              weight: Callable[[str], float] | None) -> list[float]:
        return step_loads(model, partition, usage, weight)


def placement_for(handoff: bool) -> FamilyPlacement | StepPlacement:
    """How experts are placed: StepPlacement with step handoff, else FamilyPlacement."""
    return StepPlacement() if handoff else FamilyPlacement()


def whole_request_reach(model: CoEModel, partition: Partition,
                        usage: Mapping[str, float] | None = None) -> float:
    """The bytes of the experts each replica's requests visit when replicas run whole
    requests (`replica_traffic`), summed over the replicas, over the model's bytes: 1.0
    when every expert is needed on one replica only, N when every replica needs all."""
    total = sum(s.num_bytes for s in model.experts.values())
    reached = sum(model.experts[e].num_bytes for traffic in replica_traffic(model, partition, usage)
                  for e, p in traffic.items() if p > 0)
    return reached / total if total else 0.0


def wants_handoff(mode: str, model: CoEModel, num_replicas: int,
                  usage: Mapping[str, float] | None = None) -> bool:
    """Whether `mode` (HANDOFF_MODES) hands steps off at `num_replicas`: `auto` when the
    family partition's whole requests would reach at least HANDOFF_REACH copies of the
    model. ValueError for an unknown mode."""
    if mode not in HANDOFF_MODES:
        raise ValueError(f"handoff must be one of {', '.join(HANDOFF_MODES)}, got {mode!r}")
    if mode != "auto" or num_replicas < 2:
        return mode == "on" and num_replicas >= 1
    family = partition_experts(model, num_replicas, usage=usage)
    return whole_request_reach(model, family, usage) >= HANDOFF_REACH


def _levels(graph: _Graph) -> dict[str, int]:
    """Each expert's longest path from a preliminary expert (0 for those)."""
    levels: dict[str, int] = {}
    for expert in _topological(graph, graph.experts):
        levels[expert] = max((levels[p] + 1 for p in graph.parents[expert]), default=0)
    return levels


def repartition(
    old: Partition,
    model: CoEModel,
    usage: Mapping[str, float],
    weight: Callable[[str], float] | None = None,
    num_replicas: int | None = None,
) -> Partition:
    """The same goal as `partition_experts` for new `usage`, moving as few experts as
    possible: each family stays where it was unless moving it brings the most loaded
    replica back within the tolerance. `num_replicas` (default: the old count) may shrink
    or grow the cluster; experts of a replica that is gone are re-homed. One owner per
    expert: copies are not carried over."""
    return _place(model, old.num_replicas if num_replicas is None else num_replicas,
                  usage, weight, previous=old)


def _place(
    model: CoEModel,
    num_replicas: int,
    usage: Mapping[str, float] | None,
    weight: Callable[[str], float] | None,
    previous: Partition | None,
    max_copies: int = 1,
    budget_bytes: int | None = None,
) -> Partition:
    if num_replicas < 1:
        raise ValueError(f"num_replicas must be at least 1, got {num_replicas}")
    usage = model.usage if usage is None else usage
    graph = _Graph(model, usage, weight or default_weight(model, usage))
    families = graph.families()
    loads = _Loads(num_replicas, sum(f.work for f in families), sum(graph.num_bytes.values()))
    owner: dict[str, int] = {}
    kept = _keep_families(families, previous, num_replicas, owner, loads)
    fresh = [f for f in families if f.root not in kept]
    holders = _place_families(fresh, [f for f in families if f.root in kept], owner, loads,
                              max_copies)
    if previous is not None:
        _rebalance(families, owner, loads)
    _place_subsequent(graph, owner, loads, previous)
    if max_copies > 1:
        holders = {root: rs for root, rs in holders.items() if len(rs) > 1}
        holders.update(_replicate_subsequent(graph, owner, holders, num_replicas, budget_bytes))
    return Partition(num_replicas, owner, {e: frozenset(rs) for e, rs in holders.items()})


def replica_loads(model: CoEModel, partition: Partition,
                  usage: Mapping[str, float] | None = None,
                  weight: Callable[[str], float] | None = None) -> list[float]:
    """The work (`weight`, as `partition_experts` balances it) each replica's families
    bring it under `usage`: a preliminary expert's with its share of what it routes to,
    on its holders (split evenly)."""
    usage = model.usage if usage is None else usage
    graph = _Graph(model, usage, weight or default_weight(model, usage))
    loads = [0.0] * partition.num_replicas
    for family in graph.families():
        holders = partition.holders_of(family.root)
        for r in holders:
            loads[r] += family.work / len(holders)
    return loads


def imbalance(loads: Sequence[float], replicas: Collection[int] | None = None) -> float:
    """max load over mean load among `replicas` (default all): 1.0 is even; 1.0 also when
    there is no load at all."""
    chosen = [loads[r] for r in (range(len(loads)) if replicas is None else sorted(replicas))]
    if not chosen:
        raise ValueError("imbalance of no replicas: name at least one")
    mean = sum(chosen) / len(chosen)
    return max(chosen) / mean if mean > 0 else 1.0


def rehome(target: Partition, model: CoEModel, usage: Mapping[str, float],
           down: Collection[int], weight: Callable[[str], float] | None = None) -> Partition:
    """`target` with the experts of the replicas in `down` re-homed to the others, moving
    as few experts as possible (`repartition` over the replicas that are up); the replicas
    that are down own nothing. Copies are not carried over (as `repartition`)."""
    up = [r for r in range(target.num_replicas) if r not in down]
    if not up:
        raise ValueError("every replica is down: nothing to re-home the experts to")
    if len(up) == target.num_replicas:
        return target
    compact = {r: i for i, r in enumerate(up)}
    # In the compact view the replicas that are down are one replica past the last, which
    # `repartition` drops: their families are placed afresh, the others keep their owner.
    previous = Partition(len(up) + 1, {e: compact.get(r, len(up)) for e, r in target.owner.items()})
    placed = repartition(previous, model, usage, weight, num_replicas=len(up))
    return Partition(target.num_replicas, {e: up[r] for e, r in placed.owner.items()})


def num_moved(old: Partition, new: Partition) -> int:
    """Experts whose owner differs between two partitions of the same model."""
    return sum(new.owner.get(e) != r for e, r in old.owner.items())


def reach_probabilities(model: CoEModel, first: Sequence[str]) -> dict[str, float]:
    """P(a request starting at `first` runs each expert) (an expert reached twice: summed,
    capped at one)."""
    reach: dict[str, float] = {}
    frontier = [(e, 1.0) for e in first]
    while frontier:
        expert, p = frontier.pop()
        reach[expert] = min(1.0, reach.get(expert, 0.0) + p)
        probs = model.label_probs.get(expert, {})
        for label, targets in model.router.next_table.get(expert, {}).items():
            frontier.extend((t, p * probs.get(label, 0.0)) for t in targets
                            if p * probs.get(label, 0.0) > 1e-6)
        frontier.extend((t, p * share) for t, share in _escalation_shares(model, expert).items()
                        if p * share > 1e-6)
    return reach


def _escalation_shares(model: CoEModel, expert: str) -> dict[str, float]:
    """P(a request at a cascade expert escalates to each target): its unsure share, over
    a value-keyed rule's targets by their usage (the request's value is not known here)."""
    rule = model.router.cascade.get(expert)
    if rule is None:
        return {}
    unsure = model.label_probs.get(expert, {}).get(LOW_CONFIDENCE, 0.0)
    if not rule.by_value:
        return dict.fromkeys(rule.escalate, unsure)
    targets = sorted(rule.all_targets)
    total = sum(model.usage.get(t, 0.0) for t in targets)
    return {t: unsure * (model.usage.get(t, 0.0) / total if total > 0 else 1 / len(targets))
            for t in targets}


def replica_traffic(model: CoEModel, partition: Partition,
                    usage: Mapping[str, float] | None = None) -> list[dict[str, float]]:
    """traffic[r][expert]: P(a request visits `expert` on replica r), when each request
    runs whole on a holder of its first expert (split evenly among the holders)."""
    usage = model.usage if usage is None else usage
    graph = _Graph(model, usage, lambda e: 0.0)
    holders = {root: partition.holders_of(root) for root in graph.roots}
    return _traffic(graph, holders, partition.num_replicas)


def replica_usage(model: CoEModel, partition: Partition, replica: int,
                  usage: Mapping[str, float] | None = None,
                  foreign_scale: float = FOREIGN_USAGE_SCALE) -> dict[str, float]:
    """A usage prior for one replica's engine: P(a request routed to it visits each
    expert), and every expert it sees no traffic for at `foreign_scale` of its model
    usage (small but not zero, so eviction still orders them)."""
    usage = model.usage if usage is None else usage
    mine = replica_traffic(model, partition, usage)[replica]
    total = sum(p for e, p in mine.items() if not model.predecessors(e))
    return {e: (mine[e] / total if mine.get(e, 0.0) > 0 and total > 0
                else usage.get(e, 0.0) * foreign_scale) for e in model.experts}


def owned_usage(prior: Mapping[str, float], owned: Collection[str]) -> dict[str, float]:
    """A replica's usage prior when it runs only what it owns: those experts as they
    are, the others scaled down by FOREIGN_USAGE_SCALE."""
    return {e: p if e in owned else p * FOREIGN_USAGE_SCALE for e, p in prior.items()}


def _traffic(graph: _Graph, holders: Mapping[str, Collection[int]],
             num_replicas: int) -> list[dict[str, float]]:
    """Per replica, each expert's traffic: its roots' usage split among their holders,
    carried down the graph by label probability (a replica runs whole requests)."""
    traffic: list[dict[str, float]] = [{} for _ in range(num_replicas)]
    for root, rs in holders.items():
        for r in rs:
            traffic[r][root] = graph.usage[root] / len(rs)
    for expert in _topological(graph, graph.experts):
        base = graph.usage[expert]
        for here in traffic:
            if here.get(expert, 0.0) <= 0 or base <= 0:
                continue
            for child, flow in graph.children[expert].items():
                here[child] = here.get(child, 0.0) + here[expert] * flow / base
    return traffic


def _replicate_subsequent(graph: _Graph, owner: Mapping[str, int],
                          root_holders: Mapping[str, set[int]], num_replicas: int,
                          budget_bytes: int | None) -> dict[str, set[int]]:
    """Copies of subsequent experts: on each replica sending one at least 1/N of its
    traffic, when it fits among that replica's hottest experts within the budget."""
    holders = {root: root_holders.get(root, {r}) for root, r in owner.items()
               if root in graph.roots}
    traffic = _traffic(graph, holders, num_replicas)
    copies: dict[str, set[int]] = {}
    for r in range(num_replicas):
        used = 0.0
        for expert in sorted(traffic[r], key=lambda e: (-traffic[r][e], e)):
            used += graph.num_bytes[expert]
            if budget_bytes is not None and used > budget_bytes:
                break
            total = sum(t.get(expert, 0.0) for t in traffic)
            if (expert not in graph.roots and owner[expert] != r
                    and traffic[r][expert] >= total / num_replicas - 1e-12):
                copies.setdefault(expert, {owner[expert]}).add(r)
    return copies


def _copies(family: _Family, loads: _Loads, max_copies: int) -> list[_Family]:
    """A family carrying more than an even share of the work (within the tolerance) split
    into that many copies, up to `max_copies`, each with its part of the work and all of
    the bytes (every holder needs the weights)."""
    share = family.work / loads._work_unit / (1 + BALANCE_TOLERANCE)
    k = max(1, min(max_copies, len(loads.work), math.ceil(share - 1e-9)))
    if k == 1:
        return [family]
    reach = MappingProxyType({c: f / k for c, f in family.reach.items()})
    return [_Family(family.root, family.work / k, family.num_bytes, reach)] * k


def _place_families(fresh: Sequence[_Family], placed: Sequence[_Family],
                    owner: dict[str, int], loads: _Loads, max_copies: int = 1
                    ) -> dict[str, set[int]]:
    """Largest first: among the replicas that stay within the tolerance, the one already
    holding most of this family's subsequent traffic (so families sharing a detector meet
    there), ties to the least loaded; when none has room, the least loaded. A copy goes to
    a replica not holding the family yet. Returns each fresh root's holders."""
    num_replicas = len(loads.work)
    # nearby[r][child]: the fraction of child's traffic that families on r already send.
    nearby: list[dict[str, float]] = [{} for _ in range(num_replicas)]
    for family in placed:
        for child, fraction in family.reach.items():
            near = nearby[owner[family.root]]
            near[child] = near.get(child, 0.0) + fraction
    units = [c for f in fresh for c in _copies(f, loads, max_copies)]
    holders: dict[str, set[int]] = {}
    for family in sorted(units, key=lambda f: (-loads.size(f.work, f.num_bytes), f.root)):
        free = [r for r in range(num_replicas) if r not in holders.get(family.root, ())]
        cap = max(1 + BALANCE_TOLERANCE,
                  min(loads.cost(r, family.work, family.num_bytes) for r in free))

        def score(r: int, f: _Family = family) -> tuple[float, float, int]:
            affinity = sum(frac * nearby[r].get(c, 0.0) for c, frac in f.reach.items())
            return (-affinity, loads.cost(r, f.work, f.num_bytes), r)

        roomy = [r for r in free if loads.cost(r, family.work, family.num_bytes) <= cap + 1e-12]
        replica = min(roomy, key=score)
        owner.setdefault(family.root, replica)
        holders.setdefault(family.root, set()).add(replica)
        loads.add(replica, family.work, family.num_bytes)
        for child, fraction in family.reach.items():
            nearby[replica][child] = nearby[replica].get(child, 0.0) + fraction
    return holders


def _keep_families(families: Sequence[_Family], previous: Partition | None,
                   num_replicas: int, owner: dict[str, int], loads: _Loads) -> set[str]:
    """Families whose old owner still exists keep it; returns their roots."""
    kept: set[str] = set()
    if previous is None:
        return kept
    for family in families:
        replica = previous.owner.get(family.root)
        if replica is not None and replica < num_replicas:
            owner[family.root] = replica
            loads.add(replica, family.work, family.num_bytes)
            kept.add(family.root)
    return kept


def _rebalance(families: Sequence[_Family], owner: dict[str, int], loads: _Loads) -> None:
    """Move one family at a time from the most to the least loaded replica while the most
    loaded is past the tolerance and the move lowers the pair's maximum."""
    by_root = {f.root: f for f in families}
    for _ in range(len(families)):
        replicas = range(len(loads.work))
        high = max(replicas, key=lambda r: (loads.cost(r), -r))
        low = min(replicas, key=lambda r: (loads.cost(r), r))
        if loads.cost(high) <= 1 + BALANCE_TOLERANCE or high == low:
            return
        best, best_cost = None, loads.cost(high)
        for root in sorted(r for r, o in owner.items() if o == high and r in by_root):
            f = by_root[root]
            after = max(loads.cost(high, -f.work, -f.num_bytes), loads.cost(low, f.work, f.num_bytes))
            if after < best_cost - 1e-12:
                best, best_cost = f, after
        if best is None:
            return
        owner[best.root] = low
        loads.add(high, -best.work, -best.num_bytes)
        loads.add(low, best.work, best.num_bytes)


def _place_subsequent(graph: _Graph, owner: dict[str, int], loads: _Loads,
                      previous: Partition | None) -> None:
    """Each routed-to expert, largest first, where most of its parents' traffic is, unless
    that replica's bytes would pass the tolerance; on a repartition those whose old owner
    still sends them traffic and has room stay there first (`_keep_subsequent`), so one
    that moves does not push the others off their owners."""
    # Bytes so far counted families' attributed shares; from here on, real ownership.
    loads.bytes = [0.0] * len(loads.bytes)
    for root, replica in owner.items():
        loads.bytes[replica] += graph.num_bytes[root]
    pending = sorted((e for e in graph.experts if e not in owner),
                     key=lambda e: (-graph.num_bytes[e], e))
    # Parents first, so a chain's middle expert has an owner before its children look.
    ordered = _topological(graph, pending)
    if previous is not None:
        _keep_subsequent(graph, ordered, owner, loads, previous)
    for expert in ordered:
        if expert in owner:
            continue
        traffic = _parent_traffic(graph, owner, expert, len(loads.bytes))
        size = graph.num_bytes[expert]
        order = sorted(range(len(traffic)), key=lambda r: (-traffic[r], loads.bytes_share(r), r))
        fits = [r for r in order if loads.bytes_share(r, size) <= 1 + BALANCE_TOLERANCE]
        replica = fits[0] if fits else min(order, key=lambda r: (loads.bytes_share(r), r))
        owner[expert] = replica
        loads.bytes[replica] += size


def _keep_subsequent(graph: _Graph, ordered: Sequence[str], owner: dict[str, int],
                     loads: _Loads, previous: Partition) -> None:
    """Routed-to experts whose parents are placed, whose old owner still exists, sends
    them traffic and has room: they stay."""
    for expert in ordered:
        old = previous.owner.get(expert)
        if old is None or old >= len(loads.bytes):
            continue
        if any(parent not in owner for parent in graph.parents[expert]):
            continue  # a parent is placed in the second pass: decide this one there too
        traffic = _parent_traffic(graph, owner, expert, len(loads.bytes))
        size = graph.num_bytes[expert]
        if traffic[old] > 0 and loads.bytes_share(old, size) <= 1 + BALANCE_TOLERANCE:
            owner[expert] = old
            loads.bytes[old] += size


def _parent_traffic(graph: _Graph, owner: Mapping[str, int], expert: str,
                    num_replicas: int) -> list[float]:
    """Per replica, the traffic its placed parents send `expert`."""
    traffic = [0.0] * num_replicas
    for parent, flow in graph.parents[expert].items():
        traffic[owner[parent]] += flow + 1e-12  # an unused parent still counts a little
    return traffic


def _topological(graph: _Graph, pending: Sequence[str]) -> list[str]:
    """`pending` reordered so every expert comes after its pending parents (stable)."""
    waiting = set(pending)
    done: list[str] = []
    while waiting:
        for expert in pending:
            if expert in waiting and not (set(graph.parents[expert]) & waiting):
                waiting.discard(expert)
                done.append(expert)
    return done
