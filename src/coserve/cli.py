"""The `coserve` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from coserve.errors import CoserveError
from coserve.planner.command import add_plan_option, add_plan_parser, add_simulate_parser

DEMO_POLICIES = ("samba", "samba-fifo", "samba-parallel", "coserve", "all-resident")


def cache_dir() -> Path:
    """Where generated zoos and traces go: $COSERVE_CACHE, else ~/.cache/coserve."""
    return Path(os.environ.get("COSERVE_CACHE", Path.home() / ".cache" / "coserve"))


def _add_engine_options(p: argparse.ArgumentParser, backlog: bool = True) -> None:
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget-bytes", type=int, help="bytes of expert weights the executing pools may hold (all executors together)")
    budget.add_argument("--budget-fraction", type=float, help="the budget as a fraction of all expert bytes, e.g. 0.3")
    p.add_argument("--executors", default=None, help="executors, e.g. 'cpu:2' or 'cpu:1,cuda:0:2' (default: cpu:min(2, cores))")
    p.add_argument("--storage", default="none", help="storage profile pacing expert reads: none, sata-530, nvme-3000 (default: none)")
    p.add_argument("--max-defer-s", type=float, default=None, help="starvation bound: how long a queued task may be overtaken (default 5)")
    if backlog:
        p.add_argument("--backlog", action="store_true", help="submit every request at once instead of at its arrival offset")
    p.add_argument("--no-measure", action="store_true", help="skip the start-up cost measurement and use default costs")


def _engine_config(args: argparse.Namespace, policy: str):
    from coserve.config import EngineConfig
    from coserve.executors.spec import parse_executors

    kwargs = {
        "policy": policy,
        "budget_bytes": args.budget_bytes,
        "budget_fraction": args.budget_fraction,
        "storage": args.storage,
        "measure_costs": not args.no_measure,
    }
    if args.executors:
        kwargs["executors"] = parse_executors(args.executors)
    if args.max_defer_s is not None:
        kwargs["max_defer_s"] = args.max_defer_s
    return EngineConfig(**kwargs)


def cmd_zoo(args: argparse.Namespace) -> int:
    from coserve.zoo.tiny import build_tiny

    root, trace = build_tiny(args.dir, seed=args.seed)
    print(f"wrote repository {root} and trace {trace}")
    return 0


def _progress_builder(label: str):
    """A rich progress bar as a `progress(what, done, total)` callback, and its context."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.description}"))
    task = bar.add_task("", total=None)

    def update(what: str, done: int, total: int) -> None:
        bar.update(task, completed=done, total=total, description=what)

    return bar, update


def default_pcb_root(size: str = "default") -> Path:
    return cache_dir() / "zoo" / f"pcb-{size}"


def ensure_pcb(root: Path, size: str) -> Path:
    from coserve.zoo.pcb import build_pcb

    if not (root / "coe.yaml").is_file():
        bar, update = _progress_builder(f"building pcb-{size} into {root}")
        with bar:
            build_pcb(root, size=size, progress=update)
    return root


def cmd_zoo_pcb(args: argparse.Namespace) -> int:
    size = "reference" if args.reference else args.size
    root = args.out or default_pcb_root(size)
    if (root / "coe.yaml").is_file() and not args.force:
        print(f"{root} already holds a repository (use --force to rebuild)")
        return 0
    (root / "coe.yaml").unlink(missing_ok=True)
    ensure_pcb(root, size)
    print(f"wrote repository {root}")
    return 0


def cmd_trace_make(args: argparse.Namespace) -> int:
    from coserve.trace import write_trace
    from coserve.zoo.pcb import ARRIVAL_INTERVAL_S, pcb_requests

    interval = 0.0 if args.backlog else (args.interval_s if args.interval_s is not None else ARRIVAL_INTERVAL_S)
    requests = pcb_requests(args.repo, board=args.board, num_requests=args.num,
                            interval_s=interval, seed=args.seed)
    write_trace(args.out, requests)
    num_defects = sum(r.fields["defect"] is not None for r in requests)
    print(f"wrote {args.out}: {len(requests)} images from board {args.board}, "
          f"{num_defects} with injected defects, one every {interval * 1e3:.1f} ms")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from coserve.engine.run import run_trace
    from coserve.planner.command import apply_recommendation, load_plan
    from coserve.report import print_table
    from coserve.repository import open_repository
    from coserve.trace import read_trace

    model = open_repository(args.repo)
    requests = read_trace(args.trace)
    plan = load_plan(args)
    config = apply_recommendation(_engine_config(args, args.policy), plan, args)
    stats, results, _ = run_trace(model, requests, config, args.backlog, plan=plan)
    if args.json:
        print(json.dumps(stats.to_dict(), indent=2))
    else:
        print_table([stats])
        for r in (r for r in results if not r.ok):
            print(f"request {r.request_id} failed: {r.error}", file=sys.stderr)
    return 0 if all(r.ok for r in results) else 1


