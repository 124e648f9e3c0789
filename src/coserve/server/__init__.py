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

from coserve._lazy import lazy_getattr

_EXPORTS = {
    "ServerConfig": "coserve.server.config",
    "create_app": "coserve.server.app",
    "serve": "coserve.server.run",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr("coserve.server", _EXPORTS)
