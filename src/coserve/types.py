"""The values every layer passes around: a request, what it gives back (its outputs, the
experts it passed through, its timings), why it failed, and the tier paths experts are
loaded along. Pure Python: the policies, the simulator and the surfaces all read them."""

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
    latency_target_s: float | None = None  # when to answer by; None: the engine's default
    # Where to begin instead of `routing.first`: a continuation of a request whose
    # earlier steps ran on another replica (step handoff, docs/replicas.md).
    start: tuple[str, ...] | None = None

# Precisions an expert's weights may be stored at (coserve repo quantize); experts always
# execute in fp32, a variant is expanded after its (smaller) storage read.
# The label a cascade expert's step gets when its top score is below its rule's
# threshold (routing.cascade): the request escalates instead of following the label.
LOW_CONFIDENCE = "low_confidence"
FULL_PRECISION = "fp32"
VARIANT_PRECISIONS = ("fp16", "bf16", "int8")
PRECISIONS = (FULL_PRECISION, *VARIANT_PRECISIONS)


@dataclass(frozen=True, kw_only=True)
class Step:
    """One task's outcome."""

    expert: str
    label: str
    detail: dict[str, Any]
    executor: int
    batch_size: int
    queued_s: float  # enqueue -> batch start
    exec_s: float  # the batch's execution time
    precision: str = FULL_PRECISION  # the stored precision its expert was loaded from


class FailureKind(enum.Enum):
    """Why a request failed after it was accepted (a request that cannot be accepted
    raises RequestError at submit instead)."""

    EXPERT_FAILED = "expert_failed"  # its expert failed to load or to run
    INVALID_INPUT = "invalid_input"  # its expert failed on this input alone (the rest ran)
    OUT_OF_MEMORY = "out_of_memory"  # no memory to load its expert or to run it alone
    TIMED_OUT = "timed_out"  # its batch ran past the batch deadline (a stuck executor)
    EXECUTOR_STUCK = "executor_stuck"  # no executor could take its task: every one is stuck
    SHUT_DOWN = "shut_down"  # the engine shut down (its drain deadline passed) first
    EXPERT_QUARANTINED = "expert_quarantined"  # its expert failed too often: not touched
    ROUTING_FAILED = "routing_failed"  # a routing rule failed on an expert's output
    NOT_QUEUED = "not_queued"  # the scheduler could not queue a task (an engine bug)
    REJECTED = "rejected"  # never accepted (a trace request that failed validation)
    NO_REPLICA = "no_replica"  # no replica could take a step handed off to another one


@dataclass(frozen=True, kw_only=True)
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
    # Experts its routing reached that this engine left to their owner (step handoff):
    # the caller continues the request there. Empty for an engine that owns everything.
    handoffs: tuple[str, ...] = ()

    @property
    def path(self) -> tuple[str, ...]:
        """Experts in the order their tasks completed."""
        return tuple(s.expert for s in self.steps)

    @property
    def escalated(self) -> bool:
        """Whether a confidence cascade escalated it (a step answered LOW_CONFIDENCE)."""
        return any(step.label == LOW_CONFIDENCE for step in self.steps)

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
            "handoffs": list(self.handoffs),
            "latency_s": self.latency_s,
            "steps": [s.__dict__ for s in self.steps],
        }


@dataclass(frozen=True)
class LoadPath:
    """A tier path an expert is loaded along: `storage->cpu` (on a CPU the host pool is
    the executing tier), `storage->host` (the host RAM cache in front of a GPU),
    `host->cuda:0`. Statistics count per device; plans profile per kind (`host->cuda`)."""

    source: str  # "storage" or "host"
    target: str  # "cpu", "host", or a device such as "cuda:0"

    def __str__(self) -> str:
        return f"{self.source}->{self.target}"

    @property
    def kind(self) -> LoadPath:
        """The same path for any device of the kind: host->cuda:1 -> host->cuda."""
        return LoadPath(self.source, self.target.split(":", 1)[0])

    @staticmethod
    def to_executor(processor: str) -> LoadPath:
        """The switch that makes an expert runnable on `processor`: a storage read on the
        CPU, a host-to-device copy on a GPU (its host copy comes by STORAGE_TO_HOST)."""
        if processor.split(":", 1)[0] == "cpu":
            return LoadPath("storage", "cpu")
        return LoadPath("host", processor)


STORAGE_TO_HOST = LoadPath("storage", "host")