def cmd_demo(args: argparse.Namespace) -> int:
    """The pcb workload through `bench` (no sweep), or the tiny CoE with --tiny."""
    return cmd_demo_tiny(args) if args.tiny else cmd_bench(args)


def cmd_demo_tiny(args: argparse.Namespace) -> int:
    from coserve.engine.run import compare_policies
    from coserve.loader.storage import measure_raw_bandwidth, storage_profile
    from coserve.report import print_table
    from coserve.repository import open_repository
    from coserve.trace import read_trace
    from coserve.zoo.tiny import build_tiny

    root = cache_dir() / "zoo" / "tiny"
    if not (root / "coe.yaml").is_file():
        print(f"building the tiny CoE into {root} ...")
        build_tiny(root)
    model = open_repository(root)
    requests = read_trace(root / "trace.jsonl")
    if args.budget_bytes is None and args.budget_fraction is None:
        args.budget_fraction = 0.3
    args.backlog = True
    config = _engine_config(args, "coserve")
    largest = max(model.experts.values(), key=lambda e: e.file_bytes)
    raw_bps = measure_raw_bandwidth(largest.weights_path)
    rows = compare_policies(model, requests, config, DEMO_POLICIES, backlog=True)
    pace = storage_profile(args.storage).read_bytes_per_s
    paced = f", reads paced to {pace / 1e6:.0f} MB/s" if pace else ""
    print(f"{model.name}: {len(model.experts)} experts, {model.total_expert_bytes / 1e6:.1f} MB; "
          f"{len(requests)} requests submitted at once; storage profile {args.storage}; "
          f"raw storage read {raw_bps / 1e6:.0f} MB/s (O_DIRECT, measured now{paced}); "
          f"{os.cpu_count()} cores")
    print_table(rows, baseline="samba")
    if args.json:
        Path(args.json).write_text(json.dumps({"raw_storage_bytes_per_s": raw_bps,
                                               "rows": [r.to_dict() for r in rows]}, indent=2))
    return 0


def _pcb_trace(repo: Path, board: str = "A") -> Path:
    """The board's default task beside the repository, made on first use."""
    from coserve.trace import write_trace
    from coserve.zoo.pcb import pcb_requests

    path = repo / f"trace-{board}.jsonl"
    if not path.is_file():
        print(f"making the board-{board} task trace {path} ...")
        write_trace(path, pcb_requests(repo, board=board))
    return path


