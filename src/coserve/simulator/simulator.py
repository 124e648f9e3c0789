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

A stored precision (`--precision int8`, ...) is read at its variant's size; `auto` is not
modelled (its choice is learned from real load times).

What it does not model: failures and quarantine, the expansion of a stored variant to
fp32 (measured on board A: 0.9 ms per int8 classifier load against its 6.7 ms paced
read), and contention beyond what the slowdown and handling calibrations capture."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from coserve.assembly import Assembly
from coserve.config import EngineConfig
from coserve.errors import ConfigError, RequestError
from coserve.loader.precision import stored_files
from coserve.manager.pool import Resident
from coserve.manager.precision import AUTO
from coserve.plan import CostModel
from coserve.planfile import Plan
from coserve.repository import CoEModel
from coserve.scheduler.queues import Batch
from coserve.scheduler.task import Task
from coserve.simulator.labels import LabelSource, SampledLabels
from coserve.stats import EngineStats, StatsRecorder
from coserve.tracker import InFlight, RequestTracker, rejected
from coserve.types import FULL_PRECISION, STORAGE_TO_HOST, LoadPath, Request, Result

LOADED: dict[str, Any] = {}  # a simulated resident expert's "tensors": present, empty


class EventLoop:
    """A virtual clock and the events due on it: one simulator's, or shared by the
    simulators of a coupled cluster (`coserve.cluster.coupled`)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._events: list[tuple[float, int, Callable[..., None], tuple]] = []
        self._seq = itertools.count()

    def __call__(self) -> float:
        return self.now

    def at(self, t: float, action: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._events, (t, next(self._seq), action, args))

    def pending(self) -> int:
        """Events not run yet."""
        return len(self._events)

    def run(self) -> None:
        """Run events in time order (ties in the order they were booked) until none is left."""
        while self._events:
            t, _, action, args = heapq.heappop(self._events)
            self.now = t
            action(*args)


class Simulator:
    """One simulated run per `run` call (fresh policies, pools and queues each time)."""

    def __init__(
        self,
        model: CoEModel,
        config: EngineConfig,
        *,
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
        if config.precision == AUTO:  # its choice is learned from real load times
            raise ConfigError("the simulator models fixed precisions (fp32, or a stored fp16, "
                              "bf16 or int8 variant), not --precision auto: give one (or run "
                              "the engine)")
        # A variant is read at its own size through the same storage (ConfigError when the
        # repository lacks it); its expansion to fp32 is not modelled.
        self._read_bytes = ({} if config.precision == FULL_PRECISION else
                            {e: size for e, (_, size)
                             in stored_files(model, config.precision)[config.precision].items()})
        self.model = model
        self.config = config
        self.plan = plan
        self._costs = costs
        self._scheduling_costs = scheduling_costs
        self._usage = usage
        label_probs = plan.label_probs if plan is not None and plan.label_probs else model.label_probs
        self.labels = labels or SampledLabels(label_probs)

    # -- the run -------------------------------------------------------------------------
    def run(self, requests: Sequence[Request], backlog: bool = False) -> tuple[EngineStats, list[Result]]:
        """Simulate the trace: with `backlog` every request is queued first, at the plan's
        submit cost each, before any executor starts (as the engine holds a backlog);
        otherwise each arrives at its `arrival_s`."""
        loop = EventLoop()
        self.attach(loop)
        start_s = 0.0
        if backlog:  # queued one by one while the executors are held, as the engine does
            for request in requests:
                self.submit(request)
                loop.now += self.costs.submit_s
            start_s = loop.now
            self._stats.note("backlog_submit_s", start_s)
        else:
            for request in requests:
                loop.at(request.arrival_s, self.submit, request)
        self.start_executors(start_s)
        loop.run()
        ordered = [self._results[r.request_id] for r in requests if r.request_id in self._results]
        return self.snapshot(), ordered

    def attach(self, loop: EventLoop, *, owned: frozenset[str] | None = None,
               deliver: Callable[[Result], None] | None = None) -> None:
        """Fresh parts for one run on `loop`, from the same builder the engine uses.
        `owned`: step handoff, as `Engine.set_owned`. `deliver`: hears each Result."""
        self._clock = loop
        assembly = Assembly.of(self.model, self.config, plan=self.plan, costs=self._costs,
                               usage=self._usage)
        self.costs: CostModel = assembly.costs  # type: ignore[assignment]
        self.policies = assembly.policies
        self.budget_bytes = assembly.budget_bytes
        self._processors = assembly.processors
        self._stats = StatsRecorder(len(self._processors))
        usage = assembly.usage_tracker()
        self._requests = RequestTracker(clock=self._clock, stats=self._stats, usage=usage,
                                        latency_target_s=self.config.latency_target_s)
        self._requests.set_owned(owned)
        parts = assembly.build(clock=self._clock, usage=usage,
                               scheduling_costs=self._scheduling_costs)
        self._residency, self._scheduler = parts.residency, parts.scheduler
        self._on_result = deliver
        self._idle = [False] * len(self._processors)
        self._loading: dict[tuple[int, str], float] = {}  # (pool index, expert) -> ready at
        self._storage_free_s = 0.0
        self._bytes_read = 0
        self._host_fills: dict[str, float] = {}  # expert -> when its host fill lands
        self._results: dict[str, Result] = {}
        self._place(assembly.initial_placement())
        self._requests.open()
        self._stats.reset(self._clock())

    def start_executors(self, at_s: float) -> None:
        """The executors take their first batches at `at_s` (until then tasks queue)."""
        for i in range(len(self._processors)):
            self._at(at_s, self._next_batch, i)

    def holds(self, expert: str) -> bool:
        """Whether an executor's pool holds `expert` now (resident, or loading)."""
        return any(expert in self._residency.resident(i) for i in range(len(self._processors)))

    def queued_experts(self) -> set[str]:
        """Experts with a task queued now."""
        return self._scheduler.queued_experts()

    def set_queued_elsewhere(self, experts: frozenset[str]) -> None:
        """As `Scheduler.set_queued_elsewhere` (a coupled cluster's status poll)."""
        self._scheduler.set_queued_elsewhere(experts)

    def backlog_s(self) -> float:
        """Executor seconds of work queued now, over all executors (what a cluster's
        router compares replicas by)."""
        return sum(self._scheduler.backlog_s(i) for i in range(len(self._processors)))

    def _place(self, placement: list[list[str]]) -> None:
        """Initial placement happens before the measured window, as in the engine."""
        for executor, experts in enumerate(placement):
            for expert in experts:
                if self._residency.reserve(executor, expert, frozenset()):
                    self._residency.pools[executor].entries[expert].tensors = LOADED

    def _at(self, t: float, action: Callable[..., None], *args: Any) -> None:
        self._clock.at(t, action, *args)

    # -- submit: route, assign, arrange --------------------------------------------------
    def submit(self, request: Request) -> None:
        """Admit `request` now (a rejected one is answered at once)."""
        try:
            first = self.model.router.entry(request.fields, request.start)
        except RequestError as exc:
            self._deliver(rejected(request, str(exc), self._clock()))
            return
        state = self._requests.admit(request, first, self._deliver)
        for expert in first:
            self._enqueue(state, expert)

    def _deliver(self, result: Result) -> None:
        self._results[result.request_id] = result
        if self._on_result is not None:
            self._on_result(result)

    def _enqueue(self, state: InFlight, expert: str) -> None:
        now = self._clock()
        i = self._scheduler.enqueue(state.task(expert, now))
        self._stats.queue_depth(i, self._scheduler.depth(i))
        for j in self._scheduler.wakes(i):
            if self._idle[j]:
                self._idle[j] = False
                self._at(now, self._next_batch, j)

    # -- the executor loop, as events ----------------------------------------------------
    def _next_batch(self, i: int) -> None:
        batch = self._scheduler.take_batch(i)
        if batch is None:
            self._idle[i] = True
            wake_s = self._scheduler.wake_s(i)  # a group held back ripens then
            if wake_s is not None:
                self._at(max(wake_s, self._clock.now + 1e-9), self._wake, i)
            return
        entry = self._residency.pools[i].entries.get(batch.expert)
        self._stats.pool_lookup(hit=entry is not None and not entry.loading)
        self._acquire(i, batch)

    def _wake(self, i: int) -> None:
        """A held group's time came; an executor a task woke meanwhile is busy already."""
        if self._idle[i]:
            self._idle[i] = False
            self._next_batch(i)

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
        here = self._residency.pool_index(i)
        waits = [t for (pool_i, _), t in self._loading.items() if pool_i == here]
        if not waits:
            raise ConfigError(f"executor {i} cannot make room for {batch.expert!r}: its pool "
                              f"budget is smaller than the expert")
        self._at(min(waits), self._acquire, i, batch)

    def _execute(self, i: int, batch: Batch, entry: Resident) -> None:
        for upcoming, protected in self._scheduler.prefetch_order(
                i, batch.expert, self.policies.prefetch_groups,
                storage_idle=self._storage_free_s <= self._clock()):
            self._prefetch(i, upcoming, protected=protected)
        exec_s = self.costs.exec_s(batch.expert, self._processors[i], len(batch.tasks))
        self._at(self._clock() + exec_s, self._batch_done, i, batch, entry, exec_s)

    def _batch_done(self, i: int, batch: Batch, entry: Resident, exec_s: float) -> None:
        """Route the outputs; the executor is free once the per-task handling is paid."""
        self._residency.release(entry)
        self._stats.batch(i, len(batch.tasks), exec_s, self.config.precision)
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
        size = self._residency.expert_bytes[expert]
        path = LoadPath.to_executor(self._processors[i])
        if path.source == "storage":  # a CPU: the host pool is the executing tier
            ready = self._storage_read(expert)
            self._stats.switch(i, path, size, ready - now)
        else:
            host_ready = self._host_copy(expert)
            ready = host_ready + size / self.costs.host_to_device_bytes_per_s
            self._stats.switch(i, path, size, ready - host_ready)
        self._loading[(self._residency.pool_index(i), expert)] = ready
        self._at(ready, self._loaded, i, expert)
        return ready

    def _loaded(self, i: int, expert: str) -> None:
        del self._loading[(self._residency.pool_index(i), expert)]
        self._residency.pools[i].entries[expert].tensors = LOADED

    def _storage_read(self, expert: str) -> float:
        """One storage device, reads in turn (as the paced storage serialises them); the
        fixed part (buffer set-up, header parse) runs beside the next read."""
        size = self._read_bytes.get(expert) or self._residency.expert_bytes[expert]
        start = max(self._clock(), self._storage_free_s)
        self._storage_free_s = start + size / self.costs.storage_bytes_per_s
        self._bytes_read += size
        self._stats.precision_read(self.config.precision, size)
        return self._storage_free_s + self.costs.storage_fixed_s

    def _host_copy(self, expert: str) -> float:
        """When the host copy of `expert` is ready: when the read in flight for it
        lands, now if cached, else after a read (kept in the host cache if its budget
        allows)."""
        now = self._clock()
        in_flight = self._host_fills.get(expert, now)
        if in_flight > now:  # single flight, as the engine's host tier: share that read
            return in_flight
        if self._residency.in_host(expert):
            return now
        ready = self._storage_read(expert)
        self._host_fills[expert] = ready
        self._stats.switch(None, STORAGE_TO_HOST, self._residency.expert_bytes[expert], ready - now)
        if self._residency.reserve_host(expert):
            self._residency.host.entries[expert].tensors = LOADED
        return ready

    # -- route again ---------------------------------------------------------------------
    def _route_again(self, batch: Batch, task: Task, exec_s: float) -> None:
        state = self._requests.get(task.request_id)
        label = self.labels.label(state.request, batch.expert)
        following = self.model.router.next(batch.expert, label, state.request.fields)
        here = self._requests.advance(state, batch.step(task, label, {}, exec_s), following)
        for expert in here:
            self._enqueue(state, expert)
        self._requests.finish_if_done(state)

    def snapshot(self) -> EngineStats:
        """The run's statistics as of now (its wall time: the clock now)."""
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
    *,
    costs: CostModel | None = None,
    backlog: bool = False,
    usage: Mapping[str, float] | None = None,
    labels: LabelSource | None = None,
    plan: Plan | None = None,
    scheduling_costs: CostModel | None = None,
) -> tuple[EngineStats, list[Result]]:
    """One simulated run: what `coserve simulate` does."""
    simulator = Simulator(model, config, costs=costs, usage=usage, labels=labels, plan=plan,
                          scheduling_costs=scheduling_costs)
    return simulator.run(requests, backlog)
