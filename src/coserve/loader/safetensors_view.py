"""Zero-copy safetensors parsing: tensors as views into the one buffer a storage read filled.

We parse the documented format (https://huggingface.co/docs/safetensors) ourselves
rather than call `safetensors.torch.load`: that copies every tensor out of the bytes,
while the load hot path wants views into the single page-aligned buffer that the
O_DIRECT read filled, so an expert costs one storage read and no per-tensor copy.

Layout: an 8-byte little-endian u64 header length N, N bytes of JSON mapping tensor
names to {"dtype", "shape", "data_offsets": [begin, end]} (plus an optional
"__metadata__" of strings), then the data region; offsets are relative to its start and
must tile it exactly, without holes or overlaps.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from coserve.errors import ExpertError

# The same guard as the safetensors library: a larger length means a garbage header,
# and must not make us allocate gigabytes.
MAX_HEADER_BYTES = 100_000_000

HEADER_LEN_BYTES = 8

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U64": torch.uint64,
    "U32": torch.uint32,
    "U16": torch.uint16,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class _TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # offsets into the data region, which starts after the header
    end: int


@dataclass(frozen=True)
class _Header:
    header_bytes: int  # N, the JSON length
    entries: list[_TensorEntry]  # sorted by `begin`, validated to tile the data region

    @property
    def data_start(self) -> int:
        return HEADER_LEN_BYTES + self.header_bytes

    @property
    def data_bytes(self) -> int:
        return self.entries[-1].end if self.entries else 0

    @property
    def file_bytes(self) -> int:
        return self.data_start + self.data_bytes


def parse_safetensors(
    buf: memoryview | bytes | bytearray, source: str | Path | None = None
) -> dict[str, torch.Tensor]:
    """Tensors of a whole safetensors file in `buf`, as views sharing its memory.

    The tensors keep `buf` alive. Pass a writable buffer (what `Storage.read` returns):
    torch warns on read-only ones such as `bytes`. `source` (the file's path) only
    names the file in errors. ExpertError if the file is truncated or corrupt.
    """
    layout = parse_layout(buf, source)
    return tensor_views(layout, buf)


@dataclass(frozen=True)
class Layout:
    """A parsed, validated safetensors header: where each tensor lies in the file. A
    loader keeps it, so the next load of the file builds views without parsing (and
    before the bytes arrive), then checks the header bytes are still `raw_header`."""

    raw_header: bytes  # the first data_start bytes of the file
    header: _Header

    def matches(self, buf: memoryview | bytes | bytearray) -> bool:
        """Whether `buf` is a file of this layout (same header bytes, same length)."""
        return (memoryview(buf).nbytes == self.header.file_bytes
                and buf[: len(self.raw_header)] == self.raw_header)

    @property
    def aligned(self) -> bool:
        """Every tensor at a multiple of its item size: its views copy nothing, so they
        can be built before the bytes arrive."""
        start = self.header.data_start
        return all((start + e.begin) % DTYPES[e.dtype].itemsize == 0 for e in self.header.entries)


def parse_layout(buf: memoryview | bytes | bytearray,
                 source: str | Path | None = None) -> Layout:
    """The layout of the safetensors file in `buf`; ExpertError if truncated or corrupt."""
    where = _describe(source)
    buf_bytes = memoryview(buf).nbytes
    header_len = _read_header_len(bytes(buf[:HEADER_LEN_BYTES]), buf_bytes, where)
    header = _parse_header(bytes(buf[HEADER_LEN_BYTES : HEADER_LEN_BYTES + header_len]), where)
    _check_data_bytes(header, buf_bytes, where)
    return Layout(bytes(buf[: header.data_start]), header)


def tensor_views(layout: Layout, buf: memoryview | bytes | bytearray) -> dict[str, torch.Tensor]:
    """The layout's tensors as views of `buf` (a file of that layout, `buf`'s bytes not
    read: they may still be arriving), unaligned ones excepted (they are copies)."""
    header = layout.header
    # Views of one uint8 tensor share one storage: a device copy can then move the whole
    # file in one transfer and rebuild the views there (`expert_loader.bulk_copy`).
    whole = torch.frombuffer(buf, dtype=torch.uint8) if memoryview(buf).nbytes else None
    return {entry.name: _tensor_view(whole, header.data_start, entry) for entry in header.entries}


def read_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor name -> (safetensors dtype string, shape), reading only the header."""
    header, _ = _read_file_header(Path(path))
    return {entry.name: (entry.dtype, entry.shape) for entry in header.entries}


def read_layout(path: Path) -> Layout:
    """The file's layout from its header alone (a few KiB, not left in the page cache):
    a loader that has it builds the tensor views of the first load during its read too."""
    header, raw = _read_file_header(Path(path))
    return Layout(raw, header)


def expected_file_bytes(path: Path) -> int:
    """The file size the header implies (8 + header length + end of the last tensor),
    so a validator can spot a truncated file by comparing with its real size."""
    return _read_file_header(Path(path))[0].file_bytes


def _describe(source: str | Path | None) -> str:
    return f"safetensors file {source}" if source is not None else "safetensors buffer"


def _corrupt(where: str, problem: str) -> ExpertError:
    return ExpertError(f"{where} is corrupt: {problem}; re-download or re-export it")


def _truncated(where: str, problem: str) -> ExpertError:
    return ExpertError(f"{where} is truncated: {problem}; re-download or re-export it")


