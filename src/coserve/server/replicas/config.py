"""What a replica set is started from: the repository, the engine's config and plan, the
HTTP settings, the number of replicas and the retry bound. Picklable (Ray sends it to
every replica); importing this module imports neither Ray nor torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from coserve.cluster.partition import SPILL_MARGIN_S
from coserve.cluster.rebalance import RebalanceConfig
from coserve.cluster.routing import DEFAULT_ROUTING, check_routing, replica_routing
from coserve.config import EngineConfig
from coserve.errors import ConfigError
from coserve.planfile import Plan
from coserve.server.config import ServerConfig

APP_NAME = "coserve"
INGRESS_NAME = "ingress"
REPLICA_PREFIX = "replica-"  # replica i is the deployment "replica-<i>"
# How often the ingress asks each replica for its status (readiness, queue depths,
# resident experts); a replica that does not answer within the timeout counts as down,
# and its calls in flight are failed over. A SIGKILLed replica's status call does not
# fail, it waits in Serve like its other calls: this timeout is how soon those are
# retried elsewhere (a status answers in milliseconds, even from a busy replica).
STATUS_INTERVAL_S = 0.5
STATUS_TIMEOUT_S = 2.0
# The object store carries only images and results (kilobytes each); Ray's default (30%
# of RAM) would reserve gigabytes of shared memory on a shared machine.
RAY_OBJECT_STORE_BYTES = 256 * 1024 * 1024


def replica_name(index: int) -> str:
    return f"{REPLICA_PREFIX}{index}"


@dataclass(frozen=True)
class ReplicaSetup:
    """Everything the ingress and the replicas are built from."""

    repo: Path
    num_replicas: int
    engine_config: EngineConfig = field(default_factory=EngineConfig)
    server_config: ServerConfig = field(default_factory=ServerConfig)
    plan: Plan | None = None
    trust_code: bool = False
    # Attempts per request, the first included: a request whose replica died is retried
    # on the next replica in spill order, then answered 503. None: one per replica, plus
    # one (a replica that restarted may take the last).
    max_attempts: int | None = None
    # CPUs Ray reserves for each replica (its engine's executors use them).
    replica_num_cpus: float = 1.0
    # How the ingress picks a request's replica (coserve.cluster.routing.ROUTINGS):
    # "partitioned" (the owner of its first expert, spilled by queued work) or "random"
    # (seeded uniform over the replicas that are up: a baseline, not for production).
    routing: str = DEFAULT_ROUTING
    routing_seed: int = 0  # of "random"
    # "partitioned": spill once the owner's predicted queue is this much longer than the
    # shortest (coserve.cluster.routing.OwnerFirst)
    spill_margin_s: float = SPILL_MARGIN_S
    # Step handoff (coserve.cluster.handoff; "partitioned" only): each replica runs only
    # the steps of the experts it owns and the ingress sends the rest on to their owner,
    # over a partition made expert by expert (`partition_steps`). For CoEs with fan-out;
    # off: a replica runs whole requests (families of experts live together).
    handoff: bool = False
    # When the ingress re-partitions on a usage shift (re-homing on a replica's death
    # always happens).
    rebalance: RebalanceConfig = field(default_factory=RebalanceConfig)

    def __post_init__(self) -> None:
        if self.num_replicas < 1:
            raise ConfigError(f"num_replicas must be at least 1, got {self.num_replicas}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1 (or None: replicas + 1), "
                              f"got {self.max_attempts}")
        if self.replica_num_cpus < 0:
            raise ConfigError(f"replica_num_cpus must be >= 0, got {self.replica_num_cpus}")
        check_routing(self.routing)
        if self.handoff and not replica_routing(self.routing).uses_partition:
            raise ConfigError(f"handoff needs the partitioned routing (steps go to their "
                              f"expert's owner), not {self.routing!r}")
        if not self.spill_margin_s >= 0:  # NaN fails this too
            raise ConfigError(f"spill_margin_s must be >= 0 seconds, got {self.spill_margin_s}")

    @property
    def attempts(self) -> int:
        return self.max_attempts or self.num_replicas + 1
