#!/usr/bin/env python
"""Load test for `coserve serve`, on loopback only.

Sends the requests of a trace (round-robin, as raw tensors or PNGs) to a running server
with a bounded number of concurrent clients for a bounded time, then prints throughput,
latency percentiles, errors by kind, and the requests the server accepted (its
coserve_requests_accepted_total) against those the client got an answer for: they must
be equal (exit 1 otherwise, or if any request got no HTTP response at all).

`--overload` then sends at twice the capacity just measured, open loop (arrivals do not
wait for answers), to show the server shedding load with 429 + Retry-After instead of
queueing without bound.

`--soak-s S` then runs that open loop at 2x capacity for S seconds (600 for the 10-minute
soak) and reports what a soak must show: accepted == answered, the server's RSS sampled
over time (start, middle, end: flat?), p50/p99 latency per third of the run (bounded?),
and every rejection explicit (429 with Retry-After, or 503), by status. The server's RSS
comes from /proc/PID/status: `--server-pid`, else the process listening on --url's port.

    coserve zoo tiny /tmp/tiny
    coserve serve /tmp/tiny --port 8000 --no-measure &
    python scripts/loadtest.py /tmp/tiny/trace.jsonl --duration-s 20 --overload
    python scripts/loadtest.py /tmp/tiny/trace.jsonl --duration-s 10 --soak-s 600
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import math
import os
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from coserve import read_trace

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
# Answers that mean the server refused the request before admitting it.
REFUSED = {"overloaded", "unavailable", "invalid_input", "invalid_request", "malformed_body",
           "unauthorized", "body_too_large", "unsupported_media_type", "not_found"}
READY_TIMEOUT_S = 120.0
SAMPLE_INTERVAL_S = 0.25
KEEPALIVE_EXPIRY_S = 2.0
CONNECTIONS_PER_POOL = 32  # how often the in-flight gauge is sampled during a phase
DRAIN_TIMEOUT_S = 120.0


@dataclass
class Tally:
    """What one phase saw, client side."""

    num_sent: int = 0
    num_transport_errors: int = 0
    num_skipped: int = 0  # open loop: arrivals dropped because the client was at its bound
    kinds: Counter = field(default_factory=Counter)  # "200 ok", "429 overloaded", ...
    ok_latencies_s: list[float] = field(default_factory=list)
    ok_at_s: list[float] = field(default_factory=list)  # when each ok answer came (perf_counter)
    num_answered: int = 0  # responses for requests the server admitted (any outcome)
    started_s: float = 0.0
    last_answer_s: float = 0.0

    def record_no_response(self, error: str) -> None:
        self.last_answer_s = time.perf_counter()
        self.num_transport_errors += 1
        self.kinds[f"no response ({error})"] += 1

    def record(self, response: httpx.Response, latency_s: float) -> None:
        self.last_answer_s = time.perf_counter()
        kind = "ok" if response.status_code == 200 else _error_type(response)
        if response.status_code == 429 and "retry-after" not in response.headers:
            kind += " without Retry-After"
        self.kinds[f"{response.status_code} {kind}"] += 1
        if kind not in REFUSED:
            self.num_answered += 1
        if response.status_code == 200:
            self.ok_latencies_s.append(latency_s)
            self.ok_at_s.append(self.last_answer_s)

    @property
    def elapsed_s(self) -> float:
        return max(self.last_answer_s - self.started_s, 1e-9)

    @property
    def throughput_rps(self) -> float:
        return len(self.ok_latencies_s) / self.elapsed_s


def _error_type(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["type"])
    except (ValueError, KeyError, TypeError):
        return "unparsed"


# -- request bodies ---------------------------------------------------------------------------
def make_bodies(trace: str, fmt: str) -> list[bytes]:
    bodies = []
    for request in read_trace(trace):
        x = request.input  # [3, H, W]
        if fmt == "png":
            rgb = (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()  # [H, W, 3]
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="PNG")
            image = {"base64_png": base64.b64encode(buf.getvalue()).decode()}
        else:
            image = {"tensor": {"shape": list(x.shape), "data": x.flatten().tolist()}}
        bodies.append(json.dumps({"id": request.request_id, "fields": request.fields,
                                  "image": image}).encode())
    if not bodies:
        sys.exit(f"error: trace {trace} holds no requests")
    return bodies


# -- clients ----------------------------------------------------------------------------------
class Clients:
    """Connections to the server, in httpx pools of at most CONNECTIONS_PER_POOL each:
    httpx's pool does work proportional to its size on every event, so one pool of a
    thousand connections would make the client, not the server, the bottleneck (its own
    queueing would then read as server latency). A request is sent only on a free
    connection, so client-side waiting never enters the latency figures."""

    def __init__(self, url: str, headers: dict[str, str], num_connections: int, timeout_s: float) -> None:
        num_pools = math.ceil(num_connections / CONNECTIONS_PER_POOL)
        # Idle connections expire here before uvicorn closes them (after 5 s), so a request
        # is never written into a connection the server is closing.
        limits = httpx.Limits(max_connections=CONNECTIONS_PER_POOL,
                              max_keepalive_connections=CONNECTIONS_PER_POOL,
                              keepalive_expiry=KEEPALIVE_EXPIRY_S)
        self._pools = [httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=timeout_s)
                       for _ in range(num_pools)]
        self._busy = [0] * num_pools

    def free_pool(self) -> int | None:
        """The least busy pool with a free connection, or None."""
        k = min(range(len(self._pools)), key=self._busy.__getitem__)
        return k if self._busy[k] < CONNECTIONS_PER_POOL else None

    async def send(self, pool: int, body: bytes, tally: Tally) -> None:
        tally.num_sent += 1
        self._busy[pool] += 1
        t0 = time.perf_counter()
        try:
            response = await self._pools[pool].post("/v1/inspect", content=body,
                                                    headers={"content-type": "application/json"})
        except httpx.HTTPError as exc:
            tally.record_no_response(type(exc).__name__)
            return
        finally:
            self._busy[pool] -= 1
        tally.record(response, time.perf_counter() - t0)

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


# -- phases -----------------------------------------------------------------------------------
async def closed_loop(clients: Clients, bodies: list[bytes], concurrency: int,
                      duration_s: float) -> Tally:
    """`concurrency` clients, each sending its next request when answered."""
    tally = Tally(started_s=time.perf_counter())
    deadline = tally.started_s + duration_s
    counter = iter(range(10**12))

    async def worker(i: int) -> None:
        pool = i // CONNECTIONS_PER_POOL
        while time.perf_counter() < deadline:
            await clients.send(pool, bodies[next(counter) % len(bodies)], tally)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return tally


async def open_loop(clients: Clients, bodies: list[bytes], rate_rps: float,
                    duration_s: float) -> Tally:
    """Arrivals at `rate_rps` whatever the answers; an arrival finding every connection
    busy is skipped (counted), never queued in the client."""
    tally = Tally(started_s=time.perf_counter())
    outstanding: set[asyncio.Task] = set()
    num_due_total = int(rate_rps * duration_s)
    k = 0
    while k < num_due_total:
        due = min(num_due_total, int((time.perf_counter() - tally.started_s) * rate_rps) + 1)
        for _ in range(due - k):
            pool = clients.free_pool()
            if pool is None:
                tally.num_skipped += 1
            else:
                task = asyncio.create_task(clients.send(pool, bodies[k % len(bodies)], tally))
                outstanding.add(task)
                task.add_done_callback(outstanding.discard)
            k += 1
        await asyncio.sleep(min(0.005, 1 / rate_rps))  # the arrival clock's tick
    await asyncio.gather(*outstanding)
    return tally


# -- the server's side ------------------------------------------------------------------------
async def scrape(client: httpx.AsyncClient, name: str, **labels: str) -> float:
    text = (await client.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


async def buckets(client: httpx.AsyncClient, name: str, **labels: str) -> dict[float, float]:
    """A histogram's cumulative bucket counts now: upper bound (s) -> count."""
    text = (await client.get("/metrics")).text
    found: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{name}_bucket" and all(
                    sample.labels.get(k) == v for k, v in labels.items()):
                found[float(sample.labels["le"])] = sample.value
    return found