def _read_header_len(prefix: bytes, total_bytes: int, where: str) -> int:
    if len(prefix) < HEADER_LEN_BYTES:
        raise _truncated(where, f"only {total_bytes} bytes, shorter than the 8-byte header length")
    header_len = int.from_bytes(prefix, "little")
    if header_len > MAX_HEADER_BYTES:
        raise _corrupt(where, f"header length {header_len} exceeds {MAX_HEADER_BYTES} bytes")
    if HEADER_LEN_BYTES + header_len > total_bytes:
        raise _truncated(
            where, f"the header needs {HEADER_LEN_BYTES + header_len} bytes, file has {total_bytes}"
        )
    return header_len


def _parse_header(header: bytes, where: str) -> _Header:
    try:
        raw = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(where, f"the header is not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise _corrupt(where, "the header is not a JSON object")
    if not isinstance(raw.pop("__metadata__", {}), dict):
        raise _corrupt(where, "__metadata__ is not a JSON object")
    entries = sorted(
        (_parse_entry(name, spec, where) for name, spec in raw.items()),
        key=lambda entry: (entry.begin, entry.end),
    )
    _check_tiling(entries, where)
    return _Header(header_bytes=len(header), entries=entries)


def _parse_entry(name: str, spec: object, where: str) -> _TensorEntry:
    if not isinstance(spec, dict):
        raise _corrupt(where, f"tensor {name!r} has no dtype/shape/data_offsets object")
    dtype, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ExpertError(
            f"{where}: tensor {name!r} has unsupported dtype {dtype!r}; coserve loads "
            f"{', '.join(DTYPES)}: convert the expert's weights to one of them"
        )
    if not _is_int_list(shape) or any(dim < 0 for dim in shape):
        raise _corrupt(where, f"tensor {name!r} has invalid shape {shape!r}")
    if not _is_int_list(offsets) or len(offsets) != 2 or not 0 <= offsets[0] <= offsets[1]:
        raise _corrupt(where, f"tensor {name!r} has invalid data_offsets {offsets!r}")
    entry = _TensorEntry(name, dtype, tuple(shape), offsets[0], offsets[1])
    nbytes = math.prod(entry.shape) * DTYPES[dtype].itemsize
    if entry.end - entry.begin != nbytes:
        raise _corrupt(
            where,
            f"tensor {name!r} spans {entry.end - entry.begin} bytes but {dtype} {list(shape)} "
            f"needs {nbytes}",
        )
    return entry


def _is_int_list(value: object) -> bool:
    # bool is an int subclass, and `true` is no dimension.
    return isinstance(value, list) and all(
        isinstance(item, int) and not isinstance(item, bool) for item in value
    )


def _check_tiling(entries: list[_TensorEntry], where: str) -> None:
    expected_begin = 0
    for entry in entries:
        if entry.begin < expected_begin:
            raise _corrupt(where, f"tensor {entry.name!r} overlaps the tensor before it")
        if entry.begin > expected_begin:
            raise _corrupt(
                where, f"a gap of unused bytes precedes tensor {entry.name!r} in the data region"
            )
        expected_begin = entry.end


def _check_data_bytes(header: _Header, buf_bytes: int, where: str) -> None:
    if buf_bytes == header.file_bytes:
        return
    if buf_bytes > header.file_bytes:
        raise _corrupt(
            where,
            f"{buf_bytes - header.file_bytes} bytes follow the last tensor "
            f"(the header implies {header.file_bytes} bytes)",
        )
    first_cut = next(e for e in header.entries if header.data_start + e.end > buf_bytes)
    raise _truncated(
        where,
        f"tensor {first_cut.name!r} ends at byte {header.data_start + first_cut.end} "
        f"but the file has {buf_bytes}",
    )


def _tensor_view(whole: torch.Tensor | None, data_start: int, entry: _TensorEntry) -> torch.Tensor:
    dtype = DTYPES[entry.dtype]
    if whole is None or entry.end == entry.begin:
        # No bytes to share (and a zero-length slice cannot be viewed as another dtype).
        return torch.empty(entry.shape, dtype=dtype)
    offset = data_start + entry.begin
    raw = whole[offset : data_start + entry.end]  # [nbytes] uint8
    if offset % dtype.itemsize:
        # safetensors writers align every tensor; a foreign writer may not, and
        # vectorised kernels may assume natural alignment, so pay one copy here.
        raw = raw.clone()
    return raw.view(dtype).view(entry.shape)


def _read_file_header(path: Path) -> tuple[_Header, bytes]:
    """The parsed header and its raw bytes (length prefix included)."""
    where = _describe(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ExpertError(
            f"{where} does not exist: check the model repository "
            f"(the weights path in coe.yaml, or an incomplete download)"
        ) from None
    except OSError as exc:
        raise ExpertError(f"cannot open {where}: {exc}") from exc
    try:
        file_bytes = os.fstat(fd).st_size
        prefix = os.pread(fd, HEADER_LEN_BYTES, 0)
        header_len = _read_header_len(prefix, file_bytes, where)
        raw = os.pread(fd, header_len, HEADER_LEN_BYTES)
        header = _parse_header(raw, where)
        # Validating a repository must not leave headers cached: a later load would
        # then not cost an honest storage read.
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return header, prefix + raw
