"""`ReplicaSet`: the ingress's engine. It has the Engine's surface that the HTTP server
uses (validate, submit, running, health, the per-executor views, quarantine), so the
ingress is `coserve serve`'s own app (parsing, admission, validation, errors, answers,
metrics) with the engine's work done by the replicas.

A request is validated here against the model (as the engine does at submit), sent to a
replica (`routing`: owner first, spill by queued work, retry on a replica failure), and
its Result comes back; step executors are renumbered into one list over all replicas
(replica r's executors follow replica r-1's), the list /v1/experts shows. The replicas'
status is polled every STATUS_INTERVAL_S in a thread; a replica that fails a call or
does not answer the poll is down until it answers again. When the poll finds a replica
dead (its status call fails or times out) or restarted (a new incarnation), the calls in
flight to it are failed over (`failover`): cancelled and retried on the next replica.

The partition requests are routed by is kept by a `cluster.rebalance.Rebalancer`: every
routed request's first experts are observed, and after each poll the experts of the
replicas that are down are re-homed to the others (given back when they return), and
every `check_interval_s` the partition is recomputed if the routed mix shifted. Every
replica is then told the new partition (`tell_partition`: its engine's usage prior
favours what it owns now, as at deployment; a replica that restarts is told again), and
the new owners warm what they now own by being routed its requests (their engines load
what they lack); nothing is prefetched."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import replace
from typing import Any

from coserve.cluster.handoff import HandoffJoin
from coserve.cluster.partition import Partition, placement_for
from coserve.cluster.rebalance import ChangeReason, PartitionChange, Rebalancer
from coserve.cluster.routing import ReplicaView, replica_routing
from coserve.repository import CoEModel
from coserve.repository.inputs import check_input
from coserve.server.replicas.config import STATUS_INTERVAL_S, STATUS_TIMEOUT_S, ReplicaSetup
from coserve.server.replicas.deployment import ReplicaStatus
from coserve.server.replicas.failover import InFlight
from coserve.server.replicas.routing import Loads, NoReplicaError, call_with_retries
from coserve.server.replicas.stats import summed_stats
from coserve.stats import EngineStats
from coserve.types import FailureKind, Request, Result

log = logging.getLogger(__name__)


class ReplicaSet:
    def __init__(self, model: CoEModel, setup: ReplicaSetup, owner: Mapping[str, int],
                 handles: Sequence[Any], clock: Callable[[], float] = time.monotonic) -> None:
        self.model = model
        self.config = setup.engine_config
        self.num_replicas = setup.num_replicas
        self._clock = clock  # of the usage window and the repartition checks
        self._deployed_owner = dict(owner)  # what a replica starts (or restarts) from
        # With handoff the partition is made, re-made and re-homed expert by expert.
        placement = placement_for(setup.handoff)
        self.rebalancer = Rebalancer(model, Partition(setup.num_replicas, owner), setup.rebalance,
                                     usage=setup.plan.usage if setup.plan is not None else None,
                                     placement=placement)
        self._partition_lock = threading.Lock()  # the rebalancer's: observe vs. poll
        self.num_moved = dict.fromkeys(ChangeReason, 0)  # experts moved, by reason
        self.num_changes = dict.fromkeys(ChangeReason, 0)  # partition changes, by reason
        self.loads = Loads(setup.num_replicas)
        self.in_flight = InFlight(setup.num_replicas)
        self.quarantine = MergedQuarantine(self)
        self.num_retries = 0
        self.num_handoffs = 0  # steps sent on to another replica (handoff)
        self.num_answered = [0] * setup.num_replicas  # calls (a request's parts, each)
        # Step handoff: the requests whose parts are out (the event loop's alone).
        self._join = (HandoffJoin(clock, setup.engine_config.latency_target_s)
                      if setup.handoff else None)
        self.handles = list(handles)
        self._max_attempts = setup.attempts
        self.routing = replica_routing(setup.routing, margin_s=setup.spill_margin_s,
                                       seed=setup.routing_seed)
        # The last polled counters of each replica's engines that have since been replaced.
        self._retired: list[list[EngineStats]] = [[] for _ in range(setup.num_replicas)]
        self._lock = threading.Lock()
        self._statuses: list[ReplicaStatus | None] = [None] * setup.num_replicas
        self._down: dict[int, str] = {i: "not answered yet" for i in range(setup.num_replicas)}
        self._unreachable: set[int] = set()  # its last status call failed or timed out
        self._tasks: set[asyncio.Task] = set()
        self._started = False
        self._closed = threading.Event()
        self._poller: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> ReplicaSet:
        """Blocks until every replica answered once (or closed), then polls in a thread."""
        while not self._closed.is_set() and any(s is None for s in self._statuses):
            self.poll()
        self._started = True
        self._poller = threading.Thread(target=self._poll_forever, name="coserve-replica-poll",
                                        daemon=True)
        self._poller.start()
        return self

    def close(self, timeout_s: float | None = None) -> None:
        """Stops polling. The replicas drain their own engines when Serve stops them."""
        self._closed.set()
        if self._poller is not None:
            self._poller.join(STATUS_TIMEOUT_S)

    @property
    def running(self) -> bool:
        """Started, not closed, and at least one replica up."""
        with self._lock:
            return self._started and not self._closed.is_set() and len(self._down) < self.num_replicas

    @property
    def partition(self) -> Partition:
        """The partition requests are routed by now (re-homed around replicas down)."""
        return self.rebalancer.partition

    def health(self) -> list[str]:
        """One line per replica that is down (readiness fails while any is; requests go
        to the others, and its experts are re-homed to them after the next poll)."""
        rehomed = self.rebalancer.down
        with self._lock:
            return [f"replica {i} is down: {reason}"
                    + ("; its experts are re-homed to the others" if i in rehomed else "")
                    for i, reason in sorted(self._down.items())]

    def down_replicas(self) -> set[int]:
        with self._lock:
            return set(self._down)

    @property
    def num_alive(self) -> int:
        """Replicas whose last status call answered (up or not)."""
        with self._lock:
            return self.num_replicas - len(self._unreachable)

    # -- status poll ----------------------------------------------------------------------
    def poll(self) -> None:
        """Ask every replica for its status at once; wait at most STATUS_TIMEOUT_S."""
        calls = [h.status.remote() for h in self.handles]
        deadline_s = time.monotonic() + STATUS_TIMEOUT_S
        restarted_now: list[int] = []
        for i, call in enumerate(calls):
            try:
                status = call.result(timeout_s=max(0.0, deadline_s - time.monotonic()))
            except Exception as exc:  # dead, restarting or stuck: down until it answers
                reason = f"no status within {STATUS_TIMEOUT_S:g} s ({type(exc).__name__})"
                self._mark_down(i, reason, unreachable=True)
                self._fail_over(i, reason)
                continue
            with self._lock:
                self._unreachable.discard(i)
                old = self._statuses[i]
                restarted = old is not None and old.incarnation != status.incarnation
                if restarted:
                    self._retired[i].append(old.stats)  # keep what the old engine counted
                self._statuses[i] = status
                if status.running and not status.problems:
                    self._down.pop(i, None)
                else:
                    self._down[i] = "; ".join(status.problems) or "its engine is not running"
            if restarted:  # what the old engine held is lost (calls sent since: a spare retry)
                self._fail_over(i, "it restarted")
                restarted_now.append(i)
        self._rebalance()
        if self._join is not None:
            self._tell_queued()
        if restarted_now and self.partition.owner != self._deployed_owner:
            self.tell_partition(restarted_now)  # it started from the deployed partition

    def _tell_queued(self) -> None:
        """Handoff: tell each replica the experts queued on the others (fire and forget:
        a replica that misses one hears the next poll's)."""
        with self._lock:
            queued = {s.index: s.queued for s in self._statuses if s is not None}
        for i, handle in enumerate(self.handles):
            elsewhere = frozenset().union(*(q for r, q in queued.items() if r != i))
            with contextlib.suppress(Exception):
                handle.set_queued_elsewhere.remote(elsewhere)

    def _rebalance(self) -> None:
        """Re-home around the replicas down now; re-partition if the usage shifted. A
        replica that never answered yet is starting, not lost: its experts stay."""
        with self._lock:
            down = {i for i in self._down if self._statuses[i] is not None}
        now_s = self._clock()
        with self._partition_lock:
            changes = [self.rebalancer.set_down(down, now_s), self.rebalancer.check(now_s)]
        for change in changes:
            if change is not None:
                self._record(change)
        if any(change is not None for change in changes):
            self.tell_partition(range(self.num_replicas))

    def tell_partition(self, replicas: Iterable[int]) -> None:
        """Send the partition to `replicas` (each favours what it owns now); wait at most
        STATUS_TIMEOUT_S. A replica that does not take it is logged: the next poll
        finds it down, and it is told again when it comes back."""
        owner = dict(self.partition.owner)
        calls = [(i, self.handles[i].adopt_partition.remote(owner)) for i in replicas]
        deadline_s = time.monotonic() + STATUS_TIMEOUT_S
        for i, call in calls:
            try:
                call.result(timeout_s=max(0.0, deadline_s - time.monotonic()))
            except Exception as exc:
                log.warning("replica %d did not take the new partition: %s", i, exc)

    def _record(self, change: PartitionChange) -> None:
        with self._lock:
            self.num_changes[change.reason] += 1
            self.num_moved[change.reason] += change.num_moved
        log.warning("partition changed (%s): %d expert(s) moved, predicted imbalance %.2f -> "
                    "%.2f; replicas down: %s", change.reason.value, change.num_moved,
                    change.imbalance_before, change.imbalance_after, sorted(change.down) or "none")

    def _poll_forever(self) -> None:
        while not self._closed.wait(STATUS_INTERVAL_S):
            try:
                self.poll()
            except Exception:  # never let the poller die: readiness depends on it
                log.exception("polling the replicas failed")

    def _fail_over(self, replica: int, reason: str) -> None:
        num_lost = self.in_flight.fail_over(replica, reason)
        if num_lost:
            log.warning("replica %d: failing over %d call(s) in flight (%s)", replica, num_lost, reason)

    def _mark_down(self, replica: int, reason: str, unreachable: bool = False) -> None:
        with self._lock:
            if replica not in self._down:
                log.warning("replica %d is down: %s", replica, reason)
            self._down[replica] = reason
            if unreachable:
                self._unreachable.add(replica)

    # -- requests -------------------------------------------------------------------------
    def validate(self, request: Request) -> tuple[str, ...]:
        """As Engine.validate: the first experts; RequestError for a request no replica
        could serve."""
        first = self.model.router.first(request.fields)
        check_input(self.model, request, first)
        return first

    def submit(self, request: Request) -> Future:
        """From the event loop: validate, then send it to a replica; the future resolves
        to its Result, or raises NoReplicaError when no replica could take it."""
        first = self.validate(request)
        with self._partition_lock:
            self.rebalancer.observe(first, self._clock())
        future: Future = Future()
        future.set_running_or_notify_cancel()
        task = asyncio.get_running_loop().create_task(self._run(request, first, future))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return future

    async def _run(self, request: Request, first: Sequence[str], future: Future) -> None:
        try:
            if self._join is None:
                result = await self._run_part(request, first)
            else:
                result = await self._run_parts(request, first)
        except BaseException as exc:  # NoReplicaError, or a bug: the handler answers it
            future.set_exception(exc)
            return
        future.set_result(result)

    async def _run_part(self, request: Request, first: Sequence[str]) -> Result:
        """One call's Result (retried on replica failures), its executors renumbered."""
        result, replica, _ = await call_with_retries(
            lambda r: self._call(r, request), lambda tried: self._choose(first, tried),
            self._max_attempts, self._failed)
        with self._lock:
            self.num_answered[replica] += 1
        return self._renumbered(result, replica)

    async def _run_parts(self, request: Request, first: Sequence[str]) -> Result:
        """With handoff: the request's parts, each on the replica its routing picks for
        its first expert, joined into one Result. NoReplicaError when no replica took the
        first part; a later part no replica took fails the request (NO_REPLICA)."""
        assert self._join is not None
        joined: asyncio.Future[Result] = asyncio.get_running_loop().create_future()

        async def run(part: Request, part_first: Sequence[str], later: bool) -> None:
            try:
                result = await self._run_part(part, part_first)
            except NoReplicaError as exc:
                if not later:
                    raise
                result = _no_replica(part, str(exc), part_first[0])
            continuations, done = self._join.part_done(result)
            if done is not None:
                joined.set_result(done)
            with self._lock:
                self.num_handoffs += len(continuations)
            await asyncio.gather(*(run(c, c.start or (), True) for c in continuations))

        try:
            await run(self._join.begin(request), first, False)
        except BaseException:  # the first part found no replica, or a bug: answered so
            self._join.forget(request.request_id)
            raise
        return await joined

    def _choose(self, first: Sequence[str], tried: list[int]) -> int:
        view = ReplicaView(self.partition, self.loads.seconds(), down=self.down_replicas(),
                           tried=tried)
        with self._lock:
            if tried:
                self.num_retries += 1
            return self.routing.choose(first, view)

    async def _call(self, replica: int, request: Request) -> Result:
        num_in_flight = self.loads.sent(replica)
        sent_s = time.perf_counter()
        try:
            result = await self.in_flight.wait(replica, self.handles[replica].infer.remote(request))
        except BaseException:
            self.loads.done(replica, None, num_in_flight)
            raise
        self.loads.done(replica, time.perf_counter() - sent_s, num_in_flight)
        return result

    def _failed(self, replica: int, exc: BaseException) -> None:
        self._mark_down(replica, f"a call failed ({type(exc).__name__})")

    def _renumbered(self, result: Result, replica: int) -> Result:
        offset = self._executor_offsets()[replica]
        steps = tuple(replace(s, executor=offset + s.executor) for s in result.steps)
        return replace(result, steps=steps)

    # -- the engine's per-executor views, over all replicas ---------------------------------
    def stats(self, latencies: bool = True) -> EngineStats | None:
        """The replicas' engine counters summed (`replicas.stats.summed_stats`), as of
        their last status poll (at most STATUS_INTERVAL_S old); latencies are zeros
        whatever `latencies` says (the ingress's histograms have them)."""
        with self._lock:
            current = [s.stats for s in self._statuses if s is not None]
            retired = [r for per_replica in self._retired for r in per_replica]
        return summed_stats(current, retired)

    def replica_counters(self) -> list[tuple[int, int, int]]:
        """(requests finished, switches, bytes read) per replica, restarts included, as of
        the last status poll."""
        counters = []
        with self._lock:
            for status, retired in zip(self._statuses, self._retired, strict=True):
                every = [*retired, *([status.stats] if status is not None else [])]
                counters.append((sum(s.num_requests for s in every),
                                 sum(s.num_switches for s in every),
                                 sum(s.bytes_read for s in every)))
        return counters

    def known_statuses(self) -> list[ReplicaStatus]:
        with self._lock:
            return [s for s in self._statuses if s is not None]

    def _executor_offsets(self) -> list[int]:
        with self._lock:
            counts = [len(s.executor_specs) if s else 0 for s in self._statuses]
        return [sum(counts[:i]) for i in range(len(counts))]

    @property
    def executor_specs(self) -> tuple[Any, ...]:
        return tuple(spec for s in self.known_statuses() for spec in s.executor_specs)

    def executor_replicas(self) -> list[int]:
        """The replica of each executor in `executor_specs`."""
        return [s.index for s in self.known_statuses() for _ in s.executor_specs]

    def queue_depths(self) -> list[int]:
        return [d for s in self.known_statuses() for d in s.queue_depths]

    def pool_bytes(self) -> list[int]:
        return [b for s in self.known_statuses() for b in s.pool_bytes]

    def pool_budgets(self) -> list[int | None]:
        return [b for s in self.known_statuses() for b in s.pool_budgets]

    def resident(self) -> list[set[str]]:
        return [set(pool) for s in self.known_statuses() for pool in s.resident]

    def in_host_cache(self, expert: str) -> bool:
        return any(expert in s.in_host_cache for s in self.known_statuses())

    def usage(self) -> dict[str, float]:
        """The replicas' usage estimates, weighted by the requests each answered."""
        known = self.known_statuses()
        with self._lock:
            weights = [self.num_answered[s.index] for s in known]
        if not known:
            return dict(self.model.usage)
        if not any(weights):
            weights = [1] * len(known)
        total = sum(weights)
        return {e: sum(w * s.usage.get(e, 0.0) for w, s in zip(weights, known, strict=True)) / total
                for e in self.model.experts}


def _no_replica(part: Request, error: str, expert: str) -> Result:
    """A handed-off part that no replica took, as a failed part."""
    return Result(request_id=part.request_id, ok=False, steps=(), submitted_s=0.0,
                  completed_s=0.0, error=f"step at expert {expert!r}: {error}",
                  fields=dict(part.fields), error_kind=FailureKind.NO_REPLICA,
                  failed_expert=expert)


class MergedQuarantine:
    """The replicas' quarantines as one: an expert is quarantined if any replica holds it
    so (each replica counts its own failures)."""

    def __init__(self, replicas: ReplicaSet) -> None:
        self._replicas = replicas

    def records(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for status in self._replicas.known_statuses():
            for name, record in status.quarantine.items():
                old = merged.get(name)
                if old is None or (record.quarantined, record.total_failures) > (old.quarantined, old.total_failures):
                    merged[name] = record
        return merged

    def release(self, expert: str) -> bool:
        """Ask every replica to release it (the next poll shows the outcome); whether any
        held it quarantined when last polled."""
        for handle in self._replicas.handles:
            with contextlib.suppress(Exception):  # a replica that is down has nothing to lift
                handle.release.remote(expert)
        record = self.records().get(expert)
        return bool(record and record.quarantined)
