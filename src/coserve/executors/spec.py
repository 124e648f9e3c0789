"""Executor specifications: which processor each executor is bound to and how many
intra-op threads it runs. Pure Python (no torch), so policies and the simulator read it."""

from __future__ import annotations

import os
from dataclasses import dataclass

from coserve.errors import ConfigError


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
