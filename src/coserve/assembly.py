"""One builder for the engine's parts, used by the engine and the simulator alike: the
policy set, the executors it runs, the budget and its split, the cost model (given, or
the plan's for this layout and storage), the usage to start from, and the scheduler and
residency built from them. What differs between the two is only what takes time (real
loads and forwards, or the plan's costs on a virtual clock)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from coserve.config import DEFAULT_HOST_CACHE_FRACTION, DEFAULT_HOST_CACHE_RAM_SHARE, EngineConfig
from coserve.errors import ConfigError
from coserve.executors.budgets import (
    DeviceMemory,
    DevicePool,
    TorchDevices,
    budget_for,
    check_fits,
    group_devices,
)
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
    pools: tuple[DevicePool, ...]  # one per device, in order of first executor
    host_cache_bytes: int  # the host-RAM cache in front of GPU pools (0: none)
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
        devices: DeviceMemory | None = None,
    ) -> Assembly:
        """`costs`, else the plan's for this layout and storage, else None. `usage`, else
        the plan's, else the repository's prior. `devices`: what each GPU has (the engine:
        this machine's; None: GPU budgets are taken as given, unchecked, as a simulator of
        another machine does). ConfigError for a budget too small for the layout, a GPU
        budget the device cannot hold, or usage of unknown experts."""
        policies = policy_set(config.policy, Tuning(max_defer_s=config.max_defer_s,
                                                     latency_target_s=config.latency_target_s))
        executors = policies.layout.executors(config.executors)
        if costs is None and plan is not None:
            _check_profiled(plan, executors)
            pace_bytes_per_s = storage_profile(config.storage).read_bytes_per_s
            costs = plan.cost_model(model, pace_bytes_per_s,
                                    executors_per_kind([s.processor for s in executors]))
        if usage is None and plan is not None:
            usage = plan.usage
        pools = tuple(_checked_budget(model, p, policies.share_cpu_pool) for p in _device_pools(
            model, config, executors, policies, devices))
        return cls(model=model, config=config, policies=policies, executors=executors,
                   pools=pools, host_cache_bytes=_host_cache_bytes(model, config, pools, devices),
                   prior_usage=_checked_usage(model, usage), costs=_checked_costs(model, costs))

    # -- what it decided -----------------------------------------------------------------
    @property
    def processors(self) -> list[str]:
        return [s.processor for s in self.executors]

    @property
    def budget_bytes(self) -> int | None:
        """Expert weights all executing pools may hold together; None = unlimited."""
        budgets = [p.budget_bytes for p in self.pools]
        return None if None in budgets else sum(b for b in budgets if b is not None)

    @property
    def pool_budgets(self) -> list[int | None]:
        """The budget of each executor's pool (None = unlimited): its device's whole budget
        where the device's executors share one pool, else its even share of it."""
        shared = {i for group in self.shared_pools for i in group}
        whole = self._per_executor(lambda p: p.budget_bytes)
        share = self._per_executor(lambda p: p.executor_budget_bytes)
        return [whole[i] if i in shared else share[i] for i in range(len(self.executors))]

    @property
    def activation_bytes(self) -> list[int]:
        """Each executor's activation memory (its device's, from the plan or the config)."""
        return self._per_executor(lambda p: p.activation_bytes)

    @property
    def shared_pools(self) -> list[tuple[int, ...]]:
        """Groups of executors that share one pool: a CPU's, when the policy shares it."""
        if not self.policies.share_cpu_pool:
            return []
        return [p.executors for p in self.pools if p.device == "cpu" and len(p.executors) > 1]

    def _per_executor(self, value: Callable[[DevicePool], Any]) -> list[Any]:
        values: list[Any] = [None] * len(self.executors)
        for pool in self.pools:
            for i in pool.executors:
                values[i] = value(pool)
        return values

    def with_costs(self, costs: CostModel) -> Assembly:
        return replace(self, costs=_checked_costs(self.model, costs))

    def initial_placement(self) -> list[list[str]]:
        """The experts each pool holds before the first request."""
        expert_bytes = {e.name: e.num_bytes for e in self.model.experts.values()}
        total = self.model.total_expert_bytes
        budgets = [b if b is not None else total for b in self.pool_budgets]
        owners = list(range(len(budgets)))  # the executor each placed pool is loaded by
        for group in self.shared_pools:  # one pool, placed once, loaded by its first
            for i in group[1:]:
                owners.remove(i)
        placed = self.policies.place.place(self.prior_usage, expert_bytes,
                                           [budgets[i] for i in owners])
        out: list[list[str]] = [[] for _ in budgets]
        for i, experts in zip(owners, placed, strict=True):
            out[i] = experts
        return out

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
            host_cache_bytes=self.host_cache_bytes,
            queued=queued,
            shared=self.shared_pools,
        )
        scheduler = Scheduler(
            processors=self.processors,
            assign=self.policies.assign,
            arrange=self.policies.arrange,
            select=self.policies.select,
            costs=scheduling_costs or self.costs,
            activation_bytes=self.activation_bytes,
            resident_of=residency.resident,
            in_host=residency.in_host,
            clock=clock,
            predecessors=self.model.predecessors,
            siblings=residency.sharing,
        )
        residency.watch(scheduler.residency_changed)
        return Parts(usage, residency, scheduler)


