"""Server settings: frozen, validated on construction, messages say how to fix."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from coserve.errors import ConfigError

DEFAULT_MAX_INFLIGHT = 256
DEFAULT_MAX_BODY_BYTES = 16 << 20  # a batch of 64 raw [3, 224, 224] tensors as JSON fits
DEFAULT_REQUEST_TIMEOUT_S = 30.0
DEFAULT_READ_TIMEOUT_S = 10.0  # a whole body, even 16 MiB over a slow link, arrives by then
DEFAULT_MAX_REQUEST_DECODE_BYTES = 256 << 20  # 64 [3, 224, 224] images decode to 38 MiB
DEFAULT_MAX_SERVER_DECODE_BYTES = 1 << 30
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_DRAIN_TIMEOUT_S = 30.0
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
TOKEN_ENV = "COSERVE_TOKEN"


@dataclass(frozen=True)
class ServerConfig:
    """How the HTTP layer admits and answers requests (the engine has its own config).

    `max_inflight` bounds the images the server holds, all clients together: from the
    moment an image's header was checked against its expert (before it is decoded) until
    the engine finished it. Beyond it a request is answered 429 with Retry-After at once, never
    queued. A request that times out is answered 504 but keeps its slot until the engine
    finishes it, so timeouts cannot grow the engine's backlog.

    A body is read before any slot is taken, within `read_timeout_s` (else 408), so slow
    uploads hold a connection (at most `max_connections`), never a slot. The bytes a
    request holds while it is read, parsed and decoded (body, parsed JSON, pixels, each
    image's size known from its header before it is decoded) count against
    `max_request_decode_bytes` (beyond it 413) and, all requests together, against
    `max_server_decode_bytes` (beyond it 429 + Retry-After)."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # bearer token; None: no authentication
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    max_batch_items: int = 64
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    retry_after_s: int = 1  # what a 429 or 503 asks the client to wait
    max_loop_lag_s: float | None = 0.5  # also 429 while the event loop is this far behind
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S  # the whole body, from its first byte
    max_request_decode_bytes: int = DEFAULT_MAX_REQUEST_DECODE_BYTES
    max_server_decode_bytes: int = DEFAULT_MAX_SERVER_DECODE_BYTES
    num_decode_workers: int = 2  # threads that parse and decode bodies, off the event loop
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # open connections; beyond it uvicorn's 503
    keep_alive_s: int = 5  # an idle keep-alive connection is closed after this long
    # Host headers answered (any port); None: loopback names only when bound to loopback
    # without a token (against DNS rebinding), else any. ("*",): any.
    allowed_hosts: tuple[str, ...] | None = None
    metrics_token: str | None = None  # bearer token /metrics requires; None: open
    engine_stats_max_age_s: float = 5.0  # engine counters on /metrics are at most this old
    # SIGTERM: how long the engine may take to finish what it holds; past it, whatever is
    # left is answered with a "shut down" error and the process exits.
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S

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
        self._check_intake()

    def _check_intake(self) -> None:
        for name in ("read_timeout_s", "drain_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0 seconds, got {getattr(self, name)}")
        if self.max_request_decode_bytes < 1 << 20:
            raise ConfigError(f"max_request_decode_bytes must be >= 1 MiB, got "
                              f"{self.max_request_decode_bytes}")
        if self.max_server_decode_bytes < self.max_request_decode_bytes:
            raise ConfigError(f"max_server_decode_bytes ({self.max_server_decode_bytes}) must be "
                              f">= max_request_decode_bytes ({self.max_request_decode_bytes}), "
                              f"or no request could be decoded")
        if self.num_decode_workers < 1:
            raise ConfigError(f"num_decode_workers must be >= 1, got {self.num_decode_workers}")
        if self.max_connections < 1:
            raise ConfigError(f"max_connections must be >= 1, got {self.max_connections}")
        if self.keep_alive_s < 1:
            raise ConfigError(f"keep_alive_s must be >= 1 second, got {self.keep_alive_s}")
        self._check_access()

    def _check_access(self) -> None:
        if self.allowed_hosts is not None and not all(h.strip() for h in self.allowed_hosts):
            raise ConfigError("allowed_hosts holds an empty name; give host names such as "
                              "'example.com' (any port), or '*' for any")
        if self.metrics_token is not None and not self.metrics_token.strip():
            raise ConfigError("the metrics token is empty; give a non-empty --metrics-token or none")
        if self.engine_stats_max_age_s < 0:
            raise ConfigError(f"engine_stats_max_age_s must be >= 0 seconds, got "
                              f"{self.engine_stats_max_age_s}")

    @property
    def batch_limit(self) -> int:
        """The most items one batch request may hold: a bigger batch could never be admitted."""
        return min(self.max_batch_items, self.max_inflight)

    @property
    def host_allowlist(self) -> tuple[str, ...] | None:
        """The Host names answered (lower case, no port); None: any."""
        if self.allowed_hosts is not None:
            names = tuple(h.strip().lower() for h in self.allowed_hosts)
            return None if "*" in names else names
        return LOOPBACK_HOSTS if self.loopback and self.token is None else None

    @property
    def loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"
