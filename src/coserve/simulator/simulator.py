"""The discrete-event simulator: the engine's request path on a virtual clock.

It drives the *same* objects the engine does (the policy set's assignment, arrangement,
eviction and placement policies, the `Scheduler` through its non-blocking
`take_batch`, the manager's `Residency` for every room decision, the `UsageTracker`, the
`StatsRecorder`) and replaces only what takes time: a batch costs the plan's measured
curve times the slowdown of the executor layout, a load costs the plan's storage read
(one serial device, as the paced storage is) plus its fixed part, each task adds the
engine's measured handling time, a backlog is queued at the measured submit cost, and a
routing decision draws the expert's label. No tensors, no threads: a 2,500-image trace
simulates in seconds, deterministically.

What it does not model: failures and quarantine, and contention beyond what the
slowdown and handling calibrations capture."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from coserve.engine.config import EngineConfig, executor_layout, resolve_budget, split_budget
from coserve.engine.results import FailureKind, Request, Result, Step
from coserve.engine.stats import EngineStats, StatsRecorder
from coserve.errors import ConfigError, RequestError
from coserve.loader.storage import storage_profile
from coserve.manager.pool import Resident
from coserve.manager.residency import Residency
from coserve.manager.usage import UsageTracker
from coserve.plan import CostModel, executors_per_kind, processor_kind
from coserve.planfile import Plan
from coserve.policies import policy_set
from coserve.repository import CoEModel, Stage
from coserve.scheduler.queues import Batch, Scheduler
from coserve.scheduler.task import Task
from coserve.simulator.labels import LabelSource, SampledLabels

LOADED: dict[str, Any] = {}  # a simulated resident expert's "tensors": present, empty


@dataclass(eq=False)
class _InFlight:
    request: Request
    submitted_s: float
    pending: int
    steps: list[Step] = field(default_factory=list)


class _VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Simulator:
    """One simulated run per `run` call (fresh policies, pools and queues each time)."""

    def __init__(
        self,
        model: CoEModel,
        config: EngineConfig,
        costs: CostModel | None = None,
        usage: Mapping[str, float] | None = None,
        labels: LabelSource | None = None,
        plan: Plan | None = None,
        scheduling_costs: CostModel | None = None,
    ) -> None:
        """As the engine takes them: `costs` (else the plan's for this executor layout and
        storage profile), `usage` (else the plan's, else the repository's prior).
        `labels`: where routing decisions come from (else drawn from the plan's
        P(label | expert), else the repository's). `scheduling_costs`: what the scheduler
        predicts with, when the engine being mirrored used another cost model than the
        one that times the simulation (e.g. its start-up measurement)."""
        if costs is None and plan is None:
            raise ConfigError("the simulator needs a plan (coserve profile) or a cost model")
        self.model = model
        self.config = config
        self.plan = plan
        self._costs = costs
        self._scheduling_costs = scheduling_costs
        if usage is None and plan is not None:
            usage = plan.usage
        self.prior_usage = dict(usage) if usage is not None else dict(model.usage)
        label_probs = plan.label_probs if plan is not None and plan.label_probs else model.label_probs
        self.labels = labels or SampledLabels(label_probs)

    # -- the run -------------------------------------------------------------------------
    def run(self, requests: Sequence[Request], backlog: bool = False) -> tuple[EngineStats, list[Result]]:
        """Simulate the trace: with `backlog` every request is queued first, at the plan's
        submit cost each, before any executor starts (as the engine holds a backlog);
        otherwise each arrives at its `arrival_s`."""
        self._setup()
        start_s = 0.0
        if backlog:  # queued one by one while the executors are held, as the engine does
            for request in requests:
                self._submit(request)
                self._clock.now += self.costs.submit_s
            start_s = self._clock.now
            self._stats.note("backlog_submit_s", start_s)
        else:
            for request in requests:
                self._at(request.arrival_s, self._submit, request)
        for i in range(len(self._processors)):
            self._at(start_s, self._next_batch, i)
        while self._events:
            t, _, action, args = heapq.heappop(self._events)
            self._clock.now = t
            action(*args)
        ordered = [self._results[r.request_id] for r in requests if r.request_id in self._results]
        return self._snapshot(), ordered

    def _setup(self) -> None:
        self._clock = _VirtualClock()
        self.policies = policy_set(self.config.policy, self.config.max_defer_s)
        specs = executor_layout(self.config.executors, self.policies)
        self._processors = [s.processor for s in specs]
        self.costs = self._costs or self.plan.cost_model(  # type: ignore[union-attr]
            self.model, storage_profile(self.config.storage).read_bytes_per_s,
            executors_per_kind(self._processors))
        missing = set(self.model.experts) - set(self.costs.arch_of)
        if missing:
            raise ConfigError(f"the cost model has no entry for experts {sorted(missing)[:5]}")
        self.budget_bytes = resolve_budget(self.model, self.config, self.policies, len(specs))
        budgets = split_budget(self.budget_bytes, len(specs))
        experts = self.model.experts.values()
        expert_bytes = {e.name: e.num_bytes for e in experts}
        self._usage = UsageTracker(self.prior_usage, self.config.usage_blend,
                                   self.config.usage_min_samples)
        self._residency = Residency(
            budgets, expert_bytes,
            frozenset(e.name for e in experts if e.stage is Stage.SUBSEQUENT),
            self.model.predecessors, self.policies.evict, self._usage, self._clock,
            self.config.host_cache_bytes,
        )
        self._scheduler = Scheduler(
            self._processors, self.policies.assign, self.policies.arrange,
            self._scheduling_costs or self.costs,
            self.config.activation_bytes, self._residency.resident, self._residency.in_host,
            self._clock,
        )
        self._stats = StatsRecorder(len(specs))
        self._events: list[tuple[float, int, Callable[..., None], tuple]] = []
        self._seq = itertools.count()
        self._idle = [False] * len(specs)
        self._loading: dict[tuple[int, str], float] = {}  # (pool, expert) -> ready at
        self._storage_free_s = 0.0
        self._bytes_read = 0
        self._inflight: dict[str, _InFlight] = {}
        self._results: dict[str, Result] = {}
        self._task_ids = itertools.count()
        self._place(budgets, expert_bytes)
        self._stats.reset(0.0)

    def _place(self, budgets: list[int | None], expert_bytes: Mapping[str, int]) -> None:
        """Initial placement happens before the measured window, as in the engine."""
        total = self.model.total_expert_bytes
        placement = self.policies.place.place(
            self.prior_usage, expert_bytes, [b if b is not None else total for b in budgets])
        for executor, experts in enumerate(placement):
            for expert in experts:
                if self._residency.reserve(executor, expert, frozenset()):
                    self._residency.pools[executor].entries[expert].tensors = LOADED

    def _at(self, t: float, action: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._events, (t, next(self._seq), action, args))

    # -- submit: route, assign, arrange --------------------------------------------------
    def _submit(self, request: Request) -> None:
        now = self._clock()
        try:
            first = self.model.router.first(request.fields)
        except RequestError as exc:
            self._results[request.request_id] = Result(
                request.request_id, False, (), now, now, str(exc), dict(request.fields),
                FailureKind.REJECTED)
            return
        state = _InFlight(request, now, pending=len(first))
        self._inflight[request.request_id] = state
        self._stats.request_submitted()
        for expert in first:
            self._enqueue(state, expert)

    def _enqueue(self, state: _InFlight, expert: str) -> None:
        now = self._clock()
        task = Task(next(self._task_ids), state.request.request_id, expert, now)
        i = self._scheduler.enqueue(task)
        self._stats.queue_depth(i, self._scheduler.depth(i))
        if self._idle[i]:
            self._idle[i] = False
            self._at(now, self._next_batch, i)

    # -- the executor loop, as events ----------------------------------------------------
    def _next_batch(self, i: int) -> None:
        batch = self._scheduler.take_batch(i)
        if batch is None:
            self._idle[i] = True
            return
        entry = self._residency.pools[i].entries.get(batch.expert)
        self._stats.pool_lookup(hit=entry is not None and not entry.loading)
        self._acquire(i, batch)

    def _acquire(self, i: int, batch: Batch) -> None:
        """Ensure resident: run on a loaded entry, load into reserved room, or wait for
        the load that holds the room (a prefetch) and try again."""
        pool = self._residency.pools[i]
        entry = pool.entries.get(batch.expert)
        if entry is not None and not entry.loading:
            self._execute(i, batch, self._residency.use(entry))
            return
        if entry is None and self._residency.reserve(i, batch.expert, frozenset()):
            self._at(self._load(i, batch.expert), self._acquire, i, batch)
            return
        waits = [t for (pool_i, _), t in self._loading.items() if pool_i == i]
        if not waits:
            raise ConfigError(f"executor {i} cannot make room for {batch.expert!r}: its pool "
                              f"budget is smaller than the expert")
        self._at(min(waits), self._acquire, i, batch)

    def _execute(self, i: int, batch: Batch, entry: Resident) -> None:
        upcoming = self._scheduler.next_expert(i)
        if upcoming not in (None, batch.expert):
            self._prefetch(i, upcoming, protected=frozenset({batch.expert}))
        exec_s = self.costs.exec_s(batch.expert, self._processors[i], len(batch.tasks))
        self._at(self._clock() + exec_s, self._batch_done, i, batch, entry, exec_s)

    def _batch_done(self, i: int, batch: Batch, entry: Resident, exec_s: float) -> None:
        """Route the outputs; the executor is free once the per-task handling is paid."""
        self._residency.release(entry)
        self._stats.batch(i, len(batch.tasks), exec_s)
        for task in batch.tasks:
            self._route_again(batch, task, exec_s)
        free_s = self._clock() + self.costs.task_overhead_s * len(batch.tasks)
        self._stats.handling(i, free_s - batch.started_s - exec_s)
        self._at(free_s, self._free, i)

    def _free(self, i: int) -> None:
        self._scheduler.batch_done(i)
        self._next_batch(i)

    # -- loads ---------------------------------------------------------------------------
    def _prefetch(self, i: int, expert: str, protected: frozenset[str]) -> None:
        if expert in self._residency.pools[i].entries:
            return
        if self._residency.reserve(i, expert, protected):
            self._load(i, expert)

    def _load(self, i: int, expert: str) -> float:
        """Start filling a reserved entry; returns when it is ready."""
        now = self._clock()
        processor = self._processors[i]
        size = self._residency.expert_bytes[expert]
        if processor_kind(processor) == "cpu":
            ready = self._storage_read(expert)
            self._stats.switch(i, "storage->cpu", size, ready - now)
        else:
            host_ready = self._host_copy(expert)
            ready = host_ready + size / self.costs.host_to_device_bytes_per_s
            self._stats.switch(i, f"host->{processor}", size, ready - host_ready)
        self._loading[(i, expert)] = ready
        self._at(ready, self._loaded, i, expert)
        return ready

    def _loaded(self, i: int, expert: str) -> None:
        del self._loading[(i, expert)]
        self._residency.pools[i].entries[expert].tensors = LOADED

    def _storage_read(self, expert: str) -> float:
        """One storage device, reads in turn (as the paced storage serialises them); the
        fixed part (buffer set-up, header parse) runs beside the next read."""
        size = self._residency.expert_bytes[expert]
        start = max(self._clock(), self._storage_free_s)
        self._storage_free_s = start + size / self.costs.storage_bytes_per_s
        self._bytes_read += size
        return self._storage_free_s + self.costs.storage_fixed_s

    def _host_copy(self, expert: str) -> float:
        """When the host copy of `expert` is ready: now if cached, else after a read
        (kept in the host cache if its budget allows)."""
        if self._residency.in_host(expert):
            return self._clock()
        now = self._clock()
        ready = self._storage_read(expert)
        self._stats.switch(None, "storage->host", self._residency.expert_bytes[expert], ready - now)
        if self._residency.reserve_host(expert):
            self._residency.host.entries[expert].tensors = LOADED
        return ready

    # -- route again ---------------------------------------------------------------------
    def _route_again(self, batch: Batch, task: Task, exec_s: float) -> None:
        state = self._inflight[task.request_id]
        request = state.request
        label = self.labels.label(request, batch.expert)
        following = self.model.router.next(batch.expert, label, request.fields)
        state.steps.append(Step(batch.expert, label, {}, batch.executor, len(batch.tasks),
                                batch.started_s - task.enqueued_s, exec_s))
        state.pending += len(following) - 1
        for expert in following:
            self._enqueue(state, expert)
        if state.pending == 0:
            self._finish(state)

    def _finish(self, state: _InFlight) -> None:
        del self._inflight[state.request.request_id]
        now = self._clock()
        result = Result(state.request.request_id, True, tuple(state.steps), state.submitted_s,
                        now, None, dict(state.request.fields))
        self._usage.observe(result.path)
        self._stats.request_done(result.latency_s, True, now)
        self._results[state.request.request_id] = result

    def _snapshot(self) -> EngineStats:
        stats = self._stats.snapshot(
            self._clock(),
            bytes_read=self._bytes_read,
            policy=self.policies.name,
            budget_bytes=self.budget_bytes,
            total_expert_bytes=self.model.total_expert_bytes,
            storage=self.config.storage,
            cost_source=f"simulated with {self.costs.source}",
        )
        stats.extra["simulated"] = True
        return stats


def simulate(
    model: CoEModel,
    requests: Sequence[Request],
    config: EngineConfig,
    costs: CostModel | None = None,
    backlog: bool = False,
    usage: Mapping[str, float] | None = None,
    labels: LabelSource | None = None,
    plan: Plan | None = None,
    scheduling_costs: CostModel | None = None,
) -> tuple[EngineStats, list[Result]]:
    """One simulated run: what `coserve simulate` does."""
    return Simulator(model, config, costs, usage, labels, plan, scheduling_costs).run(requests, backlog)
