"""The driver: replays the trace through the deployment with the CoE's own routing
(`model.router.first`, then `model.router.next` on each returned label, fan-out
allowed), at most `max_inflight` requests in flight, and records each request's Result."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from coserve.bench.ray_peer.replica import LoadRecord, TaskReply
from coserve.repository import CoEModel
from coserve.repository.inputs import check_input
from coserve.types import Request, Result, Step


@dataclass(frozen=True)
class Window:
    """What happened in the measurement window (after Ray start-up and deployment)."""

    results: list[Result]
    replies: list[TaskReply]
    loads: list[LoadRecord]
    t0: float
    t_end: float
    peak_inflight: int
    replica_index: dict[str, int]  # replica tag -> Step.executor


class Replay:
    """Replays requests through the deployment with at most `max_inflight` in flight."""

    def __init__(self, model: CoEModel, handle: Any, max_inflight: int, realtime: bool) -> None:
        self._model = model
        self._handles = {e: handle.options(multiplexed_model_id=e) for e in model.experts}
        self._window = asyncio.Semaphore(max_inflight)
        self._realtime = realtime
        self.num_inflight = 0
        self.peak_inflight = 0
        self.replies: list[TaskReply] = []
        self.replica_index: dict[str, int] = {}  # replica tag -> Step.executor, first seen first

    async def run(self, requests: Sequence[Request]) -> tuple[list[Result], float, float]:
        """Results in request order, and the window's start and end (perf_counter)."""
        t0 = time.perf_counter()
        results = await asyncio.gather(*(self._request(r, t0) for r in requests))
        return list(results), t0, time.perf_counter()

    async def _request(self, request: Request, t0: float) -> Result:
        released_s = t0 + (request.arrival_s if self._realtime else 0.0)
        await asyncio.sleep(max(0.0, released_s - time.perf_counter()))
        async with self._window:
            self.num_inflight += 1
            self.peak_inflight = max(self.peak_inflight, self.num_inflight)
            try:
                steps, error = await self._route(request)
            finally:
                self.num_inflight -= 1
        return Result(request_id=request.request_id, ok=error is None, steps=tuple(steps),
                      submitted_s=released_s, completed_s=time.perf_counter(), error=error,
                      fields=dict(request.fields))

    async def _route(self, request: Request) -> tuple[list[Step], str | None]:
        try:
            first = self._model.router.first(request.fields)
            # Checked here, as coserve checks at submit: a bad input in a Ray batch would
            # fail the whole batch, other requests included.
            check_input(self._model, request, first)
        except Exception as exc:  # RequestError, or a failing rule: fails only this request
            return [], str(exc)
        return await self._fan_out(request, first)

    async def _fan_out(self, request: Request, experts: Sequence[str]) -> tuple[list[Step], str | None]:
        branches = await asyncio.gather(*(self._task(request, e) for e in experts))
        steps = [s for branch_steps, _ in branches for s in branch_steps]
        errors = [err for _, err in branches if err is not None]
        return steps, errors[0] if errors else None

    async def _task(self, request: Request, expert: str) -> tuple[list[Step], str | None]:
        sent_s = time.perf_counter()
        try:
            reply: TaskReply = await self._handles[expert].remote(request.input.numpy())
            label = self._model.router.decide(expert, self._label(expert, reply.label_index),
                                              reply.detail)
            following = self._model.router.next(expert, label, request.fields)
        except Exception as exc:  # a replica's failure fails only this request
            return [], f"expert {expert!r} failed: {_last_line(exc)}"
        self.replies.append(reply)
        executor = self.replica_index.setdefault(reply.replica, len(self.replica_index))
        round_trip_s = time.perf_counter() - sent_s
        step = Step(expert=expert, label=label, detail=reply.detail, executor=executor,
                    batch_size=reply.batch_size,
                    queued_s=max(0.0, round_trip_s - reply.exec_s), exec_s=reply.exec_s)
        steps, error = await self._fan_out(request, following)
        return [step, *steps], error

    def _label(self, expert: str, label_index: int) -> str:
        return self._model.architectures[self._model.experts[expert].architecture].labels[label_index]


def _last_line(exc: Exception) -> str:
    """A replica's exception as one line: Ray prefixes the remote traceback."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(exc).__name__
