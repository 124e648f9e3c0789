"""What a request gives back: its outputs, the experts it passed through, its timings."""

from __future__ import annotations

import enum
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


class FailureKind(enum.Enum):
    """Why a request failed after it was accepted (a request that cannot be accepted
    raises RequestError at submit instead)."""

    EXPERT_FAILED = "expert_failed"  # its expert failed to load or to run
    EXPERT_QUARANTINED = "expert_quarantined"  # its expert failed too often: not touched
    ROUTING_FAILED = "routing_failed"  # a routing rule failed on an expert's output
    NOT_QUEUED = "not_queued"  # the scheduler could not queue a task (an engine bug)
    REJECTED = "rejected"  # never accepted (a trace request that failed validation)


@dataclass(frozen=True)
class Result:
    request_id: str
    ok: bool
    steps: tuple[Step, ...]
    submitted_s: float
    completed_s: float
    error: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    error_kind: FailureKind | None = None
    failed_expert: str | None = None  # the expert the error is about, when there is one

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
            "error_kind": self.error_kind.value if self.error_kind else None,
            "failed_expert": self.failed_expert,
            "path": list(self.path),
            "latency_s": self.latency_s,
            "steps": [s.__dict__ for s in self.steps],
        }
