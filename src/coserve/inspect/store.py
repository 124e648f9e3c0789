"""Inspection results in SQLite: one row per image, written in small transactions.

Durability: an image counts as done once its row is committed, and only then. A run that
is killed loses at most the rows not yet committed; their images are inspected again by
the next run (at least once executed, exactly once recorded). WAL with synchronous=NORMAL
keeps every commit across a killed process; only a power loss can roll back the last
commits, which again only means those images are redone.

One writer at a time: a run holds an exclusive lock on `<db>.lock` (released by the OS
when the process dies, so a SIGKILL never leaves it stale), the database path resolved
first, so two spellings of one file (a symbolic link, `..`) share one lock.

Resuming skips images that have a row, except failed rows whose cause was not the image
(a quarantined expert, a timeout, running out of memory, the engine shutting down:
RETRY_KINDS), which are inspected again; with `retry_failed` every failed row is. A
retried image's new row replaces the old one when it commits. Each run records the
repository's identity (see coserve.inspect.runner.repository_identity); a run against a
different repository than the last one is refused unless `accept_repo_change`.
"""

from __future__ import annotations

import csv
import enum
import fcntl
import json
import os
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coserve.errors import ConfigError

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id      INTEGER PRIMARY KEY,
    started_at  TEXT NOT NULL,     -- ISO 8601, UTC
    lot_dir     TEXT NOT NULL,     -- absolute path of the lot directory
    repo        TEXT NOT NULL,     -- absolute path of the model repository
    pid         INTEGER NOT NULL,
    repo_identity TEXT             -- the repository's name and content digest; NULL: unknown
);
CREATE TABLE IF NOT EXISTS results (
    path            TEXT PRIMARY KEY,  -- relative to the lot directory, POSIX separators
    component_type  TEXT,              -- the routing field's value; NULL if it could not be told
    status          TEXT NOT NULL CHECK (status IN ('ok', 'failed', 'rejected')),
    labels          TEXT,              -- JSON list: each expert's output label, in path order
    experts         TEXT,              -- JSON list: the experts the image went through
    outputs         TEXT,              -- JSON list: per step {expert, label, detail, executor, ...}
    error           TEXT,              -- why it failed or was rejected
    error_kind      TEXT,              -- why it failed, as a kind (coserve.types.FailureKind)
    latency_s       REAL,              -- engine submit -> result; NULL when rejected
    submitted_at    TEXT NOT NULL,     -- ISO 8601, UTC
    finished_at     TEXT NOT NULL,     -- ISO 8601, UTC
    run_id          INTEGER NOT NULL REFERENCES runs(run_id)
);
"""
COLUMNS = ("path", "component_type", "status", "labels", "experts", "outputs", "error",
           "error_kind", "latency_s", "submitted_at", "finished_at", "run_id")
# Schema version 1 lacked these; such a database is upgraded in place when opened.
_ADDED_IN_2 = (("runs", "repo_identity TEXT"), ("results", "error_kind TEXT"))
# Failure kinds that say nothing about the image (FailureKind values, and the engine
# closing under a submission): a resumed run inspects such rows again.
RETRY_KINDS = frozenset({"expert_quarantined", "out_of_memory", "timed_out", "executor_stuck",
                         "shut_down", "not_queued", "engine_closed", "engine_error"})


class Status(enum.Enum):
    OK = "ok"  # every expert on its path ran
    FAILED = "failed"  # an expert failed to load or run (Result.error)
    REJECTED = "rejected"  # never reached an expert: unreadable, wrong size, unknown type


@dataclass(frozen=True)
class InspectRow:
    """One image's final outcome. Times are Unix seconds."""

    path: str
    component_type: str | None
    status: Status
    submitted_at: float
    finished_at: float
    labels: tuple[str, ...] | None = None
    experts: tuple[str, ...] | None = None
    outputs: tuple[dict[str, Any], ...] | None = None
    error: str | None = None
    latency_s: float | None = None
    error_kind: str | None = None  # a FailureKind value, or one of RETRY_KINDS

    def values(self, run_id: int) -> tuple:
        return (self.path, self.component_type, self.status.value, _json(self.labels),
                _json(self.experts), _json(self.outputs), self.error, self.error_kind,
                self.latency_s, _iso(self.submitted_at), _iso(self.finished_at), run_id)


