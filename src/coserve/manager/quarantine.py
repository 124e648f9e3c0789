"""Quarantine: an expert that failed `max_failures` times in a row (its weight file is
missing or corrupt, its forward raises on every input) is no longer loaded or run; the
requests that need it fail fast with a message that names it.

Pure bookkeeping, no torch. The engine asks before it queues an expert (`allows`) and
before it loads or runs one (`may_run`), and reports how each attempt went
(`record_success` / `record_failure`). A success resets the run of failures, so an
expert that fails now and then is never quarantined.

A quarantine lifts itself: `probe_s` after it starts, `allows` lets one request through
(half-open) and the batch it joins runs; a success lifts the quarantine, a failure re-arms
it with the wait doubled (up to PROBE_BACKOFF_CAP times `probe_s`). A probe that reports
nothing (its batch ran out of memory, the engine stopped) expires after the same wait.
An operator who fixed the expert need not wait: `release`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

PROBE_BACKOFF_CAP = 16  # a failing expert is probed at least every 16 x probe_s


@dataclass(frozen=True)
class QuarantineRecord:
    """One expert's failure history."""

    expert: str
    consecutive_failures: int
    total_failures: int
    quarantined: bool
    last_error: str | None
    quarantined_at_s: float | None  # clock time it was quarantined; None when not
    probe_wait_s: float | None = None  # the wait before the next probe; None: no probing
    probe_at_s: float | None = None  # when a probe may start
    probing_since_s: float | None = None  # a probe is out since then: its batch may run


class Quarantine:
    def __init__(self, max_failures: int, clock: Callable[[], float],
                 probe_s: float | None = None) -> None:
        """`max_failures`: consecutive failed attempts before an expert is quarantined;
        0 never quarantines (failures are still counted). `probe_s`: the wait before the
        first probe; None: a quarantine lasts until `release`."""
        if max_failures < 0:
            raise ValueError(f"max_failures must be >= 0 (0 disables quarantine), got {max_failures}")
        if probe_s is not None and not probe_s > 0:
            raise ValueError(f"probe_s must be > 0 seconds (None: never probe), got {probe_s}")
        self.max_failures = max_failures
        self._probe_s = probe_s
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[str, QuarantineRecord] = {}

    # -- ask -----------------------------------------------------------------------------
    def allows(self, expert: str) -> bool:
        """May the engine queue a task for `expert`? For a quarantined expert whose probe
        is due, True once: that task is the probe."""
        with self._lock:
            record = self._records.get(expert)
            if record is None or not record.quarantined:
                return True
            now = self._clock()
            if not _probe_due(record, now):
                return False
            self._records[expert] = replace(record, probing_since_s=now)
            return True

    def may_run(self, expert: str) -> bool:
        """May an executor load or run `expert` now: not quarantined, or a probe is out."""
        with self._lock:
            record = self._records.get(expert)
            return record is None or not record.quarantined or record.probing_since_s is not None

    def reason(self, expert: str) -> str:
        """Why requests needing `expert` fail: the message a client sees."""
        with self._lock:
            record = self._records.get(expert)
        if record is None or not record.quarantined:
            return f"expert {expert!r} is not quarantined"
        head = (f"expert {expert!r} is quarantined after {record.consecutive_failures} "
                f"consecutive failures (last: {record.last_error}); requests that need it fail ")
        if record.probe_at_s is None:
            return head + "until an operator fixes the expert and releases it"
        wait_s = max(0.0, record.probe_at_s - self._clock())
        return head + (f"until a probe finds it working (the next in {wait_s:.0f} s) or an "
                       f"operator releases it")

    def records(self) -> dict[str, QuarantineRecord]:
        """Every expert that has failed at least once."""
        with self._lock:
            return dict(self._records)

    def quarantined(self) -> frozenset[str]:
        with self._lock:
            return frozenset(e for e, r in self._records.items() if r.quarantined)

    # -- act -----------------------------------------------------------------------------
    def record_success(self, expert: str) -> None:
        """The expert ran: its failure run ends and a quarantine (a probe's) lifts."""
        with self._lock:
            record = self._records.get(expert)
            if record is not None and (record.consecutive_failures or record.quarantined):
                self._records[expert] = _lifted(record)

    def record_failure(self, expert: str, error: str) -> bool:
        """Count one failed attempt; True when this failure quarantines the expert. A
        failed probe re-arms the quarantine with the wait doubled."""
        with self._lock:
            now = self._clock()
            old = self._records.get(expert) or QuarantineRecord(expert, 0, 0, False, None, None)
            record = replace(old, consecutive_failures=old.consecutive_failures + 1,
                             total_failures=old.total_failures + 1, last_error=error)
            newly = (not old.quarantined and self.max_failures > 0
                     and record.consecutive_failures >= self.max_failures)
            if newly:
                record = replace(record, quarantined=True, quarantined_at_s=now,
                                 probe_wait_s=self._probe_s,
                                 probe_at_s=None if self._probe_s is None else now + self._probe_s)
            elif old.quarantined and old.probing_since_s is not None:
                assert old.probe_wait_s is not None and self._probe_s is not None
                wait_s = min(2 * old.probe_wait_s, PROBE_BACKOFF_CAP * self._probe_s)
                record = replace(record, probe_wait_s=wait_s, probe_at_s=now + wait_s,
                                 probing_since_s=None)
            self._records[expert] = record
            return newly

    def release(self, expert: str) -> bool:
        """Let `expert` run again (its failure run starts from zero); False if it was not
        quarantined."""
        with self._lock:
            record = self._records.get(expert)
            if record is None or not record.quarantined:
                return False
            self._records[expert] = _lifted(record)
            return True


def _probe_due(record: QuarantineRecord, now_s: float) -> bool:
    """A probe may start: its time has come and no probe is out (or the one out expired)."""
    if record.probe_at_s is None or now_s < record.probe_at_s:
        return False
    return record.probing_since_s is None or now_s - record.probing_since_s >= (record.probe_wait_s or 0.0)


def _lifted(record: QuarantineRecord) -> QuarantineRecord:
    return replace(record, consecutive_failures=0, quarantined=False, quarantined_at_s=None,
                   probe_wait_s=None, probe_at_s=None, probing_since_s=None)
