#!/usr/bin/env python
"""The fault matrix: real `coserve serve` (and `coserve inspect`) subprocesses on
loopback, one fault per row, one table at the end.

Each row starts a fresh server on a fault repository (the tiny CoE plus faulty experts
from scripts/fault_experts.py, each reached by its own component type), injects one
fault, sends the fault's requests together with normal ones, and records what the
client saw (status and error type per answer), the images the server accepted (its
coserve_requests_accepted_total), the images answered, lost (accepted - answered),
stuck (images the engine still holds once the row settled: a leaked slot), whether the
server is alive (process running, /healthz 200; readiness in brackets), whether a normal
request is served afterwards, and the server's RSS before/after (VmRSS) and its peak
during the row (VmHWM, reset before the row through /proc/PID/clear_refs).

Exit 1 if any row lost a request, left one stuck, killed the server, or missed the
row's own check (named in the table); 0 when every row passed. Every subprocess runs in
its own process group and is killed on exit, failure or Ctrl-C.

    .venv/bin/python scripts/faults.py                 # the whole matrix (a few minutes)
    .venv/bin/python scripts/faults.py --rows raise,bomb-png --keep   # some rows; keep logs
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
COSERVE = [sys.executable, "-m", "coserve.cli"]
MIB = 1 << 20
GIB = 1 << 30

READY_TIMEOUT_S = 90.0
REQUEST_TIMEOUT_S = 5  # the server's --request-timeout-s in every row
BATCH_DEADLINE_S = 2  # --batch-deadline-s, where the server has it
DRAIN_DEADLINE_S = 3  # the drain deadline on SIGTERM, where the server has one
CLIENT_TIMEOUT_S = REQUEST_TIMEOUT_S + 15
SETTLE_S = 8.0  # how long a row waits for the engine to let go of its images
POLL_S = 0.02
BIG_ELEMS = 256 * MIB  # f-big's ballast: 1 GiB of float32, written as a sparse file
RLIMIT_HEADROOM_BYTES = 256 * MIB  # OOM on load: address space left above the server's
BOMB_GUARD_BYTES = 3 * GIB  # the harness kills a server this far above idle (shared machine)
BOMB_PEAK_LIMIT_BYTES = GIB  # the memory-bomb check: peak RSS over idle
SLOW_UPLOADS = 300
SLOW_HOLD_S = 12.0  # how long slow uploads trickle before the harness hangs up
NORMAL_WITHIN_S = 2.0
LOT_SIZE = 600

# Answers that refused a request before admitting it (nothing accepted, nothing owed).
REFUSED = {"overloaded", "unavailable", "invalid_input", "invalid_request", "malformed_body",
           "unauthorized", "body_too_large", "unsupported_media_type", "not_found",
           "request_timeout", "too_many_connections", "misdirected", "invalid_host"}

# expert -> (component type, factory or None for the tiny classifier's, extra args)
FAULT_EXPERTS: dict[str, tuple[str, str | None, dict]] = {
    "f-raise": ("RAISE", "fault_experts:RaisingResNet", {}),
    "f-base": ("BASE", "fault_experts:BaseExceptionResNet", {}),
    "f-exit": ("EXIT", "fault_experts:ThreadExitResNet", {}),
    "f-hang": ("HANG", "fault_experts:HangingResNet", {}),
    "f-oomrun": ("OOMRUN", "fault_experts:OomOnRunResNet", {"oom_over_batch": 1}),
    "f-stall": ("STALL", "fault_experts:StallResNet", {}),
    "f-big": ("BIG", "fault_experts:BallastResNet", {"ballast_elems": BIG_ELEMS}),
    "f-missing": ("MISSING", None, {}),
    "f-trunc": ("TRUNC", None, {}),
    "f-corrupt": ("CORRUPT", None, {}),
    "f-fifo": ("FIFO", None, {}),
}
NORMAL_TYPES = ("R", "C", "L", "D")

LIVE: set[subprocess.Popen] = set()  # every child, killed at exit whatever happens


class HarnessError(Exception):
    """The harness could not run a row (not a finding about the server)."""


# -- processes ----------------------------------------------------------------------------
def kill_group(proc: subprocess.Popen, grace_s: float = 0.0) -> None:
    """SIGTERM (if a grace is given), then SIGKILL, to the child's whole process group."""
    if proc.poll() is None and grace_s > 0:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    LIVE.discard(proc)


def kill_all() -> None:
    for proc in list(LIVE):
        kill_group(proc)


def spawn(cmd: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT)
    LIVE.add(proc)
    return proc


