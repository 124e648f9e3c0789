"""Engine configuration: frozen, validated on construction, messages say how to fix."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from coserve.errors import ConfigError
from coserve.policies import DEFAULT_MAX_DEFER_S, POLICY_NAMES, PolicySet

DEFAULT_ACTIVATION_BYTES = 256 << 20  # per executor, for batch splitting


@dataclass(frozen=True)
class ExecutorSpec:
    """One executor: a worker bound to a processor ('cpu' or 'cuda:N')."""

    processor: str = "cpu"
    num_threads: int = 1  # intra-op threads (CPU executors)

    def __post_init__(self) -> None:
        kind, _, index = self.processor.partition(":")
        if kind not in ("cpu", "cuda") or (kind == "cuda" and not index.isdigit()):
            raise ConfigError(
                f"executor processor {self.processor!r} is not 'cpu' or 'cuda:N' (e.g. cuda:0)"
            )
        if self.num_threads < 1:
            raise ConfigError(f"executor num_threads must be >= 1, got {self.num_threads}")


def parse_executors(text: str) -> tuple[ExecutorSpec, ...]:
    """'cpu:2' -> two CPU executors; 'cpu:1,cuda:0:2' -> one CPU and two on cuda:0.
    CPU cores are shared evenly between the CPU executors."""
    specs: list[tuple[str, int]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        bits = part.split(":")
        try:
            if bits[0] == "cpu":
                specs.append(("cpu", int(bits[1]) if len(bits) > 1 else 1))
            elif bits[0] == "cuda":
                specs.append((f"cuda:{int(bits[1])}", int(bits[2]) if len(bits) > 2 else 1))
            else:
                raise ValueError
        except (ValueError, IndexError):
            raise ConfigError(
                f"cannot read executors {text!r}: use e.g. 'cpu:2' or 'cpu:1,cuda:0:2'"
            ) from None
    if not specs or any(n < 1 for _, n in specs):
        raise ConfigError(f"executors {text!r} name no executor; use e.g. 'cpu:2'")
    num_cpu = sum(n for p, n in specs if p == "cpu")
    threads = auto_threads(num_cpu)
    return tuple(ExecutorSpec(p, threads if p == "cpu" else 1) for p, n in specs for _ in range(n))


def auto_threads(num_cpu_executors: int) -> int:
    """Intra-op threads per CPU executor: the cores but one, shared evenly. The loaders,
    the prefetchers and the submitting thread need a core too, and OpenMP workers that
    spin on an oversubscribed core collapse: on 2 cores one executor with 2 threads ran
    the tiny CoE at 5 req/s where 1 thread ran it at 96."""
    return max(1, ((os.cpu_count() or 1) - 1) // max(1, num_cpu_executors))


def default_executors() -> tuple[ExecutorSpec, ...]:
    return parse_executors(f"cpu:{min(2, os.cpu_count() or 1)}")


@dataclass(frozen=True)
class EngineConfig:
    """How to serve a CoE model.

    The budget is the bytes of expert weights the executing pools may hold, all executors
    together (split evenly between them): give `budget_bytes`, or `budget_fraction` of all
    expert bytes, or neither for an unlimited budget."""

    policy: str = "coserve"
    budget_bytes: int | None = None
    budget_fraction: float | None = None
    executors: tuple[ExecutorSpec, ...] = field(default_factory=default_executors)
    activation_bytes: int = DEFAULT_ACTIVATION_BYTES
    host_cache_bytes: int = 0  # host RAM cache in front of CUDA pools
    storage: str = "none"
    direct_io: bool = True
    max_defer_s: float = DEFAULT_MAX_DEFER_S
    usage_blend: float = 0.5  # weight of observed routing once enough is observed
    usage_min_samples: int = 50
    measure_costs: bool = True
    quarantine_after: int = 3  # consecutive failed attempts that quarantine an expert; 0: never

    def __post_init__(self) -> None:
        if self.policy not in POLICY_NAMES:
            raise ConfigError(f"unknown policy {self.policy!r}; choose one of {', '.join(POLICY_NAMES)}")
        if self.budget_bytes is not None and self.budget_fraction is not None:
            raise ConfigError("give budget_bytes or budget_fraction, not both")
        if self.budget_bytes is not None and self.budget_bytes <= 0:
            raise ConfigError(f"budget_bytes must be positive, got {self.budget_bytes}")
        if self.budget_fraction is not None and not 0 < self.budget_fraction <= 1:
            raise ConfigError(f"budget_fraction must be in (0, 1], got {self.budget_fraction}")
        if not self.executors:
            raise ConfigError("at least one executor is needed, e.g. executors=parse_executors('cpu:1')")
        if self.activation_bytes <= 0 or self.host_cache_bytes < 0:
            raise ConfigError("activation_bytes must be > 0 and host_cache_bytes >= 0")
        if not 0 <= self.usage_blend <= 1:
            raise ConfigError(f"usage_blend must be in [0, 1], got {self.usage_blend}")
        if self.max_defer_s < 0:
            raise ConfigError(f"max_defer_s must be >= 0 seconds, got {self.max_defer_s}")
        if self.quarantine_after < 0:
            raise ConfigError(f"quarantine_after must be >= 0 failures (0 never quarantines), "
                              f"got {self.quarantine_after}")

    def resolve_budget(self, total_expert_bytes: int) -> int | None:
        """Total executing-pool budget in bytes; None = unlimited."""
        if self.budget_fraction is not None:
            return int(self.budget_fraction * total_expert_bytes)
        return self.budget_bytes


def executor_layout(specs: tuple[ExecutorSpec, ...], policies: PolicySet) -> tuple[ExecutorSpec, ...]:
    """The executors a policy set runs: as configured, or one per processor (samba) with
    all the processor's cores (the same thread rule as any single CPU executor)."""
    if not policies.one_executor_per_processor:
        return specs
    merged: dict[str, ExecutorSpec] = {}
    for spec in specs:
        threads = auto_threads(1) if spec.processor == "cpu" else spec.num_threads
        merged[spec.processor] = ExecutorSpec(spec.processor, threads)
    return tuple(merged.values())


def resolve_budget(model, config: EngineConfig, policies: PolicySet, num_executors: int) -> int | None:
    """The executing pools' total budget in bytes (None = unlimited); ConfigError, with
    the minimum, when a pool could not hold the largest expert."""
    total = model.total_expert_bytes
    budget = None if policies.unlimited_budget else config.resolve_budget(total)
    if budget is None:
        return None
    largest = max(e.num_bytes for e in model.experts.values())
    minimum = largest * num_executors
    if budget < minimum:
        raise ConfigError(
            f"budget of {budget} bytes is too small for {num_executors} "
            f"executor(s): each pool must hold the largest expert ({largest} bytes); "
            f"give at least {minimum} bytes ({minimum / total:.1%} of all experts) "
            f"or fewer executors"
        )
    return budget


def split_budget(budget_bytes: int | None, num_executors: int) -> list[int | None]:
    """Each executor's pool budget: the total split evenly."""
    if budget_bytes is None:
        return [None] * num_executors
    return [budget_bytes // num_executors] * num_executors
