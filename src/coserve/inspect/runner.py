"""Run a lot through the engine into the results store, resumably.

The loop keeps at most `max_inflight` images submitted but unanswered (decoded tensors in
memory, and the work a kill can lose), records each answer as it arrives and commits
rows in small transactions. Images that already have a row are skipped, so a killed run
started again picks up where the last commit left it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from coserve.config import EngineConfig
from coserve.engine.engine import Engine
from coserve.errors import ConfigError, EngineClosedError, RequestError
from coserve.inspect.lot import ImageError, LotItem, discover_lot, read_image
from coserve.inspect.store import InspectRow, ResultStore, Status
from coserve.repository import CoEModel
from coserve.repository.schema import REPOSITORY_FILE
from coserve.types import Request, Result

# Images submitted but not answered. Enough to keep every executor's queue grouped and
# busy (on the tiny CoE, 2 cores: ~200 images/s at 64, ~250 at 128, no better at 256);
# small enough that a kill redoes little.
MAX_INFLIGHT = 128
# A row waits at most this many rows or seconds before its commit makes it durable.
COMMIT_EVERY_ROWS = 32
COMMIT_EVERY_S = 0.2

ProgressFn = Callable[[int, int], None]  # (images answered, earlier runs included; images in the lot)


@dataclass(frozen=True)
class InspectSummary:
    num_images: int  # in the lot
    num_skipped: int  # answered by earlier runs
    counts: dict[str, int]  # answered by this run, by status
    num_remaining: int  # not answered yet (only when stopped early)
    start_s: float  # engine start-up (cost measurement, initial placement)
    elapsed_s: float  # first submit -> last commit

    @property
    def num_answered(self) -> int:
        return sum(self.counts.values())

    @property
    def throughput_ips(self) -> float:
        """Images answered per second by this run, start-up excluded."""
        return self.num_answered / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass(frozen=True)
class _Answer:
    item: LotItem
    submitted_at: float  # Unix seconds
    finished_at: float
    future: Future


def repository_identity(model: CoEModel) -> str:
    """`name@digest`: a digest of coe.yaml's bytes and every weight file's path (relative
    to the repository), size and modification time. Cheap (stat, not a read of 60 GB);
    a retrained expert of the same shape changes its file's mtime, a copy that keeps the
    times (cp -p, shutil.copytree) keeps the identity."""
    try:
        digest = hashlib.sha256((model.root / REPOSITORY_FILE).read_bytes())
    except OSError:  # opened by a YAML file of another name: the weight files still count
        digest = hashlib.sha256(model.name.encode())
    for expert in model.experts.values():
        stat = expert.weights_path.stat()
        where = (expert.weights_path.relative_to(model.root)
                 if expert.weights_path.is_relative_to(model.root) else expert.weights_path)
        digest.update(f"\0{expert.name}\0{where}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return f"{model.name}@{digest.hexdigest()[:16]}"


def inspect_lot(
    model: CoEModel,
    lot_dir: Path,
    store: ResultStore,
    config: EngineConfig,
    max_inflight: int = MAX_INFLIGHT,
    progress: ProgressFn | None = None,
    stop: threading.Event | None = None,
    retry_failed: bool = False,
) -> InspectSummary:
    """Inspect every image of `lot_dir` that `store` has no final row for (failed rows
    whose cause was not the image are inspected again; with `retry_failed`, every failed
    row). Setting `stop` ends submission; what is in flight is still answered and
    committed."""
    if max_inflight < 1:
        raise ConfigError(f"max_inflight must be >= 1, got {max_inflight}")
    items = discover_lot(Path(lot_dir), model.router.field)
    done = store.done_paths(retry_failed)
    todo = [item for item in items if item.path not in done]
    num_skipped = len(items) - len(todo)
    if progress:
        progress(num_skipped, len(items))
    if not todo:  # nothing left: no engine to start
        return InspectSummary(len(items), num_skipped, {s.value: 0 for s in Status}, 0, 0.0, 0.0)
    t0 = time.perf_counter()
    with Engine(model, config) as engine:
        t_started = time.perf_counter()
        run = _LotRun(model, Path(lot_dir), engine, store, max_inflight,
                      lambda n: progress(num_skipped + n, len(items)) if progress else None)
        num_started = run.run(todo, stop or threading.Event())
        elapsed_s = time.perf_counter() - t_started
    return InspectSummary(len(items), num_skipped, run.counts, len(todo) - num_started,
                          t_started - t0, elapsed_s)


class _LotRun:
    """Submits images, collects answers (resolved on executor threads, handed over on a
    queue), and writes rows; only the calling thread touches the store."""

    def __init__(self, model: CoEModel, root: Path, engine: Engine, store: ResultStore,
                 max_inflight: int, on_row: Callable[[int], None]) -> None:
        self._model = model
        self._root = root
        self._engine = engine
        self._store = store
        self._max_inflight = max_inflight
        self._on_row = on_row
        self._answers: queue.SimpleQueue[_Answer] = queue.SimpleQueue()
        self._num_inflight = 0
        self._last_commit_s = time.perf_counter()
        self.counts = {s.value: 0 for s in Status}

    def run(self, todo: list[LotItem], stop: threading.Event) -> int:
        """Returns how many of `todo` were started (all, unless stopped)."""
        num_started = 0
        for item in todo:
            if stop.is_set():
                break
            while self._num_inflight >= self._max_inflight:
                self._collect(block=True)
            self._start(item)
            num_started += 1
            self._collect(block=False)
        while self._num_inflight:
            self._collect(block=True)
        self._store.commit()
        return num_started

    def _start(self, item: LotItem) -> None:
        submitted_at = time.time()
        try:
            future = self._engine.submit(self._request(item))
        except EngineClosedError as exc:  # not the image's fault: a resumed run retries it
            self._record(InspectRow(item.path, self._component_type(item), Status.FAILED,
                                    submitted_at, time.time(), error=str(exc),
                                    error_kind="engine_closed"))
            return
        except RequestError as exc:  # ImageError included: a bad image is answered, not fatal
            self._record(InspectRow(item.path, self._component_type(item), Status.REJECTED,
                                    submitted_at, time.time(), error=str(exc)))
            return
        self._num_inflight += 1
        future.add_done_callback(
            lambda f: self._answers.put(_Answer(item, submitted_at, time.time(), f)))

    def _request(self, item: LotItem) -> Request:
        if item.problem:
            raise ImageError(item.problem)
        first = self._model.router.first(item.fields)  # RequestError for an unknown type
        shape = tuple(self._model.architectures[self._model.experts[first[0]].architecture].input_shape)
        try:
            x = read_image(self._root / item.path, shape)  # [C, H, W]
        except ImageError:
            raise
        except Exception as exc:  # a decoder's surprise on odd input must not stop the lot
            raise ImageError(f"cannot read: {type(exc).__name__}: {exc}") from None
        return Request(item.path, dict(item.fields), x)

    def _collect(self, block: bool) -> None:
        """Record every answer that has arrived; with `block`, wait for at least one (and
        commit first: rows must not wait on a slow batch to become durable)."""
        if block:
            self._commit()
            self._finish(self._answers.get())
        while True:
            try:
                answer = self._answers.get_nowait()
            except queue.Empty:
                break
            self._finish(answer)
        if (self._store.num_pending >= COMMIT_EVERY_ROWS
                or time.perf_counter() - self._last_commit_s >= COMMIT_EVERY_S):
            self._commit()

    def _finish(self, answer: _Answer) -> None:
        self._num_inflight -= 1
        self._record(self._answered(answer))

    def _answered(self, answer: _Answer) -> InspectRow:
        item = answer.item
        try:
            result: Result = answer.future.result()
        except Exception as exc:  # the engine resolves every future with a Result; be sure
            return InspectRow(item.path, self._component_type(item), Status.FAILED,
                              answer.submitted_at, answer.finished_at, error=f"engine error: {exc}",
                              error_kind="engine_error")
        return InspectRow(
            item.path, self._component_type(item), Status.OK if result.ok else Status.FAILED,
            answer.submitted_at, answer.finished_at,
            labels=tuple(s.label for s in result.steps), experts=result.path,
            outputs=tuple(dataclasses.asdict(s) for s in result.steps),
            error=result.error, latency_s=result.latency_s,
            error_kind=result.error_kind.value if result.error_kind else None,
        )

    def _record(self, row: InspectRow) -> None:
        self._store.add(row)
        self.counts[row.status.value] += 1
        self._on_row(sum(self.counts.values()))

    def _commit(self) -> None:
        self._store.commit()
        self._last_commit_s = time.perf_counter()

    def _component_type(self, item: LotItem) -> str | None:
        return item.fields.get(self._model.router.field)
