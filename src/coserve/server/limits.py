"""Intake limits: a bounded number of images in flight (backpressure), bounded bytes
held for requests being read and decoded (per request and per server), and a bounded
request body that must arrive within a deadline. Each rejects at once with a clear
error; nothing is queued without bound."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coserve.server.errors import (
    BodyReadTimeoutError,
    BodyTooLargeError,
    OverloadedError,
    UnavailableError,
    error_response,
)

RESERVATION_KEY = "coserve.reservation"  # the ASGI scope key of a request's Reservation


class Admission:
    """In-flight slots: one per image the server holds, from the moment its header was
    checked against its expert (before its pixels are decoded) until the engine finished
    it. Beyond `max_inflight`, requests are refused at once (429 + Retry-After), cheaply:
    `check_room` refuses before a body is even read when no slot is free. A body being
    read holds no slot (slow uploads are bounded by the read deadline and the connection
    limit instead).

    A request takes a `Ticket` for as many slots as it carries images (`Ticket.reserve`,
    all or none), and hands each image's slot to the engine
    (`Ticket.hand_over`); the slot is released when the engine finishes that image, so
    a request answered 504 still counts. Whatever was not handed over is released when
    the ticket closes."""

    def __init__(self, max_inflight: int, retry_after_s: int, max_loop_lag_s: float | None = None) -> None:
        """`max_loop_lag_s`: also refuse while the event loop runs this far behind (see
        LoopLag); None: never."""
        self.max_inflight = max_inflight
        self.max_loop_lag_s = max_loop_lag_s
        self.loop_lag = LoopLag()
        self._retry_after = {"Retry-After": str(retry_after_s)}
        self._lock = threading.Lock()  # released from engine threads
        self._num_inflight = 0
        self._draining = False

    @property
    def num_inflight(self) -> int:
        return self._num_inflight

    @property
    def draining(self) -> bool:
        return self._draining

    def check_room(self) -> None:
        """Raise as `acquire(1)` would, taking nothing: the cheap refusal before a body
        is read."""
        self.acquire(1)
        self.release(1)

    def enter(self) -> Ticket:
        """A ticket holding one slot, or raise (503 draining, 429 full)."""
        ticket = Ticket(self)
        ticket.reserve(1)
        return ticket

    def acquire(self, n: int) -> None:
        """Take n slots at once, or raise and take none."""
        with self._lock:
            if self._draining:
                raise UnavailableError("the server is shutting down and accepts no new requests; "
                                       "send them to another replica", headers=self._retry_after)
            if self.max_inflight - self._num_inflight < n:
                raise OverloadedError(
                    f"the server holds {self._num_inflight} of at most {self.max_inflight} "
                    f"requests in flight and cannot take {n} more; retry after "
                    f"{self._retry_after['Retry-After']} s", headers=self._retry_after)
            lag_s = self.loop_lag.lag_s
            if self.max_loop_lag_s is not None and lag_s > self.max_loop_lag_s:
                raise OverloadedError(
                    f"the server is {lag_s:.2f} s behind reading requests (more than "
                    f"{self.max_loop_lag_s:g} s); retry after {self._retry_after['Retry-After']} s",
                    headers=self._retry_after)
            self._num_inflight += n

    def release(self, n: int = 1) -> None:
        with self._lock:
            self._num_inflight -= n
            assert self._num_inflight >= 0, "released more slots than acquired"

    def stop(self) -> None:
        """Stop intake: every later request is answered 503."""
        self._draining = True


class Ticket:
    """The slots one HTTP request holds (used from the event loop only)."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self.num_held = 0

    def reserve(self, n: int) -> None:
        """Hold n slots in all: the request carries n images. Raises if they do not fit."""
        if n > self.num_held:
            self._admission.acquire(n - self.num_held)
            self.num_held = n

    def hand_over(self) -> Callable[[object], None]:
        """One slot now belongs to an engine request: the returned callback releases it
        (attach it to the request's future)."""
        assert self.num_held > 0, "no slot left to hand over"
        self.num_held -= 1
        return lambda _done: self._admission.release(1)

    def close(self) -> None:
        if self.num_held:
            self._admission.release(self.num_held)
            self.num_held = 0


class LoopLag:
    """How far behind the event loop runs, sampled every SAMPLE_S: a request waits about
    this long before its handler starts. In-flight slots cannot see that wait: when the
    HTTP layer itself is the bottleneck (Python work, GIL shared with the executors),
    requests queue in front of the handlers while the engine has slots to spare; shedding
    on lag bounds that queue too."""

    SAMPLE_S = 0.05

    def __init__(self) -> None:
        self.lag_s = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(self.SAMPLE_S)
            self.lag_s = max(0.0, loop.time() - t0 - self.SAMPLE_S)


