"""Every error the HTTP layer answers, mapped to a status code in ONE place.

Errors are raised where they are found (the engine raises RequestError, the parser
raises InvalidInputError, admission raises OverloadedError, ...); `STATUS` turns the
class into a status code and an error type, and `install` makes FastAPI answer every
one of them with the same body:

    {"error": {"type": "invalid_request", "message": "no expert for component_type 'Z': ..."}}

Failures of an accepted request (its expert failed, or is quarantined) come back from
the engine as a Result, not an exception; `FAILURE_STATUS` maps their kind the same way.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from coserve.errors import EngineClosedError, RequestError
from coserve.types import FailureKind


class ApiError(Exception):
    """An error the HTTP layer raises itself. Its class decides the status code."""

    def __init__(self, message: str, headers: Mapping[str, str] | None = None,
                 details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})
        self.details = details


class MalformedBodyError(ApiError):
    """The body is not what its Content-Type says (broken JSON, broken multipart)."""


class ForbiddenHostError(ApiError):
    """The Host header names a host this server does not answer for (DNS rebinding)."""


class BodyReadTimeoutError(ApiError):
    """The body did not arrive within the server's read timeout."""


class UnauthorizedError(ApiError):
    """No bearer token, or the wrong one."""


class BodyTooLargeError(ApiError):
    """The body is over the server's byte limit."""


class UnsupportedMediaTypeError(ApiError):
    """A body or an image in a format the server does not take."""


class InvalidInputError(ApiError):
    """The body parses but a value is wrong (a missing field, a bad tensor)."""


class NotFoundError(ApiError):
    """A named thing (an expert) does not exist."""


class OverloadedError(ApiError):
    """Every in-flight slot is taken: retry after the Retry-After header's seconds."""


class UnavailableError(ApiError):
    """Not ready yet, or draining for shutdown."""


class TimedOutError(ApiError):
    """No answer within the request's timeout (the engine still finishes the request)."""


# The one table: error class -> (status code, error type). Looked up along the class's
# MRO, so a subclass (EngineClosedError is a RequestError) may map differently.
STATUS: dict[type[BaseException], tuple[int, str]] = {
    MalformedBodyError: (400, "malformed_body"),
    ForbiddenHostError: (400, "invalid_host"),
    # The client went away mid-body: nobody reads the answer; counted, never logged.
    ClientDisconnect: (400, "client_disconnected"),
    UnauthorizedError: (401, "unauthorized"),
    BodyReadTimeoutError: (408, "body_timeout"),
    NotFoundError: (404, "not_found"),
    BodyTooLargeError: (413, "body_too_large"),
    UnsupportedMediaTypeError: (415, "unsupported_media_type"),
    InvalidInputError: (422, "invalid_input"),
    RequestValidationError: (422, "invalid_input"),
    RequestError: (422, "invalid_request"),
    OverloadedError: (429, "overloaded"),
    EngineClosedError: (503, "unavailable"),
    UnavailableError: (503, "unavailable"),
    TimedOutError: (504, "timeout"),
}
INTERNAL = (500, "internal")

# An accepted request that failed: the status its single-request answer carries.
FAILURE_STATUS: dict[FailureKind, int] = {
    FailureKind.EXPERT_FAILED: 500,
    FailureKind.INVALID_INPUT: 422,  # the expert failed on this input alone
    FailureKind.OUT_OF_MEMORY: 503,  # not the client's fault: retry later
    FailureKind.TIMED_OUT: 504,  # its batch ran past the batch deadline
    FailureKind.EXECUTOR_STUCK: 503,
    FailureKind.SHUT_DOWN: 503,  # send it to another replica
    FailureKind.NO_REPLICA: 503,  # every replica of a handed-off step failed: retry later
    FailureKind.EXPERT_QUARANTINED: 503,
    FailureKind.ROUTING_FAILED: 500,
    FailureKind.NOT_QUEUED: 500,
    FailureKind.REJECTED: 422,
}


def status_of(exc: BaseException) -> tuple[int, str]:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return INTERNAL


def error_body(error_type: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"type": error_type, "message": message,
                      **{k: v for k, v in extra.items() if v is not None}}}


def error_response(exc: BaseException) -> JSONResponse:
    status, error_type = status_of(exc)
    headers = getattr(exc, "headers", None) or {}
    if isinstance(exc, ClientDisconnect):
        body = error_body(error_type, "the client closed the connection before the body "
                                      "was complete")
    elif isinstance(exc, ApiError):
        body = error_body(error_type, redact_paths(exc.message), details=exc.details)
    elif isinstance(exc, RequestValidationError):
        body = error_body(error_type, describe_validation(exc.errors()),
                          details=_plain_errors(exc.errors()))
    elif status == INTERNAL[0]:
        body = error_body(error_type, "internal server error; the server log has the traceback")
    else:
        body = error_body(error_type, redact_paths(str(exc)))
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer", **headers}
    return SafeJSONResponse(body, status_code=status, headers=headers)


# An absolute path of two or more parts ("/srv/models/weights/cls-R.safetensors"), not
# an API path such as /v1/experts: error texts from the engine and the loader may name
# files, and the layout of the server's disk is not the client's business.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/-])(?:[A-Za-z]:)?[/\\](?!v1/)(?:[\w.+~-]+[/\\])+([\w.+~-]*)")


def redact_paths(text: str) -> str:
    """`text` with every absolute filesystem path cut to its last part (the file name)."""
    return _ABSOLUTE_PATH.sub(lambda m: m.group(1) or "(path)", text)


def describe_validation(errors: list[Mapping[str, Any]], prefix: str = "") -> str:
    """Pydantic errors as one line: 'image: give exactly one of ...; fields: Field required'."""
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        where = f"{prefix}{loc}" if loc else (prefix.rstrip(".") or "body")
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def _plain_errors(errors: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    # Pydantic errors may carry the offending input and exception objects: keep only
    # what is small and JSON-safe.
    return [{"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "")),
             "type": str(e.get("type", ""))} for e in errors[:20]]


class SafeJSONResponse(JSONResponse):
    """JSON with NaN and infinities written as null: an expert fed extreme inputs may
    output them, and strict JSON (which clients parse) has no such numbers."""

    def render(self, content: Any) -> bytes:
        return super().render(_finite(content))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def install(app: FastAPI) -> None:
    """Answer every error with the status from STATUS and the one error body."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        # An unexpected exception (500) is also re-raised by Starlette, so uvicorn logs
        # its traceback once.
        return error_response(exc)

    async def handle_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = error_body(_HTTP_TYPES.get(exc.status_code, "http_error"), str(exc.detail))
        return SafeJSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    for cls in (*STATUS, Exception):
        app.add_exception_handler(cls, handle)
    app.add_exception_handler(StarletteHTTPException, handle_http)


_HTTP_TYPES = {404: "not_found", 405: "method_not_allowed"}
