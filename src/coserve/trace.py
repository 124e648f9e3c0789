"""Traces: replayable request streams.

A trace is a JSON Lines file, one request per line:

    {"id": "r000001", "arrival_s": 0.004, "fields": {"component_type": "R"},
     "input": {"file": "trace.inputs.safetensors", "key": "r000001"}}

- `id`: unique request id (string).
- `arrival_s`: offset in seconds from the start of the trace (non-decreasing is not
  required; requests are replayed in arrival order).
- `fields`: what routing reads (the repository's `routing.first.field`, e.g.
  component_type), plus anything else you want echoed in results.
- `input`: where the request's input tensor is: a safetensors file (path relative to the
  trace file) and the tensor's key in it. Inputs are float32 [C, H, W].
Blank lines and lines starting with '#' are skipped. Anything else that is not such a
line is a TraceError naming the file and line: wrong types, NaN or Infinity anywhere,
`arrival_s` outside [0, a week], `fields` nested deeper than 16 levels or holding an
integer of 2**63 or more, an input file that is missing or not safetensors.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from coserve.errors import TraceError
from coserve.types import Request

# Bounds on what a line may hold, so a hostile trace is an error, not a hang or a crash.
MAX_ARRIVAL_S = 7 * 24 * 3600.0  # a week: a longer replay is a mistake in units
MAX_FIELD_DEPTH = 16  # nested lists/objects in `fields`
MAX_FIELD_INT = 2**63  # integers in `fields` (a JSON int can have 4,300 digits)
MAX_ID_CHARS = 1000
_SHAPE = ('expected {"id", "arrival_s", "fields", "input": {"file", "key"}}')


def read_trace(path: str | Path) -> list[Request]:
    """The requests of a trace, in arrival order. TraceError naming the file and line for
    anything malformed: bad JSON, wrong types, non-finite numbers or arrival offsets
    outside [0, MAX_ARRIVAL_S], deep nesting, huge integers, missing or non-safetensors
    input files."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"trace file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"trace file {path} cannot be read as UTF-8 text ({exc})") from None
    files: dict[Path, dict[str, torch.Tensor]] = {}
    requests: list[Request] = []
    seen: set[str] = set()
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{lineno}"
        request = _parse_line(line, where, path.parent, files)
        if request.request_id in seen:
            raise TraceError(f"{where}: request id {request.request_id!r} appears twice")
        seen.add(request.request_id)
        requests.append(request)
    return sorted(requests, key=lambda r: r.arrival_s)


def _parse_line(line: str, where: str, root: Path, files: dict) -> Request:
    obj = _load_json(line, where)
    if not isinstance(obj, dict) or not {"id", "arrival_s", "fields", "input"} <= obj.keys():
        raise TraceError(f"{where}: {_SHAPE}, got {_shown(obj)}")
    request_id = _request_id(obj["id"], where)
    arrival_s = _arrival_s(obj["arrival_s"], where)
    fields = obj["fields"]
    if not isinstance(fields, dict):
        raise TraceError(f"{where}: fields must be an object, got {_shown(fields)}")
    _check_value(fields, where, "fields")
    ref = obj["input"]
    if (not isinstance(ref, dict) or not isinstance(ref.get("file"), str)
            or not isinstance(ref.get("key"), str) or not ref["file"]):
        raise TraceError(f"{where}: input must be {{\"file\": <path>, \"key\": <tensor "
                         f"name>}} (strings), got {_shown(ref)}")
    file, key = root / ref["file"], ref["key"]
    if file not in files:
        files[file] = _load_inputs(file, where)
    if key not in files[file]:
        raise TraceError(f"{where}: input file {file} has no tensor {key!r}")
    return Request(request_id, fields, files[file][key], arrival_s)


def _load_json(line: str, where: str) -> Any:
    try:
        return json.loads(line)  # NaN and Infinity parse; the field checks refuse them
    except RecursionError:
        raise TraceError(f"{where}: nested too deeply to read (at most {MAX_FIELD_DEPTH} "
                         "levels in fields)") from None
    except ValueError as exc:  # JSONDecodeError, and integers over Python's digit limit
        raise TraceError(f"{where}: not valid JSON ({str(exc)[:200]}); {_SHAPE}") from None


def _request_id(value: Any, where: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < MAX_FIELD_INT:
        return str(value)
    if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS:
        raise TraceError(f"{where}: id must be a non-empty string of at most {MAX_ID_CHARS} "
                         f"characters, got {_shown(value)}")
    return value


def _arrival_s(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TraceError(f"{where}: arrival_s must be a number of seconds, got {_shown(value)}")
    if isinstance(value, int) and abs(value) > MAX_ARRIVAL_S:
        value = math.inf if value > 0 else -math.inf  # huge ints would not convert to float
    if not math.isfinite(value):
        raise TraceError(f"{where}: arrival_s must be a finite number of seconds, got "
                         f"{_shown(value)}")
    if value < 0:
        raise TraceError(f"{where}: arrival_s must be >= 0, got {value}")
    if value > MAX_ARRIVAL_S:
        raise TraceError(f"{where}: arrival_s is {value:g} s; it must be at most "
                         f"{MAX_ARRIVAL_S:g} s (a week): is it in seconds?")
    return float(value)


def _check_value(value: Any, where: str, key: str) -> None:
    """TraceError for nesting deeper than MAX_FIELD_DEPTH, integers beyond MAX_FIELD_INT
    and non-string keys. Iterative: the depth is what is being bounded."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list) and depth >= MAX_FIELD_DEPTH:
            raise TraceError(f"{where}: {key} nest deeper than {MAX_FIELD_DEPTH} levels")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, int) and not isinstance(item, bool) and abs(item) >= MAX_FIELD_INT:
            raise TraceError(f"{where}: {key} hold an integer of {len(str(abs(item)))} digits; "
                             f"integers must be below 2**63")
        elif isinstance(item, float) and not math.isfinite(item):
            raise TraceError(f"{where}: {key} hold {item!r} (NaN or Infinity): give finite numbers")


def _load_inputs(file: Path, where: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError

    if not file.is_file():
        raise TraceError(f"{where}: input file {file} does not exist")
    try:
        return load_file(file)
    except (SafetensorError, OSError, ValueError) as exc:
        raise TraceError(f"{where}: input file {file} is not a safetensors file ({exc}); "
                         f"write it with safetensors.torch.save_file or coserve.write_trace") from None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def write_trace(path: str | Path, requests: Iterable[Request]) -> Path:
    """Write requests as a trace plus one inputs file beside it."""
    path = Path(path)
    inputs_name = path.name + ".inputs.safetensors"
    requests = list(requests)
    save_file({r.request_id: r.input.contiguous() for r in requests}, path.parent / inputs_name)
    lines = [
        json.dumps({"id": r.request_id, "arrival_s": r.arrival_s, "fields": r.fields,
                    "input": {"file": inputs_name, "key": r.request_id}})
        for r in requests
    ]
    path.write_text("\n".join(lines) + "\n")
    return path
