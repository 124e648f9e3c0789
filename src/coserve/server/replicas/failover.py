"""Failing over the calls in flight to a replica that died. Pure asyncio: no Ray.

A call to a replica whose actor process was killed does not fail: Serve holds it until
the replica restarts (seconds). So every call waits on two things, its answer and its
replica being lost; the status poll (a thread) calls `fail_over(replica)` when the
replica's status call fails or its restart id changes, and each call waiting on it
raises ReplicaLostError (a replica failure: `routing.call_with_retries` retries it on
the next replica in spill order, within the request's attempts). The lost call is
cancelled and never read again, so an answer it still brings is dropped: a request is
answered once."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class ReplicaLostError(Exception):
    """The call's replica died or restarted while the call was in flight."""


class InFlight:
    """The calls in flight to each replica, each with the future that says its replica was
    lost. Thread-safe: calls wait on event loops, `fail_over` comes from the poller."""

    def __init__(self, num_replicas: int) -> None:
        self._lock = threading.Lock()
        # Per replica: a waiting call's "lost" future -> the loop it waits on.
        self._lost: list[dict[asyncio.Future, asyncio.AbstractEventLoop]] = [{} for _ in range(num_replicas)]

    def num_waiting(self, replica: int) -> int:
        with self._lock:
            return len(self._lost[replica])

    async def wait(self, replica: int, call: Awaitable[T]) -> T:
        """`call`'s value, or ReplicaLostError once `fail_over(replica)` (then `call` is
        cancelled, as it is when the waiter itself is)."""
        loop = asyncio.get_running_loop()
        lost: asyncio.Future = loop.create_future()
        answer = asyncio.ensure_future(call)
        with self._lock:
            self._lost[replica][lost] = loop
        try:
            done, _ = await asyncio.wait({answer, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            with self._lock:
                del self._lost[replica][lost]
            if not answer.done():
                _cancel(call, answer)
        if answer in done:
            return answer.result()
        raise ReplicaLostError(lost.result())

    def fail_over(self, replica: int, reason: str) -> int:
        """Fail every call now in flight to `replica`; how many there were."""
        with self._lock:
            waiting = list(self._lost[replica].items())
        for lost, loop in waiting:
            loop.call_soon_threadsafe(_lose, lost, reason)
        return len(waiting)


def _lose(lost: asyncio.Future, reason: str) -> None:
    if not lost.done():
        lost.set_result(reason)


def _cancel(call: Awaitable, answer: asyncio.Future) -> None:
    cancel = getattr(call, "cancel", None)  # Serve's DeploymentResponse: cancel on the replica
    if cancel is not None and call is not answer:
        with contextlib.suppress(Exception):  # best effort: the replica may be gone
            cancel()
    answer.cancel()
    # Retrieve whatever it ends with (RequestCancelledError, a late answer): nobody reads it.
    answer.add_done_callback(lambda f: f.cancelled() or f.exception())
