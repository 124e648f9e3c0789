"""Who may call: an optional bearer token for the /v1 endpoints, another for /metrics,
and a Host check. Probes (/healthz, /readyz) and the API docs stay open so orchestrators
need no secret; bind to loopback or put them behind the network's own controls.

The Host check stops DNS rebinding: a web page whose name resolves to 127.0.0.1 makes
the browser send its own name as Host, so a token-less server on loopback answers only
Host headers naming loopback (`ServerConfig.host_allowlist`)."""

from __future__ import annotations

import secrets

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from coserve.server.errors import ForbiddenHostError, UnauthorizedError, error_response

_scheme = HTTPBearer(auto_error=False, description="the server's --token (or $COSERVE_TOKEN)")


class BearerAuth:
    """A FastAPI dependency: passes when no token is configured, or the request carries
    `Authorization: Bearer <token>` with the right token."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None

    async def __call__(
        self, credentials: HTTPAuthorizationCredentials | None = Depends(_scheme)  # noqa: B008
    ) -> None:
        if self._token is None:
            return
        if credentials is None:
            raise UnauthorizedError("this server needs a bearer token: send the header "
                                    "'Authorization: Bearer <token>'")
        # Constant time, so the token cannot be guessed a byte at a time.
        if not secrets.compare_digest(credentials.credentials.encode(), self._token):
            raise UnauthorizedError("the bearer token is wrong")


class HostCheckMiddleware:
    """400 for a request whose Host header (any port) is not in `allowed`."""

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...]) -> None:
        self.app = app
        self.allowed = frozenset(allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = host_name(dict(scope.get("headers", ())).get(b"host", b""))
            if host not in self.allowed:
                named = f"Host {host!r}" if host else "no Host header"
                refusal = ForbiddenHostError(
                    f"this server answers only Host {', '.join(sorted(self.allowed))} (any port), "
                    f"got {named}; use one of those names, or start it with --allowed-hosts")
                await error_response(refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def host_name(header: bytes) -> str:
    """b"[::1]:8000" -> "[::1]", b"Example.com:80" -> "example.com"."""
    text = header.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[: text.find("]") + 1] if "]" in text else text
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text
