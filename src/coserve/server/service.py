"""The inspection service: between the HTTP routes and the engine. It owns admission
(bounded in-flight requests), validation against the model, submission, and the
per-request timeout. The engine finishes every request it accepts; a client that timed
out was answered 504, and the request's in-flight slot frees when the engine is done."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass

from coserve.engine.engine import Engine
from coserve.errors import RequestError
from coserve.server.config import ServerConfig
from coserve.server.errors import OverloadedError, UnavailableError
from coserve.server.limits import Admission, Ticket
from coserve.server.metrics import ServerMetrics
from coserve.server.parsing import Parsed
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
                 metrics: ServerMetrics) -> None:
        self.engine = engine
        self.config = config
        self.admission = admission
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
        """Stop intake, let the engine finish every request it holds, stop it."""
        self.stop_intake()
        self.engine.close()

    def not_ready_reason(self) -> str | None:
        """Why /readyz says 503; None when ready."""
        if self.admission.draining:
            return "draining: the server is shutting down"
        if self.start_error is not None:
            return f"the engine failed to start: {self.start_error}"
        if not self.engine.running:
            return "starting: initial placement of experts is not finished"
        return None

    # -- intake ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def admitted(self) -> Iterator[Ticket]:
        """Hold one in-flight slot for an HTTP request from before its body is read until
        it is answered (its images' slots pass to the engine). Raises 503 when not ready
        or draining, 429 when full: a cheap refusal, before any parsing."""
        with self._counting_rejections():
            if not self.engine.running and not self.admission.draining:
                raise UnavailableError(self.not_ready_reason() or "not ready",
                                       headers={"Retry-After": str(self.config.retry_after_s)})
            ticket = self.admission.enter()
        try:
            yield ticket
        finally:
            ticket.close()

    async def inspect(self, parsed: Parsed, ticket: Ticket, batch: bool) -> list[Answer]:
        """Validate every item, hold a slot for each, submit, and wait up to the timeout."""
        requests = [Request(f"http-{next(self._ids)}", item.fields, item.input) for item in parsed.items]
        for k, request in enumerate(requests):
            try:
                self.engine.validate(request)
            except RequestError as exc:
                # The engine's id is internal: name the item the way the client sent it.
                message = str(exc).replace(f"request {request.request_id!r}: ", "")
                raise type(exc)(f"items[{k}]: {message}" if batch else message) from None
        with self._counting_rejections():
            ticket.reserve(len(requests))
        futures = [self._submit(request, ticket) for request in requests]
        timeout_s = min(parsed.timeout_s or self.config.request_timeout_s,
                        self.config.request_timeout_s)
        results = await _wait(futures, timeout_s)
        return [Answer(item.client_id or request.request_id, result, timeout_s)
                for item, request, result in zip(parsed.items, requests, results, strict=True)]

    def _submit(self, request: Request, ticket: Ticket) -> Future:
        future = self.engine.submit(request)  # EngineClosedError only if closed since admission
        future.add_done_callback(ticket.hand_over())
        self._metrics.accepted.inc()
        return future

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


async def _wait(futures: list[Future], timeout_s: float) -> list[Result | None]:
    """Results in order; None for those not finished within the timeout. The engine's
    futures are never cancelled: the engine finishes them either way."""
    waiters = [asyncio.wrap_future(f) for f in futures]
    _, pending = await asyncio.wait(waiters, timeout=timeout_s)
    for waiter in pending:
        waiter.cancel()  # only the asyncio wrapper; the engine's future cannot be cancelled
    return [None if w in pending else w.result() for w in waiters]
