"""A replica: one coserve Engine (its own budget, executors, storage and host cache),
started from the repository path, answering requests with their Result and its status
(readiness, queues, resident experts, quarantine) to the ingress's poll.

Each replica starts with its own partition's experts favoured: its engine's usage prior
is the model's (or the plan's) with every expert another replica owns scaled down by
`FOREIGN_USAGE_SCALE` (`coserve.cluster.partition`), so initial placement loads what this replica will be asked for.
A request for an expert it does not own (spilled, or re-homed from a replica that is
down) is served all the same: the engine loads what it lacks. With random routing
(`--replica-routing random`) every replica is asked for every expert alike, so each
starts from the plain prior.

The status carries the engine's counters (`engine.stats(latencies=False)`: switches and
bytes by path, pool hits, batches; microseconds) and the engine's incarnation, so the
ingress can sum them and tell a restarted replica's fresh counters from a reset."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from coserve.cluster.partition import owned_usage
from coserve.cluster.routing import replica_routing
from coserve.server.replicas.config import ReplicaSetup
from coserve.stats import EngineStats
from coserve.types import Request, Result

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class ReplicaStatus:
    """One replica's engine as the ingress sees it (picklable)."""

    index: int
    running: bool
    problems: tuple[str, ...]
    executor_specs: tuple[Any, ...]  # ExecutorSpec
    queue_depths: tuple[int, ...]
    pool_bytes: tuple[int, ...]
    pool_budgets: tuple[int | None, ...]
    resident: tuple[frozenset[str], ...]
    in_host_cache: frozenset[str]
    usage: Mapping[str, float]
    queued: frozenset[str]  # experts with tasks queued now
    quarantine: Mapping[str, Any]  # expert -> QuarantineRecord
    stats: EngineStats  # its engine's counters, without latencies
    incarnation: str  # new each time the replica's engine is constructed


def replica_prior(prior: Mapping[str, float], owner: Mapping[str, int], index: int) -> dict[str, float]:
    """The usage prior of replica `index`: its own experts as they are, the others scaled
    down by FOREIGN_USAGE_SCALE."""
    return owned_usage(prior, {e for e, r in owner.items() if r == index})


class EngineReplica:
    """The deployment's class (Ray Serve constructs it in the replica's actor)."""

    def __init__(self, setup: ReplicaSetup, index: int, owner: Mapping[str, int]) -> None:
        from coserve.engine.engine import Engine
        from coserve.repository import open_repository

        self.index = index
        self.incarnation = uuid.uuid4().hex
        self._drain_timeout_s = setup.server_config.drain_timeout_s
        model = open_repository(setup.repo, trust_code=setup.trust_code)
        self._prior = dict(setup.plan.usage if setup.plan is not None else model.usage)
        self._routed_by_partition = replica_routing(setup.routing).uses_partition
        self._handoff = setup.handoff
        self.engine = Engine(model, setup.engine_config, plan=setup.plan,
                             usage=self._usage_for(owner))
        self._own(owner)
        self.engine.start()  # Serve marks the replica running once this returns
        log.info("replica %d ready: %d expert(s) placed", index,
                 sum(len(r) for r in self.engine.resident()))

    async def infer(self, request: Request) -> Result:
        """The request's Result (a failed request is a failed Result, never an exception;
        EngineClosedError while this replica drains: the ingress retries elsewhere)."""
        return await asyncio.wrap_future(self.engine.submit(request))

    def adopt_partition(self, owner: Mapping[str, int]) -> None:
        """The ingress re-partitioned: favour the experts this replica owns now (its
        engine's usage prior, as at deployment), so it keeps them and lets go of the
        ones it gave away."""
        self.engine.set_usage_prior(self._usage_for(owner))
        self._own(owner)

    def _own(self, owner: Mapping[str, int]) -> None:
        """With handoff, the engine runs only the steps of what this replica owns."""
        if self._handoff:
            self.engine.set_owned({e for e, r in owner.items() if r == self.index})

    def set_queued_elsewhere(self, experts: frozenset[str]) -> None:
        """The ingress's poll: experts with tasks queued on the other replicas (with
        handoff, groups they feed here wait for them, as for predecessors queued here)."""
        self.engine.set_queued_elsewhere(experts)

    def _usage_for(self, owner: Mapping[str, int]) -> dict[str, float]:
        if not self._routed_by_partition:
            return dict(self._prior)
        return replica_prior(self._prior, owner, self.index)

    def status(self) -> ReplicaStatus:
        engine = self.engine
        return ReplicaStatus(
            index=self.index, running=engine.running, problems=tuple(engine.health()),
            executor_specs=tuple(engine.executor_specs), queue_depths=tuple(engine.queue_depths()),
            pool_bytes=tuple(engine.pool_bytes()), pool_budgets=tuple(engine.pool_budgets()),
            resident=tuple(frozenset(r) for r in engine.resident()),
            in_host_cache=frozenset(e for e in engine.model.experts if engine.in_host_cache(e)),
            usage=engine.usage(), queued=frozenset(engine.queued_experts()),
            quarantine=engine.quarantine.records(),
            stats=engine.stats(latencies=False), incarnation=self.incarnation)

    def stats(self, latencies: bool = False) -> EngineStats:
        """Its engine's statistics (the status poll carries the counters already)."""
        return self.engine.stats(latencies=latencies)

    def release(self, expert: str) -> bool:
        return self.engine.quarantine.release(expert)

    def check_health(self) -> None:
        """Serve's health check: a replica whose engine stopped is replaced."""
        if not self.engine.running:
            raise RuntimeError(f"replica {self.index}: the engine is not running")

    def __del__(self) -> None:
        # Serve calls this once the replica's requests in flight are done (graceful
        # shutdown): the engine finishes what it still holds, within the drain deadline.
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close(timeout_s=self._drain_timeout_s)