def proc_status(pid: int, key: str) -> int:
    """A /proc/PID/status value in bytes (VmRSS, VmHWM, VmSize); 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def reset_peak(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0: clear_refs 5)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def log_tail(path: Path, pattern: str = r"Traceback|Error|error|Exception|CRITICAL|WARNING",
             num: int = 2) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    hits = [ln.strip() for ln in lines if re.search(pattern, ln)]
    return " | ".join(h[:160] for h in hits[-num:])


# -- the server ---------------------------------------------------------------------------
class Server:
    """One `coserve serve` subprocess on a free loopback port."""

    def __init__(self, ctx: Context, title: str, args: list[str], repo: Path) -> None:
        self.ctx = ctx
        self.log_path = ctx.work / f"{re.sub(r'[^a-z0-9]+', '-', title.lower())}.log"
        cmd = [*COSERVE, "serve", str(repo), "--port", "0", "--no-measure", *args]
        self.proc = spawn(cmd, self.log_path, ctx.env)
        self.url = self._wait_ready()
        self.client = httpx.Client(base_url=self.url, timeout=CLIENT_TIMEOUT_S)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _wait_ready(self) -> str:
        deadline = time.monotonic() + READY_TIMEOUT_S
        url = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError(f"server exited {self.proc.returncode} at start: "
                                   f"{log_tail(self.log_path, '.', 3)}")
            if url is None:
                found = re.search(r"on http://([0-9.]+:\d+)", self.log_path.read_text(errors="replace"))
                url = f"http://{found.group(1)}" if found else None
            if url is not None and _status(url + "/readyz") == 200:
                return url
            time.sleep(0.1)
        raise HarnessError(f"server not ready within {READY_TIMEOUT_S:.0f} s: {log_tail(self.log_path)}")

    def metric(self, name: str, **labels: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        text = self.client.get("/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0

    def alive(self) -> tuple[bool, str]:
        if self.proc.poll() is not None:
            return False, f"no (exit {self.proc.returncode})"
        health = _status(self.url + "/healthz")
        ready = _status(self.url + "/readyz")
        if health != 200:
            return False, f"no (/healthz {health})"
        return True, "yes" if ready == 200 else f"yes (readyz {ready})"

    def stop(self) -> None:
        self.client.close()
        kill_group(self.proc, grace_s=5.0)


def _status(url: str) -> int | str:
    try:
        return httpx.get(url, timeout=3).status_code
    except httpx.HTTPError as exc:
        return type(exc).__name__


# -- the fault repository -----------------------------------------------------------------
def write_with_ballast(src: Path, dst: Path, num_elems: int) -> None:
    """`src`'s safetensors file plus a zero `ballast` tensor, its data a sparse hole."""
    raw = src.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    header["ballast"] = {"dtype": "F32", "shape": [num_elems],
                         "data_offsets": [len(data), len(data) + 4 * num_elems]}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + data)
        f.truncate(8 + len(blob) + len(data) + 4 * num_elems)


