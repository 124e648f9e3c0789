"""The engine: wires the scheduler, the expert manager and the executors, and runs the
path of a request from DESIGN.md. Executor threads each loop over:

    batch = scheduler.next_batch(i)            # split the head group
    resident = manager.acquire(i, expert)      # ensure resident (may evict, may load)
    prefetch the next group's expert           # overlaps loading with execution
    outputs = executor.execute(...)            # execute
    route again -> scheduler.enqueue(...)      # subsequent experts, or the request ends
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from coserve.architectures.base import Decoded
from coserve.engine.config import (
    EngineConfig,
    executor_layout,
    resolve_budget,
    split_budget,
)
from coserve.engine.costs import default_costs, measure_costs
from coserve.engine.results import FailureKind, Request, Result, Step
from coserve.engine.stats import EngineStats, StatsRecorder
from coserve.errors import ConfigError, EngineClosedError, RequestError
from coserve.executors.executor import Executor, build_skeletons
from coserve.loader.expert_loader import ExpertLoader
from coserve.loader.storage import Storage, storage_profile
from coserve.manager.manager import ExpertManager
from coserve.manager.quarantine import Quarantine
from coserve.manager.usage import UsageTracker
from coserve.plan import CostModel, executors_per_kind
from coserve.planfile import Plan
from coserve.policies import PolicySet, policy_set
from coserve.repository import CoEModel, Stage
from coserve.scheduler.queues import Batch, Scheduler
from coserve.scheduler.task import Task

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _InFlight:
    """Per-request state while its tasks run."""

    request: Request
    future: Future
    submitted_s: float
    pending: int = 0
    steps: list[Step] = field(default_factory=list)
    error: str | None = None  # the first failure wins
    error_kind: FailureKind | None = None
    failed_expert: str | None = None


class Engine:
    def __init__(
        self,
        model: CoEModel,
        config: EngineConfig | None = None,
        costs: CostModel | None = None,
        usage: Mapping[str, float] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        plan: Plan | None = None,
    ) -> None:
        """`costs`: a cost model (else the plan's, else measured at start, or defaults).
        `usage`: usage probabilities to start from instead of the plan's or the
        repository's prior, e.g. from `coserve.repository.usage_from_sample`. `plan`: a
        profiled plan (`Plan.load`): its costs and usage."""
        self.model = model
        self.config = config or EngineConfig()
        self.policies: PolicySet = policy_set(self.config.policy, self.config.max_defer_s)
        self.executor_specs = executor_layout(self.config.executors, self.policies)
        if plan is not None:
            costs = costs or plan.cost_model(
                model, storage_profile(self.config.storage).read_bytes_per_s,
                executors_per_kind([s.processor for s in self.executor_specs]))
            usage = usage if usage is not None else plan.usage
        self.prior_usage = dict(usage) if usage is not None else dict(model.usage)
        unknown = set(self.prior_usage) - set(model.experts)
        if unknown:
            raise ConfigError(f"usage names unknown experts {sorted(unknown)[:5]}; use names from coe.yaml")
        self.budget_bytes = self._resolve_budget()
        self._clock = clock
        self._costs = costs
        self._storage = Storage(storage_profile(self.config.storage), self.config.direct_io)
        self._stats = StatsRecorder(len(self.executor_specs))
        self._quarantine = Quarantine(self.config.quarantine_after, clock)
        self._task_ids = itertools.count()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when nothing is in flight
        self._inflight: dict[str, _InFlight] = {}
        self._threads: list[threading.Thread] = []
        self._started = False
        self._closed = False

    # -- configuration -------------------------------------------------------------------
    def _resolve_budget(self) -> int | None:
        return resolve_budget(self.model, self.config, self.policies, len(self.executor_specs))

    def _pool_budgets(self) -> list[int | None]:
        return split_budget(self.budget_bytes, len(self.executor_specs))

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> Engine:
        """Measure costs (unless given), place experts, start the executors."""
        if self._started:
            return self
        processors = [s.processor for s in self.executor_specs]
        _check_processors(processors)
        cpu_threads = [s.num_threads for s in self.executor_specs if s.processor == "cpu"]
        if cpu_threads:
            # Intra-op threads are process-wide in PyTorch; CPU executors share one setting.
            torch.set_num_threads(max(cpu_threads))
        if self._costs is None:
            self._costs = (
                measure_costs(self.model, processors, self._storage)
                if self.config.measure_costs
                else default_costs(self.model)
            )
        missing = set(self.model.experts) - set(self._costs.arch_of)
        if missing:
            raise ConfigError(f"the cost model has no entry for experts {sorted(missing)[:5]}; "
                              f"profile this repository again or pass no cost model")
        log.info("cost model: %s", self._costs.source)
        usage = UsageTracker(
            self.prior_usage, self.config.usage_blend, self.config.usage_min_samples
        )
        experts = self.model.experts
        loader = ExpertLoader(
            self._storage,
            {e.name: (e.weights_path, e.file_bytes) for e in experts.values()},
            pin_memory=any(p.startswith("cuda") for p in processors),
        )
        self._manager = ExpertManager(
            processors,
            self._pool_budgets(),
            {e.name: e.num_bytes for e in experts.values()},
            frozenset(e.name for e in experts.values() if e.stage is Stage.SUBSEQUENT),
            self.model.predecessors,
            self.policies.evict,
            loader,
            usage,
            self._stats,
            self._clock,
            self.config.host_cache_bytes,
        )
        self._scheduler = Scheduler(
            processors,
            self.policies.assign,
            self.policies.arrange,
            self._costs,
            self.config.activation_bytes,
            self._manager.resident,
            self._manager.in_host,
            self._clock,
        )
        # One skeleton set per executor: functional_call swaps tensors into the module for
        # the duration of a call, so two threads must never share one.
        self._executors = [
            Executor(i, p, build_skeletons(self.model.architectures))
            for i, p in enumerate(processors)
        ]
        self._manager.place(
            self.policies.place.place(
                self.prior_usage,
                {e.name: e.num_bytes for e in experts.values()},
                [b if b is not None else self.model.total_expert_bytes for b in self._pool_budgets()],
            )
        )
        self._storage_bytes_at_start = self._storage.stats().bytes_read
        self._stats.reset(self._clock())
        for ex in self._executors:
            t = threading.Thread(target=self._executor_loop, args=(ex,), daemon=True,
                                 name=f"coserve-executor-{ex.index}")
            t.start()
            self._threads.append(t)
        self._started = True
        return self

    def close(self) -> None:
        """Stop intake, let every request in flight finish, then stop the executors."""
        with self._lock:
            was_running = self._started and not self._closed
            self._closed = True
            # Drain first: a finishing task may still route to a subsequent expert on any queue.
            while was_running and self._inflight:
                self._idle.wait()
        if not was_running:
            return
        self._scheduler.close()
        for t in self._threads:
            t.join()
        self._manager.close()

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- submit: route, assign, arrange --------------------------------------------------
    def validate(self, request: Request) -> tuple[str, ...]:
        """The experts `request` starts at. Raises RequestError for a request that cannot
        be served (unknown routing value, wrong input shape); queues nothing."""
        first = self.model.router.first(request.fields)
        self._check_input(request, first)
        return first

    def submit(self, request: Request) -> Future:
        """Queue a request; the future resolves to its Result. Raises RequestError at once
        for a request that cannot be served (unknown routing value, wrong input shape),
        EngineClosedError when the engine is not running. An accepted request is always
        finished: its future cannot be cancelled."""
        first = self.validate(request)
        now = self._clock()
        state = _InFlight(request, Future(), now, pending=len(first))
        state.future.set_running_or_notify_cancel()
        with self._lock:
            if not self._started or self._closed:
                raise EngineClosedError("the engine is not running: call start() first (or use `with`)")
            if request.request_id in self._inflight:
                raise RequestError(f"request id {request.request_id!r} is already in flight")
            self._inflight[request.request_id] = state
        self._stats.request_submitted()
        for expert in first:
            self._enqueue_or_fail(state, expert, now)
        return state.future

    async def infer(self, request: Request) -> Result:
        return await asyncio.wrap_future(self.submit(request))

    def infer_sync(self, request: Request, timeout_s: float | None = None) -> Result:
        return self.submit(request).result(timeout_s)

    def _check_input(self, request: Request, first: tuple[str, ...]) -> None:
        x = request.input
        for expert in first:
            shape = tuple(self.model.architectures[self.model.experts[expert].architecture].input_shape)
            if not isinstance(x, torch.Tensor) or tuple(x.shape) != shape or not x.is_floating_point():
                got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise RequestError(
                    f"request {request.request_id!r}: expert {expert!r} takes a float tensor "
                    f"of shape {list(shape)}, got {got}"
                )

    def _enqueue_or_fail(self, state: _InFlight, expert: str, now: float) -> None:
        """Queue the request's task for `expert`; if that fails, the task counts as done
        with an error, so the request still resolves."""
        if not self._quarantine.allows(expert):  # fail fast, never touch the expert
            self._fail_task(state, self._quarantine.reason(expert),
                            FailureKind.EXPERT_QUARANTINED, expert)
            return
        task = Task(next(self._task_ids), state.request.request_id, expert, now, state.request.input)
        try:
            executor = self._scheduler.enqueue(task)
        except Exception as exc:
            log.exception("could not queue %s for %s", expert, task.request_id)
            self._fail_task(state, f"could not queue expert {expert!r}: {exc}",
                            FailureKind.NOT_QUEUED, expert)
            return
        self._stats.queue_depth(executor, self._scheduler.depth(executor))

    # -- the executor loop ---------------------------------------------------------------
    def _executor_loop(self, executor: Executor) -> None:
        i = executor.index
        while (batch := self._scheduler.next_batch(i)) is not None:
            t0 = self._clock()
            try:
                exec_s = self._serve_batch(executor, batch)
            finally:
                self._scheduler.batch_done(i)
            self._stats.handling(i, self._clock() - t0 - exec_s)

    def _serve_batch(self, executor: Executor, batch: Batch) -> float:
        """Ensure resident, execute, route again; an expert's failure fails only its
        requests and counts towards its quarantine. Returns the execution seconds."""
        if not self._quarantine.allows(batch.expert):  # quarantined while these were queued
            self._fail_batch(batch, self._quarantine.reason(batch.expert),
                             FailureKind.EXPERT_QUARANTINED)
            return 0.0
        try:
            outputs, exec_s = self._run_batch(executor, batch)
        except Exception as exc:
            log.warning("batch of %s on executor %d failed: %s", batch.expert, executor.index, exc)
            self._expert_failed(batch, f"expert {batch.expert!r} failed: {exc}")
            return 0.0
        if len(outputs) != len(batch.tasks):
            self._expert_failed(batch, f"expert {batch.expert!r} returned {len(outputs)} "
                                       f"outputs for a batch of {len(batch.tasks)}")
            return exec_s
        self._quarantine.record_success(batch.expert)
        try:
            self._route_again(batch, (outputs, exec_s))
        except Exception:  # an engine bug: keep the executor alive, say so loudly
            log.exception("routing after %s on executor %d failed", batch.expert, executor.index)
        return exec_s

    def _expert_failed(self, batch: Batch, error: str) -> None:
        if self._quarantine.record_failure(batch.expert, error):
            log.error("quarantined expert %s after %d consecutive failures: %s",
                      batch.expert, self._quarantine.max_failures, error)
        self._fail_batch(batch, error, FailureKind.EXPERT_FAILED)

    def _run_batch(self, executor: Executor, batch: Batch) -> tuple[list[Decoded], float]:
        i = executor.index
        resident = self._manager.acquire(i, batch.expert)
        try:
            upcoming = self._scheduler.next_expert(i)
            if upcoming not in (None, batch.expert) and self._quarantine.allows(upcoming):
                self._manager.prefetch(i, upcoming, protected=frozenset({batch.expert}))
            t0 = self._clock()
            arch = self.model.experts[batch.expert].architecture
            outputs = executor.execute(arch, resident.tensors, [t.payload for t in batch.tasks])
            exec_s = self._clock() - t0
        finally:
            self._manager.release(i, resident)
        self._stats.batch(i, len(batch.tasks), exec_s)
        return outputs, exec_s

    # -- route again ---------------------------------------------------------------------
    def _route_again(self, batch: Batch, run: tuple[list[Decoded], float]) -> None:
        outputs, exec_s = run
        now = self._clock()
        for task, out in zip(batch.tasks, outputs, strict=True):
            state = self._inflight[task.request_id]
            try:
                label, following = self._next_experts(batch.expert, out, state)
            except Exception as exc:  # a bad label index, a routing callable that raised
                self._fail_task(state, f"routing after expert {batch.expert!r} failed: {exc}",
                                FailureKind.ROUTING_FAILED, batch.expert)
                continue
            step = Step(batch.expert, label, out.detail, batch.executor, len(batch.tasks),
                        batch.started_s - task.enqueued_s, exec_s)
            with self._lock:
                state.steps.append(step)
                state.pending += len(following) - 1
            for expert in following:
                self._enqueue_or_fail(state, expert, now)
            self._maybe_finish(state)

    def _next_experts(self, expert: str, out: Decoded, state: _InFlight) -> tuple[str, tuple[str, ...]]:
        labels = self.model.architectures[self.model.experts[expert].architecture].labels
        label = labels[out.label_index]
        return label, self.model.router.next(expert, label, state.request.fields)

    def _fail_batch(self, batch: Batch, error: str, kind: FailureKind) -> None:
        for task in batch.tasks:
            self._fail_task(self._inflight[task.request_id], error, kind, batch.expert)

    def _fail_task(self, state: _InFlight, error: str, kind: FailureKind, expert: str | None) -> None:
        with self._lock:
            if state.error is None:
                state.error, state.error_kind, state.failed_expert = error, kind, expert
            state.pending -= 1
        self._maybe_finish(state)

    def _maybe_finish(self, state: _InFlight) -> None:
        with self._lock:
            # Only one caller may finish a request: fan-out branches can reach zero together.
            if state.pending > 0 or self._inflight.get(state.request.request_id) is not state:
                return
            del self._inflight[state.request.request_id]
            if not self._inflight:
                self._idle.notify_all()
        now = self._clock()
        ok = state.error is None
        result = Result(state.request.request_id, ok, tuple(state.steps), state.submitted_s,
                        now, state.error, dict(state.request.fields), state.error_kind,
                        state.failed_expert)
        if ok:
            self._manager.usage.observe(result.path)
        self._stats.request_done(result.latency_s, ok, now)
        state.future.set_result(result)

    # -- traces and statistics -----------------------------------------------------------
    def run_trace(self, requests: Iterable[Request], realtime: bool = True) -> list[Result]:
        """Submit each request at its arrival offset (all at once if not `realtime`) and
        wait for every result. A request that cannot be served yields a failed Result."""
        t0 = self._clock()
        futures: list[Future] = []
        self._scheduler.hold(not realtime)
        try:
            for request in requests:
                if realtime:
                    delay = request.arrival_s - (self._clock() - t0)
                    if delay > 0:
                        time.sleep(delay)
                futures.append(self._submit_or_fail(request))
        finally:
            self._scheduler.hold(False)
        if not realtime:  # the executors waited this long for the backlog to be queued
            self._stats.note("backlog_submit_s", self._clock() - t0)
        return [f.result() for f in futures]

    def _submit_or_fail(self, request: Request) -> Future:
        try:
            return self.submit(request)
        except RequestError as exc:
            now = self._clock()
            failed: Future = Future()
            failed.set_result(Result(request.request_id, False, (), now, now, str(exc),
                                     dict(request.fields), FailureKind.REJECTED))
            return failed

    def reset_stats(self) -> None:
        self._storage_bytes_at_start = self._storage.stats().bytes_read
        self._stats.reset(self._clock())

    def stats(self) -> EngineStats:
        return self._stats.snapshot(
            self._clock(),
            bytes_read=self._storage.stats().bytes_read - self._storage_bytes_at_start,
            policy=self.policies.name,
            budget_bytes=self.budget_bytes,
            total_expert_bytes=self.model.total_expert_bytes,
            storage=self.config.storage,
            cost_source=self._costs.source if self._costs else "not started",
        )

    @property
    def costs(self) -> CostModel | None:
        return self._costs

    # -- what a server or an operator reads ----------------------------------------------
    @property
    def running(self) -> bool:
        """Started (costs known, initial placement done) and not closed."""
        return self._started and not self._closed

    @property
    def quarantine(self) -> Quarantine:
        """Experts that failed too often; `quarantine.release(expert)` lets one run again."""
        return self._quarantine

    def resident(self) -> list[set[str]]:
        """Experts resident in each executor's pool now (loading ones included)."""
        if not self._started:
            return [set() for _ in self.executor_specs]
        return [set(self._manager.resident(i)) for i in range(len(self._executors))]

    def in_host_cache(self, expert: str) -> bool:
        return self._started and self._manager.in_host(expert)

    def usage(self) -> dict[str, float]:
        """Usage probabilities now: the prior blended with the routing observed."""
        return self._manager.usage.usage() if self._started else dict(self.prior_usage)

    def queue_depths(self) -> list[int]:
        """Tasks waiting in each executor's queue now."""
        if not self._started:
            return [0] * len(self.executor_specs)
        return [self._scheduler.depth(i) for i in range(len(self.executor_specs))]

    def pool_bytes(self) -> list[int]:
        """Bytes of expert weights in each executor's pool now."""
        if not self._started:
            return [0] * len(self.executor_specs)
        return [self._manager.pool_bytes(i) for i in range(len(self.executor_specs))]

    def pool_budgets(self) -> list[int | None]:
        """Each executor's pool budget in bytes; None = unlimited."""
        return self._pool_budgets()


def _check_processors(processors: list[str]) -> None:
    cuda = [p for p in processors if p.startswith("cuda")]
    if cuda and not torch.cuda.is_available():
        raise ConfigError(f"executors {cuda} need CUDA, which this machine lacks; use cpu executors")
    for p in cuda:
        if int(p.split(":")[1]) >= torch.cuda.device_count():
            raise ConfigError(f"{p} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")