def cmd_bench(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from coserve.bench.report import table_rows, write_reports
    from coserve.bench.runner import run_bench
    from coserve.repository import open_repository
    from coserve.trace import read_trace

    repo = args.repo or ensure_pcb(default_pcb_root(args.size), args.size)
    trace = args.trace or _pcb_trace(repo)
    model = open_repository(repo)
    requests = read_trace(trace)[: args.limit or None]
    if args.budget_bytes is None and args.budget_fraction is None:
        args.budget_fraction = 0.2
    config = _engine_config(args, "coserve")
    peer = None
    if args.ray:
        from coserve.bench.ray_peer import RayPeerConfig, ray_available, run_ray_peer_results
        from coserve.bench.runner import inspection_accuracy

        if not ray_available():
            print("error: --ray needs Ray Serve: pip install 'coserve[ray]'", file=sys.stderr)
            return 2

        def peer() -> dict:
            peer_config = RayPeerConfig(budget_bytes=config.resolve_budget(model.total_expert_bytes),
                                        storage=config.storage, max_inflight=args.max_inflight)
            stats, results = run_ray_peer_results(model, requests, peer_config)
            return {**stats.to_dict(), "accuracy": inspection_accuracy(results)}

    sweep = [float(x) for x in args.sweep.split(",")] if args.sweep else []
    policies = args.policies.split(",")
    plan = None if args.no_plan or "coserve" not in policies else _bench_plan(args, model, repo, requests)
    run = run_bench(model, requests, config, policies=policies, backlog=not args.realtime,
                    sweep_fractions=sweep, peer=peer, trace=str(trace), plan=plan, repeat=args.repeat,
                    on_row=lambda r: print(f"  {r['policy']}: {r['throughput_rps']:.1f} images/s, "
                                           f"{r['num_switches']} switches", flush=True))
    header, body = table_rows(run.rows)
    table = Table(title=f"coserve bench: {model.name}")
    for h in header:
        table.add_column(h, justify="left" if h == "policy" else "right")
    for row in body:
        table.add_row(*row)
    Console(width=140).print(table)
    m = run.metadata
    if plan is not None:
        m["plan"] = str(args.plan or repo / BENCH_PLAN)
    print(f"budget {m['budget_bytes'] / 1e9:.2f} GB = {m['budget_fraction']:.0%} of {m['total_expert_bytes'] / 1e9:.2f} GB; "
          f"storage {m['storage']}; raw storage read {m['raw_storage_bytes_per_s'] / 1e6:.0f} MB/s; "
          f"{m['cpu_cores']} cores; {m['num_requests']} requests ({m['arrivals']})")
    report_dir = args.report_dir or cache_dir() / "bench" / model.name
    for path in write_reports(run, args.json, report_dir):
        print(f"wrote {path}")
    return 0


BENCH_PLAN = "plan.json"  # the bench's plan, beside the repository, made on first use


def _bench_plan(args: argparse.Namespace, model, repo: Path, requests):
    """--plan, else the plan beside the repository, else a profile made now (once)."""
    from coserve.planner.command import load_checked
    from coserve.profiler import profile_repository

    if args.plan:
        return load_checked(args.plan)
    path = repo / BENCH_PLAN
    if path.is_file():
        return load_checked(path)
    bar, update = _progress_builder(f"profiling {model.name} for the planned row (once)")
    with bar:
        plan = profile_repository(model, sample=requests[:200], inputs_from=requests[:64],
                                  progress=update)
    try:
        plan.save(path)
        print(f"wrote {path}")
    except OSError as exc:
        print(f"warning: could not keep the plan at {path} ({exc.strerror})", file=sys.stderr)
    return plan


def cmd_inspect(args: argparse.Namespace) -> int:
    from coserve.inspect.command import EXPORT_WORD, export_command, inspect_command

    if args.dir == EXPORT_WORD:  # a lot folder named "export" is given as ./export
        return export_command(args)
    return inspect_command(args, _engine_config(args, args.policy))


def _add_inspect_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="inspect every image in a directory into SQLite (resumable)",
                       description="Run every image of DIR through the CoE; one row per image in "
                                   "--db. Killed and restarted, it resumes. `coserve inspect export "
                                   "--db DB --csv OUT.csv` writes the rows to CSV.")
    p.add_argument("dir", help="the lot: PNG/JPEG/.safetensors files named '<component_type>__*' "
                               "or listed in DIR/manifest.csv (filename,component_type,...)")
    p.add_argument("--repo", type=Path, default=None, help="the model repository (required to inspect)")
    p.add_argument("--db", type=Path, required=True, help="SQLite results file; run again to resume")
    p.add_argument("--policy", default="coserve", choices=DEMO_POLICIES)
    p.add_argument("--max-inflight", type=int, default=None, help="images submitted but not answered: bounds memory (default 128)")
    p.add_argument("--export-csv", type=Path, default=None, help="after the run, write every row to this CSV")
    p.add_argument("--csv", type=Path, default=None, help="with `inspect export`: the CSV to write")
    _add_engine_options(p, backlog=False)
    p.set_defaults(func=cmd_inspect)


