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
Blank lines and lines starting with '#' are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from coserve.errors import TraceError
from coserve.types import Request


def read_trace(path: str | Path) -> list[Request]:
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"trace file {path} does not exist")
    files: dict[Path, dict[str, torch.Tensor]] = {}
    requests: list[Request] = []
    seen: set[str] = set()
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
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
    try:
        obj = json.loads(line)
        request_id, arrival_s = str(obj["id"]), float(obj["arrival_s"])
        fields, ref = dict(obj["fields"]), obj["input"]
        file, key = root / ref["file"], str(ref["key"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise TraceError(
            f"{where}: expected {{\"id\", \"arrival_s\", \"fields\", \"input\": {{\"file\", "
            f"\"key\"}}}} ({type(exc).__name__}: {exc})"
        ) from None
    if arrival_s < 0:
        raise TraceError(f"{where}: arrival_s must be >= 0, got {arrival_s}")
    if file not in files:
        if not file.is_file():
            raise TraceError(f"{where}: input file {file} does not exist")
        files[file] = load_file(file)
    if key not in files[file]:
        raise TraceError(f"{where}: input file {file} has no tensor {key!r}")
    return Request(request_id, fields, files[file][key], arrival_s)


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
