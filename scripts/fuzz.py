#!/usr/bin/env python
"""Fuzz `coserve serve` on loopback: no answer may be a 5xx.

(a) Schemathesis over the server's own OpenAPI document (/openapi.json): `--cases N`
    generated requests, spread over the operations (most to /v1/inspect and
    /v1/inspect/batch), counting cases, answers by status class and 5xx.
(b) A corpus of mutated PNG and JPEG bytes (bit flips, truncations, corrupted chunk
    lengths and CRCs, huge declared dimensions, broken JPEG markers, the wrong format
    name; seeded, so a run is repeatable) sent to /v1/inspect as JSON base64 and as
    multipart, counting 5xx.

It starts its own server on the tiny CoE (built in a temporary folder) unless `--url`
names a running one. Prints the counts; exit 1 on any 5xx or request without an answer.

    .venv/bin/python scripts/fuzz.py                       # 10,000 cases + 2,000 images
    .venv/bin/python scripts/fuzz.py --cases 500 --images 300 --seed 7
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import random
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 90.0
REQUEST_TIMEOUT_S = 30.0
TOKEN = "fuzz-token"
# Share of the cases per operation path; the rest of the operations split what is left.
CASE_SHARE = {"/v1/inspect": 0.45, "/v1/inspect/batch": 0.35}
COMPONENT_TYPES = ("R", "C", "L", "D", "Q", "U", "X", "F")


@dataclass
class Counts:
    """What one fuzzer sent and what came back."""

    num_cases: int = 0
    by_status: Counter = field(default_factory=Counter)  # "2xx", "4xx", "5xx", "no answer"
    by_code: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)  # the first few 5xx, to reproduce

    def record(self, what: str, status: int | None, detail: str) -> None:
        self.num_cases += 1
        kind = "no answer" if status is None else f"{status // 100}xx"
        self.by_status[kind] += 1
        if status is not None:
            self.by_code[status] += 1
        if (status is None or status >= 500) and len(self.failures) < 10:
            self.failures.append(f"{what} -> {status}: {detail[:300]}")

    @property
    def num_5xx(self) -> int:
        return self.by_status["5xx"] + self.by_status["no answer"]

    def line(self, title: str) -> str:
        codes = ", ".join(f"{c}: {n}" for c, n in sorted(self.by_code.items()))
        return (f"{title}: {self.num_cases} cases, 5xx {self.by_status['5xx']}, no answer "
                f"{self.by_status['no answer']} (by status {codes})")


# -- (a) schemathesis -----------------------------------------------------------------------
def case_budget(paths: list[str], num_cases: int) -> dict[str, int]:
    """Cases per operation path: CASE_SHARE, the rest split evenly (at least 1 each)."""
    rest = [p for p in paths if p not in CASE_SHARE]
    left = 1.0 - sum(CASE_SHARE[p] for p in paths if p in CASE_SHARE)
    share = {p: CASE_SHARE.get(p, left / max(len(rest), 1)) for p in paths}
    return {p: max(1, round(num_cases * s)) for p, s in share.items()}


def fuzz_openapi(base_url: str, num_cases: int, headers: dict[str, str], seed: int = 0,
                 progress: Callable[[str], None] = lambda s: None) -> Counts:
    """Schemathesis cases generated from the server's OpenAPI document, at least
    `num_cases` of them: operations with few distinct cases (the probes) leave their
    share to a second, differently seeded round over the inspect endpoints."""
    import schemathesis

    document = httpx.get(f"{base_url}/openapi.json", headers=headers, timeout=30).json()
    schema = schemathesis.openapi.from_dict(document)
    operations = [r.ok() for r in schema.get_all_operations()]
    budget = case_budget(sorted({op.path for op in operations}), num_cases)
    per_path = Counter(op.path for op in operations)
    counts = Counts()
    for op in operations:
        run_operation(op, max(1, budget[op.path] // per_path[op.path]), base_url, headers, counts, seed)
        progress(f"  {op.method.upper()} {op.path}: {counts.num_cases} cases so far")
    top_up = [op for op in operations if op.path in CASE_SHARE]
    for k, op in enumerate(top_up):
        short = (num_cases - counts.num_cases) // (len(top_up) - k)
        if short > 0:
            run_operation(op, short, base_url, headers, counts, seed + 1)
            progress(f"  top-up {op.method.upper()} {op.path}: {counts.num_cases} cases so far")
    return counts


def run_operation(op, num: int, base_url: str, headers: dict[str, str], counts: Counts,
                  seed: int) -> None:
    """`num` generated cases of one operation (fewer if it has fewer distinct ones)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    @hypothesis_seed(seed)
    @settings(max_examples=num, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy())
    def run(case) -> None:
        what = f"{case.method} {case.formatted_path}"
        try:
            response = case.call(base_url=base_url, headers=headers, timeout=REQUEST_TIMEOUT_S)
        except Exception as exc:  # a dropped connection is a finding, not a harness error
            counts.record(what, None, f"{type(exc).__name__}: {exc}")
            return
        counts.record(what, response.status_code, f"{response.text} <- body {case.body!r}"[:600])

    run()


