"""The engine: wires the scheduler, the expert manager and the executors, and runs the
path of a request from DESIGN.md. Executor threads each loop over:

    batch = scheduler.next_batch(i)            # split the head group
    resident = manager.acquire(i, expert)      # ensure resident (may evict, may load)
    prefetch the next groups' experts          # overlaps loading with execution
    outputs = executor.execute(...)            # execute (a failing batch is halved)
    route again -> scheduler.enqueue(...)      # subsequent experts, or the request ends

A watchdog (`supervisor.py`) times out a batch stuck past `batch_deadline_s`, and
`isolate.py` runs a batch so that a bad input or an out-of-memory fails only what it must.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from concurrent.futures import Future

import torch

from coserve.architectures.base import Decoded
from coserve.assembly import Assembly
from coserve.config import EngineConfig
from coserve.engine.costs import default_costs, measure_costs
from coserve.engine.isolate import Fault, Outcome, describe, run_isolating
from coserve.engine.supervisor import Shift, Supervisor
from coserve.errors import ConfigError, EngineClosedError, ExpertError, RequestError
from coserve.executors.budgets import DeviceMemory, TorchDevices
from coserve.executors.executor import Executor, build_skeletons
from coserve.executors.spec import ExecutorSpec
from coserve.loader.arena import HostArena, arena_capacity_bytes
from coserve.loader.expert_loader import ExpertLoader
from coserve.loader.precision import PrecisionLoader, stored_files
from coserve.loader.storage import Storage, storage_profile
from coserve.manager.manager import ExpertManager, LoadOutOfMemory
from coserve.manager.precision import precision_policy
from coserve.manager.quarantine import Quarantine
from coserve.plan import CostModel
from coserve.planfile import Plan
from coserve.repository import CoEModel
from coserve.repository.inputs import check_input
from coserve.scheduler.queues import Batch, NoActiveExecutor
from coserve.scheduler.task import Task
from coserve.stats import EngineStats, StatsRecorder
from coserve.tracker import InFlight, RequestTracker, rejected
from coserve.types import FailureKind, Request, Result

log = logging.getLogger(__name__)

SHUT_DOWN_ERROR = "the server shut down before this request finished"
STUCK_JOIN_S = 0.5  # how long close waits, all threads together, once some are stuck


class Engine:
    def __init__(
        self,
        model: CoEModel,
        config: EngineConfig | None = None,
        costs: CostModel | None = None,
        usage: Mapping[str, float] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        plan: Plan | None = None,
        devices: DeviceMemory | None = None,
    ) -> None:
        """`costs`: a cost model (else the plan's, else measured at start, or defaults).
        `usage`: usage probabilities to start from instead of the plan's or the
        repository's prior, e.g. from `coserve.repository.usage_from_sample`. `plan`: a
        profiled plan (`Plan.load`): its costs and usage. `devices`: what the GPUs have
        (default: this machine's, from torch). ConfigError at once for a budget the
        executors or the devices cannot hold, or a GPU this machine lacks."""
        self.model = model
        self.config = config or EngineConfig()
        self._assembly = Assembly.of(model, self.config, plan=plan, costs=costs, usage=usage,
                                     devices=devices or TorchDevices())
        self._clock = clock
        self._storage = Storage(storage_profile(self.config.storage), self.config.direct_io)
        self._stats = StatsRecorder(len(self._assembly.executors))
        self._usage = self._assembly.usage_tracker()
        self._requests = RequestTracker(clock=clock, stats=self._stats, usage=self._usage,
                                        latency_target_s=self.config.latency_target_s)
        self._precision = precision_policy(self.config.precision)
        self._stored_files = stored_files(model, self.config.precision)  # ConfigError now
        self._quarantine = Quarantine(self.config.quarantine_after, clock,
                                      probe_s=self.config.quarantine_probe_s)
        self._lock = threading.Lock()  # start and close
        self._threads: list[threading.Thread] = []
        self._started = False
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> Engine:
        """Measure costs (unless given), place experts, start the executors."""
        with self._lock:
            if self._started or self._closed:
                return self
            self._set_threads()
            if self._assembly.costs is None:
                self._assembly = self._assembly.with_costs(self._measure_costs())
            log.info("cost model: %s", self.costs.source)  # type: ignore[union-attr]
            parts = self._assembly.build(clock=self._clock, usage=self._usage)
            self._scheduler = parts.scheduler
            self._manager = ExpertManager(
                processors=self._assembly.processors, residency=parts.residency,
                loader=self._loader(parts.residency.host.budget_bytes), stats=self._stats,
                precision=self._precision, backlog_s=self._scheduler.backlog_s,
                storage_bytes_per_s=self.costs.storage_bytes_per_s)  # type: ignore[union-attr]
            # One skeleton set per executor: functional_call swaps tensors into the module
            # for the duration of a call, so two threads must never share one.
            self._executors = [Executor(i, p, build_skeletons(self.model.architectures))
                               for i, p in enumerate(self._assembly.processors)]
            self._supervisor = Supervisor(
                processors=self._assembly.processors, deadline_s=self.config.batch_deadline_s,
                clock=self._clock, stats=self._stats, retire=self._scheduler.retire,
                reinstate=self._scheduler.reinstate, on_stuck=self._batch_stuck)
            self._manager.place(self._assembly.initial_placement())
            self._storage_bytes_at_start = self._storage.stats().bytes_read
            self._load_busy_at_start = self._expert_loader.busy_s()
            self._stats.reset(self._clock())
            self._threads = [self._start_executor(ex) for ex in self._executors]
            self._supervisor.start()
            self._requests.open()
            self._started = True
        return self

    def close(self, timeout_s: float | None = None) -> None:
        """Stop intake, let every request in flight finish, then stop the executors.
        `timeout_s`: the drain deadline (None: wait as long as it takes). Past it, every
        request still in flight is answered with a SHUT_DOWN error, queued tasks are
        dropped, and executor threads stuck in a batch are left behind (they are daemon
        threads; whatever they return later is dropped)."""
        with self._lock:
            self._closed = True
            if not self._requests.close_intake():
                return
            # Drain first: a finishing task may still route to a subsequent expert on any queue.
            drained = self._requests.drain(timeout_s)
            if not drained:
                num = self._requests.abort_all(
                    f"{SHUT_DOWN_ERROR} (its drain deadline of {timeout_s:g} s passed)",
                    FailureKind.SHUT_DOWN)
                log.warning("drain deadline of %g s passed: %d request(s) answered with an "
                            "error", timeout_s, num)
            self._scheduler.close(discard=not drained)
            self._supervisor.stop()
            stuck = not drained or bool(self._supervisor.problems())
            join_until = time.monotonic() + STUCK_JOIN_S
            for t in self._threads:
                t.join(max(0.0, join_until - time.monotonic()) if stuck else None)
            self._manager.close(wait=not stuck)

    def _set_threads(self) -> None:
        processors = self._assembly.processors
        _check_processors(processors)
        cpu_threads = [s.num_threads for s in self._assembly.executors if s.processor == "cpu"]
        if cpu_threads:
            # Intra-op threads are process-wide in PyTorch; CPU executors share one setting.
            torch.set_num_threads(max(cpu_threads))

    def _measure_costs(self) -> CostModel:
        if not self.config.measure_costs:
            return default_costs(self.model)
        return measure_costs(self.model, self._assembly.processors, self._storage)

    def _loader(self, host_cache_bytes: int | None) -> PrecisionLoader:
        """One loader per stored precision over the same storage and arena.
        `host_cache_bytes`: the host cache's budget (None: unlimited)."""
        if host_cache_bytes is None:
            host_cache_bytes = self.model.total_expert_bytes
        arena = self._host_arena(host_cache_bytes)
        self._expert_loader = PrecisionLoader(
            lambda files: ExpertLoader(self._storage, files, arena=arena), self._stored_files)
        self._expert_loader.read_layouts()
        return self._expert_loader

    def _host_arena(self, host_cache_bytes: int) -> HostArena | None:
        """With GPU executors: one pinned arena for the host cache and the host copies of
        device loads in flight (a demand load and a prefetch per GPU executor). Without,
        none: a CPU's pool is the executing tier and reads go to buffers of their own."""
        num_gpu = sum(p.startswith("cuda") for p in self._assembly.processors)
        if not num_gpu:
            return None
        sizes = [(e.num_bytes, e.file_bytes) for e in self.model.experts.values()]
        capacity = arena_capacity_bytes(sizes, host_cache_bytes, 2 * num_gpu)
        return HostArena(capacity, pin=True)

    def _start_executor(self, executor: Executor) -> threading.Thread:
        t = threading.Thread(target=self._executor_loop, args=(executor,), daemon=True,
                             name=f"coserve-executor-{executor.index}")
        t.start()
        return t

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- submit: route, assign, arrange --------------------------------------------------
    def validate(self, request: Request) -> tuple[str, ...]:
        """The experts `request` starts at. Raises RequestError for a request that cannot
        be served (unknown routing value, wrong input shape); queues nothing."""
        first = self.model.router.entry(request.fields, request.start)
        check_input(self.model, request, first)
        return first

    def submit(self, request: Request) -> Future:
        """Queue a request; the future resolves to its Result. Raises RequestError at once
        for a request that cannot be served (unknown routing value, wrong input shape),
        EngineClosedError when the engine is not running. An accepted request is always
        finished: its future cannot be cancelled."""
        first = self.validate(request)
        future: Future = Future()
        future.set_running_or_notify_cancel()
        state = self._requests.admit(request, first, future.set_result)
        for expert in first:
            self._enqueue_or_fail(state, expert)
        return future

    async def infer(self, request: Request) -> Result:
        return await asyncio.wrap_future(self.submit(request))

    def infer_sync(self, request: Request, timeout_s: float | None = None) -> Result:
        return self.submit(request).result(timeout_s)

    def _enqueue_or_fail(self, state: InFlight, expert: str) -> None:
        """Queue the request's task for `expert`; if that fails, the task counts as done
        with an error, so the request still resolves."""
        if not self._quarantine.allows(expert):  # fail fast, never touch the expert
            self._requests.fail(state, self._quarantine.reason(expert),
                                FailureKind.EXPERT_QUARANTINED, expert)
            return
        self._queue(state, state.task(expert, self._clock(), payload=state.request.input))

    def _queue(self, state: InFlight, task: Task) -> None:
        if not self._requests.in_flight(state):  # answered already (aborted, shut down)
            return
        try:
            executor = self._scheduler.enqueue(task)
        except NoActiveExecutor:
            self._requests.fail(state, f"no executor can take a task for expert "
                                       f"{task.expert!r}: every executor is stuck "
                                       f"({'; '.join(self._supervisor.problems())})",
                                FailureKind.EXECUTOR_STUCK, task.expert)
            return
        except Exception as exc:
            log.exception("could not queue %s for %s", task.expert, task.request_id)
            self._requests.fail(state, f"could not queue expert {task.expert!r}: {exc}",
                                FailureKind.NOT_QUEUED, task.expert)
            return
        self._stats.queue_depth(executor, self._scheduler.depth(executor))

    # -- the executor loop ---------------------------------------------------------------
    def _executor_loop(self, executor: Executor) -> None:
        i = executor.index
        while (batch := self._scheduler.next_batch(i)) is not None:
            t0 = self._clock()
            shift = self._supervisor.begin(i, batch)
            try:
                exec_s = self._serve_batch(executor, shift)
            except BaseException as exc:  # an engine bug: answer the rest, keep the loop
                log.exception("serving %s on executor %d failed", batch.expert, i)
                exec_s = 0.0
                if self._supervisor.end(shift):
                    self._abort_rest(shift, f"the engine failed serving expert "
                                            f"{batch.expert!r}: {describe(exc)}")
            finally:
                self._scheduler.batch_done(i)
            self._stats.handling(i, self._clock() - t0 - exec_s)

    def _serve_batch(self, executor: Executor, shift: Shift) -> float:
        """Ensure resident, execute, route again; a fault fails only the requests it must
        (see `isolate.py`) and an expert's own failure counts towards its quarantine.
        Returns the execution seconds."""
        batch = shift.batch
        if not self._quarantine.may_run(batch.expert):  # quarantined while these were queued
            if self._supervisor.end(shift):
                self._fail_rest(shift, self._quarantine.reason(batch.expert),
                                FailureKind.EXPERT_QUARANTINED)
            return 0.0
        outcome = self._run_batch(executor, shift)
        if self._supervisor.end(shift):  # else the watchdog timed it out and answered it
            self._judge(batch, outcome)
            self._answer(shift, outcome)
        return outcome.exec_s

    def _run_batch(self, executor: Executor, shift: Shift) -> Outcome:
        i, batch = executor.index, shift.batch
        try:
            resident = self._manager.acquire(i, batch.expert)
            precision = resident.precision
        except LoadOutOfMemory as exc:  # the machine's fault now, not the expert's
            return Outcome.failed(len(batch.tasks), Fault(str(exc), True, loading=True))
        except ExpertError as exc:
            return Outcome.failed(len(batch.tasks), Fault(str(exc), False, loading=True))
        except Exception as exc:
            return Outcome.failed(len(batch.tasks), Fault(
                f"expert {batch.expert!r} failed to load: {describe(exc)}", False, loading=True))
        try:
            self._prefetch_next(i, batch.expert)
            arch = self.model.experts[batch.expert].architecture
            outcome = run_isolating(
                lambda items: executor.execute(arch, resident.tensors, items),
                [t.payload for t in batch.tasks], self._clock,
                before_forward=lambda: self._supervisor.phase(shift, "running"))
        finally:
            self._manager.release(i, resident)
        outcome.precision = precision
        self._stats.batch(i, len(batch.tasks), outcome.exec_s, precision)
        if outcome.num_splits or outcome.num_oom_splits:
            self._stats.batch_split(outcome.num_splits, outcome.num_oom_splits)
        return outcome

    def _prefetch_next(self, executor: int, running: str) -> None:
        """Start loading the next groups' experts (best effort: a failure only logs)."""
        try:
            for upcoming, protected in self._scheduler.prefetch_order(
                    executor, running, self._assembly.policies.prefetch_groups,
                    storage_idle=self._expert_loader.idle()):
                if self._quarantine.may_run(upcoming):
                    self._manager.prefetch(executor, upcoming, protected=protected)
            if self._precision.upgrades_when_idle() and self._idle():
                self._manager.upgrade(executor)  # nothing waits: time to read fp32 again
        except Exception:
            log.exception("prefetching after %s on executor %d failed", running, executor)

    def _idle(self) -> bool:
        """No task queued on any executor: an upgrade delays no one's load."""
        return all(self._scheduler.depth(i) == 0 for i in range(len(self._executors)))

    def _judge(self, batch: Batch, outcome: Outcome) -> None:
        """Quarantine bookkeeping: any output proves the expert runs; a batch whose every
        part failed (out of memory aside) counts once as the expert's failure."""
        if outcome.num_ok:
            self._quarantine.record_success(batch.expert)
        elif outcome.expert_at_fault:
            fault = next(r for r in outcome.results if isinstance(r, Fault) and not r.out_of_memory)
            error, _ = _fault_error(batch, batch.tasks[0], fault, expert_at_fault=True)
            log.warning("batch of %s on executor %d failed: %s", batch.expert, batch.executor, error)
            if self._quarantine.record_failure(batch.expert, error):
                log.error("quarantined expert %s after %d consecutive failures: %s",
                          batch.expert, self._quarantine.max_failures, error)

    # -- route again ---------------------------------------------------------------------
    def _answer(self, shift: Shift, outcome: Outcome) -> None:
        """Each task's output goes through the rules (or its fault fails its request);
        an engine bug on one task fails that request alone."""
        batch = shift.batch
        for task, result in zip(batch.tasks, outcome.results, strict=True):
            try:
                if isinstance(result, Fault):
                    error, kind = _fault_error(batch, task, result, outcome.expert_at_fault)
                    self._requests.fail(task.owner, error, kind, batch.expert)
                else:
                    self._route_again(batch, task, result, outcome.exec_s, outcome.precision)
            except Exception as exc:
                log.exception("routing %s after %s failed", task.request_id, batch.expert)
                self._requests.abort(task.owner, f"routing after expert {batch.expert!r} "
                                                 f"failed: {describe(exc)}",
                                     FailureKind.ROUTING_FAILED, batch.expert)
            shift.num_answered += 1

    def _route_again(self, batch: Batch, task: Task, out: Decoded, exec_s: float,
                     precision: str) -> None:
        state: InFlight = task.owner
        try:
            label, following = self._next_experts(batch.expert, out, state.request)
        except Exception as exc:  # a bad label index, a routing callable that raised
            self._requests.fail(state, f"routing after expert {batch.expert!r} failed: {exc}",
                                FailureKind.ROUTING_FAILED, batch.expert)
            return
        here = self._requests.advance(
            state, batch.step(task, label, out.detail, exec_s, precision), following)
        for expert in here:
            self._enqueue_or_fail(state, expert)
        self._requests.finish_if_done(state)

    def _next_experts(self, expert: str, out: Decoded, request: Request) -> tuple[str, tuple[str, ...]]:
        labels = self.model.architectures[self.model.experts[expert].architecture].labels
        # A cascade expert's unsure answer routes as LOW_CONFIDENCE (its escalation).
        label = self.model.router.decide(expert, labels[out.label_index], out.detail)
        return label, self.model.router.next(expert, label, request.fields)

    def _fail_rest(self, shift: Shift, error: str, kind: FailureKind) -> None:
        """Fail every task of the shift not answered yet."""
        for task in shift.batch.tasks[shift.num_answered:]:
            self._requests.fail(task.owner, error, kind, shift.batch.expert)
            shift.num_answered += 1

    def _abort_rest(self, shift: Shift, error: str) -> None:
        """An engine bug left the tasks' counts unknowable: answer their requests now."""
        for task in shift.batch.tasks[shift.num_answered:]:
            self._requests.abort(task.owner, error, FailureKind.EXPERT_FAILED, shift.batch.expert)

    # -- supervision (the watchdog's thread) ---------------------------------------------
    def _batch_stuck(self, shift: Shift, stuck_s: float, moved: list[Task]) -> None:
        """The watchdog took over a stuck batch: fail its requests, count it against its
        expert, and queue what waited behind it on the other executors."""
        i, expert = shift.executor, shift.batch.expert
        error = (f"executor {i} ({self._executors[i].processor}) was stuck {shift.phase} "
                 f"expert {expert!r} past the batch deadline of {self.config.batch_deadline_s:g} s "
                 f"({stuck_s:.1f} s); the executor takes no work until it comes back")
        self._quarantine.record_failure(expert, error)
        self._fail_rest(shift, error, FailureKind.TIMED_OUT)
        for task in moved:
            self._queue(task.owner, task)

    def health(self) -> list[str]:
        """What is wrong now, one line each; empty when healthy. E.g. "executor 1 (cpu)
        stuck 62 s running expert 'x'" (the watchdog retired it: readiness should fail
        while it lists anything)."""
        if not self.running:
            return ["the engine is not running"]
        dead = [f"executor {ex.index} ({ex.processor}) thread has died"
                for ex, t in zip(self._executors, self._threads, strict=True) if not t.is_alive()]
        return self._supervisor.problems() + dead

    # -- traces and statistics -----------------------------------------------------------
    def run_trace(self, requests: Iterable[Request], realtime: bool = True) -> list[Result]:
        """Submit each request at its arrival offset (all at once if not `realtime`) and
        wait for every result. A request that cannot be served yields a failed Result.
        EngineClosedError when the engine is not running."""
        if not self.running:
            raise EngineClosedError("the engine is not running: call start() first (or use `with`)")
        t0 = self._clock()
        futures: list[Future] = []
        self._scheduler.hold(not realtime)
        try:
            for request in requests:
                if realtime:
                    delay = request.arrival_s - (self._clock() - t0)
                    if delay > 0:
                        time.sleep(delay)
                futures.append(self._submit_or_reject(request))
        finally:
            self._scheduler.hold(False)
        if not realtime:  # the executors waited this long for the backlog to be queued
            self._stats.note("backlog_submit_s", self._clock() - t0)
        return [f.result() for f in futures]

    def _submit_or_reject(self, request: Request) -> Future:
        try:
            return self.submit(request)
        except RequestError as exc:
            failed: Future = Future()
            failed.set_result(rejected(request, str(exc), self._clock()))
            return failed

    def stats(self, latencies: bool = True) -> EngineStats:
        """`latencies=False`: skip the latency percentiles (zeros), which sort the window
        of recent latencies; the counters alone cost microseconds."""
        bytes_read = (self._storage.stats().bytes_read - self._storage_bytes_at_start
                      if self._started else 0)
        busy_s = self._expert_loader.busy_s() - self._load_busy_at_start if self._started else None
        arena = self._expert_loader.arena if self._started else None
        return self._stats.snapshot(
            self._clock(),
            bytes_read=bytes_read,
            latencies=latencies,
            load_busy_s=busy_s,
            host_arena=_arena_figures(arena),
            policy=self._assembly.policies.name,
            budget_bytes=self.budget_bytes,
            total_expert_bytes=self.model.total_expert_bytes,
            storage=self.config.storage,
            cost_source=self.costs.source if self.costs else "not started",
        )

    # -- what a server or an operator reads ----------------------------------------------
    @property
    def costs(self) -> CostModel | None:
        return self._assembly.costs

    @property
    def executor_specs(self) -> tuple[ExecutorSpec, ...]:
        """The executors this engine runs (the policy set's layout of the configured ones)."""
        return self._assembly.executors

    @property
    def budget_bytes(self) -> int | None:
        """The executing pools' total budget in bytes; None = unlimited."""
        return self._assembly.budget_bytes

    @property
    def running(self) -> bool:
        """Started (costs known, initial placement done) and not closed."""
        return self._started and not self._closed

    @property
    def quarantine(self) -> Quarantine:
        """Experts that failed too often; each is probed again after `quarantine_probe_s`
        (doubling while it fails), and `quarantine.release(expert)` lets one run at once."""
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
        return self._usage.usage()

    def set_usage_prior(self, prior: Mapping[str, float]) -> None:
        """Replace the usage prior of the experts given (the others keep theirs); what is
        resident moves only as eviction next reads the usage. ConfigError for an unknown
        expert or a probability outside [0, 1]."""
        unknown = sorted(e for e in prior if e not in self.model.experts)
        bad = sorted(e for e, p in prior.items() if not 0 <= p <= 1)  # NaN fails this too
        if unknown or bad:
            raise ConfigError(f"a usage prior needs known experts and probabilities in [0, 1]; "
                              f"unknown: {unknown[:5]}, out of range: {bad[:5]}")
        self._usage.set_prior(prior)

    def set_owned(self, experts: Collection[str] | None) -> None:
        """Step handoff (a replica of a cluster): from now on a step routed to an expert
        outside `experts` is not run here; the request's Result names it in `handoffs`
        for the caller to continue where that expert lives. None: run every step (the
        default). ConfigError for an unknown expert."""
        if experts is not None:
            unknown = sorted(e for e in experts if e not in self.model.experts)
            if unknown:
                raise ConfigError(f"cannot own unknown expert(s) {unknown[:5]}")
        self._requests.set_owned(None if experts is None else frozenset(experts))

    def queued_experts(self) -> set[str]:
        """Experts with a task queued now."""
        return self._scheduler.queued_experts() if self._started else set()

    def set_queued_elsewhere(self, experts: Collection[str]) -> None:
        """Step handoff: experts with tasks queued on the other replicas now (the
        ingress's poll); see `Scheduler.set_queued_elsewhere`."""
        if self._started:
            self._scheduler.set_queued_elsewhere(frozenset(experts))

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
        return self._assembly.pool_budgets


def _fault_error(batch: Batch, task: Task, fault: Fault, expert_at_fault: bool) -> tuple[str, FailureKind]:
    """The error a failed task's request gets, and its kind."""
    expert = batch.expert
    if fault.loading:
        return fault.error, FailureKind.OUT_OF_MEMORY if fault.out_of_memory else FailureKind.EXPERT_FAILED
    if fault.out_of_memory:
        return (f"out of memory running expert {expert!r} on this input alone: {fault.error}",
                FailureKind.OUT_OF_MEMORY)
    if expert_at_fault:
        return f"expert {expert!r} failed: {fault.error}", FailureKind.EXPERT_FAILED
    return (f"expert {expert!r} failed on this input (request {task.request_id!r}) while the "
            f"rest of its batch ran: {fault.error}", FailureKind.INVALID_INPUT)


def _arena_figures(arena: HostArena | None) -> dict[str, float] | None:
    if arena is None:
        return None
    a = arena.stats()
    return {"capacity_bytes": a.capacity_bytes, "used_bytes": a.used_bytes,
            "largest_free_bytes": a.largest_free_bytes, "pinned_bytes": a.pinned_bytes,
            "num_extents": a.num_extents, "fragmentation": a.fragmentation}


def _check_processors(processors: list[str]) -> None:
    cuda = [p for p in processors if p.startswith("cuda")]
    if cuda and not torch.cuda.is_available():
        raise ConfigError(f"executors {cuda} need CUDA, which this machine lacks; use cpu executors")
    for p in cuda:
        if int(p.split(":")[1]) >= torch.cuda.device_count():
            raise ConfigError(f"{p} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")


