"""Server settings: frozen, validated on construction, messages say how to fix."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from coserve.errors import ConfigError

DEFAULT_MAX_INFLIGHT = 256
DEFAULT_MAX_BODY_BYTES = 16 << 20  # a batch of 64 raw [3, 224, 224] tensors as JSON fits
DEFAULT_REQUEST_TIMEOUT_S = 30.0
TOKEN_ENV = "COSERVE_TOKEN"


@dataclass(frozen=True)
class ServerConfig:
    """How the HTTP layer admits and answers requests (the engine has its own config).

    `max_inflight` bounds the images the server holds, all clients together: from the
    moment a request reaches its handler (before its body is parsed) until the engine
    finished it. Beyond it a request is answered 429 with Retry-After at once, never
    queued. A request that times out is answered 504 but keeps its slot until the engine
    finishes it, so timeouts cannot grow the engine's backlog."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # bearer token; None: no authentication
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    max_batch_items: int = 64
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    retry_after_s: int = 1  # what a 429 or 503 asks the client to wait
    max_loop_lag_s: float | None = 0.5  # also 429 while the event loop is this far behind

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535 (0 picks a free one), got {self.port}")
        if self.token is not None and not self.token.strip():
            raise ConfigError("the bearer token is empty; give a non-empty --token or none at all")
        if self.max_inflight < 1:
            raise ConfigError(f"max_inflight must be >= 1 request, got {self.max_inflight}")
        if self.max_batch_items < 1:
            raise ConfigError(f"max_batch_items must be >= 1, got {self.max_batch_items}")
        if self.max_body_bytes < 1024:
            raise ConfigError(f"max_body_bytes must be >= 1024 bytes, got {self.max_body_bytes}")
        if self.request_timeout_s <= 0:
            raise ConfigError(f"request_timeout_s must be > 0 seconds, got {self.request_timeout_s}")
        if self.max_loop_lag_s is not None and self.max_loop_lag_s <= 0:
            raise ConfigError(f"max_loop_lag_s must be > 0 seconds (or None: never shed on lag), "
                              f"got {self.max_loop_lag_s}")
        if self.retry_after_s < 1:
            raise ConfigError(f"retry_after_s must be >= 1 second, got {self.retry_after_s}")

    @property
    def batch_limit(self) -> int:
        """The most items one batch request may hold: a bigger batch could never be admitted."""
        return min(self.max_batch_items, self.max_inflight)

    @property
    def loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"