# -- (b) mutated images ---------------------------------------------------------------------
def seed_images() -> list[tuple[str, bytes]]:
    """Valid 32x32 images (the tiny CoE's input size) to mutate: PNG RGB, RGBA, grey,
    palette, 16-bit; JPEG baseline and progressive."""
    from PIL import Image

    rng = random.Random(1234)
    pixels = bytes(rng.randrange(256) for _ in range(32 * 32 * 3))
    rgb = Image.frombytes("RGB", (32, 32), pixels)
    out = []
    for mode in ("RGB", "RGBA", "L", "P", "I;16"):
        buf = io.BytesIO()
        (rgb.convert(mode) if mode != "I;16" else rgb.convert("L").convert("I;16")).save(buf, "PNG")
        out.append(("png", buf.getvalue()))
    for progressive in (False, True):
        buf = io.BytesIO()
        rgb.save(buf, "JPEG", quality=85, progressive=progressive)
        out.append(("jpeg", buf.getvalue()))
    return out


def png_chunks(data: bytes) -> list[tuple[int, bytes]]:
    """(offset, type) of each chunk of a PNG."""
    chunks, k = [], 8
    while k + 8 <= len(data):
        (length,) = struct.unpack(">I", data[k:k + 4])
        chunks.append((k, data[k + 4:k + 8]))
        k += 12 + length
    return chunks


def with_crc(data: bytearray, offset: int) -> None:
    (length,) = struct.unpack(">I", data[offset:offset + 4])
    body = bytes(data[offset + 4:offset + 8 + length])
    data[offset + 8 + length:offset + 12 + length] = struct.pack(">I", zlib.crc32(body))


