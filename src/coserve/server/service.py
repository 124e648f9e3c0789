"""The inspection service: between the HTTP routes and the engine. It owns admission
(bounded in-flight requests and decode bytes), validation against the model, decoding
(in a bounded pool, only once an image's header fits its expert), submission, and the
per-request timeout. The engine finishes every request it accepts; a client that timed
out was answered 504, and the request's in-flight slot frees when the engine is done."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass

import torch

from coserve.engine.engine import Engine
from coserve.errors import RequestError
from coserve.repository.inputs import check_input_shape
from coserve.server.config import ServerConfig
from coserve.server.errors import OverloadedError, UnavailableError
from coserve.server.images import EncodedImage, OpenedImage, decode_image, open_image
from coserve.server.limits import Admission, Reservation, Ticket
from coserve.server.metrics import ServerMetrics
from coserve.server.parsing import Item, Parsed
from coserve.server.workers import WorkerPool
from coserve.types import Request, Result

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """One item's outcome: its Result, or None if it was not finished within the timeout."""

    request_id: str
    result: Result | None
    timeout_s: float


class InspectionService:
    def __init__(self, engine: Engine, config: ServerConfig, admission: Admission,
                 metrics: ServerMetrics, pool: WorkerPool) -> None:
        self.engine = engine
        self.config = config
        self.admission = admission
        self.pool = pool
        self._metrics = metrics
        self._ids = itertools.count(1)
        self.start_error: BaseException | None = None

    # -- lifecycle (blocking: the app runs these in a thread) -----------------------------
    def start(self) -> None:
        """Measure costs, place experts, start executors; readiness follows."""
        try:
            self.engine.start()
        except BaseException as exc:
            self.start_error = exc
            log.error("the engine failed to start: %s", exc)
            raise
        log.info("engine ready: %d executor(s), %d expert(s) placed", len(self.engine.executor_specs),
                 sum(len(r) for r in self.engine.resident()))

    def stop_intake(self) -> None:
        self.admission.stop()

    def close(self) -> None:
        """Stop intake, let the engine finish what it holds within the drain deadline
        (past it, what is left is answered with a "shut down" error), stop it."""
        self.stop_intake()
        self.engine.close(timeout_s=self.config.drain_timeout_s)

    def begin_drain(self) -> threading.Thread:
        """On SIGTERM: stop intake and start closing the engine now, so the handlers
        waiting on its answers are answered within the drain deadline (not only after
        their own timeouts, when the app's shutdown would start it)."""
        self.stop_intake()
        closing = threading.Thread(target=self.close, name="coserve-drain", daemon=True)
        closing.start()
        return closing

    def not_ready_reason(self) -> str | None:
        """Why /readyz says 503; None when ready."""
        if self.admission.draining:
            return "draining: the server is shutting down"
        if self.start_error is not None:
            return f"the engine failed to start: {self.start_error}"
        if not self.engine.running:
            return "starting: initial placement of experts is not finished"
        problems = self.engine.health()
        if problems:
            return "unhealthy: " + "; ".join(problems)
        return None

    # -- intake ---------------------------------------------------------------------------
    def check_open(self) -> None:
        """Raise 503 when not ready or draining, 429 when every slot is taken: a cheap
        refusal before the body is read. Takes nothing: slots are taken once the body
        is read and each image's header checked (`inspect`)."""
        with self._counting_rejections():
            if not self.engine.running and not self.admission.draining:
                raise UnavailableError(self.not_ready_reason() or "not ready",
                                       headers={"Retry-After": str(self.config.retry_after_s)})
            self.admission.check_room()

    async def inspect(self, parsed: Parsed, reservation: Reservation, batch: bool) -> list[Answer]:
        """Route each item and check its shape (an image's from its header), reserve the
        bytes its pixels will take, hold a slot for each, decode them (in the pool),
        submit, and wait up to the timeout."""
        opened = await self.pool.run(self._route_and_check, parsed.items, batch)
        for x in opened:
            if isinstance(x, OpenedImage):  # a refusal is counted by the budget itself
                reservation.add(x.decode_bytes, f"{x.where} ({x.shape[2]}x{x.shape[1]} pixels)")
        ticket = Ticket(self.admission)
        try:
            with self._counting_rejections():
                ticket.reserve(len(opened))
            inputs = await self.pool.run(_decode_all, opened)
            requests = [Request(f"http-{next(self._ids)}", item.fields, x)
                        for item, x in zip(parsed.items, inputs, strict=True)]
            for k, request in enumerate(requests):  # all, before any is submitted
                self._validate(request, k if batch else None)
            futures = [self._submit(request, ticket) for request in requests]
        finally:
            ticket.close()  # whatever was not handed over to the engine
        timeout_s = min(parsed.timeout_s or self.config.request_timeout_s,
                        self.config.request_timeout_s)
        results = await _wait(futures, timeout_s)
        return [Answer(item.client_id or request.request_id, result, timeout_s)
                for item, request, result in zip(parsed.items, requests, results, strict=True)]

    def _route_and_check(self, items: list[Item], batch: bool) -> list[torch.Tensor | OpenedImage]:
        """In the pool: each item's first experts, and its shape checked against theirs
        (an image's from its header alone). Raises for the first item that is wrong."""
        checked: list[torch.Tensor | OpenedImage] = []
        for item in items:
            try:
                first = self.engine.model.router.first(item.fields)
                x = open_image(item.input) if isinstance(item.input, EncodedImage) else item.input
                where = x.where if isinstance(x, OpenedImage) else f"{item.where or 'image'}.tensor"
                check_input_shape(self.engine.model, x.shape, first, where)
            except RequestError as exc:
                raise RequestError(f"{item.where}: {exc}" if batch and item.where else str(exc)) from None
            checked.append(x)
        return checked

    def _validate(self, request: Request, k: int | None) -> None:
        try:
            self.engine.validate(request)
        except RequestError as exc:
            # The engine's id is internal: name the item the way the client sent it.
            message = str(exc).replace(f"request {request.request_id!r}: ", "")
            raise type(exc)(f"items[{k}]: {message}" if k is not None else message) from None

    def _submit(self, request: Request, ticket: Ticket) -> Future:
        future = self.engine.submit(request)  # EngineClosedError only if closed since admission
        future.add_done_callback(ticket.hand_over())
        target_s = request.latency_target_s or self.engine.config.latency_target_s
        future.add_done_callback(lambda f: self._finished(f, target_s))
        self._metrics.accepted.inc()
        return future

    def _finished(self, future: Future, target_s: float) -> None:
        # An engine's future always holds a Result; another engine's (the replicas') may
        # hold the error that no replica could take the request: the handler answers it.
        if future.exception() is None:
            self._metrics.engine_finished(future.result(), target_s)

    @contextlib.contextmanager
    def _counting_rejections(self) -> Iterator[None]:
        try:
            yield
        except OverloadedError:
            self._metrics.rejected.labels("overload").inc()
            raise
        except UnavailableError:
            reason = "draining" if self.admission.draining else "not_ready"
            self._metrics.rejected.labels(reason).inc()
            raise


def _decode_all(checked: list[torch.Tensor | OpenedImage]) -> list[torch.Tensor]:
    """In the pool: the pixels of every image (their shapes and budget already checked)."""
    return [decode_image(x) if isinstance(x, OpenedImage) else x for x in checked]


async def _wait(futures: list[Future], timeout_s: float) -> list[Result | None]:
    """Results in order; None for those not finished within the timeout. The engine's
    futures are never cancelled: the engine finishes them either way."""
    waiters = [asyncio.wrap_future(f) for f in futures]
    _, pending = await asyncio.wait(waiters, timeout=timeout_s)
    for waiter in pending:
        waiter.cancel()  # only the asyncio wrapper; the engine's future cannot be cancelled
    return [None if w in pending else w.result() for w in waiters]
