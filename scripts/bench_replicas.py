#!/usr/bin/env python
"""Two coserve replicas on this machine against one engine with both cores and against
Ray Serve multiplexing, on the same trace (issue 13, item 5). Prints one table.

Variants, one after another, each on a fresh server on loopback (a fresh Ray for each):
  partitioned  `coserve serve --replicas 2 --executors cpu:1` (each replica one core and
               the budget of one machine), requests routed to their first expert's owner
  random       the same with `--replica-routing random` (the baseline routing)
  handoff      partitioned with `--handoff on`: each replica runs only the steps of the
               experts it owns, the ingress sends the others on (for CoEs with fan-out)
  one-engine   `coserve serve --executors cpu:2`: one engine, both cores, one budget
  ray-mux      the Ray Serve multiplexing peer (coserve.bench.ray_peer) with 2 replicas
               of one core, each holding as many experts as one machine's budget allows;
               its driver runs in this process through Serve handles, not HTTP

Every variant gets `--budget-fraction F` per engine or replica and `--storage` pacing per
engine or replica (each replica stands for one machine with its own disk: the Ray peer,
which splits a profile between its replicas, is given twice the bandwidth to split).
Storage reads are honest (O_DIRECT or dropped pages; README "Honest numbers").

The trace's first `--num` requests are sent as a backlog through `--clients` concurrent
HTTP clients (as PNGs; the Ray peer gets the same quantised pixels); latency is from
sending a request to its answer (the Ray peer's from entering its in-flight window to
its answer). Switches and bytes read are the engines' counters over the run (for the
replicas, the ingress's per-replica counters). accepted = answered compares the server's
coserve_requests_accepted_total with the answers the clients got. `--kill-replica-at K`
kills replica 0's actor process (SIGKILL) in the partitioned run after K answers; `lost`
counts requests that got no 200.

    python scripts/bench_replicas.py --num 600 --kill-replica-at 300
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).parent))
from loadtest import Clients, Tally, make_bodies, percentile_ms  # noqa: E402

from coserve import read_trace  # noqa: E402

ZOO = Path.home() / ".cache/coserve/zoo/pcb-default"
VARIANTS = ("partitioned", "random", "handoff", "one-engine", "ray-mux")
READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 90.0
ENGINE_STATS_MAX_AGE_S = 5.0  # ServerConfig's default: one engine's /metrics counters' age
FRESH_TIMEOUT_S = 5.0  # the replicas' counters come with the ingress's 0.5 s status poll


@dataclass
class Row:
    variant: str
    num_ok: int
    wall_s: float
    num_switches: float
    bytes_read: float
    latencies_s: list[float]
    accepted: int | None
    answered: int | None
    lost: int
    note: str = ""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repo", type=Path, help="default: the pcb zoo if built, else the tiny zoo")
    p.add_argument("--trace", type=Path, help="default: the zoo's board-A trace")
    p.add_argument("--plan", type=Path, help="default: the pcb zoo's plan.json (none for --repo)")
    p.add_argument("--num", type=int, default=600, help="requests sent (the trace's first N)")
    p.add_argument("--clients", type=int, default=32, help="concurrent HTTP clients")
    p.add_argument("--budget-fraction", type=float, default=0.2, help="per engine or replica")
    p.add_argument("--storage", default="sata-530", help="storage pacing, per engine or replica")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, in order")
    p.add_argument("--kill-replica-at", type=int, default=None,
                   help="in the partitioned and handoff runs, SIGKILL replica 0's actor after K answers")
    return p.parse_args(argv)


def resolve_inputs(args: argparse.Namespace, tmp: Path) -> tuple[Path, Path, Path | None]:
    if args.repo is not None:
        return args.repo, args.trace or args.repo / "trace.jsonl", args.plan
    if ZOO.exists():
        plan = args.plan or (ZOO / "plan.json" if (ZOO / "plan.json").exists() else None)
        return ZOO, args.trace or ZOO / "trace-A.jsonl", plan
    from coserve.zoo.tiny import build_tiny

    root, trace = build_tiny(tmp / "tiny")
    return root, args.trace or trace, args.plan


def cut_trace(trace: Path, num: int, tmp: Path) -> Path:
    """The trace's first `num` lines, its inputs file referenced where it lies."""
    lines = trace.read_text().splitlines()[:num]
    out = tmp / "trace.jsonl"
    out.write_text("\n".join(re.sub(r'"file": "([^"/]+)"', lambda m: f'"file": "{trace.parent / m[1]}"', line)
                             for line in lines) + "\n")
    return out


