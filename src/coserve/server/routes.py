"""The endpoints. Each reads like its contract: check intake, parse, run, answer."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from coserve.engine.engine import Engine
from coserve.server.errors import (
    FAILURE_STATUS,
    STATUS,
    NotFoundError,
    SafeJSONResponse,
    TimedOutError,
    UnavailableError,
    error_body,
    redact_paths,
)
from coserve.server.limits import reservation_of
from coserve.server.metrics import ServerMetrics
from coserve.server.parsing import parse_inspect
from coserve.server.schemas import (
    BATCH_FORM,
    SINGLE_FORM,
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    ExpertsResponse,
    Health,
    InspectRequest,
    InspectResult,
    Readiness,
    ReleaseResponse,
    json_or_multipart,
)
from coserve.server.service import Answer, InspectionService

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 408, 413, 415, 422, 429, 500, 503, 504)
}


def build_router(auth: Any, metrics_auth: Any) -> APIRouter:
    """`auth`: the dependency guarding /v1, `metrics_auth` /metrics (see coserve.server.auth)."""
    router = APIRouter()
    router.add_api_route("/healthz", healthz, methods=["GET"], response_model=Health, tags=["probes"])
    router.add_api_route("/readyz", readyz, methods=["GET"], response_model=Readiness,
                         responses={503: {"model": ErrorResponse}}, tags=["probes"])
    router.add_api_route("/metrics", metrics, methods=["GET"], tags=["probes"],
                         response_class=Response, dependencies=[Depends(metrics_auth)],
                         responses={200: {"content": {CONTENT_TYPE_LATEST: {}}},
                                    401: {"model": ErrorResponse}})
    guarded = [Depends(auth)]
    router.add_api_route(
        "/v1/inspect", inspect, methods=["POST"], dependencies=guarded, tags=["inspect"],
        response_model=InspectResult, responses=ERRORS,
        openapi_extra=json_or_multipart(InspectRequest, SINGLE_FORM))
    router.add_api_route(
        "/v1/inspect/batch", inspect_batch, methods=["POST"], dependencies=guarded,
        tags=["inspect"], response_model=BatchResponse, responses=ERRORS,
        openapi_extra=json_or_multipart(BatchRequest, BATCH_FORM))
    router.add_api_route("/v1/experts", experts, methods=["GET"], dependencies=guarded,
                         tags=["experts"], response_model=ExpertsResponse, responses=ERRORS)
    router.add_api_route("/v1/experts/{name}/release", release, methods=["POST"],
                         dependencies=guarded, tags=["experts"], response_model=ReleaseResponse,
                         responses={**ERRORS, 404: {"model": ErrorResponse}})
    return router


def _service(request: Request) -> InspectionService:
    return request.app.state.service


# -- probes -------------------------------------------------------------------------------
async def healthz() -> dict[str, str]:
    """The process is alive (answers even while starting or draining)."""
    return {"status": "alive"}


async def readyz(request: Request) -> Response:
    """200 once the engine started and initial placement finished; 503 before, and while
    draining."""
    reason = _service(request).not_ready_reason()
    if reason is None:
        return SafeJSONResponse({"ready": True})
    status, error_type = STATUS[UnavailableError]
    return SafeJSONResponse(error_body(error_type, reason), status_code=status)


async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    server_metrics: ServerMetrics = request.app.state.metrics
    return Response(generate_latest(server_metrics.registry), media_type=CONTENT_TYPE_LATEST)


# -- inspection ---------------------------------------------------------------------------
async def inspect(request: Request) -> Response:
    """Inspect one image: JSON (`image` holds base64_png, base64_jpeg or a raw tensor) or
    multipart (`image` file + `fields` JSON part). The answer lists the experts visited,
    their labels, outputs and timings."""
    service = _service(request)
    service.check_open()
    reservation = reservation_of(request)
    parsed = await parse_inspect(request, False, 1, service.pool, reservation)
    answer = (await service.inspect(parsed, reservation, batch=False))[0]
    status, body = _present(answer)
    if answer.result is None:
        raise TimedOutError(body["error"])
    if status != 200:
        body = {**error_body(body["error_kind"], body["error"], expert=body["failed_expert"]),
                "result": body}
    return SafeJSONResponse(body, status_code=status)


async def inspect_batch(request: Request) -> Response:
    """Inspect many images, admitted together (429 if they do not all fit). 200 with one
    result per image, in order; each carries its own status."""
    service = _service(request)
    service.check_open()
    reservation = reservation_of(request)
    parsed = await parse_inspect(request, True, service.config.batch_limit, service.pool, reservation)
    answers = await service.inspect(parsed, reservation, batch=True)
    results = [_present(a)[1] for a in answers]
    num_ok = sum(r["ok"] for r in results)
    return SafeJSONResponse({"results": results, "num_ok": num_ok,
                             "num_failed": len(results) - num_ok})


def _present(answer: Answer) -> tuple[int, dict[str, Any]]:
    """(status, InspectResult as a dict)."""
    result = answer.result
    if result is None:
        status, kind = STATUS[TimedOutError]
        return status, {
            "request_id": answer.request_id, "status": status, "ok": False, "error_kind": kind,
            "error": (f"no answer within {answer.timeout_s:g} s; the engine still finishes the "
                      f"request, but this answer is final: retry with a larger timeout_s or "
                      f"when the server is less busy"),
            "failed_expert": None, "path": [], "labels": [], "latency_s": None, "steps": []}
    body = result.to_dict()
    if body["error"]:
        body["error"] = redact_paths(body["error"])
    status = 200
    if not result.ok:
        status = FAILURE_STATUS[result.error_kind] if result.error_kind else 500
    body.update(request_id=answer.request_id, status=status,
                labels=[s.label for s in result.steps])
    return status, body


# -- experts ------------------------------------------------------------------------------
async def experts(request: Request) -> dict[str, Any]:
    """Every expert: architecture, stage, bytes, usage probability, the executor pools it
    resides in now, and whether it is quarantined."""
    engine: Engine = _service(request).engine
    resident = engine.resident()
    usage = engine.usage()
    records = engine.quarantine.records()
    executors = [
        {"index": i, "processor": spec.processor, "queue_depth": depth, "pool_used_bytes": used,
         "pool_budget_bytes": budget}
        for i, (spec, depth, used, budget) in enumerate(zip(
            engine.executor_specs, engine.queue_depths(), engine.pool_bytes(),
            engine.pool_budgets(), strict=True))
    ]
    rows = []
    cascade = engine.model.router.cascade
    for name, spec in engine.model.experts.items():
        record = records.get(name)
        rule = cascade.get(name)
        rows.append({
            "name": name, "architecture": spec.architecture, "stage": spec.stage.value,
            "num_bytes": spec.num_bytes, "file_bytes": spec.file_bytes,
            "usage_probability": usage.get(name, 0.0),
            "resident_on": [i for i, pool in enumerate(resident) if name in pool],
            "in_host_cache": engine.in_host_cache(name),
            "quarantined": bool(record and record.quarantined),
            "consecutive_failures": record.consecutive_failures if record else 0,
            "total_failures": record.total_failures if record else 0,
            "last_error": redact_paths(record.last_error) if record and record.last_error else None,
            "cascade_threshold": rule.threshold if rule else None,
            "escalates_to": sorted(rule.all_targets) if rule else [],
        })
    return {"model": engine.model.name, "executors": executors, "experts": rows}


async def release(name: str, request: Request) -> dict[str, Any]:
    """Let a quarantined expert run again (after its weight file or code was fixed)."""
    engine: Engine = _service(request).engine
    if name not in engine.model.experts:
        raise NotFoundError(f"no expert named {name!r}; GET /v1/experts lists them")
    return {"expert": name, "released": engine.quarantine.release(name)}