def cmd_serve(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from coserve.engine.engine import Engine
    from coserve.errors import ConfigError
    from coserve.planner.command import apply_recommendation, load_plan
    from coserve.repository import open_repository
    from coserve.server.config import TOKEN_ENV, ServerConfig
    from coserve.server.run import bind, serve

    token = args.token or os.environ.get(TOKEN_ENV) or None
    config = ServerConfig(host=args.host, port=args.port, token=token, max_inflight=args.max_inflight,
                          max_batch_items=args.max_batch_items, max_body_bytes=args.max_body_bytes,
                          request_timeout_s=args.request_timeout_s,
                          max_loop_lag_s=args.max_loop_lag_s or None)
    engine_config = replace(_engine_config(args, args.policy), quarantine_after=args.quarantine_after)
    model = open_repository(args.repo)
    plan = load_plan(args)
    engine_config = apply_recommendation(engine_config, plan, args)
    engine = Engine(model, engine_config, plan=plan)  # validates the budget before the port is taken
    try:
        sock = bind(config.host, config.port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {config.host}:{config.port} ({exc.strerror}); "
                          f"pick another --port or stop what uses it") from None
    host, port = sock.getsockname()[:2]
    if not config.loopback and token is None:
        print(f"warning: listening on {host} without a token; anyone who can reach it may "
              f"use it (set --token or ${TOKEN_ENV})", file=sys.stderr)
    where = f"[{host}]" if ":" in host else host
    print(f"coserve: serving {model.name} on http://{where}:{port} (docs /docs, metrics /metrics; "
          f"/readyz answers 200 once experts are placed)", flush=True)
    serve(engine, config, sock, log_level="info" if args.verbose else "warning")
    print("coserve: drained and stopped", flush=True)
    return 0


def _add_serve_parser(sub: argparse._SubParsersAction) -> None:
    from coserve.server.config import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_INFLIGHT, TOKEN_ENV

    p = sub.add_parser("serve", help="serve a repository over HTTP (inspection API, metrics)",
                       description="An HTTP inference server: POST /v1/inspect, /v1/inspect/batch, "
                                   "GET /v1/experts, /healthz, /readyz, /metrics, docs at /docs. "
                                   "SIGTERM drains requests in flight, then exits 0.")
    p.add_argument("repo", type=Path)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one and prints it)")
    p.add_argument("--token", default=None, help=f"bearer token the /v1 endpoints require (default: ${TOKEN_ENV}, else none)")
    p.add_argument("--policy", default="coserve", choices=DEMO_POLICIES)
    p.add_argument("--max-inflight", type=int, default=DEFAULT_MAX_INFLIGHT,
                   help=f"images the server holds (parsing or in the engine); beyond it 429 + Retry-After (default {DEFAULT_MAX_INFLIGHT})")
    p.add_argument("--max-batch-items", type=int, default=64, help="images per batch request (default 64)")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                   help=f"largest request body; beyond it 413 (default {DEFAULT_MAX_BODY_BYTES})")
    p.add_argument("--request-timeout-s", type=float, default=30.0,
                   help="answer 504 after this long; the engine still finishes the request (default 30)")
    p.add_argument("--max-loop-lag-s", type=float, default=0.5,
                   help="also 429 while the HTTP event loop runs this far behind; 0 never (default 0.5)")
    p.add_argument("--quarantine-after", type=int, default=3,
                   help="consecutive failures that quarantine an expert; 0 never (default 3)")
    _add_engine_options(p, backlog=False)
    add_plan_option(p)
    p.set_defaults(func=cmd_serve)


def _add_bench_options(p: argparse.ArgumentParser, sweep: str) -> None:
    p.add_argument("repo", type=Path, nargs="?", default=None, help="default: the pcb zoo in the cache")
    p.add_argument("trace", type=Path, nargs="?", default=None, help="default: the board-A task")
    p.add_argument("--size", default="default", choices=("tiny", "default", "reference"),
                   help="pcb zoo size when no repository is given")
    p.add_argument("--policies", default=",".join(DEMO_POLICIES))
    p.add_argument("--sweep", default=sweep, help="budget fractions for the sweep, e.g. 0.1,0.2 ('' for none)")
    p.add_argument("--ray", action="store_true", help="add the Ray Serve multiplexing peer row")
    p.add_argument("--max-inflight", type=int, default=16, help="the peer's in-flight window")
    p.add_argument("--realtime", action="store_true", help="replay arrival offsets instead of a backlog")
    p.add_argument("--limit", type=int, default=None, help="only the first N requests")
    p.add_argument("--json", type=Path, default=None, help="write run metadata and rows here")
    p.add_argument("--report-dir", type=Path, default=None, help="markdown report and PNG plots")
    p.add_argument("--repeat", type=int, default=1,
                   help="run every policy row N times, in rounds; each row is the median run")
    p.add_argument("--no-plan", action="store_true",
                   help="no coserve (planned) row and no simulated twins (skips profiling)")
    _add_engine_options(p)
    add_plan_option(p)
    p.set_defaults(func=cmd_bench if sweep else cmd_demo, storage="sata-530")