def build_fault_repo(tiny: Path, out: Path, experts: list[str]) -> Path:
    """The tiny CoE plus one preliminary expert per fault, each routed from its own
    component type (usage 0, so initial placement loads it last)."""
    shutil.copytree(tiny, out, ignore=shutil.ignore_patterns("trace.jsonl*"))
    spec = yaml.safe_load((out / "coe.yaml").read_text())
    base = spec["architectures"]["cls-tiny"]
    template = out / "weights" / "cls-R.safetensors"
    for name in experts:
        component, factory, extra = FAULT_EXPERTS[name]
        arch = "cls-tiny"
        if factory is not None:
            arch = f"arch-{name}"
            spec["architectures"][arch] = {**base, "factory": factory, "args": {**base["args"], **extra}}
        spec["experts"].append({"name": name, "architecture": arch,
                                "weights": f"weights/{name}.safetensors", "stage": "preliminary"})
        spec["routing"]["first"]["map"][component] = name
        weights = out / "weights" / f"{name}.safetensors"
        if "ballast_elems" in extra:
            write_with_ballast(template, weights, extra["ballast_elems"])
        else:
            shutil.copyfile(template, weights)
    (out / "coe.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return out


# -- images -------------------------------------------------------------------------------
def png_bytes(width: int, height: int, channels: int = 3, row: bytes | None = None) -> bytes:
    """A PNG built row by row (constant memory): every row `row`, else blank."""
    color_type = {1: 0, 3: 2}[channels]
    line = b"\x00" + (row if row is not None else bytes(width * channels))
    comp = zlib.compressobj(9)
    parts = [comp.compress(line) for _ in range(height)]
    idat = b"".join(parts) + comp.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def tiny_png(seed: int) -> bytes:
    """A 32x32 RGB PNG (the tiny CoE's input size) with a seeded pattern."""
    row = bytes((seed * 7 + i * 13) % 256 for i in range(32 * 3))
    return png_bytes(32, 32, 3, row)


def single(component: str, png: bytes, **extra: object) -> dict:
    return {"fields": {"component_type": component},
            "image": {"base64_png": base64.b64encode(png).decode()}, **extra}


# -- a row's record -----------------------------------------------------------------------
@dataclass
class Row:
    fault: str
    saw: str = ""
    accepted: int = 0
    answered: int = 0
    stuck: int = 0
    alive: str = ""
    serves_after: str = ""
    rss: str = ""
    problems: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def lost(self) -> int:
        return self.accepted - self.answered

    @property
    def ok(self) -> bool:
        return not self.problems and self.lost == 0 and self.stuck == 0


@dataclass
class Answer:
    kind: str  # "200 ok", "500 expert_failed", "no response (ReadTimeout)"
    images: int  # images this answer answers for (accepted ones only)
    latency_s: float


def classify(response: httpx.Response, latency_s: float, num_items: int) -> Answer:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code == 200:
        if isinstance(body, dict) and "results" in body:
            kinds = Counter("ok" if r.get("ok") else str(r.get("error_kind")) for r in body["results"])
            kind = "200 batch[" + ", ".join(f"{k}x{n}" for k, n in kinds.most_common()) + "]"
            return Answer(kind, len(body["results"]), latency_s)
        return Answer("200 ok", 1, latency_s)
    error = body.get("error", {}) if isinstance(body, dict) else {}
    etype = str(error.get("type", "unparsed")) if isinstance(error, dict) else "unparsed"
    refused = etype in REFUSED and not (isinstance(body, dict) and body.get("result"))
    return Answer(f"{response.status_code} {etype}", 0 if refused else num_items, latency_s)


def post(client: httpx.Client, path: str, body: dict, timeout_s: float = CLIENT_TIMEOUT_S) -> Answer:
    num_items = len(body.get("items", [])) or 1
    t0 = time.perf_counter()
    try:
        response = client.post(path, json=body, timeout=timeout_s)
    except httpx.HTTPError as exc:
        return Answer(f"no response ({type(exc).__name__})", 0, time.perf_counter() - t0)
    return classify(response, time.perf_counter() - t0, num_items)


def summarize(answers: list[Answer]) -> str:
    return ", ".join(f"{k} x{n}" for k, n in Counter(a.kind for a in answers).most_common())


class Probe:
    """Around one row on one server: counters and memory before, then the tally."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.accepted0 = server.metric("coserve_requests_accepted_total")
        self.rss0 = proc_status(server.pid, "VmRSS")
        reset_peak(server.pid)

    def finish(self, row: Row, answers: list[Answer], settle: bool = True) -> Row:
        srv = self.server
        row.answered = sum(a.images for a in answers)
        check_no_internal(row, answers)
        up, row.alive = srv.alive()
        if up:
            row.accepted = int(srv.metric("coserve_requests_accepted_total") - self.accepted0)
            row.stuck = self._settle() if settle else 0
            after = post(srv.client, "/v1/inspect", single("R", tiny_png(1)), timeout_s=10)
            row.serves_after = f"{after.kind} {after.latency_s:.2f}s"
            if after.kind != "200 ok":
                row.problems.append("a normal request after the fault was not served")
        else:
            row.problems.append("the server died")
            row.serves_after = "-"
        row.rss = rss_text(self.rss0, proc_status(srv.pid, "VmRSS"), proc_status(srv.pid, "VmHWM"))
        if not row.ok:
            row.note = row.note or log_tail(srv.log_path)
        return row

    def _settle(self) -> int:
        deadline = time.monotonic() + SETTLE_S
        while (held := self.server.metric("coserve_requests_in_flight")) > 0:
            if time.monotonic() > deadline:
                return int(held)
            time.sleep(0.1)
        return 0


def check_no_internal(row: Row, answers: list[Answer]) -> None:
    """A 500 `internal` is an exception nothing mapped: never a clear error."""
    if any(" internal" in a.kind for a in answers):
        row.problems.append("answered 500 internal (an unmapped exception)")


def rss_text(before: int, after: int, peak: int) -> str:
    return f"{before / MIB:.0f}->{after / MIB:.0f} (peak {peak / MIB:.0f})"


# -- the run's context --------------------------------------------------------------------
@dataclass
class Context:
    work: Path
    repo: Path
    big_repo: Path
    tiny: Path
    env: dict[str, str]
    options: set[str]  # `coserve serve --help`'s options
    inspect_options: set[str]

    def serve_args(self, executors: str = "cpu:2", budget: int | None = None) -> list[str]:
        args = ["--executors", executors, "--request-timeout-s", str(REQUEST_TIMEOUT_S),
                "--quarantine-after", "3",
                "--budget-bytes", str(budget if budget is not None else self.normal_bytes())]
        if "--trust-repo-code" in self.options:
            args.append("--trust-repo-code")
        if "--batch-deadline-s" in self.options:
            args += ["--batch-deadline-s", str(BATCH_DEADLINE_S)]
        drain = self.drain_option()
        if drain:
            args += [drain, str(DRAIN_DEADLINE_S)]
        return args

    def drain_option(self) -> str | None:
        return next((o for o in sorted(self.options) if "drain" in o), None)

    def normal_bytes(self) -> int:
        """The normal experts' file bytes: a budget that holds them and no fault expert."""
        return sum(p.stat().st_size for p in (self.repo / "weights").glob("*.safetensors")
                   if not p.name.startswith("f-"))

    @contextlib.contextmanager
    def server(self, title: str, args: list[str] | None = None,
               repo: Path | None = None) -> Iterator[Server]:
        srv = Server(self, title, args if args is not None else self.serve_args(), repo or self.repo)
        try:
            yield srv
        finally:
            release_markers(self)
            srv.stop()
            restore_weights(self.repo)

    def marker(self, name: str) -> Path:
        return self.work / "markers" / name


def release_markers(ctx: Context) -> None:
    """Let every held thread go; open any FIFO for writing so a blocked reader sees EOF."""
    for m in (ctx.work / "markers").glob("*"):
        m.unlink(missing_ok=True)
    fifo = ctx.repo / "weights" / "f-fifo.safetensors"
    if fifo.exists() and not fifo.is_file():
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def restore_weights(repo: Path) -> None:
    """Every fault expert's weight file as built (rows delete, truncate, corrupt them)."""
    template = repo / "weights" / "cls-R.safetensors"
    spec = yaml.safe_load((repo / "coe.yaml").read_text())
    for name in (e["name"] for e in spec["experts"]):
        if name in FAULT_EXPERTS and not FAULT_EXPERTS[name][2]:  # ballast files are never touched
            path = repo / "weights" / f"{name}.safetensors"
            path.unlink(missing_ok=True)
            shutil.copyfile(template, path)


def help_options(command: str, env: dict[str, str]) -> set[str]:
    text = subprocess.run([*COSERVE, command, "--help"], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=60).stdout
    return set(re.findall(r"--[a-z][a-z0-9-]+", text))


def make_context(work: Path, coserve_src: Path | None = None) -> Context:
    from coserve.zoo.tiny import build_tiny

    tiny, _ = build_tiny(work / "tiny")
    # f-big alone in its own repository: every pool must be able to hold the largest expert.
    repo = build_fault_repo(tiny, work / "faultrepo", [e for e in FAULT_EXPERTS if e != "f-big"])
    big_repo = build_fault_repo(tiny, work / "bigrepo", ["f-big"])
    (work / "markers").mkdir()
    paths = [str(coserve_src)] if coserve_src else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (*paths, str(SCRIPTS), os.environ.get("PYTHONPATH", "")) if p),
        "COSERVE_FAULT_DIR": str(work / "markers"), "PYTHONUNBUFFERED": "1"}
    return Context(work, repo, big_repo, Path(tiny), env, help_options("serve", env),
                   help_options("inspect", env))


