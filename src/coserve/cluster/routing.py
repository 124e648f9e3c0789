"""Replica routing: which replica a request goes to. Small pure policy objects (no torch,
no Ray) behind one interface, chosen by name with one flat lookup (`replica_routing`),
and shared by the Ray Serve ingress (`coserve.server.replicas.facade`) and the cluster
simulator (`coserve.cluster.simulate`). A baseline is a different object, never a branch
on its name.

- `partitioned` (`OwnerFirst`): the replica holding the request's first expert, spilled
  by `Partition.spill_order` when its queued work is well above the least loaded one's.
- `random` (`UniformRandom`): seeded uniform over the replicas; a baseline for measuring
  what partitioning saves, not a production setting.

Both put replicas that are down last and, on a retry, replicas tried fewer times first
(a replica that is down may have restarted since, so with every replica down one is
still tried).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from coserve.cluster.partition import SPILL_MARGIN_S, Partition
from coserve.errors import ConfigError


@dataclass(frozen=True)
class ReplicaView:
    """What a routing policy sees of the replicas when it picks one for a request:
    the partition now in force, each replica's queued work (seconds), and optionally the
    seconds of loads the request would cost each replica (`switch_s`), the replicas that
    are down, and those this request already tried (one entry per attempt)."""

    partition: Partition
    loads_s: Sequence[float]
    switch_s: Sequence[float] | None = None
    down: Collection[int] = frozenset()
    tried: Sequence[int] = ()

    @property
    def num_replicas(self) -> int:
        return self.partition.num_replicas


class ReplicaRouting(Protocol):
    # Whether requests go where the partition says: then each replica's engine starts
    # favouring the experts it owns (its usage prior), and keeping the partition current
    # (re-homing, repartitioning) matters.
    uses_partition: bool

    def choose(self, first: Sequence[str], view: ReplicaView) -> int:
        """The replica for a request whose first experts are `first`."""
        ...


def _availability(view: ReplicaView) -> Callable[[int], tuple[bool, int]]:
    """Sort key: replicas that are up first, then those tried fewer times."""
    return lambda r: (r in view.down, view.tried.count(r))


class OwnerFirst:
    """`partitioned`: in spill order (home first unless it is more than `margin_s`
    busier than the cheapest replica), the first replica that is up and tried least."""

    uses_partition = True

    def __init__(self, margin_s: float = SPILL_MARGIN_S) -> None:
        if margin_s < 0:
            raise ConfigError(f"spill margin must be >= 0 seconds, got {margin_s}")
        self.margin_s = margin_s

    def choose(self, first: Sequence[str], view: ReplicaView) -> int:
        order = view.partition.spill_order(first, view.loads_s, self.margin_s, view.switch_s)
        available = _availability(view)
        return min(order, key=lambda r: (*available(r), order.index(r)))


class UniformRandom:
    """`random`: uniform over the replicas that are up and tried least (seeded)."""

    uses_partition = False

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)

    def choose(self, first: Sequence[str], view: ReplicaView) -> int:
        available = _availability(view)
        best = min(available(r) for r in range(view.num_replicas))
        return self._rng.choice([r for r in range(view.num_replicas) if available(r) == best])


_FACTORIES: dict[str, Callable[[float, int], ReplicaRouting]] = {
    "partitioned": lambda margin_s, seed: OwnerFirst(margin_s),
    "random": lambda margin_s, seed: UniformRandom(seed),
}
ROUTINGS: tuple[str, ...] = tuple(_FACTORIES)
DEFAULT_ROUTING = "partitioned"


def check_routing(name: str) -> str:
    """`name` if it names a routing; else ConfigError saying which exist."""
    if name not in _FACTORIES:
        raise ConfigError(f"unknown replica routing {name!r}: choose one of {', '.join(ROUTINGS)}")
    return name


def replica_routing(name: str, *, margin_s: float = SPILL_MARGIN_S, seed: int = 0) -> ReplicaRouting:
    """A fresh routing policy by name (`random` holds its generator: never share one)."""
    return _FACTORIES[check_routing(name)](margin_s, seed)
