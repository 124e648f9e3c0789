"""Supervision of the executor threads: a watchdog that notices a batch running past its
deadline (one forward, or the storage read while its expert is made resident).

Each executor registers its batch as a `Shift` when it takes it and says which phase it
is in (`loading`, then `running` before each forward): plain attribute stores, nothing
per task. The watchdog thread looks every quarter deadline. A shift past its deadline is
*taken over*: its executor is marked stuck and retired from the scheduler (its queued
tasks go back to be queued on the others), and the engine fails the batch's requests.
Whoever takes a shift off the board answers its requests, under one lock: the executor
(`end` returns True) or the watchdog, never both. A stuck executor that comes back
(`end` returns False) drops its late outputs and is reinstated: it takes work again, and
if its expert hangs again it is retired again."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from coserve.scheduler.queues import Batch
from coserve.scheduler.task import Task
from coserve.stats import StatsRecorder

log = logging.getLogger(__name__)

MAX_WATCH_PERIOD_S = 1.0  # the watchdog looks at least this often


@dataclass(eq=False)
class Shift:
    """One batch on one executor, from taking it to answering it."""

    executor: int
    batch: Batch
    started_s: float  # when the current phase (one load, one forward) started
    phase: str = "loading"  # "loading" (making its expert resident) or "running"
    num_answered: int = 0  # its tasks answered so far, in order


# (the stuck shift, seconds past its start, the tasks its executor's queue held)
OnStuck = Callable[[Shift, float, list[Task]], None]


class Supervisor:
    def __init__(
        self,
        *,
        processors: Sequence[str],
        deadline_s: float | None,
        clock: Callable[[], float],
        stats: StatsRecorder,
        retire: Callable[[int], list[Task]],
        reinstate: Callable[[int], None],
        on_stuck: OnStuck,
    ) -> None:
        """`deadline_s`: the longest a phase may take; None: no watchdog. `retire(i)`
        takes executor i out of the scheduler and returns its queued tasks."""
        self.processors = list(processors)
        self.deadline_s = deadline_s
        self._clock = clock
        self._stats = stats
        self._retire = retire
        self._reinstate = reinstate
        self._on_stuck = on_stuck
        self._lock = threading.Lock()
        self._shifts: list[Shift | None] = [None] * len(self.processors)  # on the board
        self._stuck: dict[int, Shift] = {}  # executor -> the shift it is stuck in
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what an executor thread calls ---------------------------------------------------
    def begin(self, executor: int, batch: Batch) -> Shift:
        shift = Shift(executor, batch, self._clock())
        self._shifts[executor] = shift  # only this executor's thread writes a new shift
        return shift

    def phase(self, shift: Shift, phase: str) -> None:
        """A new phase starts: the deadline counts from now."""
        shift.started_s = self._clock()
        shift.phase = phase

    def end(self, shift: Shift) -> bool:
        """The executor is done with the shift's work. True: it answers the batch. False:
        the watchdog took the shift over and answered it; the executor is back and
        takes work again."""
        with self._lock:
            if self._shifts[shift.executor] is shift:
                self._shifts[shift.executor] = None
                return True
            stuck_s = self._clock() - shift.started_s
            del self._stuck[shift.executor]
            self._reinstate(shift.executor)
            self._stats.executors_unhealthy(len(self._stuck))
        log.warning("executor %d (%s) came back after %.1f s %s expert %r; it takes work again",
                    shift.executor, self.processors[shift.executor], stuck_s, shift.phase,
                    shift.batch.expert)
        return False

    # -- what the engine reads -----------------------------------------------------------
    def problems(self) -> list[str]:
        """One line per stuck executor, e.g. "executor 1 (cpu) stuck 62 s running expert 'x'"."""
        now = self._clock()
        with self._lock:
            stuck = sorted(self._stuck.values(), key=lambda s: s.executor)
        return [f"executor {s.executor} ({self.processors[s.executor]}) stuck "
                f"{_seconds(now - s.started_s)} s {s.phase} expert {s.batch.expert!r}"
                for s in stuck]

    # -- the watchdog --------------------------------------------------------------------
    def start(self) -> None:
        if self.deadline_s is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._watch, daemon=True, name="coserve-watchdog")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=MAX_WATCH_PERIOD_S)

    def _watch(self) -> None:
        assert self.deadline_s is not None
        period_s = min(self.deadline_s / 4, MAX_WATCH_PERIOD_S)
        while not self._stop.wait(period_s):
            try:
                self.check()
            except Exception:  # the watchdog must outlive its own bugs
                log.exception("the watchdog's check failed")

    def check(self) -> None:
        """Take over every shift past its deadline (the watchdog calls this)."""
        assert self.deadline_s is not None
        now = self._clock()
        for shift in list(self._shifts):
            if shift is not None and now - shift.started_s > self.deadline_s:
                moved = self._take_over(shift)
                if moved is not None:
                    self._on_stuck(shift, now - shift.started_s, moved)

    def _take_over(self, shift: Shift) -> list[Task] | None:
        with self._lock:
            if self._shifts[shift.executor] is not shift:  # it ended meanwhile
                return None
            self._shifts[shift.executor] = None
            self._stuck[shift.executor] = shift
            # Retired under the same lock `end` reinstates under: a thread that comes
            # back at once is never left retired.
            moved = self._retire(shift.executor)
            self._stats.batch_timed_out()
            self._stats.executors_unhealthy(len(self._stuck))
        log.error("executor %d (%s) stuck %.1f s %s expert %r (deadline %.1f s): its batch "
                  "fails and %d queued task(s) move to the other executors", shift.executor,
                  self.processors[shift.executor], self._clock() - shift.started_s, shift.phase,
                  shift.batch.expert, self.deadline_s, len(moved))
        return moved


def _seconds(seconds: float) -> str:
    return f"{seconds:.1f}" if seconds < 10 else f"{seconds:.0f}"
