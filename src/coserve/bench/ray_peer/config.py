"""What the Ray Serve peer is given: its settings, its sizing rule, and whether Ray is
installed. Importing this module does not import Ray."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from coserve.errors import ConfigError
from coserve.loader.storage import storage_profile

RAY_PEER_POLICY = "ray-serve"
RAY_APP_NAME = "coserve-ray-peer"

# Largest batch a replica runs; coserve's tiny experts stop gaining per item well before.
DEFAULT_MAX_BATCH_SIZE = 8
# How long a replica waits to fill a batch: short, because the driver's window (16 by
# default) keeps few requests per expert queued at once, and waiting only adds latency.
DEFAULT_BATCH_WAIT_TIMEOUT_S = 0.002
# The object store only carries inputs and replies (kilobytes each); Ray's default (30%
# of RAM) would reserve gigabytes of shared memory on a shared machine.
RAY_OBJECT_STORE_BYTES = 256 * 1024 * 1024


def ray_available() -> bool:
    """Whether Ray Serve can be imported (`pip install "ray[serve]==2.60.0"`)."""
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        return False
    return True


def models_per_replica(budget_bytes: int, num_replicas: int, largest_expert_bytes: int) -> int:
    """The N of `max_num_models_per_replica`: whole experts of the largest size that fit in
    one replica's equal share of the byte budget, at least 1."""
    if num_replicas < 1:
        raise ConfigError(f"num_replicas must be at least 1, got {num_replicas}")
    if largest_expert_bytes < 1:
        raise ConfigError(f"largest_expert_bytes must be positive, got {largest_expert_bytes}")
    return max(1, (budget_bytes // num_replicas) // largest_expert_bytes)


@dataclass(frozen=True)
class RayPeerConfig:
    """Everything about the peer except the model and the trace."""

    budget_bytes: int
    storage: str = "none"
    max_inflight: int = 16
    num_replicas: int = 1
    realtime: bool = False
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    batch_wait_timeout_s: float = DEFAULT_BATCH_WAIT_TIMEOUT_S
    num_cpus: int = field(default_factory=lambda: os.cpu_count() or 1)
    # How a load makes its module. "meta": a weightless skeleton that adopts the tensors
    # read from storage (load_state_dict(assign=True): no random init, no copy), what a
    # careful PyTorch user writes. "cpu": the plain build + copying load_state_dict, whose
    # random initialisation costs several times the storage read on the tiny CoE.
    build_device: str = "meta"
    # Intra-op threads per replica; None: the cores but one, split between the replicas.
    # The driver, Ray's raylet/GCS/controller and the replica's own event loop need CPU
    # too, and OpenMP threads that spin on a busy core collapse: on 2 cores one replica
    # with 2 threads served 9 req/s where 1 thread served 34 (all experts resident).
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("budget_bytes", "max_inflight", "num_replicas", "max_batch_size", "num_cpus"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.batch_wait_timeout_s < 0:
            raise ConfigError(f"batch_wait_timeout_s must be >= 0 seconds, "
                              f"got {self.batch_wait_timeout_s!r}")
        storage_profile(self.storage)  # ConfigError naming the valid profiles
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ConfigError(f"torch_threads must be a positive integer or None (automatic), "
                              f"got {self.torch_threads!r}")
        if self.build_device not in ("meta", "cpu"):
            raise ConfigError(f"build_device must be 'meta' or 'cpu', got {self.build_device!r}")

    @property
    def threads_per_replica(self) -> int:
        return self.torch_threads or max(1, (self.num_cpus - 1) // self.num_replicas)