def _device_pools(model: CoEModel, config: EngineConfig, executors: Sequence[ExecutorSpec],
                  policies: PolicySet, devices: DeviceMemory | None) -> list[DevicePool]:
    """Each device's pool: its own budget (bytes, or a fraction of its memory), else the
    config's; the policy's budget rule applies to every device alike (all-resident:
    unlimited). GPU pools are checked against the device when `devices` is given."""
    total = model.total_expert_bytes
    pools = []
    for device, indices in group_devices([s.processor for s in executors]).items():
        own = budget_for(device, config.device_budgets)
        budget = config.resolve_budget(total)
        if own is not None and own.budget_bytes is not None:
            budget = own.budget_bytes
        elif own is not None and own.memory_fraction is not None:
            budget = int(own.memory_fraction * _total_memory_bytes(device, devices))
        activation = own.activation_bytes if own and own.activation_bytes else config.activation_bytes
        pool = DevicePool(device, indices, policies.budget.budget_bytes(budget), activation)
        if devices is not None and device != "cpu":
            check_fits(pool, devices, total)
        pools.append(pool)
    return pools


def _check_profiled(plan: Plan, executors: Sequence[ExecutorSpec]) -> None:
    """A plan's costs for a processor kind it never profiled would be made-up defaults."""
    missing = sorted(s.processor for s in executors if s.processor != "cpu")
    if missing and "cuda" not in plan.processors:
        raise ConfigError(f"the plan has no cuda profile for the executors on {missing[0]}: "
                          f"profile on a machine with the GPU (coserve profile) or use cpu "
                          f"executors")


def _total_memory_bytes(device: str, devices: DeviceMemory | None) -> int:
    """A GPU's memory; without `devices` (a simulator), this machine's GPU of that name."""
    if devices is not None:
        return devices.memory_bytes(device)[1]
    try:
        return TorchDevices().memory_bytes(device)[1]
    except ConfigError:
        raise ConfigError(f"the {device} budget is a fraction of its memory, which this machine "
                          f"cannot tell (it has no such GPU): give it in bytes to simulate "
                          f"another machine") from None


def _host_cache_bytes(model: CoEModel, config: EngineConfig, pools: Sequence[DevicePool],
                      devices: DeviceMemory | None) -> int:
    """The configured host cache, else none without a GPU pool, else the default share
    of expert bytes, at most its share of the host's RAM when that is known."""
    if config.host_cache_bytes is not None:
        return config.host_cache_bytes
    if all(p.device == "cpu" for p in pools):
        return 0
    size = int(DEFAULT_HOST_CACHE_FRACTION * model.total_expert_bytes)
    host = devices.host_memory_bytes() if devices is not None else None
    return min(size, int(DEFAULT_HOST_CACHE_RAM_SHARE * host)) if host else size


def _checked_budget(model: CoEModel, pool: DevicePool, share_cpu_pool: bool) -> DevicePool:
    """ConfigError, with the minimum, when a pool could not hold the largest expert (each
    executor's share of it, unless the CPU's executors share one pool)."""
    if pool.budget_bytes is None:
        return pool
    total = model.total_expert_bytes
    largest = max(e.num_bytes for e in model.experts.values())
    num_executors = 1 if share_cpu_pool and pool.device == "cpu" else len(pool.executors)
    minimum = largest * num_executors
    if pool.budget_bytes < minimum:
        where = "" if pool.device == "cpu" else f"{pool.device}: "
        raise ConfigError(
            f"{where}budget of {pool.budget_bytes} bytes is too small for {num_executors} "
            f"executor(s): each pool must hold the largest expert ({largest} bytes); "
            f"give at least {minimum} bytes ({minimum / total:.1%} of all experts) "
            f"or fewer executors"
        )
    return pool


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