# -- a server on loopback ---------------------------------------------------------------------
class Server:
    """`coserve serve` in a subprocess: its URL from the line it prints; SIGTERM to stop."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     start_new_session=True)
        self.url = self._await_url()
        threading.Thread(target=self._drain, daemon=True).start()

    def _await_url(self) -> str:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            found = re.search(r"on (http://\S+?)[ ,]", line)
            if found:
                return found[1]
        raise SystemExit(f"error: the server exited ({self.proc.wait()}); see {self._log.name}")

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for _ in self.proc.stdout:
            pass

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: only what it started
            self.proc.wait()
        self._log.close()


def serve_argv(repo: Path, plan: Path | None, args: argparse.Namespace, variant: str) -> list[str]:
    argv = [str(Path(sys.executable).parent / "coserve"), "serve", str(repo), "--port", "0",
            "--budget-fraction", str(args.budget_fraction), "--storage", args.storage,
            "--max-inflight", str(max(256, 2 * args.clients)), "--max-loop-lag-s", "0"]
    argv += ["--plan", str(plan)] if plan is not None else []
    if variant == "one-engine":
        return [*argv, "--executors", "cpu:2"]
    if variant == "handoff":
        return [*argv, "--executors", "cpu:1", "--replicas", "2", "--handoff", "on"]
    return [*argv, "--executors", "cpu:1", "--replicas", "2", "--replica-routing", variant]


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def kill_replica(server: Server, index: int) -> int:
    """SIGKILL the actor process of replica `index` (a descendant of the server); its pid."""
    for pid in descendants(server.proc.pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if f"ServeReplica:coserve:replica-{index}" in cmdline:
            os.kill(pid, signal.SIGKILL)
            return pid
    raise SystemExit(f"error: no actor process for replica {index}")


# -- one HTTP run -------------------------------------------------------------------------------
async def totals(client: httpx.AsyncClient) -> dict[str, float]:
    """Each metric's samples summed over their labels."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families((await client.get("/metrics")).text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


async def wait_ready(client: httpx.AsyncClient) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while (await client.get("/readyz")).status_code != 200:
        if time.monotonic() > deadline:
            raise SystemExit(f"error: {client.base_url} not ready within {READY_TIMEOUT_S:.0f} s")
        await asyncio.sleep(0.2)


