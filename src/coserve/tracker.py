"""Requests in flight: what each accepted request has done so far, how many of its tasks
are still pending (fan-out adds some), and the one place a request is finished into its
`Result`. Shared by the engine (threads) and the simulator (a virtual clock), so both
count, fail and finish requests the same way.

Intake is part of it: `open`, `admit` and `close_and_drain` hold one lock, so a request
can never slip in after a drain found nothing in flight."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from coserve.errors import EngineClosedError, RequestError
from coserve.manager.usage import RoutedRequest, UsageTracker
from coserve.scheduler.task import Task
from coserve.stats import StatsRecorder
from coserve.types import FailureKind, Request, Result, Step


@dataclass(eq=False)
class InFlight:
    """One accepted request while its tasks run."""

    request: Request
    submitted_s: float
    deliver: Callable[[Result], None]  # called once, with the finished Result
    pending: int  # tasks queued or running
    deadline_s: float  # submitted + its latency target: every task of it carries this
    steps: list[Step] = field(default_factory=list)
    error: str | None = None  # the first failure wins
    error_kind: FailureKind | None = None
    failed_expert: str | None = None
    routed: RoutedRequest | None = None  # what usage learns from this request's routing
    handoffs: list[str] = field(default_factory=list)  # experts left to their owner

    def task(self, expert: str, now_s: float, payload: Any = None) -> Task:
        """The request's next task, at `expert`, under the request's deadline."""
        return Task(request_id=self.request.request_id, expert=expert, enqueued_s=now_s,
                    payload=payload, deadline_s=self.deadline_s, owner=self)


class RequestTracker:
    def __init__(
        self,
        *,
        clock: Callable[[], float],
        stats: StatsRecorder,
        usage: UsageTracker,
        latency_target_s: float,
    ) -> None:
        """`latency_target_s`: a request's deadline after submission, unless it says."""
        self._clock = clock
        self._latency_target_s = latency_target_s
        self._stats = stats
        self._usage = usage
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when nothing is in flight
        self._inflight: dict[str, InFlight] = {}
        self._open = False
        self._owned: frozenset[str] | None = None  # None: every expert runs here

    def set_owned(self, experts: frozenset[str] | None) -> None:
        """Step handoff: a step routed to an expert outside `experts` is not queued
        here but named in the Result's `handoffs`, for the caller to continue on its
        owner (a request's own start experts always run). None: run every step."""
        self._owned = None if experts is None else frozenset(experts)

    # -- intake --------------------------------------------------------------------------
    def open(self) -> None:
        with self._lock:
            self._open = True

    def admit(self, request: Request, first: Sequence[str], deliver: Callable[[Result], None]) -> InFlight:
        """Accept `request`, whose tasks at its `first` experts are about to be queued.
        EngineClosedError when intake is closed, RequestError for an id in flight or a
        latency target that is not a positive number of seconds."""
        target_s = request.latency_target_s or self._latency_target_s
        if not 0 < target_s < math.inf:
            raise RequestError(f"request {request.request_id!r}: latency_target_s must be a "
                               f"positive number of seconds, got {request.latency_target_s}")
        now = self._clock()
        state = InFlight(request, now, deliver, pending=len(first), deadline_s=now + target_s)
        with self._lock:
            if not self._open:
                raise EngineClosedError("the engine is not running: call start() first (or use `with`)")
            if request.request_id in self._inflight:
                raise RequestError(f"request id {request.request_id!r} is already in flight")
            self._inflight[request.request_id] = state
        state.routed = self._usage.admitted(first)  # before any of its tasks is queued
        self._stats.request_submitted()
        return state

    def close_and_drain(self) -> bool:
        """Stop intake and wait until every accepted request has finished (a finishing
        task may still queue subsequent tasks meanwhile). False if it was not open."""
        was_open = self.close_intake()
        if was_open:
            self.drain()
        return was_open

    def close_intake(self) -> bool:
        """Stop intake; False if it was not open."""
        with self._lock:
            was_open, self._open = self._open, False
        return was_open

    def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until nothing is in flight, at most `timeout_s` (None: as long as it takes);
        True when nothing is."""
        with self._lock:
            return self._idle.wait_for(lambda: not self._inflight, timeout_s)

    def get(self, request_id: str) -> InFlight:
        return self._inflight[request_id]

    def in_flight(self, state: InFlight) -> bool:
        """Whether `state`'s request is still unanswered (work for it is not wasted).
        No lock: one dict lookup is atomic, and an answer found a moment late only
        wastes a task's work, never answers twice."""
        return self._inflight.get(state.request.request_id) is state

    # -- progress ------------------------------------------------------------------------
    def advance(self, state: InFlight, step: Step, following: Sequence[str]) -> tuple[str, ...]:
        """A task finished as `step` and routed to the `following` experts. Returns
        those the caller queues here next (then calls `finish_if_done`): all of them,
        less those another replica owns (`set_owned`), which become handoffs."""
        owned = self._owned
        here = tuple(following) if owned is None else tuple(e for e in following if e in owned)
        with self._lock:
            state.steps.append(step)
            state.pending += len(here) - 1
            if len(here) < len(following):
                state.handoffs.extend(e for e in following if e not in here)
        if state.routed is not None:
            self._usage.routed(state.routed, step.expert, here)
        return here

    def fail(self, state: InFlight, error: str, kind: FailureKind, expert: str | None) -> None:
        """One of the request's tasks failed (or could not be queued): it counts as done,
        so the request still resolves, with the first error."""
        with self._lock:
            if state.error is None:
                state.error, state.error_kind, state.failed_expert = error, kind, expert
            state.pending -= 1
        self.finish_if_done(state)

    def abort(self, state: InFlight, error: str, kind: FailureKind, expert: str | None) -> None:
        """Answer the request now with `error` (unless an earlier failure wins), whatever
        of it is still pending: for a fault that leaves its count of tasks unknowable.
        Its tasks still queued or running change nothing when they end."""
        with self._lock:
            if state.error is None:
                state.error, state.error_kind, state.failed_expert = error, kind, expert
            state.pending = 0
        self.finish_if_done(state)

    def abort_all(self, error: str, kind: FailureKind) -> int:
        """Answer every request in flight with `error` (a drain deadline passed); returns
        how many were."""
        with self._lock:
            states = list(self._inflight.values())
        for state in states:
            self.abort(state, error, kind, None)
        return len(states)

    def finish_if_done(self, state: InFlight) -> None:
        with self._lock:
            # Only one caller may finish a request: fan-out branches can reach zero together.
            if state.pending > 0 or self._inflight.get(state.request.request_id) is not state:
                return
            del self._inflight[state.request.request_id]
            if not self._inflight:
                self._idle.notify_all()
        now = self._clock()
        result = Result(
            request_id=state.request.request_id, ok=state.error is None,
            steps=tuple(state.steps), submitted_s=state.submitted_s, completed_s=now,
            error=state.error, fields=dict(state.request.fields), error_kind=state.error_kind,
            failed_expert=state.failed_expert, handoffs=tuple(state.handoffs),
        )
        self._stats.request_done(result.latency_s, result.ok, now,
                                 missed_deadline=now > state.deadline_s,
                                 escalated=result.escalated)
        state.deliver(result)


def rejected(request: Request, error: str, now_s: float) -> Result:
    """The Result of a trace request that was never accepted (it failed validation)."""
    return Result(request_id=request.request_id, ok=False, steps=(), submitted_s=now_s,
                  completed_s=now_s, error=error, fields=dict(request.fields),
                  error_kind=FailureKind.REJECTED)
