"""Policy sets: coserve and the baselines, each a bundle of small policy objects the
engine and the simulator run unchanged. A baseline is a different bundle, never a branch:
even the executor layout (samba runs one worker per processor) and the budget rule
(all-resident has none) are objects of the bundle."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from coserve.errors import ConfigError
from coserve.executors.spec import ExecutorSpec, auto_threads
from coserve.manager.eviction import (
    EvictionPolicy,
    FifoEviction,
    LruEviction,
    TwoStageEviction,
)
from coserve.manager.placement import PlacementPolicy, ReplicateAll, RoundRobinByUsage
from coserve.scheduler.arrange import ArrangePolicy, FifoArrange, GroupBehindLast, GroupByExpert
from coserve.scheduler.assign import (
    AffinityMinMaxAssign,
    AssignPolicy,
    MinMaxLatencyAssign,
    RoundRobinAssign,
    ShortestQueueAssign,
)
from coserve.scheduler.select import DeadlineAwareSelect, HeadSelect, SelectPolicy, SwitchHold

DEFAULT_MAX_DEFER_S = 5.0  # coserve-paper: how long a task may be delayed by overtaking
DEFAULT_LATENCY_TARGET_S = 5.0  # coserve: when a request should be answered
# coserve serves a group first once less than this share of its latency target is left.
DEADLINE_RISK_SHARE = 0.25
# coserve: a group whose deadline is this many latency targets before the chosen group's
# goes first (the starvation bound; simulated steady state best near 3 on both shapes).
STARVATION_SHARE = 3.0
# coserve: a second copy of an expert on another executor is charged COPY_LOADS loads
# (what its eviction costs later), at most COPY_WAIT_SHARE of the latency target (0.5 s
# by default). Simulated, 20% budget, sata-530, 2 executors, charging 0 / 0.02 / 0.05 /
# 0.1 / 0.2 targets: board A trace 155 / 172 / 175 / 174 / 171 img/s, 288 / 101 / 93 /
# 94 / 99 switches; synth trace 152 / 165 / 173 / 179 / 175, synth backlog 399 / 390 /
# 438 / 513 / 514 img/s; board A backlog 264 -> 275-285 throughout. The load-scaled
# charge (10 loads) keeps copies of cheap experts cheap (tiny CoE at light load).
COPY_LOADS = 10.0
COPY_WAIT_SHARE = 0.1
# coserve, requests streaming in: a group that needs a switch is held (SwitchHold) until
# its tasks' execution pays for the switch, its oldest task has waited HOLD_SHARE of the
# latency target, or its deadline is at risk; not while the queue holds half that much
# work, nor once no request arrived for QUIET_SHARE of the target. Simulated, 20% budget,
# sata-530, 2 executors, without / with the hold: board A at one image per 8 ms 536 / 411
# switches, 9.7 / 8.3 GB, 199 / 5 answers late (p99 13.1 / 4.3 s); per 16 ms 971 / 650
# switches, 20.3 / 14.2 GB, none late; per 4 ms 249 / 223 switches, 4.0 / 3.3 GB, 198.9 /
# 200.8 img/s; the synth trace (overloaded) 180.9 / 178.0 img/s, 231 / 210 switches;
# backlogs unchanged. Holding 0.7 or 0.9 targets cut switches further (369, 359 at 8 ms)
# but answered more late (18, 13); a quiet share of 0.1 held a synth backlog's first
# groups 0.5 s (536 -> 511 img/s), 0.02 does not.
HOLD_SHARE = 0.5
QUIET_SHARE = 0.02


# -- executor layouts ----------------------------------------------------------------------
class ExecutorLayout(Protocol):
    def executors(self, configured: Sequence[ExecutorSpec]) -> tuple[ExecutorSpec, ...]:
        """The executors a policy set runs, given the configured ones."""
        ...


class AsConfigured:
    """Every configured executor runs."""

    def executors(self, configured: Sequence[ExecutorSpec]) -> tuple[ExecutorSpec, ...]:
        return tuple(configured)


class OnePerProcessor:
    """One executor per processor (samba), with all the processor's cores: the same
    thread rule as any single CPU executor."""

    def executors(self, configured: Sequence[ExecutorSpec]) -> tuple[ExecutorSpec, ...]:
        merged: dict[str, ExecutorSpec] = {}
        for spec in configured:
            threads = auto_threads(1) if spec.processor == "cpu" else spec.num_threads
            merged[spec.processor] = replace(spec, num_threads=threads)
        return tuple(merged.values())


# -- budget rules --------------------------------------------------------------------------
class BudgetRule(Protocol):
    def budget_bytes(self, configured_bytes: int | None) -> int | None:
        """The executing pools' total budget (None = unlimited), given the configured one."""
        ...


