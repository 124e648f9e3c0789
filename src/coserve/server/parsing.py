"""Request bodies -> items: JSON (base64 PNG/JPEG or a raw tensor) or multipart (PNG/JPEG
files plus a `fields` JSON part). Images stay encoded here (the service checks their
headers against the routed expert before decoding them). Every refusal names the part
that was wrong: 400 for a body that does not parse, 415 for a format we do not take,
422 for a value that is wrong.

The body is read first (under BodyLimitMiddleware's size limit and read deadline), then
a JSON body is parsed in the worker pool, its parse reserved in the decode budget by
the body's size. JSON nesting and number sizes are bounded by pydantic's parser, the
same for JSON bodies and multipart JSON parts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import pydantic_core
import torch
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from coserve.server.errors import (
    InvalidInputError,
    MalformedBodyError,
    UnsupportedMediaTypeError,
    describe_validation,
)
from coserve.server.images import EncodedImage, decode_base64, tensor_from_list
from coserve.server.limits import Reservation
from coserve.server.schemas import MAX_ID_CHARS, BatchRequest, ImageInput, InspectRequest
from coserve.server.workers import WorkerPool

IMAGE_MEDIA_TYPES = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg",
                     "application/octet-stream": None, "": None}
MAX_FORM_FIELDS = 8
# Bytes a JSON body's parse may hold per body byte: a list of floats is ~32 bytes per
# number of ~8 characters, base64 text becomes a str and then its bytes.
JSON_PARSE_BYTES_PER_BYTE = 6

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Item:
    """One image, ready for the engine."""

    client_id: str | None
    fields: dict[str, Any]
    input: torch.Tensor | EncodedImage  # a tensor: [C, H, W] float32
    where: str  # how the client names the item in messages: "items[3]", "image"


@dataclass(frozen=True)
class Parsed:
    items: list[Item]
    timeout_s: float | None


async def parse_inspect(request: Request, batch: bool, max_items: int, pool: WorkerPool,
                        reservation: Reservation) -> Parsed:
    """The body of POST /v1/inspect (one item) or /v1/inspect/batch (1..max_items)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        body = await request.body()
        reservation.add(len(body) * JSON_PARSE_BYTES_PER_BYTE, "parsing the JSON body")
        return await pool.run(_from_json, body, batch, max_items)
    if media == "multipart/form-data":
        await request.body()  # all of it, within the read deadline, before parsing
        return await _from_multipart(request, batch, max_items)
    raise UnsupportedMediaTypeError(
        f"Content-Type {media or '(none)'} is not taken here; send application/json or "
        f"multipart/form-data")


def _check_count(num_items: int, max_items: int) -> None:
    """Before any image is decoded."""
    if num_items > max_items:
        raise InvalidInputError(f"the batch holds {num_items} images; this server takes at most "
                                f"{max_items} per request: split it")


# -- JSON ---------------------------------------------------------------------------------
def _from_json(body: bytes, batch: bool, max_items: int) -> Parsed:
    if batch:
        doc = _validate(BatchRequest, body)
        _check_count(len(doc.items), max_items)
        items = [_item(it.id, it.fields, it.image, f"items[{i}]")
                 for i, it in enumerate(doc.items)]
        return Parsed(items, doc.timeout_s)
    one = _validate(InspectRequest, body)
    return Parsed([_item(one.id, one.fields, one.image, "")], one.timeout_s)


def _validate(model: type[M], body: bytes) -> M:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors()
        if any(e["type"] == "json_invalid" for e in errors):
            raise MalformedBodyError(f"the body is not valid JSON: {errors[0]['msg']}") from None
        raise InvalidInputError(describe_validation(errors),
                                details=[{"loc": [str(x) for x in e["loc"]], "msg": e["msg"]}
                                         for e in errors[:20]]) from None


def _item(client_id: str | None, fields: dict[str, Any], image: ImageInput, item: str) -> Item:
    """`item`: "items[3]" in a batch, "" for the one item of /v1/inspect."""
    where = f"{item}.image" if item else "image"
    x: torch.Tensor | EncodedImage
    if image.tensor is not None:
        x = tensor_from_list(image.tensor.shape, image.tensor.data, f"{where}.tensor")
    elif image.base64_png is not None:
        part = f"{where}.base64_png"
        x = EncodedImage(decode_base64(image.base64_png, part), part, expect="png")
    else:
        assert image.base64_jpeg is not None  # ImageInput checked exactly one is given
        part = f"{where}.base64_jpeg"
        x = EncodedImage(decode_base64(image.base64_jpeg, part), part, expect="jpeg")
    return Item(client_id, fields, x, item)