def _int_list(text: str, what: str) -> tuple[int, ...]:
    from coserve.errors import ConfigError

    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"cannot read {what} {text!r}: give integers separated by commas, "
                          f"e.g. 1,2,4,8") from None


def cmd_profile(args: argparse.Namespace) -> int:
    from coserve.errors import ConfigError
    from coserve.profiler import DEFAULT_BATCH_SIZES, profile_repository
    from coserve.repository import open_repository
    from coserve.trace import read_trace

    model = open_repository(args.repo)
    sample = read_trace(args.sample)[: args.sample_size] if args.sample else None
    # Without --inputs, the sample's inputs are the realistic ones at hand.
    inputs = read_trace(args.inputs) if args.inputs else sample
    processors = [p.strip() for p in args.processors.split(",")] if args.processors else None
    batch_sizes = (_int_list(args.batch_sizes, "--batch-sizes") if args.batch_sizes
                   else DEFAULT_BATCH_SIZES)
    bar, update = _progress_builder(f"profiling {model.name}")
    with bar:
        plan = profile_repository(model, processors=processors, threads=args.threads,
                                  batch_sizes=batch_sizes, sample=sample, inputs_from=inputs,
                                  progress=update, max_executors=args.max_executors,
                                  calibration_requests=args.calibration_requests)
    try:
        plan.save(args.out)
    except OSError as exc:
        raise ConfigError(f"cannot write the plan to {args.out} ({exc.strerror}): "
                          f"give another --out") from None
    _print_plan(plan)
    print(f"wrote {args.out}")
    return 0


def _print_plan(plan) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"coserve profile: {plan.repository}")
    for h in ("arch", "processor", "K ms", "B ms", "max batch", "fit error %", "item MB",
              "footprint MB", "slowdown by executors"):
        table.add_column(h, justify="left" if h in ("arch", "processor") else "right")
    for kind, archs in plan.processors.items():
        for arch, p in archs.items():
            table.add_row(arch, f"{kind} ({plan.threads.get(kind, '?')} threads)",
                          f"{p.cost.k_s * 1e3:.2f}", f"{p.cost.b_s * 1e3:.2f}",
                          str(p.cost.max_batch), f"{p.fit_max_rel_error * 100:.1f}",
                          f"{p.cost.item_bytes / 1e6:.2f}", f"{p.footprint_bytes / 1e6:.2f}",
                          " ".join(f"{n}:{f:.2f}" for n, f in sorted(p.slowdown.items())))
    Console(width=120).print(table)
    for path, lp in plan.loads.items():
        print(f"load {path}: {lp.bytes_per_s / 1e6:.0f} MB/s + {lp.fixed_s * 1e3:.2f} ms fixed "
              f"({lp.samples} loads)")
    overhead = " ".join(f"{n}:{s * 1e6:.0f}" for n, s in sorted(plan.task_overhead_s.items()))
    print(f"engine calibration: per-task handling {overhead or '-'} us by executors; "
          f"submit {plan.submit_s * 1e6:.0f} us per request")
    print(f"usage: {plan.usage_source}")