def bucket_percentile_s(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The q-th percentile of what a histogram observed between two scrapes, as the upper
    bound of the bucket it falls in (inf: beyond the last bound; nan: nothing observed)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return math.nan
    return next(b for b, c in zip(bounds, counts, strict=True) if c >= q / 100 * counts[-1])


SERVER_HISTOGRAMS = (("handler", "coserve_request_duration_seconds", {"endpoint": "inspect"}),
                     ("engine", "coserve_engine_latency_seconds", {}))


@dataclass
class ServerSide:
    """What the server's /metrics say about one phase."""

    accepted: int
    mean_handler_s: float  # inside the server, from the handler's start to its answer
    rejected_overload: int
    samples: Samples


@dataclass
class Samples:
    """Sampled during a phase: the server's in-flight gauge and event-loop lag, and this
    client's own event-loop lag (when the client lags, its latencies include its wait)."""

    inflight: list[float] = field(default_factory=lambda: [0.0])
    server_lag_s: list[float] = field(default_factory=lambda: [0.0])
    client_lag_s: list[float] = field(default_factory=lambda: [0.0])


async def sample(client: httpx.AsyncClient, samples: Samples) -> None:
    loop = asyncio.get_running_loop()
    while True:
        samples.inflight.append(await scrape(client, "coserve_requests_in_flight"))
        samples.server_lag_s.append(await scrape(client, "coserve_event_loop_lag_seconds"))
        t0 = loop.time()
        await asyncio.sleep(SAMPLE_INTERVAL_S)
        samples.client_lag_s.append(max(0.0, loop.time() - t0 - SAMPLE_INTERVAL_S))


async def server_counters(client: httpx.AsyncClient) -> tuple[float, ...]:
    names = [("coserve_requests_accepted_total", {}),
             ("coserve_request_duration_seconds_sum", {"endpoint": "inspect"}),
             ("coserve_request_duration_seconds_count", {"endpoint": "inspect"}),
             ("coserve_requests_rejected_total", {"reason": "overload"})]
    return tuple([await scrape(client, name, **labels) for name, labels in names])


async def wait_ready(client: httpx.AsyncClient) -> None:
    deadline = time.perf_counter() + READY_TIMEOUT_S
    while time.perf_counter() < deadline:
        try:
            if (await client.get("/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.2)
    sys.exit(f"error: {client.base_url} did not become ready within {READY_TIMEOUT_S:.0f} s")


async def wait_drained(client: httpx.AsyncClient) -> None:
    """Requests answered 504 may still be in the engine: wait until it finished them."""
    deadline = time.perf_counter() + DRAIN_TIMEOUT_S
    while await scrape(client, "coserve_requests_in_flight") > 0:
        if time.perf_counter() > deadline:
            break
        await asyncio.sleep(0.1)


async def phase(client: httpx.AsyncClient, title: str, run: Awaitable[Tally]) -> tuple[Tally, bool]:
    """Run one phase; print it; True if every request the server accepted was answered."""
    before = await server_counters(client)
    samples = Samples()
    sampler = asyncio.create_task(sample(client, samples))
    tally = await run
    sampler.cancel()
    await wait_drained(client)
    after = await server_counters(client)
    accepted, handler_s, num_handled, overload = (a - b for a, b in zip(after, before, strict=True))
    server = ServerSide(int(accepted), handler_s / max(num_handled, 1), int(overload), samples)
    report(title, tally, server)
    return tally, server.accepted == tally.num_answered and tally.num_transport_errors == 0


# -- report -----------------------------------------------------------------------------------
def percentile_ms(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))] * 1e3


def report(title: str, tally: Tally, server: ServerSide) -> None:
    lat = tally.ok_latencies_s
    print(f"\n== {title}")
    print(f"sent {tally.num_sent} in {tally.elapsed_s:.1f} s"
          + (f" ({tally.num_skipped} arrivals skipped: client at its bound)" if tally.num_skipped else ""))
    print(f"throughput {tally.throughput_rps:.1f} answered-ok requests/s")
    if lat:
        print(f"latency ms (ok): p50 {percentile_ms(lat, 50):.1f}  p90 {percentile_ms(lat, 90):.1f}  "
              f"p99 {percentile_ms(lat, 99):.1f}  max {max(lat) * 1e3:.1f}  mean {statistics.fmean(lat) * 1e3:.1f}")
    print("answers by kind: " + ", ".join(f"{k}: {n}" for k, n in tally.kinds.most_common()))
    seen = server.samples
    print(f"server: mean time in handler {server.mean_handler_s * 1e3:.1f} ms, in flight at most "
          f"{max(seen.inflight):.0f}, event-loop lag at most {max(seen.server_lag_s) * 1e3:.0f} ms "
          f"(sampled); {server.rejected_overload} rejected as overload")
    print(f"client: event-loop lag mean {statistics.fmean(seen.client_lag_s) * 1e3:.0f} ms, "
          f"max {max(seen.client_lag_s) * 1e3:.0f} ms (latencies include it)")
    equal = "==" if server.accepted == tally.num_answered else "!="
    print(f"accepted by the server {server.accepted} {equal} answered to the client "
          f"{tally.num_answered}; requests with no HTTP response: {tally.num_transport_errors}")


# -- soak -------------------------------------------------------------------------------------
SOAK_RSS_INTERVAL_S = 5.0
RSS_FLAT_BYTES = 64 << 20  # RSS is flat if the last third's median is within this (or
RSS_FLAT_FRACTION = 0.10  # this fraction) of the first third's
P99_GROWTH = 2.0  # p99 is bounded if the last third's is within this factor (+0.1 s) of the first's


def find_listener_pid(port: int) -> int | None:
    """The process listening on this TCP port on this machine (via /proc), or None."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(cols[9])
    for pid in filter(str.isdigit, os.listdir("/proc")) if inodes else ():
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        if any(re.fullmatch(r"socket:\[(\d+)\]", ln) and ln[8:-1] in inodes for ln in links):
            return int(pid)
    return None


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


async def sample_rss(pid: int, samples: list[tuple[float, int]]) -> None:
    while True:
        samples.append((time.perf_counter(), rss_bytes(pid)))
        await asyncio.sleep(SOAK_RSS_INTERVAL_S)


def thirds(tally: Tally, duration_s: float) -> list[list[float]]:
    """The ok latencies answered in each third of the run."""
    out: list[list[float]] = [[], [], []]
    for at, latency in zip(tally.ok_at_s, tally.ok_latencies_s, strict=True):
        out[min(2, int(3 * (at - tally.started_s) / duration_s))].append(latency)
    return out


def report_rss(samples: list[tuple[float, int]]) -> bool:
    if not samples:
        print("RSS: not sampled (no --server-pid, and no process found listening on the port)")
        return True
    mib = [b / (1 << 20) for _, b in samples]
    k = max(1, len(mib) // 3)
    first, last = statistics.median(mib[:k]), statistics.median(mib[-k:])
    flat = last - first <= max(RSS_FLAT_BYTES / (1 << 20), RSS_FLAT_FRACTION * first)
    t0 = samples[0][0]
    shown = ", ".join(f"{t - t0:.0f}s {m:.0f}" for (t, _), m in zip(samples, mib, strict=True))
    if len(samples) > 24:
        picks = [0, len(samples) // 2, len(samples) - 1]
        shown = ", ".join(f"{samples[i][0] - t0:.0f}s {mib[i]:.0f}" for i in picks)
    print(f"server RSS MiB ({len(samples)} samples every {SOAK_RSS_INTERVAL_S:g} s): {shown}; "
          f"min {min(mib):.0f} max {max(mib):.0f}; first-third median {first:.0f} -> last-third "
          f"{last:.0f}: {'flat' if flat else 'GROWING'}")
    return flat


def report_soak(tally: Tally, duration_s: float, rss: list[tuple[float, int]]) -> bool:
    p99s = []
    for name, lat in zip(("start", "middle", "end"), thirds(tally, duration_s), strict=True):
        p99s.append(percentile_ms(lat, 99))
        print(f"latency ms (ok), {name} third: p50 {percentile_ms(lat, 50):.1f}  p99 {p99s[-1]:.1f}  "
              f"({len(lat)} answers)")
    bounded = not math.isnan(p99s[2]) and p99s[2] <= P99_GROWTH * p99s[0] + 100
    rejections = Counter()
    unexplained = Counter()
    for kind, n in tally.kinds.items():
        if kind.startswith("200"):
            continue
        if re.fullmatch(r"(429 overloaded|503 \w+)", kind):
            rejections[kind] += n
        elif not kind.startswith("504"):
            unexplained[kind] += n
    print("rejections by status: " + (", ".join(f"{k}: {n}" for k, n in rejections.most_common()) or "none")
          + "; not explicit: " + (", ".join(f"{k}: {n}" for k, n in unexplained.most_common()) or "none"))
    flat = report_rss(rss)
    print(f"soak: p99 {'bounded' if bounded else 'GROWING'}, RSS {'flat' if flat else 'GROWING'}, "
          f"rejections {'explicit' if not unexplained else 'NOT all explicit'}")
    return bounded and flat and not unexplained


async def soak(control: httpx.AsyncClient, clients: Clients, bodies: list[bytes], rate: float,
               args: argparse.Namespace) -> bool:
    pid = args.server_pid or find_listener_pid(urlsplit(args.url).port or 80)
    rss: list[tuple[float, int]] = []
    sampler = asyncio.create_task(sample_rss(pid, rss)) if pid else None
    before = [await buckets(control, name, **labels) for _, name, labels in SERVER_HISTOGRAMS]
    tally, ok = await phase(control, f"soak, open loop at {rate:.0f} requests/s (2x capacity) for "
                                     f"{args.soak_s:g} s, at most {args.max_outstanding} open",
                            open_loop(clients, bodies, rate, args.soak_s))
    if sampler is not None:
        sampler.cancel()
        rss.append((time.perf_counter(), rss_bytes(pid)))
    for (what, name, labels), old in zip(SERVER_HISTOGRAMS, before, strict=True):
        new = await buckets(control, name, **labels)
        p50, p99 = (bucket_percentile_s(old, new, q) for q in (50, 99))
        print(f"server side, {what} latency (its histogram, bucket bounds): p50 <= {p50:g} s, "
              f"p99 <= {p99:g} s (the client's latencies above include its own queue)")
    return report_soak(tally, args.soak_s, rss) and ok


# -- main -------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace", help="a trace file (coserve zoo tiny DIR writes DIR/trace.jsonl)")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server, on loopback")
    p.add_argument("--token", default=None, help="bearer token, if the server needs one")
    p.add_argument("--concurrency", type=int, default=16, help="concurrent clients (default 16)")
    p.add_argument("--duration-s", type=float, default=10.0, help="seconds per phase (default 10)")
    p.add_argument("--format", choices=("tensor", "png"), default="tensor", help="how images travel")
    p.add_argument("--overload", action="store_true", help="then send at 2x the measured capacity")
    p.add_argument("--max-outstanding", type=int, default=1024,
                   help="overload phase: most requests the client keeps open (default 1024)")
    p.add_argument("--timeout-s", type=float, default=120.0, help="client timeout per request")
    p.add_argument("--soak-s", type=float, default=0.0,
                   help="then soak: open loop at 2x the measured capacity for this long (600: 10 minutes)")
    p.add_argument("--server-pid", type=int, default=None,
                   help="soak: the server's PID for RSS samples (default: whoever listens on --url's port)")
    args = p.parse_args(argv)
    host = urlsplit(args.url).hostname
    if host not in LOOPBACK:
        p.error(f"--url must be on loopback ({', '.join(sorted(LOOPBACK))}), got {host}")
    if args.concurrency < 1 or args.duration_s <= 0 or args.max_outstanding < 1 or args.soak_s < 0:
        p.error("--concurrency and --max-outstanding must be >= 1, --duration-s > 0, --soak-s >= 0")
    return args


async def main_async(args: argparse.Namespace) -> int:
    bodies = make_bodies(args.trace, args.format)
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    clients = Clients(args.url, headers, max(args.concurrency, args.max_outstanding), args.timeout_s)
    async with httpx.AsyncClient(base_url=args.url, headers=headers, timeout=args.timeout_s) as control:
        await wait_ready(control)
        print(f"{args.url}: {len(bodies)} distinct requests from {args.trace} as {args.format}; "
              f"{args.concurrency} clients x {args.duration_s:g} s")
        tally, ok = await phase(control, f"closed loop, {args.concurrency} concurrent clients",
                                closed_loop(clients, bodies, args.concurrency, args.duration_s))
        if args.overload:
            rate = 2 * tally.throughput_rps
            over, over_ok = await phase(
                control, f"overload, open loop at {rate:.0f} requests/s (2x capacity), "
                         f"at most {args.max_outstanding} open",
                open_loop(clients, bodies, rate, args.duration_s))
            ok = ok and over_ok
            num_429 = sum(n for k, n in over.kinds.items() if k.startswith("429"))
            print(f"shed {num_429} of {over.num_sent} with 429 + Retry-After; "
                  f"ok throughput {over.throughput_rps:.1f}/s vs {tally.throughput_rps:.1f}/s at capacity")
        if args.soak_s:
            ok = await soak(control, clients, bodies, 2 * tally.throughput_rps, args) and ok
    await clients.aclose()
    print("\nPASS: every accepted request was answered" + (" and the soak held" if args.soak_s else "")
          if ok else "\nFAIL: accepted != answered, requests got no response"
          + (", or the soak's latency, RSS or rejections failed (above)" if args.soak_s else ""))
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:  # uvicorn's standard extras bring uvloop: a cheaper event loop for the client too
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
