"""Running one batch so that a fault hurts only what it must: a batch whose forward
raises is halved until each failure sits on a single input (log2(batch) levels at most),
so one bad input fails alone and the rest of its batch is served; out of memory halves
the batch too, and is nobody's fault. The engine decides what the faults mean
(`Outcome.expert_at_fault`): an expert that fails on every part of a batch is broken, one
that fails on some inputs only was given bad inputs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from coserve.architectures.base import Decoded
from coserve.manager.manager import is_out_of_memory


@dataclass(frozen=True)
class Fault:
    """Why one task got no output: what was raised, alone or in its smallest batch."""

    error: str  # "ValueError: cannot handle a marked input"
    out_of_memory: bool
    loading: bool = False  # the expert could not be made resident; `error` says so in full


@dataclass
class Outcome:
    """A batch's result: per task, in order, its output or its fault."""

    results: list[Decoded | Fault]
    exec_s: float = 0.0  # every forward together
    num_splits: int = 0  # batches halved because they raised
    num_oom_splits: int = 0  # batches halved because they ran out of memory
    faults: list[int] = field(default_factory=list)  # indices of the tasks that failed
    precision: str = "fp32"  # the stored precision the batch's expert was loaded from

    @classmethod
    def failed(cls, num_tasks: int, fault: Fault) -> Outcome:
        """Nothing ran (the expert could not be made resident)."""
        return cls([fault] * num_tasks, faults=list(range(num_tasks)))

    @property
    def num_ok(self) -> int:
        return len(self.results) - len(self.faults)

    @property
    def expert_at_fault(self) -> bool:
        """Every task failed, and not only for lack of memory: the expert's own failure
        (one count towards its quarantine). Some tasks served: their inputs' fault."""
        return self.num_ok == 0 and any(
            not r.out_of_memory for r in self.results if isinstance(r, Fault))


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def run_isolating(
    forward: Callable[[Sequence[Any]], list[Decoded]],
    items: Sequence[Any],
    clock: Callable[[], float],
    before_forward: Callable[[], None] = lambda: None,
) -> Outcome:
    """Run `forward` over `items` (one batch), halving a batch that raises or runs out of
    memory until each fault is on a single item. `before_forward` is called before each
    forward (the watchdog's deadline counts per forward)."""
    outcome = Outcome([])
    _run(forward, list(items), clock, before_forward, outcome)
    outcome.faults = [k for k, r in enumerate(outcome.results) if isinstance(r, Fault)]
    return outcome


def _run(forward: Callable[[Sequence[Any]], list[Decoded]], items: list[Any],
         clock: Callable[[], float], before_forward: Callable[[], None], outcome: Outcome) -> None:
    before_forward()
    t0 = clock()
    fault: Fault | None = None
    try:
        outputs = forward(items)
        if len(outputs) != len(items):
            raise RuntimeError(f"returned {len(outputs)} outputs for a batch of {len(items)}")
    # Anything an expert raises, BaseException included, fails only its inputs: an
    # executor thread never dies of it (KeyboardInterrupt reaches only the main thread).
    except BaseException as exc:  # noqa: BLE001
        fault = Fault(describe(exc), is_out_of_memory(exc))
    # Halve outside the handler: the traceback (and, on a GPU, the memory its frames
    # hold) is gone before the smaller batches run.
    outcome.exec_s += clock() - t0
    if fault is None:
        outcome.results.extend(outputs)
    elif len(items) == 1:
        outcome.results.append(fault)
    else:
        if fault.out_of_memory:
            outcome.num_oom_splits += 1
        else:
            outcome.num_splits += 1
        half = len(items) // 2
        _run(forward, items[:half], clock, before_forward, outcome)
        _run(forward, items[half:], clock, before_forward, outcome)