class ConfiguredBudget:
    def budget_bytes(self, configured_bytes: int | None) -> int | None:
        return configured_bytes


class UnlimitedBudget:
    """all-resident: the ceiling any policy can reach on the same executors."""

    def budget_bytes(self, configured_bytes: int | None) -> int | None:
        return None


@dataclass(frozen=True, kw_only=True)
class PolicySet:
    name: str
    assign: AssignPolicy
    arrange: ArrangePolicy
    select: SelectPolicy
    evict: EvictionPolicy
    place: PlacementPolicy
    layout: ExecutorLayout
    budget: BudgetRule
    # Groups ahead whose experts (when not resident) are loaded while the current one
    # runs. Three ahead evicted too eagerly on the load-bound synth shape (one engine run
    # each, backlog, 20%: 220 img/s and 6.5 GB read with three, 242 and 5.8 GB with one).
    prefetch_groups: int = 1
    # Whether the executors of one CPU share one pool (they read the same RAM): an expert
    # resident once runs on any of them, and an executor with nothing queued takes work
    # from its siblings' queues. Off: each executor has its own half (the paper's pools).
    share_cpu_pool: bool = False


@dataclass(frozen=True)
class Tuning:
    """The settings policies take (from EngineConfig)."""

    max_defer_s: float = DEFAULT_MAX_DEFER_S
    latency_target_s: float = DEFAULT_LATENCY_TARGET_S


def _samba(name: str, tuning: Tuning) -> PolicySet:
    return PolicySet(name=name, assign=ShortestQueueAssign(), arrange=FifoArrange(),
                     select=HeadSelect(), evict=LruEviction(), place=RoundRobinByUsage(),
                     layout=OnePerProcessor(), budget=ConfiguredBudget())


def _samba_fifo(name: str, tuning: Tuning) -> PolicySet:
    return replace(_samba(name, tuning), evict=FifoEviction())


def _samba_parallel(name: str, tuning: Tuning) -> PolicySet:
    return replace(_samba(name, tuning), assign=RoundRobinAssign(), layout=AsConfigured())


def _coserve_paper(name: str, tuning: Tuning) -> PolicySet:
    """The paper's algorithms as published: the head group, the overtaking bound."""
    return PolicySet(name=name, assign=MinMaxLatencyAssign(),
                     arrange=GroupBehindLast(tuning.max_defer_s), select=HeadSelect(),
                     evict=TwoStageEviction(), place=RoundRobinByUsage(), layout=AsConfigured(),
                     budget=ConfiguredBudget())


def _coserve(name: str, tuning: Tuning) -> PolicySet:
    """The best we have: a group per expert, selection by deadline, residency and yield."""
    risk_s = DEADLINE_RISK_SHARE * tuning.latency_target_s
    return replace(_coserve_paper(name, tuning), arrange=GroupByExpert(), share_cpu_pool=True,
                   evict=TwoStageEviction(queued_last=True),
                   assign=AffinityMinMaxAssign(COPY_LOADS, COPY_WAIT_SHARE * tuning.latency_target_s),
                   select=DeadlineAwareSelect(
                       risk_s, STARVATION_SHARE * tuning.latency_target_s,
                       SwitchHold(HOLD_SHARE * tuning.latency_target_s, tuning.latency_target_s,
                                  risk_s, quiet_s=QUIET_SHARE * tuning.latency_target_s)))


def _all_resident(name: str, tuning: Tuning) -> PolicySet:
    return replace(_coserve(name, tuning), place=ReplicateAll(), budget=UnlimitedBudget())


_FACTORIES: dict[str, Callable[[str, Tuning], PolicySet]] = {
    "samba": _samba,
    "samba-fifo": _samba_fifo,
    "samba-parallel": _samba_parallel,
    "coserve-paper": _coserve_paper,
    "coserve": _coserve,
    "all-resident": _all_resident,
}

# Every policy name comes from here; the roles say which one a report compares against.
POLICY_NAMES: tuple[str, ...] = tuple(_FACTORIES)
DEFAULT_POLICY = "coserve"  # the best we have, and the one the planner configures
BASELINE_POLICY = "samba"  # the state of the art before CoServe: ratios are against it
CEILING_POLICY = "all-resident"  # unlimited budget: what any policy could reach


def policy_set(name: str, tuning: Tuning | None = None) -> PolicySet:
    """A fresh policy set by name (policies may hold state, so never share one)."""
    if name not in _FACTORIES:
        raise ConfigError(f"unknown policy {name!r}; choose one of {', '.join(POLICY_NAMES)}")
    return _FACTORIES[name](name, tuning or Tuning())