class DecodeBudget:
    """Bytes held for requests being read, parsed and decoded: each request's (at most
    `max_request_bytes`, else 413) and all together (at most `max_server_bytes`, else 429
    + Retry-After). A request reserves before it holds: a body as it arrives, a JSON
    parse by the body's size, an image by its header's size, before decoding."""

    def __init__(self, max_request_bytes: int, max_server_bytes: int, retry_after_s: int,
                 on_refused: Callable[[], None] = lambda: None) -> None:
        """`on_refused`: called for each refusal because the server-wide budget is taken
        (a body's bytes or an image's, the metrics count them)."""
        self.max_request_bytes = max_request_bytes
        self.max_server_bytes = max_server_bytes
        self._on_refused = on_refused
        self._retry_after = {"Retry-After": str(retry_after_s)}
        self._lock = threading.Lock()
        self._num_bytes = 0

    @property
    def num_bytes(self) -> int:
        return self._num_bytes

    def reservation(self) -> Reservation:
        return Reservation(self)

    def _take(self, n: int, what: str) -> None:
        with self._lock:
            if self._num_bytes + n > self.max_server_bytes:
                self._on_refused()
                raise OverloadedError(
                    f"the server holds {self._num_bytes} of at most {self.max_server_bytes} bytes "
                    f"for requests being read and decoded and cannot take {what} ({n} bytes) "
                    f"now; retry after {self._retry_after['Retry-After']} s",
                    headers=self._retry_after)
            self._num_bytes += n

    def _give_back(self, n: int) -> None:
        with self._lock:
            self._num_bytes -= n
            assert self._num_bytes >= 0, "gave back more bytes than were taken"


class Reservation:
    """The bytes one request holds of the budget, given back when it is answered."""

    def __init__(self, budget: DecodeBudget) -> None:
        self._budget = budget
        self.num_bytes = 0

    def add(self, n: int, what: str) -> None:
        """Hold n bytes more for `what` ("items[3] (4096x4096 pixels)"), or raise."""
        limit = self._budget.max_request_bytes
        if self.num_bytes + n > limit:
            raise BodyTooLargeError(
                f"{what} would make this request hold {self.num_bytes + n} bytes while it is "
                f"read and decoded, more than the {limit} this server allows per request; "
                f"send fewer or smaller images per request")
        self._budget._take(n, what)
        self.num_bytes += n

    def close(self) -> None:
        if self.num_bytes:
            self._budget._give_back(self.num_bytes)
            self.num_bytes = 0


def reservation_of(request: Request) -> Reservation:
    """The request's reservation, opened by BodyLimitMiddleware (which closes it)."""
    return request.scope[RESERVATION_KEY]


class BodyLimitMiddleware:
    """413 for a body over `max_bytes`: at once when Content-Length says so, else as soon
    as the streamed body passes the limit (the route's body read raises). 408 when the
    body is not complete `read_timeout_s` after the request arrived, so a client sending
    a byte now and then cannot hold its connection's work for long. The body's bytes are
    reserved in `budget` as they arrive; the request's reservation is given back when it
    is answered."""

    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout_s: float,
                 budget: DecodeBudget) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s
        self.budget = budget

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await error_response(self._too_large(declared))(scope, receive, send)
            return
        reservation = scope[RESERVATION_KEY] = self.budget.reservation()
        try:
            await self.app(scope, self._guarded(receive, reservation), send)
        finally:
            reservation.close()

    def _guarded(self, receive: Receive, reservation: Reservation) -> Receive:
        deadline = time.monotonic() + self.read_timeout_s
        num_bytes = 0
        complete = False

        async def guarded() -> Message:
            nonlocal num_bytes, complete
            if complete:  # later receives wait for a disconnect: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise BodyReadTimeoutError(
                    f"the request body did not arrive within {self.read_timeout_s:g} s (got "
                    f"{num_bytes} bytes); send it in one go, or raise the server's "
                    f"--read-timeout-s") from None
            if message["type"] == "http.request":
                chunk = len(message.get("body", b""))
                num_bytes += chunk
                if num_bytes > self.max_bytes:
                    raise self._too_large(num_bytes)
                reservation.add(chunk, "the request body")
                complete = not message.get("more_body", False)
            return message

        return guarded

    def _too_large(self, num_bytes: int) -> BodyTooLargeError:
        return BodyTooLargeError(f"the request body has more than {self.max_bytes} bytes "
                                 f"(at least {num_bytes}); send fewer or smaller images per "
                                 f"request, or raise the server's --max-body-bytes")


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
