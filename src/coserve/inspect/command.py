"""`coserve inspect`: the command-line face of batch inspection (progress bar, summary,
signals). The work is in runner.py; the parser lives in coserve.cli.inspect."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from coserve.config import EngineConfig
from coserve.errors import ConfigError
from coserve.inspect.runner import MAX_INFLIGHT, InspectSummary, inspect_lot, repository_identity
from coserve.inspect.store import ResultStore, Status, export_csv


def inspect_command(lot_dir: Path, repo: Path, db: Path, config: EngineConfig, *,
                    max_inflight: int | None = None, export_to: Path | None = None,
                    trust_code: bool = False, retry_failed: bool = False,
                    accept_repo_change: bool = False) -> int:
    """Exit code 0 when every image of the lot has a row (whatever its status), 1 when
    stopped early by SIGINT/SIGTERM (run it again to resume). `trust_code`: see
    open_repository; `retry_failed`: inspect_lot; `accept_repo_change`: ResultStore."""
    from coserve.repository import open_repository

    if not lot_dir.is_dir():
        raise ConfigError(f"{lot_dir} is not a directory: give the folder that holds the images")
    model = open_repository(repo, trust_code=trust_code)
    with ResultStore(db, lot_dir, repo, repo_identity=repository_identity(model),
                     accept_repo_change=accept_repo_change) as store, _stop_on_signals() as stop:
        max_inflight = MAX_INFLIGHT if max_inflight is None else max_inflight
        summary = _run_with_progress(model, lot_dir, store, config, max_inflight, stop,
                                     retry_failed)
        totals = store.counts()
    _print_summary(summary, totals, db)
    if export_to is not None:
        num_rows = export_csv(db, export_to)
        print(f"wrote {num_rows} rows to {export_to}")
    return 1 if summary.num_remaining else 0


def _run_with_progress(model, lot_dir: Path, store: ResultStore, config: EngineConfig,
                       max_inflight: int, stop: threading.Event,
                       retry_failed: bool) -> InspectSummary:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn(f"inspecting {lot_dir}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=Console(stderr=True))
    task = bar.add_task("", total=None)
    with bar:
        return inspect_lot(model, lot_dir, store, config, max_inflight,
                           progress=lambda done, total: bar.update(task, completed=done, total=total),
                           stop=stop, retry_failed=retry_failed)


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT/SIGTERM stop submission; what is in flight is answered and committed."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        print(f"\n{signal.Signals(signum).name}: finishing the images in flight, then stopping",
              file=sys.stderr)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _print_summary(summary: InspectSummary, totals: dict[str, int], db: Path) -> None:
    print(f"{summary.num_answered} images answered in {summary.elapsed_s:.2f} s: "
          f"{summary.throughput_ips:.1f} images/s (engine start-up {summary.start_s:.2f} s); "
          f"{summary.num_skipped} already answered by earlier runs, skipped")
    print(f"{'status':<10}{'this run':>10}{'in ' + db.name:>24}")
    for status in Status:
        print(f"{status.value:<10}{summary.counts[status.value]:>10}{totals[status.value]:>24}")
    if summary.num_remaining:
        print(f"stopped early: {summary.num_remaining} of {summary.num_images} images not answered; "
              f"run the same command again to resume")