# -- rows: one expert misbehaves ----------------------------------------------------------
Prepare = Callable[["Context", Server], None]
Check = Callable[["Context", Server, Row, list[Answer]], None]


def send_mixed(srv: Server, fault_bodies: list[tuple[str, dict]], num_normal: int
               ) -> tuple[list[Answer], list[Answer]]:
    """The fault's requests one after another (each its own batch, so failures count
    one by one) while normal requests of other experts run beside them."""
    normal = [single(NORMAL_TYPES[k % len(NORMAL_TYPES)], tiny_png(k)) for k in range(num_normal)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        fault = pool.submit(lambda: [post(srv.client, path, body) for path, body in fault_bodies])
        normals = [pool.submit(post, srv.client, "/v1/inspect", body) for body in normal]
        return fault.result(), [f.result() for f in normals]


def expert_row(ctx: Context, fault: str, component: str, *, prepare: Prepare | None = None,
               check: Check | None = None, num_fault: int = 4, num_normal: int = 8,
               args: list[str] | None = None, batch_of: int = 0, repo: Path | None = None) -> Row:
    row = Row(fault)
    with ctx.server(fault, args, repo) as srv:
        if prepare is not None:
            prepare(ctx, srv)
        probe = Probe(srv)
        if batch_of:
            items = [single(component, tiny_png(k)) for k in range(batch_of)]
            bodies = [("/v1/inspect/batch", {"items": items})] * num_fault
        else:
            bodies = [("/v1/inspect", single(component, tiny_png(k))) for k in range(num_fault)]
        fault_answers, normal_answers = send_mixed(srv, bodies, num_normal)
        row.saw = f"fault: {summarize(fault_answers)}; normal: {summarize(normal_answers)}"
        if any(a.kind != "200 ok" for a in normal_answers):
            row.problems.append("normal requests beside the fault were not all served")
        if any(a.kind.startswith("no response") for a in fault_answers):
            row.problems.append("fault requests got no HTTP response")
        if check is not None:
            check(ctx, srv, row, fault_answers)
        probe.finish(row, fault_answers + normal_answers)
    return row


def answered_before_timeout(ctx: Context, srv: Server, row: Row, answers: list[Answer]) -> None:
    if "--batch-deadline-s" not in ctx.options:
        row.note = "no deadline option: `coserve serve` has no --batch-deadline-s"
    if any(a.kind == "504 timeout" for a in answers):  # the engine's own deadline says timed_out
        row.problems.append("the hung batch was answered only by the client-facing timeout (504)")
    # While the hung thread holds its executor, what does a normal request get? Then let
    # it go: "normal after" is asked once the server says it is ready again.
    during = post(srv.client, "/v1/inspect", single("R", tiny_png(2)), timeout_s=10)
    answers.append(during)  # counted with the row's answers
    release_markers(ctx)
    recovered = wait_for(lambda: _status(srv.url + "/readyz") == 200, SETTLE_S)
    row.note = (row.note + "; " if row.note else "") + (
        f"normal while stuck: {during.kind} {during.latency_s:.2f}s; ready again after release: "
        f"{'yes' if recovered else 'no'}")


def all_ok(ctx: Context, srv: Server, row: Row, answers: list[Answer]) -> None:
    if any("ok" not in a.kind or "," in a.kind for a in answers):
        row.problems.append("an out-of-memory batch was not retried smaller until it fit")


def not_quarantined(expert: str) -> Check:
    def check(ctx: Context, srv: Server, row: Row, answers: list[Answer]) -> None:
        rows = {e["name"]: e for e in srv.client.get("/v1/experts").json()["experts"]}
        record = rows[expert]
        row.note = (f"{expert}: quarantined={record['quarantined']}, failures="
                    f"{record['total_failures']}, last error: {str(record['last_error'])[:90]}")
        if record["quarantined"]:
            row.problems.append(f"{expert} was quarantined for running out of memory")
    return check


def mutate(name: str, how: Callable[[Path], None]) -> Prepare:
    def prepare(ctx: Context, srv: Server) -> None:
        how(ctx.repo / "weights" / f"{name}.safetensors")
    return prepare


def truncate_half(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def corrupt_header(path: Path) -> None:
    """Same size, the JSON header overwritten: what a bad sector or a bad copy gives."""
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(b"\xff" * 64)


def make_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def hold(marker: str) -> Prepare:
    def prepare(ctx: Context, srv: Server) -> None:
        ctx.marker(marker).touch()
    return prepare


def limit_address_space(ctx: Context, srv: Server) -> None:
    """RLIMIT_AS on the running server: its present address space plus a little, far
    less than f-big's 1 GiB weight read needs."""
    soft = proc_status(srv.pid, "VmSize") + RLIMIT_HEADROOM_BYTES
    _, hard = resource.prlimit(srv.pid, resource.RLIMIT_AS)
    resource.prlimit(srv.pid, resource.RLIMIT_AS, (soft, hard))


def row_oom_load(ctx: Context) -> Row:
    big = (ctx.big_repo / "weights" / "f-big.safetensors").stat().st_size
    others = sum(p.stat().st_size for p in (ctx.big_repo / "weights").glob("*.safetensors")
                 if p.name != "f-big.safetensors")
    args = ctx.serve_args(executors="cpu:1", budget=others + big - MIB)  # f-big fits only by evicting
    row = expert_row(ctx, "OOM on load (RLIMIT_AS, 1 GiB expert)", "BIG", args=args,
                     prepare=limit_address_space, check=not_quarantined("f-big"), num_fault=4,
                     repo=ctx.big_repo)
    row.note = f"RLIMIT_AS = VmSize + {RLIMIT_HEADROOM_BYTES // MIB} MiB; " + row.note
    return row


def expert_rows() -> list[tuple[str, Callable[[Context], Row]]]:
    return [
        ("raise", lambda c: expert_row(c, "expert raises", "RAISE")),
        ("base-exception", lambda c: expert_row(c, "expert raises BaseException", "BASE")),
        ("thread-dies", lambda c: expert_row(c, "executor thread dies (_thread.exit)", "EXIT")),
        ("hang", lambda c: expert_row(c, "expert hangs past its deadline", "HANG", num_fault=2,
                                      prepare=hold("hang"), check=answered_before_timeout)),
        ("missing", lambda c: expert_row(c, "weight file missing", "MISSING",
                                         prepare=mutate("f-missing", Path.unlink))),
        ("truncated", lambda c: expert_row(c, "weight file truncated", "TRUNC",
                                           prepare=mutate("f-trunc", truncate_half))),
        ("corrupt", lambda c: expert_row(c, "weight file corrupt (header)", "CORRUPT",
                                         prepare=mutate("f-corrupt", corrupt_header))),
        ("fifo", lambda c: expert_row(c, "weight file is a FIFO no one writes", "FIFO",
                                      prepare=mutate("f-fifo", make_fifo))),
        ("stall", lambda c: expert_row(c, "storage read hangs (open blocks)", "STALL", num_fault=2,
                                       prepare=hold("stall"), check=answered_before_timeout)),
        ("oom-run", lambda c: expert_row(c, "OOM on run (batches over 1)", "OOMRUN", num_fault=2,
                                         batch_of=8, check=all_ok)),
        ("oom-load", row_oom_load),
    ]


# -- rows: the server's lifecycle ---------------------------------------------------------
def wait_for(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)
    return True


def row_sigterm(ctx: Context) -> Row:
    """SIGTERM while an expert hangs: the server must answer what it holds (an error for
    the hung requests) and exit within its drain deadline."""
    row = Row("SIGTERM with a hung expert")
    drain = ctx.drain_option()
    # Without a drain deadline uvicorn waits request_timeout_s + 5 for handlers, then the
    # engine's close waits for the hung batch; allow that much and a margin.
    allowed_s = (DRAIN_DEADLINE_S if drain else REQUEST_TIMEOUT_S + 5) + 5
    with ctx.server(row.fault) as srv:
        ctx.marker("hang").touch()
        probe = Probe(srv)
        bodies = [single("HANG", tiny_png(k)) for k in range(2)] + \
                 [single(t, tiny_png(k)) for k, t in enumerate(NORMAL_TYPES)]
        with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
            futures = [pool.submit(post, srv.client, "/v1/inspect", b) for b in bodies]
            wait_for(lambda: srv.metric("coserve_requests_accepted_total") - probe.accepted0
                     >= len(bodies), 10)
            row.accepted = int(srv.metric("coserve_requests_accepted_total") - probe.accepted0)
            rss = proc_status(srv.pid, "VmRSS")
            t0 = time.monotonic()
            os.kill(srv.pid, signal.SIGTERM)
            exited = wait_for(lambda: srv.proc.poll() is not None, allowed_s)
            took_s = time.monotonic() - t0
            if not exited:
                kill_group(srv.proc)
            answers = [f.result() for f in futures]
        row.answered = sum(a.images for a in answers)
        row.saw = f"hung: {summarize(answers[:2])}; normal: {summarize(answers[2:])}"
        check_no_internal(row, answers)
        row.rss = rss_text(probe.rss0, rss, rss)
        row.serves_after = "-"
        if exited:
            row.alive = f"exited {srv.proc.returncode} after {took_s:.1f}s (as asked)"
        else:
            row.alive = f"did not exit within {allowed_s:.0f}s: SIGKILLed"
            row.problems.append(f"no exit within {allowed_s:.0f} s of SIGTERM")
        row.note = ("drain deadline " + (f"{drain} {DRAIN_DEADLINE_S}" if drain else "none: no drain option"))
        if not row.ok:
            row.note += "; " + log_tail(srv.log_path)
    return row


# -- rows: hostile input ------------------------------------------------------------------
class RssGuard:
    """Samples a server's RSS; kills it past idle + BOMB_GUARD_BYTES so that one row
    cannot take the (shared) machine down with it."""

    def __init__(self, pid: int, idle: int) -> None:
        self.pid, self.limit = pid, idle + BOMB_GUARD_BYTES
        self.fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            if proc_status(self.pid, "VmRSS") > self.limit:
                self.fired = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def input_row(ctx: Context, fault: str, sends: list[tuple[str, str, object]],
              peak_limit: int | None = None) -> Row:
    """Hostile requests (path, kind, JSON body or multipart files) that must each be a
    4xx, with the server's peak RSS over idle below `peak_limit`."""
    row = Row(fault)
    with ctx.server(fault) as srv:
        probe = Probe(srv)
        guard = RssGuard(srv.pid, probe.rss0)
        answers = []
        for path, kind, body in sends:
            t0 = time.perf_counter()
            try:
                if kind == "json":
                    response = srv.client.post(path, json=body)
                else:
                    response = srv.client.post(path, data={"fields": json.dumps({"component_type": "R"})},
                                               files=body)
                answers.append(classify(response, time.perf_counter() - t0, 1))
            except httpx.HTTPError as exc:
                answers.append(Answer(f"no response ({type(exc).__name__})", 0, 0.0))
        guard.stop()
        peak = proc_status(srv.pid, "VmHWM")
        row.saw = ", ".join(f"{kind}: {a.kind} in {a.latency_s:.2f}s"
                            for (_, kind, _), a in zip(sends, answers, strict=True))
        if not all(a.kind[:1] == "4" for a in answers):
            row.problems.append("not answered 4xx")
        if guard.fired:
            row.problems.append(f"RSS passed idle + {BOMB_GUARD_BYTES // GIB} GiB: the harness killed it")
        elif peak_limit is not None and peak - probe.rss0 > peak_limit:
            row.problems.append(f"peak RSS {(peak - probe.rss0) / MIB:.0f} MiB over idle "
                                f"(limit {peak_limit // MIB})")
        probe.finish(row, answers)
    return row


def row_memory_bomb(ctx: Context) -> Row:
    blank = base64.b64encode(png_bytes(4096, 4096)).decode()
    items = [{"fields": {"component_type": "R"}, "image": {"base64_png": blank}}] * 64
    row = input_row(ctx, "memory-bomb batch (64 x 4096^2 PNG)",
                    [("/v1/inspect/batch", "json", {"items": items})], peak_limit=BOMB_PEAK_LIMIT_BYTES)
    row.note = (row.note + " " if row.note else "") + f"body {len(blank) * 64 / MIB:.1f} MiB"
    return row


def row_bomb_png(ctx: Context) -> Row:
    bomb = png_bytes(15000, 15000, channels=1)
    return input_row(ctx, f"bomb PNG (15000^2, {len(bomb) // 1024} KB)", [
        ("/v1/inspect", "json", single("R", bomb)),
        ("/v1/inspect", "multipart", {"image": ("bomb.png", bomb, "image/png")}),
    ], peak_limit=BOMB_PEAK_LIMIT_BYTES)


async def slow_upload(host: str, port: int, stop: asyncio.Event) -> str:
    """A POST whose body comes 4 bytes a second; what the server did about it."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        return f"connect failed ({type(exc).__name__})"
    head = (f"POST /v1/inspect HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: 200000\r\n\r\n").encode()
    body = b'{"fields": {"component_type": "R"}, "image": {"base64_png": "' + b"A" * 199000
    status = asyncio.ensure_future(reader.readline())
    try:
        writer.write(head)
        for k in range(0, len(body), 4):
            if status.done() or stop.is_set():
                break
            writer.write(body[k:k + 4])
            await writer.drain()
            await asyncio.wait({status}, timeout=1.0)
    except OSError:
        pass  # the server closed the connection: status says how
    finally:
        await asyncio.wait({status}, timeout=0.2)
        writer.close()
    if not status.done():
        status.cancel()
        return "still open at hang-up"
    if status.exception() is not None:
        return f"reset by server ({type(status.exception()).__name__})"
    parts = status.result().decode(errors="replace").split()
    return f"answered {parts[1]}" if len(parts) >= 2 else "closed by server, no answer"


async def slow_uploads_async(srv: Server) -> tuple[Counter, Answer, str]:
    host, port = srv.url.removeprefix("http://").rsplit(":", 1)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(slow_upload(host, int(port), stop)) for _ in range(SLOW_UPLOADS)]
    await asyncio.sleep(1.5)  # every connection open, its headers sent
    held = await asyncio.to_thread(srv.metric, "coserve_requests_in_flight")
    body = single("R", tiny_png(3))
    async with httpx.AsyncClient(base_url=srv.url, timeout=CLIENT_TIMEOUT_S) as client:
        t0 = time.perf_counter()
        try:
            response = await client.post("/v1/inspect", json=body)
            normal = classify(response, time.perf_counter() - t0, 1)
        except httpx.HTTPError as exc:
            normal = Answer(f"no response ({type(exc).__name__})", 0, time.perf_counter() - t0)
    await asyncio.sleep(max(0.0, SLOW_HOLD_S - 1.5 - normal.latency_s))
    stop.set()
    outcomes = Counter(await asyncio.gather(*tasks))
    return outcomes, normal, f"in flight while slow uploads held: {held:.0f}"


def row_slow_uploads(ctx: Context) -> Row:
    row = Row(f"{SLOW_UPLOADS} slow uploads + 1 normal client")
    with ctx.server(row.fault) as srv:
        probe = Probe(srv)
        outcomes, normal, note = asyncio.run(slow_uploads_async(srv))
        row.saw = (f"normal: {normal.kind} in {normal.latency_s:.2f}s; slow: "
                   + ", ".join(f"{k} x{n}" for k, n in outcomes.most_common()))
        row.note = note
        if normal.kind != "200 ok" or normal.latency_s > NORMAL_WITHIN_S:
            row.problems.append(f"the normal client was not served within {NORMAL_WITHIN_S:g} s")
        probe.finish(row, [normal])
    return row


# -- rows: batch inspection ---------------------------------------------------------------
def make_lot(lot: Path, num: int) -> None:
    lot.mkdir()
    for k in range(num):
        (lot / f"{NORMAL_TYPES[k % len(NORMAL_TYPES)]}__{k:04d}.png").write_bytes(tiny_png(k))


def db_rows(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as con:
            return con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.Error:
        return 0


def row_inspect_kill(ctx: Context) -> Row:
    """SIGKILL `coserve inspect` part way, run it again: one row per image, exactly."""
    row = Row("SIGKILL during inspect, then resume")
    lot, db = ctx.work / "lot", ctx.work / "inspect.sqlite"
    make_lot(lot, LOT_SIZE)
    cmd = [*COSERVE, "inspect", str(lot), "--repo", str(ctx.tiny), "--db", str(db),
           "--no-measure", "--executors", "cpu:1", "--budget-fraction", "0.2", "--storage", "sata-530"]
    log = ctx.work / "inspect.log"
    first = spawn(cmd, log, ctx.env)
    wait_for(lambda: db_rows(db) >= LOT_SIZE // 10 or first.poll() is not None, 120)
    rss, peak = proc_status(first.pid, "VmRSS"), proc_status(first.pid, "VmHWM")
    finished_first = first.poll() is not None
    kill_group(first)
    at_kill = db_rows(db)
    second = spawn(cmd, log, ctx.env)
    try:
        rc = second.wait(180)
    except subprocess.TimeoutExpired:
        kill_group(second)
        rc = "timeout"
    LIVE.discard(second)
    with contextlib.closing(sqlite3.connect(db)) as con:
        paths = [p for (p,) in con.execute("SELECT path FROM results")]
        statuses = Counter(s for (s,) in con.execute("SELECT status FROM results"))
    files = sorted(p.name for p in lot.iterdir() if p.suffix == ".png")
    duplicates = sum(n - 1 for n in Counter(paths).values() if n > 1)
    missing = len(set(files) - set(paths))
    row.accepted, row.answered = len(files), len(set(paths) & set(files))
    row.saw = (f"killed at {at_kill}/{len(files)} rows; resume rc {rc}; rows "
               + ", ".join(f"{k} x{n}" for k, n in statuses.most_common())
               + f"; missing {missing}, duplicated {duplicates}, extra {len(set(paths) - set(files))}")
    row.alive = f"resume exit {rc}"
    row.serves_after = "-"
    row.rss = rss_text(rss, rss, peak)
    if finished_first:
        row.problems.append("the first run finished before the kill: make the lot larger")
    if rc != 0 or duplicates or len(paths) != len(files):
        row.problems.append("not exactly one row per image after the resume")
    if not row.ok:
        row.note = log_tail(log)
    return row


# -- the matrix ---------------------------------------------------------------------------
def all_rows() -> list[tuple[str, Callable[[Context], Row]]]:
    return [*expert_rows(),
            ("sigterm", row_sigterm),
            ("inspect-kill", row_inspect_kill),
            ("memory-bomb", row_memory_bomb),
            ("bomb-png", row_bomb_png),
            ("slow-uploads", row_slow_uploads)]


def run_rows(ctx: Context, names: list[str] | None = None,
             progress: Callable[[str], None] = lambda s: None) -> list[Row]:
    rows = []
    for name, fn in all_rows():
        if names and name not in names:
            continue
        t0 = time.monotonic()
        try:
            row = fn(ctx)
        except (HarnessError, OSError, httpx.HTTPError) as exc:
            row = Row(TITLES.get(name, name), problems=[f"harness: {type(exc).__name__}: {exc}"[:300]])
        release_markers(ctx)
        progress(f"{name}: {'ok' if row.ok else 'FAIL'} ({time.monotonic() - t0:.1f} s)")
        rows.append(row)
    return rows


TITLES = {"truncated": "weight file truncated", "memory-bomb": "memory-bomb batch",
          "bomb-png": "bomb PNG", "sigterm": "SIGTERM with a hung expert"}
HEADERS = ("fault", "client saw", "accepted", "answered", "lost", "stuck", "server alive",
           "normal after", "RSS MiB before->after (peak)", "verdict")


def cells(row: Row) -> tuple[str, ...]:
    verdict = "PASS" if row.ok else "FAIL: " + "; ".join(
        row.problems + ([f"{row.lost} lost"] if row.lost else []) + ([f"{row.stuck} stuck"] if row.stuck else []))
    if row.note:
        verdict += f" [{row.note}]"
    return (row.fault, row.saw, str(row.accepted), str(row.answered), str(row.lost), str(row.stuck),
            row.alive, row.serves_after, row.rss, verdict)


def print_table(rows: list[Row], plain: bool) -> None:
    if not plain:
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            plain = True
    if plain:
        print(" | ".join(HEADERS))
        for row in rows:
            print(" | ".join(cells(row)))
        return
    table = Table(title="coserve fault matrix", show_lines=True)
    for h in HEADERS:
        table.add_column(h, overflow="fold")
    for row in rows:
        table.add_row(*cells(row), style=None if row.ok else "red")
    Console(width=max(200, shutil.get_terminal_size().columns)).print(table)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    names = [n for n, _ in all_rows()]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="", help=f"comma-separated rows to run (default all): {', '.join(names)}")
    p.add_argument("--plain", action="store_true", help="a plain-text table (default: rich, if installed)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (server logs, repository)")
    p.add_argument("--coserve-src", type=Path, default=None,
                   help="run the servers on this source tree's coserve (a folder holding coserve/, "
                        "e.g. from `git archive HEAD src | tar -x -C DIR`: DIR/src); default: the installed one")
    args = p.parse_args(argv)
    args.names = [n for n in args.rows.split(",") if n]
    unknown = sorted(set(args.names) - set(names))
    if unknown:
        p.error(f"unknown rows {unknown}; known: {', '.join(names)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    atexit.register(kill_all)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: every finally runs
    work = Path(tempfile.mkdtemp(prefix="coserve-faults-"))
    try:
        ctx = make_context(work, args.coserve_src)
        print(f"work dir {work}; serve options: trust={'--trust-repo-code' in ctx.options}, "
              f"batch deadline={'--batch-deadline-s' in ctx.options}, drain={ctx.drain_option()}",
              flush=True)
        t0 = time.monotonic()
        rows = run_rows(ctx, args.names, progress=lambda s: print(s, flush=True))
        print_table(rows, args.plain)
        failed = [r.fault for r in rows if not r.ok]
        print(f"{len(rows) - len(failed)}/{len(rows)} rows passed in {time.monotonic() - t0:.0f} s"
              + (f"; failing: {', '.join(failed)}" if failed else ""))
        return 1 if failed else 0
    finally:
        kill_all()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