def _add_profile_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="measure a repository on this machine into a plan file",
                       description="Per architecture x processor: latency per batch size, max "
                                   "useful batch, linear fit, activation bytes; load speed per "
                                   "tier path; usage from the rules or a routed sample.")
    p.add_argument("repo", type=Path)
    p.add_argument("--out", type=Path, required=True, help="the plan file to write (JSON)")
    p.add_argument("--sample", type=Path, default=None,
                   help="a trace to route through the experts for usage (default: the rules)")
    p.add_argument("--sample-size", type=int, default=200, help="sample requests routed (default 200)")
    p.add_argument("--inputs", type=Path, default=None,
                   help="a trace whose inputs feed the latency curves (default: --sample's, else random)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op CPU threads while profiling (default: a default CPU executor's)")
    p.add_argument("--batch-sizes", default=None, help="e.g. 1,2,4,8 (default 1,2,3,4,6,8,12,16,24,32)")
    p.add_argument("--processors", default=None, help="cpu or cpu,cuda (default: cpu, plus cuda if present)")
    p.add_argument("--max-executors", type=int, default=None,
                   help="measure the slowdown of up to N executors of a kind at once (default: the cores, at most 4)")
    p.add_argument("--calibration-requests", type=int, default=2000,
                   help="requests each engine calibration run serves, the sample replayed (default 2000)")
    p.set_defaults(func=cmd_profile)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coserve", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log engine decisions")
    sub = parser.add_subparsers(dest="command", required=True)

    zoo = sub.add_parser("zoo", help="generate a model repository")
    zoo_sub = zoo.add_subparsers(dest="kind", required=True)
    tiny = zoo_sub.add_parser("tiny", help="a dozen small experts and a sample trace, in seconds")
    tiny.add_argument("dir", type=Path)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=cmd_zoo)

    run = sub.add_parser("run", help="run a trace against a repository and print statistics")
    run.add_argument("repo", type=Path)
    run.add_argument("trace", type=Path)
    run.add_argument("--policy", default="coserve", choices=DEMO_POLICIES)
    run.add_argument("--json", action="store_true", help="print the statistics as one JSON object")
    _add_engine_options(run)
    add_plan_option(run)
    run.set_defaults(func=cmd_run)

    zoo_build = zoo_sub.add_parser("build", help="generate a workload repository")
    build_sub = zoo_build.add_subparsers(dest="workload", required=True)
    pcb = build_sub.add_parser("pcb", help="the circuit-board inspection CoE")
    pcb.add_argument("--out", type=Path, default=None, help="directory (default: the cache)")
    pcb.add_argument("--size", default="default", choices=("tiny", "default", "reference"))
    pcb.add_argument("--reference", action="store_true", help="the reference size (~350 experts, ~60 GB)")
    pcb.add_argument("--force", action="store_true", help="rebuild even if the directory holds one")
    pcb.set_defaults(func=cmd_zoo_pcb)

    trace = sub.add_parser("trace", help="make traces")
    trace_sub = trace.add_subparsers(dest="action", required=True)
    make = trace_sub.add_parser("make", help="a board inspection task from a pcb repository")
    make.add_argument("repo", type=Path)
    make.add_argument("--out", type=Path, required=True)
    make.add_argument("--board", default="A", help="A (2,500 images) or B (3,500 images)")
    make.add_argument("--num", type=int, default=None, help="number of images (default: the task's)")
    make.add_argument("--interval-s", type=float, default=None, help="seconds between images (default 0.004)")
    make.add_argument("--backlog", action="store_true", help="all images arrive at once")
    make.add_argument("--seed", type=int, default=0)
    make.set_defaults(func=cmd_trace_make)

    bench = sub.add_parser("bench", help="policies side by side: table, JSON, markdown, plots")
    _add_bench_options(bench, sweep="0.1,0.2,0.3,0.5")

    demo = sub.add_parser("demo", help="the circuit-board inspection workload: the baselines "
                                       "and coserve side by side (builds the pcb zoo on first use)")
    demo.add_argument("--tiny", action="store_true", help="the 12-expert tiny CoE instead (seconds)")
    _add_bench_options(demo, sweep="")
    _add_inspect_parser(sub)
    _add_serve_parser(sub)
    _add_profile_parser(sub)
    add_simulate_parser(sub, _add_engine_options, DEMO_POLICIES, cmd_simulate)
    add_plan_parser(sub)
    return parser


def cmd_simulate(args: argparse.Namespace) -> int:
    from coserve.planner.command import cmd_simulate as simulate_command

    return simulate_command(args, _engine_config(args, args.policy))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except CoserveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
