"""Step handoff: a request's steps run on the replicas that own their experts.

Without it a replica runs every step of the requests routed to it, loading whatever
subsequent experts it lacks. That suits a CoE whose preliminary experts each lead to a few
subsequent experts of their own (the circuit board: a family per component type lives on
one replica). It does not suit one with fan-out, where every preliminary expert reaches
most later experts (the synth shape: 16 of 21 last-stage experts from each first-stage
one), so a replica running whole requests needs most of the model whatever the partition.

With handoff each replica's engine runs only the steps of the experts it holds
(`Engine.set_owned`): a step routed elsewhere ends that *part* of the request, and the
part's Result names the expert in `handoffs`. The caller (the ingress, or the cluster
simulator) sends the request on to that expert's replica as a continuation
(`Request.start`), and this module stitches the parts back into one Result.

Pure Python (no torch, no Ray): `coserve.server.replicas.facade` and
`coserve.cluster.coupled` share it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from coserve.types import FailureKind, Request, Result, Step

# A continuation's id: the request's id, this separator, its expert (the first part keeps
# the request's own id).
PART_SEPARATOR = "~"
# A continuation's latency target never drops below this: a part that arrives past the
# request's deadline is still served, just first.
MIN_PART_TARGET_S = 1e-3


@dataclass
class _Open:
    """A request while some of its parts are out."""

    request: Request
    submitted_s: float  # on the join's clock, as the deadline
    deadline_s: float
    parts: int = 1  # out now
    steps: list[Step] = field(default_factory=list)
    error: str | None = None
    error_kind: FailureKind | None = None
    failed_expert: str | None = None


class HandoffJoin:
    """The requests whose parts are out, and how each one's parts become one Result.
    Not thread-safe: call it from one thread (the simulator's loop, the ingress's event
    loop)."""

    def __init__(self, clock: Callable[[], float], latency_target_s: float) -> None:
        """`latency_target_s`: a request's deadline after it began, unless it says."""
        self._clock = clock
        self._latency_target_s = latency_target_s
        self._open: dict[str, _Open] = {}
        self._request_of: dict[str, str] = {}  # part id -> request id, for parts out
        self._numbers = itertools.count(1)

    def __len__(self) -> int:
        return len(self._open)

    def begin(self, request: Request) -> Request:
        """Track `request`; returns its first part (the request itself)."""
        if request.request_id in self._open or request.request_id in self._request_of:
            raise ValueError(f"request {request.request_id!r} is in flight already")
        target_s = request.latency_target_s or self._latency_target_s
        now = self._clock()
        self._open[request.request_id] = _Open(request, now, now + target_s)
        self._request_of[request.request_id] = request.request_id
        return request

    def forget(self, request_id: str) -> None:
        """Stop tracking a request its caller answers otherwise (its first part was never
        taken, or running it failed): its parts still out are dropped when they end."""
        self._open.pop(request_id, None)
        for part in [p for p, r in self._request_of.items() if r == request_id]:
            del self._request_of[part]

    def part_done(self, result: Result) -> tuple[list[Request], Result | None]:
        """A part's Result: the continuations to send now (one per handoff, each starting
        at its expert, due by the request's deadline) and, once no part is out, the
        request's Result (its steps in the order the parts finished; its times on the
        join's clock: replicas' clocks need not agree)."""
        request_id = self._request_of.pop(result.request_id, None)
        state = self._open.get(request_id) if request_id is not None else None
        if state is None:  # forgotten: its request was answered otherwise
            return [], None
        state.parts -= 1
        state.steps.extend(result.steps)
        if not result.ok and state.error is None:
            state.error, state.error_kind = result.error, result.error_kind
            state.failed_expert = result.failed_expert
        continuations = [] if not result.ok else [self._continuation(state, e)
                                                  for e in result.handoffs]
        state.parts += len(continuations)
        if state.parts:
            return continuations, None
        del self._open[request_id]
        return [], self._joined(state, self._clock())

    def _continuation(self, state: _Open, expert: str) -> Request:
        remaining_s = max(MIN_PART_TARGET_S, state.deadline_s - self._clock())
        # Named by the request and the expert, not by a counter, so a part's name (and
        # what is seeded by it, like the simulator's label draws) does not depend on the
        # order other requests' parts happened to end in.
        part = f"{state.request.request_id}{PART_SEPARATOR}{expert}"
        while part in self._request_of:  # the same expert twice at once (a cycle)
            part += f"{PART_SEPARATOR}{next(self._numbers)}"
        self._request_of[part] = state.request.request_id
        return replace(state.request, request_id=part, start=(expert,),
                       latency_target_s=remaining_s)

    @staticmethod
    def _joined(state: _Open, now_s: float) -> Result:
        return Result(request_id=state.request.request_id, ok=state.error is None,
                      steps=tuple(state.steps), submitted_s=state.submitted_s,
                      completed_s=now_s, error=state.error,
                      fields=dict(state.request.fields), error_kind=state.error_kind,
                      failed_expert=state.failed_expert)
