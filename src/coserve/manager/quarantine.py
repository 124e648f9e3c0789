"""Quarantine: an expert that failed `max_failures` times in a row (its weight file is
missing or corrupt, its forward raises, it runs out of memory while loading) is no
longer loaded or run; the requests that need it fail fast with a message that names it.

Pure bookkeeping, no torch. The engine asks before it queues or runs an expert
(`allows`) and reports how each attempt went (`record_success` / `record_failure`).
A success resets the run of failures, so an expert that fails now and then is never
quarantined; an operator who fixed the expert calls `release`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class QuarantineRecord:
    """One expert's failure history."""

    expert: str
    consecutive_failures: int
    total_failures: int
    quarantined: bool
    last_error: str | None
    quarantined_at_s: float | None  # clock time it was quarantined; None when not


class Quarantine:
    def __init__(self, max_failures: int, clock: Callable[[], float]) -> None:
        """`max_failures`: consecutive failed attempts before an expert is quarantined;
        0 never quarantines (failures are still counted)."""
        if max_failures < 0:
            raise ValueError(f"max_failures must be >= 0 (0 disables quarantine), got {max_failures}")
        self.max_failures = max_failures
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[str, QuarantineRecord] = {}

    # -- ask -----------------------------------------------------------------------------
    def allows(self, expert: str) -> bool:
        """May the engine queue, load or run `expert`?"""
        with self._lock:
            record = self._records.get(expert)
            return record is None or not record.quarantined

    def reason(self, expert: str) -> str:
        """Why requests needing `expert` fail: the message a client sees."""
        with self._lock:
            record = self._records.get(expert)
        if record is None or not record.quarantined:
            return f"expert {expert!r} is not quarantined"
        return (f"expert {expert!r} is quarantined after {record.consecutive_failures} "
                f"consecutive failures (last: {record.last_error}); requests that need it "
                f"fail until an operator fixes the expert and releases it")

    def records(self) -> dict[str, QuarantineRecord]:
        """Every expert that has failed at least once."""
        with self._lock:
            return dict(self._records)

    def quarantined(self) -> frozenset[str]:
        with self._lock:
            return frozenset(e for e, r in self._records.items() if r.quarantined)

    # -- act -----------------------------------------------------------------------------
    def record_success(self, expert: str) -> None:
        with self._lock:
            record = self._records.get(expert)
            if record is not None and record.consecutive_failures:
                self._records[expert] = replace(record, consecutive_failures=0)

    def record_failure(self, expert: str, error: str) -> bool:
        """Count one failed attempt; True when this failure quarantines the expert."""
        with self._lock:
            old = self._records.get(expert) or QuarantineRecord(expert, 0, 0, False, None, None)
            failures = old.consecutive_failures + 1
            newly = (not old.quarantined and self.max_failures > 0
                     and failures >= self.max_failures)
            self._records[expert] = QuarantineRecord(
                expert, failures, old.total_failures + 1, old.quarantined or newly, error,
                self._clock() if newly else old.quarantined_at_s,
            )
            return newly

    def release(self, expert: str) -> bool:
        """Let `expert` run again (its failure run starts from zero); False if it was not
        quarantined."""
        with self._lock:
            record = self._records.get(expert)
            if record is None or not record.quarantined:
                return False
            self._records[expert] = replace(record, consecutive_failures=0, quarantined=False,
                                            quarantined_at_s=None)
            return True