def m_bitflips(rng: random.Random, fmt: str, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        k = rng.randrange(len(out))
        out[k] ^= 1 << rng.randrange(8)
    return bytes(out)


def m_truncate(rng: random.Random, fmt: str, data: bytes) -> bytes:
    return data[:rng.randrange(len(data))]


def m_chunk_length(rng: random.Random, fmt: str, data: bytes) -> bytes:
    if fmt != "png":
        return m_jpeg_segment_length(rng, fmt, data)
    out = bytearray(data)
    offset, _ = rng.choice(png_chunks(data))
    value = rng.choice([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, rng.randrange(1 << 32)])
    out[offset:offset + 4] = struct.pack(">I", value)
    return bytes(out)


def m_huge_dims(rng: random.Random, fmt: str, data: bytes) -> bytes:
    """Declared width/height far beyond the pixels (and the expert's input), CRC fixed
    or not."""
    out = bytearray(data)
    w = rng.choice([65535, 100000, 1 << 24, 0x7FFFFFFF, 0, 15000])
    h = rng.choice([65535, 100000, 1 << 24, 0x7FFFFFFF, 0, 15000])
    if fmt == "png":
        out[16:24] = struct.pack(">II", w, h)
        if rng.random() < 0.7:
            with_crc(out, 8)
        return bytes(out)
    sof = next((m.start() for m in re.finditer(rb"\xff[\xc0\xc2]", data)), None)
    if sof is None:
        return bytes(out)
    out[sof + 5:sof + 9] = struct.pack(">HH", min(h, 65535), min(w, 65535))
    return bytes(out)


def m_bad_crc(rng: random.Random, fmt: str, data: bytes) -> bytes:
    if fmt != "png":
        return m_jpeg_marker(rng, fmt, data)
    out = bytearray(data)
    offset, _ = rng.choice(png_chunks(data))
    (length,) = struct.unpack(">I", out[offset:offset + 4])
    crc_at = offset + 8 + length
    out[crc_at:crc_at + 4] = struct.pack(">I", rng.randrange(1 << 32))
    return bytes(out)


def m_jpeg_segment_length(rng: random.Random, fmt: str, data: bytes) -> bytes:
    out = bytearray(data)
    markers = [m.start() for m in re.finditer(rb"\xff[\xc0-\xfe]", data) if m.start() + 4 <= len(data)]
    if markers:
        k = rng.choice(markers)
        out[k + 2:k + 4] = struct.pack(">H", rng.choice([0, 1, 2, 0xFFFF, rng.randrange(1 << 16)]))
    return bytes(out)


def m_jpeg_marker(rng: random.Random, fmt: str, data: bytes) -> bytes:
    out = bytearray(data)
    markers = [m.start() for m in re.finditer(rb"\xff[\xc0-\xfe]", data)]
    if markers:
        out[rng.choice(markers) + 1] = rng.choice([0x00, 0xD8, 0xD9, 0xDA, 0xC4, 0xFF, rng.randrange(256)])
    return bytes(out)


def m_splice(rng: random.Random, fmt: str, data: bytes) -> bytes:
    """Random bytes inserted, a block repeated, or garbage after the end."""
    k = rng.randrange(len(data))
    choice = rng.randrange(3)
    if choice == 0:
        return data[:k] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))) + data[k:]
    if choice == 1:
        return data[:k] + data[k:k + 256] * rng.randint(2, 50) + data[k:]
    return data + rng.randbytes(rng.randint(1, 4096))


MUTATIONS = (m_bitflips, m_truncate, m_chunk_length, m_huge_dims, m_bad_crc,
             m_jpeg_segment_length, m_jpeg_marker, m_splice)


def mutated_corpus(num: int, seed: int) -> Iterator[tuple[str, str, bytes]]:
    """(description, declared format, bytes), `num` of them, deterministic for `seed`."""
    rng = random.Random(seed)
    seeds = seed_images()
    for k in range(num):
        fmt, data = seeds[k % len(seeds)]
        mutation = MUTATIONS[rng.randrange(len(MUTATIONS))]
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            data = mutation(rng, fmt, data) or data
        declared = fmt if rng.random() < 0.9 else {"png": "jpeg", "jpeg": "png"}[fmt]
        yield f"#{k} {mutation.__name__} of {fmt} as {declared}", declared, data


def send_image(client: httpx.Client, declared: str, data: bytes, multipart: bool,
               component: str) -> httpx.Response:
    fields = {"component_type": component}
    if multipart:
        mime = "image/png" if declared == "png" else "image/jpeg"
        return client.post("/v1/inspect", data={"fields": json.dumps(fields)},
                           files={"image": (f"x.{declared}", data, mime)})
    key = "base64_png" if declared == "png" else "base64_jpeg"
    return client.post("/v1/inspect", json={"fields": fields,
                                            "image": {key: base64.b64encode(data).decode()}})


