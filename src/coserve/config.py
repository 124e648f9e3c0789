"""Engine configuration: frozen, validated on construction, messages say how to fix."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from coserve.errors import ConfigError
from coserve.executors.budgets import DeviceBudget
from coserve.executors.spec import ExecutorSpec, default_executors
from coserve.manager.precision import PRECISION_MODES
from coserve.policies import (
    DEFAULT_LATENCY_TARGET_S,
    DEFAULT_MAX_DEFER_S,
    DEFAULT_POLICY,
    POLICY_NAMES,
)

DEFAULT_ACTIVATION_BYTES = 256 << 20  # per executor, for batch splitting
# The host-RAM cache in front of GPU pools, when a GPU executor exists and no size is
# given: half of all expert bytes (every GPU switch a host hit for the warm half), never
# more than a quarter of the host's RAM (the CPU executors' pool and the OS need the rest).
DEFAULT_HOST_CACHE_FRACTION = 0.5
DEFAULT_HOST_CACHE_RAM_SHARE = 0.25


@dataclass(frozen=True)
class EngineConfig:
    """How to serve a CoE model.

    Budgets are bytes of expert weights, per device, each split evenly over that device's
    executors. `budget_bytes` (or `budget_fraction` of all expert bytes; neither: unlimited)
    is the CPU executors' pool, and each GPU's unless `device_budgets` gives it its own
    (bytes, or a fraction of the GPU's memory; `parse_gpu_budgets`). Activation memory is
    on top, per executor: `activation_bytes`, or a device budget's own. `host_cache_bytes`:
    the host-RAM cache in front of GPU pools; None: off without a GPU executor, else
    DEFAULT_HOST_CACHE_FRACTION of expert bytes (at most DEFAULT_HOST_CACHE_RAM_SHARE of
    the host's RAM)."""

    policy: str = DEFAULT_POLICY
    budget_bytes: int | None = None
    budget_fraction: float | None = None
    executors: tuple[ExecutorSpec, ...] = field(default_factory=default_executors)
    activation_bytes: int = DEFAULT_ACTIVATION_BYTES
    host_cache_bytes: int | None = None  # host RAM cache in front of CUDA pools
    device_budgets: tuple[DeviceBudget, ...] = ()
    storage: str = "none"
    direct_io: bool = True
    max_defer_s: float = DEFAULT_MAX_DEFER_S  # coserve-paper's overtaking bound
    latency_target_s: float = DEFAULT_LATENCY_TARGET_S  # a request's, unless it gives one
    usage_blend: float = 0.5  # weight of observed routing once enough is observed
    usage_min_samples: int = 50
    measure_costs: bool = True
    quarantine_after: int = 3  # consecutive failed attempts that quarantine an expert; 0: never
    # A quarantined expert is tried again (one batch) after this long, doubling each time
    # the probe fails; None: it stays quarantined until an operator releases it.
    quarantine_probe_s: float | None = 30.0
    # A batch (loading its expert, or one forward) running longer marks its executor stuck:
    # its requests fail and its queue moves to the other executors. None: no watchdog.
    batch_deadline_s: float | None = 60.0
    # The stored precision every load reads (fp32, or a variant written by `coserve repo
    # quantize`), or "auto": the expert manager chooses per load (manager/precision.py).
    precision: str = "fp32"

    def __post_init__(self) -> None:
        self._check_budget()
        self._check_times()
        if not self.executors:
            raise ConfigError("at least one executor is needed, e.g. executors=parse_executors('cpu:1')")
        if self.activation_bytes <= 0:
            raise ConfigError(f"activation_bytes must be > 0, got {self.activation_bytes}")
        if self.host_cache_bytes is not None and self.host_cache_bytes < 0:
            raise ConfigError(f"host_cache_bytes must be >= 0 (0: no host cache; None: the "
                              f"default), got {self.host_cache_bytes}")
        if not 0 <= self.usage_blend <= 1:
            raise ConfigError(f"usage_blend must be in [0, 1], got {self.usage_blend}")
        if self.precision not in PRECISION_MODES:
            raise ConfigError(f"unknown precision {self.precision!r}: choose one of "
                              f"{', '.join(PRECISION_MODES)}")
        if self.quarantine_after < 0:
            raise ConfigError(f"quarantine_after must be >= 0 failures (0 never quarantines), "
                              f"got {self.quarantine_after}")

    def _check_budget(self) -> None:
        if self.policy not in POLICY_NAMES:
            raise ConfigError(f"unknown policy {self.policy!r}; choose one of {', '.join(POLICY_NAMES)}")
        if self.budget_bytes is not None and self.budget_fraction is not None:
            raise ConfigError("give budget_bytes or budget_fraction, not both")
        if self.budget_bytes is not None and self.budget_bytes <= 0:
            raise ConfigError(f"budget_bytes must be positive, got {self.budget_bytes}")
        if self.budget_fraction is not None and not 0 < self.budget_fraction <= 1:
            raise ConfigError(f"budget_fraction must be in (0, 1], got {self.budget_fraction}")
        devices = [b.device for b in self.device_budgets]
        if len(set(devices)) != len(devices):
            raise ConfigError(f"device_budgets name a device twice ({devices}): give each one "
                              f"budget")

    def _check_times(self) -> None:
        if not 0 < self.latency_target_s < math.inf:
            raise ConfigError(f"latency_target_s must be a positive number of seconds, "
                              f"got {self.latency_target_s}")
        if self.max_defer_s < 0:
            raise ConfigError(f"max_defer_s must be >= 0 seconds, got {self.max_defer_s}")
        for name in ("batch_deadline_s", "quarantine_probe_s"):
            value = getattr(self, name)
            if value is not None and not 0 < value < math.inf:
                raise ConfigError(f"{name} must be a positive number of seconds (or None to "
                                  f"turn it off), got {value}")

    def resolve_budget(self, total_expert_bytes: int) -> int | None:
        """The budget in bytes of a device pool without its own (the CPU executors'
        pool); None = unlimited."""
        if self.budget_fraction is not None:
            return int(self.budget_fraction * total_expert_bytes)
        return self.budget_bytes

