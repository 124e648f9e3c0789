"""Request and response bodies (pydantic). They are the API's contract: the OpenAPI
document at /openapi.json is generated from them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_ID_CHARS = 200


class TensorInput(BaseModel):
    """A raw input tensor: float32 values in row-major order."""

    model_config = ConfigDict(extra="forbid")

    shape: list[int] = Field(min_length=1, max_length=4, examples=[[3, 32, 32]],
                             description="the expert's input shape [C, H, W]")
    data: list[float] = Field(description="prod(shape) numbers, row-major")

    @model_validator(mode="after")
    def _positive_dims(self) -> TensorInput:
        if any(d < 1 for d in self.shape):
            raise ValueError(f"every dimension of shape must be >= 1, got {self.shape}")
        return self


class ImageInput(BaseModel):
    """Exactly one of: a base64 PNG, a base64 JPEG (decoded to RGB float32 [3, H, W] in
    [0, 1]), or a raw tensor."""

    model_config = ConfigDict(extra="forbid")

    base64_png: str | None = None
    base64_jpeg: str | None = None
    tensor: TensorInput | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ImageInput:
        given = [k for k in ("base64_png", "base64_jpeg", "tensor") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of base64_png, base64_jpeg, tensor (got "
                             f"{', '.join(given) or 'none'})")
        return self


class InspectItem(BaseModel):
    """One image to inspect."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, min_length=1, max_length=MAX_ID_CHARS,
                           description="your id for this image, echoed as request_id")
    fields: dict[str, Any] = Field(examples=[{"component_type": "R"}],
                                   description="what routing reads (e.g. component_type)")
    image: ImageInput


class InspectRequest(InspectItem):
    """One image, with an optional timeout."""

    timeout_s: float | None = Field(None, gt=0, description=(
        "answer 504 after this many seconds (at most the server's own timeout)"))


class BatchRequest(BaseModel):
    """Many images; they are admitted together or not at all."""

    model_config = ConfigDict(extra="forbid")

    items: list[InspectItem] = Field(min_length=1)
    timeout_s: float | None = Field(None, gt=0)


class StepOut(BaseModel):
    expert: str
    label: str
    detail: dict[str, Any] = Field(description="the expert's output (scores, boxes, ...)")
    executor: int
    batch_size: int
    queued_s: float
    exec_s: float
    precision: str = Field("fp32", description="the stored precision the expert was loaded "
                                               "from (fp32, fp16, bf16, int8)")


class InspectResult(BaseModel):
    """What one image gave: the experts it visited, their labels and outputs, timings."""

    request_id: str
    status: int = Field(description="the HTTP status this image alone would have had")
    ok: bool
    error: str | None = None
    error_kind: str | None = Field(None, description=(
        "expert_failed, expert_quarantined, routing_failed, timeout, ..."))
    failed_expert: str | None = None
    path: list[str] = Field(description="experts visited, in order")
    labels: list[str] = Field(description="each visited expert's label, in order")
    latency_s: float | None = None
    steps: list[StepOut] = Field(default_factory=list)


class BatchResponse(BaseModel):
    results: list[InspectResult]
    num_ok: int
    num_failed: int


class ErrorBody(BaseModel):
    type: str = Field(description="malformed_body, unauthorized, invalid_input, overloaded, ...")
    message: str = Field(description="what was wrong and how to fix it")
    expert: str | None = None
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
    result: InspectResult | None = Field(None, description="an accepted request's partial result")


class ExecutorOut(BaseModel):
    index: int
    processor: str
    queue_depth: int
    pool_used_bytes: int
    pool_budget_bytes: int | None = Field(description="null: unlimited")


class ExpertOut(BaseModel):
    name: str
    architecture: str
    stage: str
    num_bytes: int = Field(description="tensor bytes when resident")
    file_bytes: int
    usage_probability: float
    resident_on: list[int] = Field(description="executors whose pools hold it now (loading included)")
    in_host_cache: bool
    quarantined: bool
    consecutive_failures: int
    total_failures: int
    last_error: str | None = None
    cascade_threshold: float | None = Field(
        default=None, description="a cascade expert (routing.cascade): answers whose top "
        "score is below this escalate (label low_confidence); null: not a cascade expert")
    escalates_to: list[str] = Field(default_factory=list,
                                    description="the experts its unsure answers can go to")


class ExpertsResponse(BaseModel):
    model: str
    executors: list[ExecutorOut]
    experts: list[ExpertOut]


class ReleaseResponse(BaseModel):
    expert: str
    released: bool = Field(description="false: it was not quarantined")


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    reason: str | None = None


# Request bodies are parsed by hand (one endpoint takes JSON or multipart), so FastAPI
# does not see these models; the OpenAPI document gets them from here.
REQUEST_MODELS: tuple[type[BaseModel], ...] = (InspectRequest, BatchRequest)


def json_or_multipart(model: type[BaseModel], multipart: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` declaring a body of `model` as JSON, or the given multipart form."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}},
        "multipart/form-data": {"schema": multipart},
    }}}


SINGLE_FORM = {
    "type": "object",
    "required": ["fields", "image"],
    "properties": {
        "fields": {"type": "string", "description": "JSON object, e.g. {\"component_type\": \"R\"}"},
        "image": {"type": "string", "format": "binary", "description": "a PNG or JPEG file"},
        "id": {"type": "string"},
        "timeout_s": {"type": "number", "exclusiveMinimum": 0},
    },
}
BATCH_FORM = {
    "type": "object",
    "required": ["fields", "images"],
    "properties": {
        "fields": {"type": "string", "description": (
            "JSON: one object per file, in order, or one object for every file")},
        "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "ids": {"type": "string", "description": "JSON array of ids, one per file"},
        "timeout_s": {"type": "number", "exclusiveMinimum": 0},
    },
}
