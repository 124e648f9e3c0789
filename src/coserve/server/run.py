"""Run the app on uvicorn. SIGTERM (or Ctrl-C) drains: intake stops at once (503 for
new requests), the engine finishes what it holds within the drain deadline (past it,
what is left is answered with a "shut down" error), requests in flight are answered,
and the process exits 0."""

from __future__ import annotations

import logging
import signal
import socket
from types import FrameType

import uvicorn

from coserve.engine.engine import Engine
from coserve.server.app import create_app
from coserve.server.config import ServerConfig
from coserve.server.service import InspectionService

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """uvicorn, but a signal stops intake before uvicorn stops accepting connections, and
    the process exits 0 afterwards (uvicorn re-raises the signal, which exits 143)."""

    def __init__(self, config: uvicorn.Config, service: InspectionService) -> None:
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            self.service.begin_drain()
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: stop waiting
        self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.service.start_error is not None:
            return True  # the engine cannot start: nothing to serve
        return await super().on_tick(counter)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; port 0 picks a free one (read it from getsockname())."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=2048)


def make_server(engine: Engine, config: ServerConfig, log_level: str = "warning") -> DrainingServer:
    app = create_app(engine, config)
    uv_config = uvicorn.Config(
        app, log_level=log_level, access_log=False, lifespan="on",
        # The engine drains from the signal on, within its deadline, and answers every
        # handler waiting on it; then the handlers answer their clients.
        timeout_graceful_shutdown=config.drain_timeout_s + 5,
        # Open connections and tasks: beyond it uvicorn answers 503 at once, so a flood of
        # connections (slow uploads, idle keep-alives) is bounded before any handler runs.
        limit_concurrency=config.max_connections,
        timeout_keep_alive=config.keep_alive_s,
    )
    return DrainingServer(uv_config, app.state.service)


def serve(engine: Engine, config: ServerConfig, sock: socket.socket | None = None,
          log_level: str = "warning") -> None:
    """Serve until SIGTERM/SIGINT, then drain. Raises the engine's error if it cannot start."""
    server = make_server(engine, config, log_level)
    sock = sock or bind(config.host, config.port)
    server.run(sockets=[sock])
    if server.service.start_error is not None:
        raise server.service.start_error
