"""The HTTP inference server: `coserve serve REPO`.

    from coserve.server import ServerConfig, create_app, serve
    app = create_app(engine, ServerConfig(max_inflight=64))   # an ASGI app; starts the engine
    serve(engine, ServerConfig(port=8000))                    # uvicorn; SIGTERM drains

One concern per module: `config` (settings), `routes` (endpoints), `schemas` (request and
response bodies), `parsing` (bodies -> engine inputs), `images` (PNG/JPEG -> tensors),
`service` (admission, submit, timeouts), `limits` (in-flight slots, body size), `auth`
(bearer token), `errors` (every error class -> status code, in one table), `metrics`
(every Prometheus metric, declared in one place), `app` (wiring), `run` (uvicorn).

Names are imported lazily, so `coserve.server.config` costs no FastAPI import.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ServerConfig": "coserve.server.config",
    "create_app": "coserve.server.app",
    "serve": "coserve.server.run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'coserve.server' has no attribute {name!r}")
