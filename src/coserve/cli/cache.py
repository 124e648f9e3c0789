"""The cache the commands build into on first use: generated zoos, their board traces,
the bench's plan. $COSERVE_CACHE, else ~/.cache/coserve:

    zoo/tiny/                 the tiny CoE and its trace.jsonl (demo --tiny)
    zoo/pcb-<size>/           a pcb zoo; trace-<board>.jsonl and plan.json beside coe.yaml
    zoo/synth-<size>/         the synth zoo (coserve zoo build synth), trace.jsonl, synth.json
    bench/<model>/            bench and demo reports (unless --report-dir)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from coserve.cli.options import load_plan, progress_bar

if TYPE_CHECKING:
    from coserve.planfile import Plan
    from coserve.repository import CoEModel
    from coserve.types import Request

BENCH_PLAN = "plan.json"  # the bench's plan, beside the repository, made on first use
PLAN_SAMPLE_REQUESTS = 200  # the trace's first requests route the bench plan's usage
PLAN_INPUT_REQUESTS = 64  # ... and the first of them feed its latency curves


def cache_dir() -> Path:
    """Where generated zoos and traces go: $COSERVE_CACHE, else ~/.cache/coserve."""
    return Path(os.environ.get("COSERVE_CACHE", Path.home() / ".cache" / "coserve"))


def default_pcb_root(size: str = "default", cascade: bool = False) -> Path:
    return cache_dir() / "zoo" / (f"pcb-{size}-cascade" if cascade else f"pcb-{size}")


def bench_report_dir(model_name: str) -> Path:
    return cache_dir() / "bench" / model_name


def ensure_pcb(root: Path, size: str, cascade: bool = False) -> Path:
    """The pcb zoo of `size` at `root`, built (with a progress bar) unless it is there."""
    from coserve.zoo.pcb import build_pcb

    if not (root / "coe.yaml").is_file():
        bar, update = progress_bar(f"building pcb-{size}{'-cascade' if cascade else ''} into {root}")
        with bar:
            build_pcb(root, size=size, progress=update, cascade=cascade)
    return root


def ensure_tiny() -> Path:
    """The tiny CoE in the cache, built unless it is there; its trace is root/trace.jsonl."""
    from coserve.zoo.tiny import build_tiny

    root = cache_dir() / "zoo" / "tiny"
    if not (root / "coe.yaml").is_file():
        print(f"building the tiny CoE into {root} ...")
        build_tiny(root)
    return root


def board_trace(repo: Path, board: str = "A") -> Path:
    """The board's default task beside the repository, made on first use."""
    from coserve.trace import write_trace
    from coserve.zoo.pcb import pcb_requests

    path = repo / f"trace-{board}.jsonl"
    if not path.is_file():
        print(f"making the board-{board} task trace {path} ...")
        write_trace(path, pcb_requests(repo, board=board))
    return path


def bench_plan_path(repo: Path) -> Path:
    return repo / BENCH_PLAN


def bench_plan(model: CoEModel, repo: Path, requests: Sequence[Request]) -> Plan:
    """The plan beside the repository, else one profiled now from the trace's first
    requests and kept there (once)."""
    from coserve.profiler import profile_repository

    path = bench_plan_path(repo)
    if path.is_file():
        return load_plan(path)
    bar, update = progress_bar(f"profiling {model.name} for the planned row (once)")
    with bar:
        plan = profile_repository(model, sample=requests[:PLAN_SAMPLE_REQUESTS],
                                  inputs_from=requests[:PLAN_INPUT_REQUESTS], progress=update)
    try:
        plan.save(path)
        print(f"wrote {path}")
    except OSError as exc:
        print(f"warning: could not keep the plan at {path} ({exc.strerror})", file=sys.stderr)
    return plan
