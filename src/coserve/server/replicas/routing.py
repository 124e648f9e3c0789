"""What happens when a request's replica fails, and the ingress's view of each replica's
queued work. Pure: no Ray, no torch; the ingress wires these to its handles. Which
replica a request goes to is a routing policy (`coserve.cluster.routing`: owner first or
random, down replicas last), shared with the cluster simulator.

- **Bounded retries:** a call that failed because the *replica* failed (its actor died or
  is restarting, Serve has no replica for it, its engine is shutting down, or the status
  poll found it dead or restarted while the call was in flight: `failover`) is retried on
  the next replica, at most `max_attempts` calls in all; then `NoReplicaError` (503).
  A request that failed on its own merits (a failed expert, a bad input) comes back as a
  failed Result and is never retried.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

from coserve.server.errors import UnavailableError

T = TypeVar("T")

# Exceptions (by class name, anywhere in the MRO: Ray wraps a replica's exception in a
# subclass of it) that mean the replica failed, not the request. Names, so that this
# module needs no Ray.
REPLICA_FAILURES = frozenset({
    "RayActorError",  # the actor died or is unreachable (ActorDiedError, ActorUnavailableError)
    "WorkerCrashedError",
    "NodeDiedError",
    "DeploymentUnavailableError",  # Serve has no running replica for the deployment
    "BackPressureError",  # the replica's queue is full (max_ongoing/max_queued)
    "EngineClosedError",  # the replica's engine is draining (the replica is being replaced)
    "ReplicaLostError",  # the status poll found the replica dead or restarted (failover)
})
# Before the first answer: the seconds of work one request is assumed to bring a replica.
DEFAULT_REQUEST_WORK_S = 0.05
EWMA_WEIGHT = 0.1  # of the newest observation


class NoReplicaError(UnavailableError):
    """Every attempt failed because its replica failed (503 + Retry-After)."""


def is_replica_failure(exc: BaseException) -> bool:
    """Whether `exc` says the replica failed (retry elsewhere), not the request."""
    return any(cls.__name__ in REPLICA_FAILURES for cls in type(exc).__mro__)


async def call_with_retries(call: Callable[[int], Awaitable[T]], choose: Callable[[list[int]], int],
                            max_attempts: int, on_failure: Callable[[int, BaseException], None]
                            ) -> tuple[T, int, int]:
    """(call's value, the replica that answered, the number of attempts). `choose(tried)`
    picks each attempt's replica; `on_failure(replica, exc)` hears each replica failure.
    Raises the first error that is not a replica failure, or NoReplicaError."""
    tried: list[int] = []
    failures: list[str] = []
    for _ in range(max_attempts):
        replica = choose(tried)
        tried.append(replica)
        try:
            return await call(replica), replica, len(tried)
        except Exception as exc:
            if not is_replica_failure(exc):
                raise
            on_failure(replica, exc)
            failures.append(f"replica {replica}: {type(exc).__name__}")
    raise NoReplicaError(f"no replica could take the request after {len(tried)} attempt(s) "
                         f"({'; '.join(failures)}); retry shortly: replicas restart on their own",
                         headers={"Retry-After": "1"})


class Loads:
    """Each replica's queued work in seconds, as the ingress sees it: requests in flight
    to it x an estimate of one request's work (a moving average of round trips divided
    by the requests in flight when each was sent). Thread-safe."""

    def __init__(self, num_replicas: int) -> None:
        self._lock = threading.Lock()
        self.in_flight = [0] * num_replicas
        self.request_work_s = DEFAULT_REQUEST_WORK_S

    def seconds(self) -> list[float]:
        with self._lock:
            return [n * self.request_work_s for n in self.in_flight]

    def sent(self, replica: int) -> int:
        """Count a call; returns the calls in flight to `replica` including it."""
        with self._lock:
            self.in_flight[replica] += 1
            return self.in_flight[replica]

    def done(self, replica: int, round_trip_s: float | None, num_in_flight: int) -> None:
        """A call finished (`round_trip_s` None: it failed, and says nothing of the work)."""
        with self._lock:
            self.in_flight[replica] -= 1
            if round_trip_s is not None:
                sample = round_trip_s / max(1, num_in_flight)
                self.request_work_s += EWMA_WEIGHT * (sample - self.request_work_s)
