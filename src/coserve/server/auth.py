"""Optional bearer-token authentication for the /v1 endpoints. Probes (/healthz,
/readyz), /metrics and the API docs stay open so orchestrators and scrapers need no
secret; bind to loopback or put them behind the network's own controls."""

from __future__ import annotations

import secrets

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from coserve.server.errors import UnauthorizedError

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