class ResultStore:
    """The results database of one lot, opened for a run: `done_paths()` to resume,
    `add()` rows as they complete, `commit()` to make them durable."""

    def __init__(self, db_path: Path, lot_dir: Path, repo: Path, *,
                 repo_identity: str | None = None, accept_repo_change: bool = False) -> None:
        self.db_path = Path(db_path).resolve()  # before locking: one lock per file
        self._lock_fd = _lock(self.db_path)
        conn = None
        try:
            conn = self._conn = _connect(self.db_path)
            self.run_id = self._begin_run(Path(lot_dir).resolve(), Path(repo).resolve(),
                                          repo_identity, accept_repo_change)
        except BaseException:
            if conn is not None:
                conn.close()
            os.close(self._lock_fd)
            raise
        self._pending: list[tuple] = []

    def _begin_run(self, lot_dir: Path, repo: Path, identity: str | None, accept_change: bool) -> int:
        previous = self._conn.execute("SELECT lot_dir FROM runs ORDER BY run_id LIMIT 1").fetchone()
        if previous and previous[0] != str(lot_dir):
            raise ConfigError(f"{self.db_path} holds results of the lot {previous[0]}, not {lot_dir}: "
                              f"give each lot its own --db")
        last = self._conn.execute("SELECT repo_identity, repo FROM runs WHERE repo_identity "
                                  "IS NOT NULL ORDER BY run_id DESC LIMIT 1").fetchone()
        if identity is not None and last and last[0] != identity and not accept_change:
            raise ConfigError(f"{self.db_path} holds results from the repository {last[0]} (at "
                              f"{last[1]}), but this run's is {identity} (its coe.yaml or weight "
                              f"files differ): give a new --db, or pass --accept-repo-change to "
                              f"add this repository's results to the old ones")
        with self._conn:
            cur = self._conn.execute(
                "INSERT INTO runs (started_at, lot_dir, repo, pid, repo_identity) VALUES (?, ?, ?, ?, ?)",
                (_iso(datetime.now(UTC).timestamp()), str(lot_dir), str(repo), os.getpid(), identity))
        assert cur.lastrowid is not None
        return cur.lastrowid

    def done_paths(self, retry_failed: bool = False) -> set[str]:
        """Images that already have a final row: a resumed run skips them. Failed rows of a
        kind in RETRY_KINDS (every failed row, with `retry_failed`) are not done."""
        kinds = sorted(RETRY_KINDS)
        retried = ("status = 'failed'" if retry_failed else
                   f"status = 'failed' AND error_kind IN ({', '.join('?' * len(kinds))})")
        query = f"SELECT path FROM results WHERE NOT ({retried})"
        return {path for (path,) in self._conn.execute(query, () if retry_failed else kinds)}

    def add(self, row: InspectRow) -> None:
        self._pending.append(row.values(self.run_id))

    @property
    def num_pending(self) -> int:
        """Rows added but not yet committed."""
        return len(self._pending)

    def commit(self) -> None:
        if not self._pending:
            return
        with self._conn:  # one transaction
            self._conn.executemany(  # a retried image replaces its failed row
                f"INSERT OR REPLACE INTO results ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                self._pending)
        self._pending.clear()

    def counts(self) -> dict[str, int]:
        """Committed rows by status (every status present, zero if none)."""
        counts = dict(self._conn.execute("SELECT status, COUNT(*) FROM results GROUP BY status"))
        return {s.value: counts.get(s.value, 0) for s in Status}

    def close(self) -> None:
        self.commit()
        self._conn.close()
        os.close(self._lock_fd)

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def export_csv(db_path: Path, csv_path: Path) -> int:
    """Write every result row to `csv_path` (header = the column names, ordered by path;
    NULL is an empty field). Safe while a run is writing: it reads one snapshot."""
    if not Path(db_path).is_file():
        raise ConfigError(f"{db_path} does not exist: give the --db of an inspect run")
    conn = _connect(Path(db_path))
    try:
        rows = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM results ORDER BY path").fetchall()
    finally:
        conn.close()
    tmp = Path(csv_path).with_name(Path(csv_path).name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    tmp.replace(csv_path)  # never leave a half-written CSV behind
    return len(rows)


def _connect(db_path: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(db_path, timeout=30.0)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{db_path} is not a results database ({exc}): give a new --db path") from None
    if tables and version == 1:
        _upgrade_from_1(conn)
    elif tables and version != SCHEMA_VERSION:
        conn.close()
        raise ConfigError(f"{db_path} is not a coserve inspect database of schema version "
                          f"{SCHEMA_VERSION} (found {version}): give a new --db path")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # durable across a killed process in WAL mode
    with conn:
        conn.executescript(SCHEMA)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return conn


def _upgrade_from_1(conn: sqlite3.Connection) -> None:
    with conn:
        for table, column in _ADDED_IN_2:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _lock(db_path: Path) -> int:
    db_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{db_path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(f"another `coserve inspect` is writing {db_path}: wait for it to "
                          f"finish, or give a different --db") from None
    return fd


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")