# -- multipart ----------------------------------------------------------------------------
async def _from_multipart(request: Request, batch: bool, max_items: int) -> Parsed:
    try:
        # One file more than allowed still parses, so too many files get the 422 that says
        # the limit; Starlette refuses more with a 400.
        async with request.form(max_files=max_items + 1, max_fields=MAX_FORM_FIELDS) as form:
            return await (_batch_form(form, max_items) if batch else _single_form(form))
    except StarletteHTTPException as exc:  # Starlette's multipart parser refused the body
        raise MalformedBodyError(f"the multipart body does not parse: {exc.detail}") from None


async def _single_form(form: FormData) -> Parsed:
    image = form.get("image")
    if not isinstance(image, UploadFile):
        raise InvalidInputError("the multipart body needs a file part named 'image' (PNG or JPEG)")
    fields = _json_part(form, "fields")
    if not isinstance(fields, dict):
        raise InvalidInputError("the 'fields' part must be a JSON object, e.g. "
                                "{\"component_type\": \"R\"}")
    client_id = _text_part(form, "id")
    return Parsed([Item(client_id, fields, await _file_image(image, "image"), "")],
                  _timeout_part(form))


async def _batch_form(form: FormData, max_items: int) -> Parsed:
    files = form.getlist("images")
    if not files or not all(isinstance(f, UploadFile) for f in files):
        raise InvalidInputError("the multipart body needs one or more file parts named 'images'")
    _check_count(len(files), max_items)
    fields = _json_part(form, "fields")
    per_file = [fields] * len(files) if isinstance(fields, dict) else fields
    if not isinstance(per_file, list) or len(per_file) != len(files) or not all(
            isinstance(f, dict) for f in per_file):
        raise InvalidInputError(f"the 'fields' part must be one JSON object for every file, or "
                                f"a JSON array of {len(files)} objects (one per file, in order)")
    ids = _json_part(form, "ids") if "ids" in form else [None] * len(files)
    if not isinstance(ids, list) or len(ids) != len(files) or not all(
            i is None or _valid_id(i) for i in ids):
        raise InvalidInputError(f"the 'ids' part must be a JSON array of {len(files)} strings")
    items = [Item(i, f, await _file_image(file, f"images[{k}]"), f"images[{k}]")
             for k, (i, f, file) in enumerate(zip(ids, per_file, files, strict=True))]
    return Parsed(items, _timeout_part(form))


async def _file_image(file: UploadFile, where: str) -> EncodedImage:
    media = (file.content_type or "").split(";")[0].strip().lower()
    if media not in IMAGE_MEDIA_TYPES:
        raise UnsupportedMediaTypeError(f"{where} ({file.filename}) is {media}; send image/png "
                                        f"or image/jpeg")
    return EncodedImage(await file.read(), f"{where} ({file.filename})", IMAGE_MEDIA_TYPES[media])


def _json_part(form: FormData, name: str) -> Any:
    text = _text_part(form, name)
    if text is None:
        raise InvalidInputError(f"the multipart body needs a '{name}' part holding JSON")
    try:  # pydantic's parser, as for JSON bodies: bounded nesting, bounded numbers
        return pydantic_core.from_json(text)
    except ValueError as exc:
        raise MalformedBodyError(f"the '{name}' part is not valid JSON: {exc}") from None


def _text_part(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(f"the '{name}' part must be text, not a file")
    if name == "id" and not _valid_id(value):
        raise InvalidInputError(f"the 'id' part must hold 1 to {MAX_ID_CHARS} characters")
    return value


def _timeout_part(form: FormData) -> float | None:
    text = _text_part(form, "timeout_s")
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise InvalidInputError(f"the 'timeout_s' part must be a number of seconds > 0, got {text!r}")
    return value


def _valid_id(value: Any) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= MAX_ID_CHARS
