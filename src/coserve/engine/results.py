"""What a request gives back: its outputs, the experts it passed through, its timings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Request:
    """One input. `fields` carry what routing reads (e.g. component_type); `input` is the
    item every expert on the request's path receives (a tensor [C, H, W])."""

    request_id: str
    fields: dict[str, Any]
    input: Any
    arrival_s: float = 0.0  # offset in a trace; ignored by submit()


@dataclass(frozen=True)
class Step:
    """One task's outcome."""

    expert: str
    label: str
    detail: dict[str, Any]
    executor: int
    batch_size: int
    queued_s: float  # enqueue -> batch start
    exec_s: float  # the batch's execution time


@dataclass(frozen=True)
class Result:
    request_id: str
    ok: bool
    steps: tuple[Step, ...]
    submitted_s: float
    completed_s: float
    error: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> tuple[str, ...]:
        """Experts in the order their tasks completed."""
        return tuple(s.expert for s in self.steps)

    @property
    def latency_s(self) -> float:
        return self.completed_s - self.submitted_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "ok": self.ok,
            "error": self.error,
            "path": list(self.path),
            "latency_s": self.latency_s,
            "steps": [s.__dict__ for s in self.steps],
        }
