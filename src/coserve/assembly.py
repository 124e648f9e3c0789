"""One builder for the engine's parts, used by the engine and the simulator alike: the
policy set, the executors it runs, the budget and its split, the cost model (given, or
the plan's for this layout and storage), the usage to start from, and the scheduler and
residency built from them. What differs between the two is only what takes time (real
loads and forwards, or the plan's costs on a virtual clock)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from coserve.config import EngineConfig
from coserve.errors import ConfigError
from coserve.executors.spec import ExecutorSpec
from coserve.loader.storage import storage_profile
from coserve.manager.residency import Residency
from coserve.manager.usage import UsageTracker
from coserve.plan import CostModel, executors_per_kind
from coserve.planfile import Plan
from coserve.policies import PolicySet, Tuning, policy_set
from coserve.scheduler.queues import Scheduler

if TYPE_CHECKING:  # the repository brings torch; the simulator's parts need none
    from coserve.repository import CoEModel


@dataclass(frozen=True)
class Parts:
    """The runtime objects one run shares between its scheduler and its expert manager."""

    usage: UsageTracker
    residency: Residency
    scheduler: Scheduler


@dataclass(frozen=True, kw_only=True)
class Assembly:
    """What a configuration decides before anything runs. Build one per run: a policy
    set may hold state, so two runs never share one."""

    model: CoEModel
    config: EngineConfig
    policies: PolicySet
    executors: tuple[ExecutorSpec, ...]
    budget_bytes: int | None  # all executing pools together; None = unlimited
    prior_usage: Mapping[str, float]
    costs: CostModel | None  # None until measured (the engine measures at start)

    @classmethod
    def of(
        cls,
        model: CoEModel,
        config: EngineConfig,
        *,
        plan: Plan | None = None,
        costs: CostModel | None = None,
        usage: Mapping[str, float] | None = None,
    ) -> Assembly:
        """`costs`, else the plan's for this layout and storage, else None. `usage`, else
        the plan's, else the repository's prior. ConfigError for a budget too small for
        the layout or usage of unknown experts."""
        policies = policy_set(config.policy, Tuning(max_defer_s=config.max_defer_s,
                                                     latency_target_s=config.latency_target_s))
        executors = policies.layout.executors(config.executors)
        if costs is None and plan is not None:
            pace_bytes_per_s = storage_profile(config.storage).read_bytes_per_s
            costs = plan.cost_model(model, pace_bytes_per_s,
                                    executors_per_kind([s.processor for s in executors]))
        if usage is None and plan is not None:
            usage = plan.usage
        budget = policies.budget.budget_bytes(config.resolve_budget(model.total_expert_bytes))
        return cls(model=model, config=config, policies=policies, executors=executors,
                   budget_bytes=_checked_budget(model, budget, len(executors)),
                   prior_usage=_checked_usage(model, usage), costs=_checked_costs(model, costs))

    # -- what it decided -----------------------------------------------------------------
    @property
    def processors(self) -> list[str]:
        return [s.processor for s in self.executors]

    @property
    def pool_budgets(self) -> list[int | None]:
        """Each executor's pool budget: the total split evenly (None = unlimited)."""
        if self.budget_bytes is None:
            return [None] * len(self.executors)
        return [self.budget_bytes // len(self.executors)] * len(self.executors)

    def with_costs(self, costs: CostModel) -> Assembly:
        return replace(self, costs=_checked_costs(self.model, costs))

    def initial_placement(self) -> list[list[str]]:
        """The experts each pool holds before the first request."""
        expert_bytes = {e.name: e.num_bytes for e in self.model.experts.values()}
        total = self.model.total_expert_bytes
        return self.policies.place.place(
            self.prior_usage, expert_bytes, [b if b is not None else total for b in self.pool_budgets])

    # -- what it builds ------------------------------------------------------------------
    def usage_tracker(self) -> UsageTracker:
        return UsageTracker(self.prior_usage, self.config.usage_blend, self.config.usage_min_samples)

    def build(
        self,
        *,
        clock: Callable[[], float],
        usage: UsageTracker,
        scheduling_costs: CostModel | None = None,
    ) -> Parts:
        """The residency and the scheduler for one run. `scheduling_costs`: what the
        scheduler predicts with, when not this assembly's costs (a simulated twin of an
        engine that measured its own)."""
        assert self.costs is not None, "measure or give the costs before building"
        experts = self.model.experts.values()
        scheduler: Scheduler | None = None  # built below: it reads the residency's pools

        def queued() -> Set[str]:
            return scheduler.queued_experts() if scheduler is not None else frozenset()

        residency = Residency(
            budgets=self.pool_budgets,
            expert_bytes={e.name: e.num_bytes for e in experts},
            subsequent=self.model.subsequent_experts,
            predecessors=self.model.predecessors,
            evict=self.policies.evict,
            usage=usage,
            clock=clock,
            host_cache_bytes=self.config.host_cache_bytes,
            queued=queued,
        )
        scheduler = Scheduler(
            processors=self.processors,
            assign=self.policies.assign,
            arrange=self.policies.arrange,
            select=self.policies.select,
            costs=scheduling_costs or self.costs,
            activation_bytes=self.config.activation_bytes,
            resident_of=residency.resident,
            in_host=residency.in_host,
            clock=clock,
            predecessors=self.model.predecessors,
        )
        residency.watch(scheduler.residency_changed)
        return Parts(usage, residency, scheduler)


def _checked_budget(model: CoEModel, budget_bytes: int | None, num_executors: int) -> int | None:
    """ConfigError, with the minimum, when a pool could not hold the largest expert."""
    if budget_bytes is None:
        return None
    total = model.total_expert_bytes
    largest = max(e.num_bytes for e in model.experts.values())
    minimum = largest * num_executors
    if budget_bytes < minimum:
        raise ConfigError(
            f"budget of {budget_bytes} bytes is too small for {num_executors} "
            f"executor(s): each pool must hold the largest expert ({largest} bytes); "
            f"give at least {minimum} bytes ({minimum / total:.1%} of all experts) "
            f"or fewer executors"
        )
    return budget_bytes


def _checked_usage(model: CoEModel, usage: Mapping[str, float] | None) -> dict[str, float]:
    prior = dict(usage) if usage is not None else dict(model.usage)
    unknown = set(prior) - set(model.experts)
    if unknown:
        raise ConfigError(f"usage names unknown experts {sorted(unknown)[:5]}; use names from coe.yaml")
    return prior


def _checked_costs(model: CoEModel, costs: CostModel | None) -> CostModel | None:
    missing = set(model.experts) - set(costs.arch_of) if costs is not None else set()
    if missing:
        raise ConfigError(f"the cost model has no entry for experts {sorted(missing)[:5]}; "
                          f"profile this repository again or pass no cost model")
    return costs
