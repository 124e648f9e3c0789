"""The switch cost per stored precision: every expert of a repository loaded through the
engine's PrecisionLoader (one honest Storage read, then the expansion to fp32), the
precisions interleaved expert by expert so a slow spell of a shared machine falls on all
of them alike. Prints per precision and storage profile: MB read, median load, read and
expansion milliseconds, total load seconds, and the ratio to fp32.

    python scripts/bench_precision_load.py REPO [--storage sata-530,none] [--precisions fp32,int8,fp16]

REPO must have the variants (`coserve repo quantize REPO --to int8`)."""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

from coserve.loader.expert_loader import ExpertLoader
from coserve.loader.precision import PrecisionLoader, stored_files
from coserve.loader.storage import Storage, storage_profile
from coserve.repository import open_repository


def measure(repo: str, profile: str, precisions: list[str]
            ) -> dict[str, list[tuple[float, float]]]:
    """precision -> (read s, expansion s) per expert."""
    model = open_repository(repo)
    storage = Storage(storage_profile(profile))
    files = stored_files(model, "auto")
    loader = PrecisionLoader(lambda f: ExpertLoader(storage, f), files)
    seconds: dict[str, list[tuple[float, float]]] = {p: [] for p in precisions}
    for expert in model.experts:
        for precision in precisions:
            tensors, read_s, expand_s = loader.read_timed(expert, precision)
            seconds[precision].append((read_s, expand_s))
            del tensors
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repo")
    parser.add_argument("--storage", default="sata-530,none")
    parser.add_argument("--precisions", default="fp32,int8,fp16")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: one executor's)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    precisions = args.precisions.split(",")
    model = open_repository(args.repo)
    print("| storage | precision | MB read | median load ms | median read ms | "
          "median expansion ms | total load s | vs fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    for profile in args.storage.split(","):
        seconds = measure(args.repo, profile, precisions)
        base = sum(r + x for r, x in seconds["fp32"]) if "fp32" in seconds else None
        for precision in precisions:
            mb = sum(e.weights_file(precision)[1] for e in model.experts.values()) / 1e6
            loads = [r + x for r, x in seconds[precision]]
            ratio = f"{sum(loads) / base:.2f}" if base else "-"
            median_ms = [1000 * statistics.median(v) for v in
                         (loads, [r for r, _ in seconds[precision]], [x for _, x in seconds[precision]])]
            print(f"| {profile} | {precision} | {mb:.0f} | "
                  + " | ".join(f"{ms:.1f}" for ms in median_ms) + f" | {sum(loads):.2f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