async def backlog(clients: Clients, bodies: list[bytes], num_clients: int,
                  on_answer=None) -> Tally:
    """Every body once, through `num_clients` clients each sending its next when answered."""
    tally = Tally(started_s=time.perf_counter())
    queue = iter(bodies)

    async def worker(i: int) -> None:
        for body in queue:
            await clients.send(i // 32, body, tally)
            if on_answer is not None:
                on_answer(tally)

    await asyncio.gather(*(worker(i) for i in range(num_clients)))
    return tally


async def counters_after(client: httpx.AsyncClient, before: dict[str, float], num_ok: int,
                         replicas: bool) -> dict[str, float]:
    """The engines' counters once they include the run (see the module docstring)."""
    if not replicas:
        await asyncio.sleep(ENGINE_STATS_MAX_AGE_S + 0.5)
        return await totals(client)
    deadline = time.monotonic() + FRESH_TIMEOUT_S
    while True:
        after = await totals(client)
        done = after["coserve_replica_engine_requests_total"] - before["coserve_replica_engine_requests_total"]
        if done >= num_ok or time.monotonic() > deadline:
            return after
        await asyncio.sleep(0.1)


async def http_run(variant: str, url: str, bodies: list[bytes], args: argparse.Namespace,
                   server: Server) -> Row:
    replicas = variant != "one-engine"
    switches, read = (("coserve_replica_switches_total", "coserve_replica_storage_read_bytes_total")
                      if replicas else ("coserve_expert_switches_total", "coserve_storage_read_bytes_total"))
    kill_at = args.kill_replica_at if variant in ("partitioned", "handoff") else None
    killed: list[int] = []

    def on_answer(tally: Tally) -> None:
        if kill_at is not None and not killed and tally.num_answered >= kill_at:
            killed.append(kill_replica(server, 0))

    async with httpx.AsyncClient(base_url=url, timeout=120) as control:
        await wait_ready(control)
        before = await totals(control)
        clients = Clients(url, {}, args.clients, timeout_s=120)
        try:
            tally = await backlog(clients, bodies, args.clients, on_answer)
        finally:
            await clients.aclose()
        after = await counters_after(control, before, len(tally.ok_latencies_s), replicas)
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    note = f"replica 0 killed after {kill_at} answers" if killed else ""
    if killed:
        note += (f", {delta.get('coserve_replica_retries_total', 0):.0f} retried, "
                 f"{delta.get('coserve_partition_moves_total', 0):.0f} expert moves "
                 f"(re-homed, and back if it returned within the run)")
    return Row(variant, len(tally.ok_latencies_s), tally.elapsed_s, delta.get(switches, 0.0),
               delta.get(read, 0.0), tally.ok_latencies_s,
               int(delta.get("coserve_requests_accepted_total", 0)), tally.num_answered,
               len(bodies) - len(tally.ok_latencies_s), note)


def run_server_variant(variant: str, repo: Path, plan: Path | None, bodies: list[bytes],
                       args: argparse.Namespace, tmp: Path) -> Row:
    server = Server(serve_argv(repo, plan, args, variant), tmp / f"{variant}.log")
    try:
        return asyncio.run(http_run(variant, server.url, bodies, args, server))
    finally:
        server.stop()


# -- the Ray Serve multiplexing peer ------------------------------------------------------------
def ray_mux_variant(repo: Path, trace: Path, args: argparse.Namespace) -> Row:
    from dataclasses import replace

    from coserve import open_repository
    from coserve.bench.ray_peer import RayPeerConfig, run_ray_peer_results
    from coserve.loader.storage import STORAGE_PROFILES, StorageProfile, storage_profile

    model = open_repository(repo)
    # The PNG bodies' pixels, so the experts see what the HTTP variants' experts see.
    requests = [replace(r, input=(r.input.clamp(0, 1) * 255).round() / 255) for r in read_trace(trace)]
    storage = args.storage
    profile = storage_profile(storage)
    if profile.read_bytes_per_s is not None:  # the peer splits it between its 2 replicas
        storage = f"{profile.name}x2"
        STORAGE_PROFILES[storage] = StorageProfile(storage, 2 * profile.read_bytes_per_s)
    budget_bytes = 2 * int(args.budget_fraction * model.total_expert_bytes)  # one per replica
    config = RayPeerConfig(budget_bytes, storage, max_inflight=args.clients, num_replicas=2,
                           num_cpus=2)
    stats, results = run_ray_peer_results(model, requests, config)
    ok = [r for r in results if r.ok]
    return Row("ray-mux", len(ok), stats.wall_s, stats.num_switches, stats.bytes_read,
               window_latencies(results, args.clients), None, None, len(results) - len(ok),
               f"{stats.extra.get('models_per_replica', '?')} models per replica, in-process")


def window_latencies(results: list, window: int) -> list[float]:
    """Latency from entering the peer's in-flight window to the answer. The peer stamps
    each result with the backlog's start; its window is a FIFO semaphore entered in
    request order, so the (window+j)-th request enters when the j-th answer came."""
    done = sorted(r.completed_s for r in results)
    entered = [results[0].submitted_s] * min(window, len(results)) + done[: max(0, len(results) - window)]
    return [r.completed_s - t for r, t in zip(results, entered, strict=True) if r.ok]


# -- the table ----------------------------------------------------------------------------------
def print_table(rows: list[Row], command: str) -> None:
    print(f"\n{command}\n")
    print("| variant | req/s | switches | switches/req | bytes read | p50 ms | p99 ms | "
          "accepted = answered | lost | note |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        accepted = ("n/a (no HTTP)" if r.accepted is None
                    else f"{r.accepted} = {r.answered}: {'yes' if r.accepted == r.answered else 'NO'}")
        per_request = r.num_switches / r.num_ok if r.num_ok else math.nan
        print(f"| {r.variant} | {r.num_ok / r.wall_s:.1f} | {r.num_switches:.0f} | {per_request:.3f} | "
              f"{r.bytes_read / 1e6:.0f} MB | {percentile_ms(r.latencies_s, 50):.0f} | "
              f"{percentile_ms(r.latencies_s, 99):.0f} | {accepted} | {r.lost} | {r.note} |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"error: unknown variants {sorted(unknown)}: choose from {', '.join(VARIANTS)}")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp_name:
        tmp = Path(tmp_name)
        repo, full_trace, plan = resolve_inputs(args, tmp)
        trace = cut_trace(full_trace, args.num, tmp)
        bodies = make_bodies(str(trace), "png")
        rows = []
        for variant in variants:
            t0 = time.perf_counter()
            row = (ray_mux_variant(repo, trace, args) if variant == "ray-mux"
                   else run_server_variant(variant, repo, plan, bodies, args, tmp))
            print(f"{variant}: {row.num_ok} ok in {row.wall_s:.1f} s "
                  f"({time.perf_counter() - t0:.0f} s with start-up)", flush=True)
            rows.append(row)
    print_table(rows, " ".join(["python scripts/bench_replicas.py", *(argv if argv is not None else sys.argv[1:])]))
    return 0 if all(r.lost == 0 and r.accepted == r.answered for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
