"""A cluster with step handoff on the simulator: N replicas' simulators on one virtual
clock (`EventLoop`), so a step one replica hands off reaches another replica's queue
when it is routed there.

The ingress's part is modelled as the Ray Serve ingress does it: a request goes to the
replica its routing policy picks for its first experts (the owner, spilled when the
owner's queued work is `margin_s` above the cheapest replica's), each replica runs the
steps of the experts it holds, and a handed-off step is routed the same way for its
expert, `hop_s` after the part that reached it ended (the part's answer back to the
ingress and the continuation out to the next replica). The queued work the policy
compares is each replica's scheduler backlog now (executor seconds), not a prediction.
`HandoffJoin` stitches the parts into each request's Result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from coserve.cluster.handoff import HandoffJoin
from coserve.cluster.partition import Partition, owned_usage
from coserve.cluster.routing import ReplicaRouting, ReplicaView
from coserve.errors import RequestError
from coserve.simulator.simulator import EventLoop, Simulator
from coserve.stats import EngineStats
from coserve.tracker import rejected
from coserve.types import Request, Result

# The seconds between a part ending on one replica and its continuation queued on the
# next: the part's answer to the ingress and the continuation's call out, two Ray Serve
# calls on a LAN (Serve's own overhead is about a millisecond a call).
HANDOFF_HOP_S = 0.002
# How often the ingress polls the replicas' status, and with it tells each one the experts
# queued on the others (the Ray Serve ingress's STATUS_INTERVAL_S).
POLL_S = 0.5


@dataclass
class CoupledOutcome:
    """What the coupled run gives the cluster row."""

    stats: list[EngineStats]  # per replica; each counts parts as requests
    results: dict[str, Result]  # joined, by request id
    wall_s: float  # to the last answer
    parts_per_replica: list[int]
    num_spilled: int = 0  # parts sent to a replica not holding their first expert
    num_handoffs: int = 0  # continuations sent
    failed: list[str] = field(default_factory=list)


class CoupledCluster:
    """One run: build it, then `run(requests)`."""

    def __init__(self, simulators: Sequence[Simulator], partition: Partition,
                 routing: ReplicaRouting, *, latency_target_s: float,
                 load_s: Callable[[str], float] | None = None,
                 hop_s: float = HANDOFF_HOP_S, poll_s: float = POLL_S) -> None:
        """`simulators`: one per replica (each with its replica's usage prior).
        `load_s(expert)`: its switch seconds; the routing then also weighs the loads a
        part would cost each replica whose pools lack its first experts."""
        if len(simulators) != partition.num_replicas:
            raise ValueError(f"{len(simulators)} simulators for {partition.num_replicas} replicas")
        self._sims, self._partition, self._routing = list(simulators), partition, routing
        self._hop_s, self._poll_s, self._load_s = hop_s, poll_s, load_s
        self.loop = EventLoop()
        self._join = HandoffJoin(self.loop, latency_target_s)
        single = partition.num_replicas == 1
        for r, sim in enumerate(self._sims):
            owned = None if single else partition.experts_held(r)
            sim.attach(self.loop, owned=owned, deliver=self._part_done)
        self._out = CoupledOutcome([], {}, 0.0, [0] * len(self._sims))

    def run(self, requests: Sequence[Request], backlog: bool) -> CoupledOutcome:
        """Every request at its arrival; with `backlog` all at once, each replica admitting
        its share one by one at the plan's submit cost (as one engine admits a backlog)
        and its executors starting once its share is queued."""
        if backlog:
            for request in requests:
                self._arrive(request, backlog=True)
            self.loop.now = 0.0
            for sim, parts in zip(self._sims, self._out.parts_per_replica, strict=True):
                sim.start_executors(parts * sim.costs.submit_s)
        else:
            for request in requests:
                self.loop.at(request.arrival_s, self._arrive, request)
            for sim in self._sims:
                sim.start_executors(0.0)
        if self._poll_s > 0:
            self.loop.at(0.0, self._poll)
        self.loop.run()
        out = self._out
        out.stats = [sim.snapshot() for sim in self._sims]
        return out

    def _poll(self) -> None:
        """Tell each replica what the others have queued; again in POLL_S while any
        request is out."""
        queued = [sim.queued_experts() for sim in self._sims]
        for r, sim in enumerate(self._sims):
            sim.set_queued_elsewhere(frozenset().union(*queued[:r], *queued[r + 1:]))
        if len(self._join) or self.loop.pending():
            self.loop.at(self.loop.now + self._poll_s, self._poll)

    def _arrive(self, request: Request, backlog: bool = False) -> None:
        try:
            first = self._sims[0].model.router.first(request.fields)
        except RequestError as exc:
            self._out.results[request.request_id] = rejected(request, str(exc), self.loop.now)
            return
        replica = self._choose(first)
        if backlog:  # the replica's clock when it admits its next request of the backlog
            self.loop.now = self._out.parts_per_replica[replica] * self._sims[replica].costs.submit_s
        self._submit(replica, self._join.begin(request))

    def _send(self, part: Request, first: Sequence[str]) -> None:
        self._submit(self._choose(first), part)

    def _choose(self, first: Sequence[str]) -> int:
        switch_s = None if self._load_s is None else [
            sum(self._load_s(e) for e in first if not sim.holds(e)) for sim in self._sims]
        view = ReplicaView(self._partition, [sim.backlog_s() for sim in self._sims], switch_s)
        replica = self._routing.choose(first, view)
        self._out.num_spilled += replica not in self._partition.holders_of(first[0])
        return replica

    def _submit(self, replica: int, part: Request) -> None:
        self._out.parts_per_replica[replica] += 1
        self._sims[replica].submit(part)

    def _part_done(self, result: Result) -> None:
        continuations, joined = self._join.part_done(result)
        for part in continuations:
            assert part.start is not None
            self._out.num_handoffs += 1
            self.loop.at(self.loop.now + self._hop_s, self._send, part, part.start)
        if joined is not None:
            self._out.results[joined.request_id] = joined
            self._out.wall_s = max(self._out.wall_s, joined.completed_s)


def replica_priors(partition: Partition, usage: Mapping[str, float]) -> list[dict[str, float] | None]:
    """Each replica's usage prior with handoff: what it holds at its usage, the rest
    scaled down (a replica runs only the steps of what it holds, spills aside). One
    replica: None (the engine's own, as for one machine)."""
    if partition.num_replicas == 1:
        return [None]
    return [owned_usage(usage, partition.experts_held(r)) for r in range(partition.num_replicas)]
