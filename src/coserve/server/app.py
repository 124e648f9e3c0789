"""The ASGI app: wires the service, the routes, the limits, auth, errors and metrics.

The engine starts in a thread when the app starts (measuring costs and placing experts
can take a while): /healthz answers at once, /readyz only once placement finished. On
shutdown, intake stops first, then the engine finishes every request it holds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from coserve import __version__
from coserve.engine.engine import Engine
from coserve.server import errors
from coserve.server.auth import BearerAuth, HostCheckMiddleware
from coserve.server.config import ServerConfig
from coserve.server.limits import Admission, BodyLimitMiddleware, DecodeBudget
from coserve.server.metrics import RequestMetricsMiddleware, ServerMetrics
from coserve.server.routes import build_router
from coserve.server.schemas import REQUEST_MODELS
from coserve.server.service import InspectionService
from coserve.server.workers import WorkerPool

log = logging.getLogger(__name__)


def create_app(engine: Engine, config: ServerConfig | None = None) -> FastAPI:
    """An app serving `engine` (not started yet: the app starts and closes it)."""
    config = config or ServerConfig()
    admission = Admission(config.max_inflight, config.retry_after_s, config.max_loop_lag_s)
    metrics = ServerMetrics(engine, admission, config.engine_stats_max_age_s)
    pool = WorkerPool(config.num_decode_workers)
    service = InspectionService(engine, config, admission, metrics, pool)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        starting = asyncio.get_running_loop().run_in_executor(None, service.start)
        background = [asyncio.create_task(admission.loop_lag.run()),
                      asyncio.create_task(metrics.engine_counters.run())]
        try:
            yield
        finally:
            service.stop_intake()
            for task in background:
                task.cancel()
            with contextlib.suppress(BaseException):  # already logged by service.start
                await starting
            await asyncio.to_thread(service.close)
            pool.close()

    app = FastAPI(title=f"coserve: {engine.model.name}", version=__version__, lifespan=lifespan,
                  description="Inspection over a Collaboration-of-Experts model: send an image "
                              "and its routing fields, get the experts it visited and their "
                              "outputs.")
    app.state.service = service
    app.state.metrics = metrics
    app.include_router(build_router(BearerAuth(config.token), BearerAuth(config.metrics_token)))
    errors.install(app)
    budget = DecodeBudget(config.max_request_decode_bytes, config.max_server_decode_bytes,
                          config.retry_after_s,
                          on_refused=metrics.rejected.labels("decode_budget").inc)
    app.state.decode_budget = budget
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes,
                       read_timeout_s=config.read_timeout_s, budget=budget)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)  # sees every answer
    if config.host_allowlist is not None:  # outermost: a foreign Host gets nothing else
        app.add_middleware(HostCheckMiddleware, allowed=config.host_allowlist)
    _document_request_models(app)
    return app


def _document_request_models(app: FastAPI) -> None:
    """Request bodies are parsed by hand (JSON or multipart on one endpoint), so their
    models are added to the OpenAPI components here."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes,
                                 description=app.description)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in REQUEST_MODELS:
                doc = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(doc.pop("$defs", {}))
                components[model.__name__] = doc
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