def fuzz_images(base_url: str, num_images: int, headers: dict[str, str], seed: int = 0) -> Counts:
    """Each mutated image once as JSON base64 and once as multipart."""
    counts = Counts()
    with httpx.Client(base_url=base_url, headers=headers, timeout=REQUEST_TIMEOUT_S) as client:
        for k, (what, declared, data) in enumerate(mutated_corpus(num_images, seed)):
            component = COMPONENT_TYPES[k % len(COMPONENT_TYPES)]
            for multipart in (False, True):
                label = f"{what} ({'multipart' if multipart else 'json'})"
                try:
                    response = send_image(client, declared, data, multipart, component)
                except httpx.HTTPError as exc:
                    counts.record(label, None, f"{type(exc).__name__}: {exc}")
                    continue
                counts.record(label, response.status_code, response.text)
    return counts


# -- a server to fuzz -----------------------------------------------------------------------
@contextlib.contextmanager
def tiny_server(extra_args: list[str]) -> Iterator[str]:
    """`coserve serve` on a fresh tiny CoE and a free loopback port, in its own process
    group (killed on the way out, whatever happens)."""
    from coserve.zoo.tiny import build_tiny

    with tempfile.TemporaryDirectory(prefix="coserve-fuzz-") as tmp:
        root, _ = build_tiny(Path(tmp) / "tiny")
        log_path = Path(tmp) / "server.log"
        cmd = [sys.executable, "-m", "coserve.cli", "serve", str(root), "--port", "0", "--no-measure",
               "--executors", "cpu:1", "--token", TOKEN, *extra_args]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=ROOT)
        try:
            yield _wait_ready(proc, log_path)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            tracebacks = log_path.read_text(errors="replace").count("Traceback")
            if tracebacks:
                print(f"server log: {tracebacks} traceback(s); last lines:\n"
                      + "\n".join(log_path.read_text(errors="replace").splitlines()[-15:]))


def _wait_ready(proc: subprocess.Popen, log_path: Path) -> str:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"error: the server exited {proc.returncode}: {log_path.read_text()[-2000:]}")
        found = re.search(r"on http://([0-9.]+:\d+)", log_path.read_text(errors="replace"))
        if found:
            url = f"http://{found.group(1)}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=3).status_code == 200:
                    return url
        time.sleep(0.1)
    sys.exit(f"error: the server was not ready within {READY_TIMEOUT_S:.0f} s")


# -- main -----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=10_000, help="schemathesis cases (default 10,000; 0: skip)")
    p.add_argument("--images", type=int, default=2_000,
                   help="mutated images, each sent as JSON and as multipart (default 2,000; 0: skip)")
    p.add_argument("--seed", type=int, default=0, help="schemathesis's and the image corpus's seed (default 0)")
    p.add_argument("--url", default=None, help="fuzz this running server instead of starting one")
    p.add_argument("--token", default=None, help="with --url: its bearer token")
    args = p.parse_args(argv)
    if args.cases < 0 or args.images < 0:
        p.error("--cases and --images must be >= 0")
    return args


def run(base_url: str, args: argparse.Namespace, headers: dict[str, str]) -> list[tuple[str, Counts]]:
    results = []
    if args.cases:
        t0 = time.monotonic()
        print(f"schemathesis: {args.cases} cases over {base_url}/openapi.json", flush=True)
        counts = fuzz_openapi(base_url, args.cases, headers, seed=args.seed,
                              progress=lambda s: print(s, flush=True))
        results.append((f"schemathesis ({time.monotonic() - t0:.0f} s)", counts))
    if args.images:
        t0 = time.monotonic()
        counts = fuzz_images(base_url, args.images, headers, seed=args.seed)
        results.append((f"mutated images, seed {args.seed} ({time.monotonic() - t0:.0f} s)", counts))
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: the server is killed
    token = args.token if args.url else TOKEN
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with contextlib.ExitStack() as stack:
        base_url = args.url or stack.enter_context(tiny_server([]))
        results = run(base_url, args, headers)
    bad = 0
    for title, counts in results:
        print(counts.line(title))
        for failure in counts.failures:
            print(f"  5xx: {failure}")
        bad += counts.num_5xx
    print("PASS: no 5xx" if not bad else f"FAIL: {bad} answers were 5xx or missing")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
