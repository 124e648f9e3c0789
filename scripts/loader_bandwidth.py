"""Storage -> host bandwidth of coserve's loader against a raw O_DIRECT read, and paced
loads against their profile, measured in the same run, interleaved expert by expert.

    python scripts/loader_bandwidth.py [REPO] [--experts 40] [--profile sata-530]

Rows (median over the experts, each file read once per row per pass):
- raw O_DIRECT: `measure_raw_bandwidth` (one sequential read into a reused buffer);
- loader: `ExpertLoader.read` unpaced (read into a fresh buffer, tensor views included);
- loader paced: the same through the storage profile (default sata-530);
- read, then parse: `Storage.read` and then `parse_safetensors` (the loader before the
  header layout was kept: views built after the read, outside the paced window).
Each loader has read every expert once before (a server's steady state: the header
layout is known, so views are built while the read is in flight).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from coserve.loader.expert_loader import ExpertLoader
from coserve.loader.safetensors_view import parse_safetensors
from coserve.loader.storage import Storage, measure_raw_bandwidth, storage_profile
from coserve.repository import open_repository


def measure(repo: Path, num_experts: int, profile: str) -> dict[str, list[float]]:
    model = open_repository(repo)
    experts = sorted(model.experts.values(), key=lambda e: e.name)[:num_experts]
    files = {e.name: (e.weights_path, e.file_bytes) for e in experts}
    unpaced = ExpertLoader(Storage(storage_profile("none")), files)
    paced = ExpertLoader(Storage(storage_profile(profile)), files)
    for e in experts:  # the steady state: each layout parsed once
        unpaced.read(e.name)
        paced.read(e.name)
    rows: dict[str, list[float]] = {"raw O_DIRECT": [], "loader": [], "read, then parse": [],
                                    f"loader {profile}": [], f"read, then parse {profile}": []}
    for e in experts:
        rows["raw O_DIRECT"].append(measure_raw_bandwidth(e.weights_path))
        rows["loader"].append(e.file_bytes / unpaced.read(e.name)[1])
        rows["read, then parse"].append(e.file_bytes / _read_then_parse(unpaced.storage, e))
        rows[f"loader {profile}"].append(e.file_bytes / paced.read(e.name)[1])
        rows[f"read, then parse {profile}"].append(e.file_bytes / _read_then_parse(paced.storage, e))
    return rows


def _read_then_parse(storage: Storage, expert) -> float:
    """The loader before this change: a paced read, then a full parse after it."""
    t0 = time.perf_counter()
    parse_safetensors(storage.read(expert.weights_path, expert.file_bytes), expert.weights_path)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("repo", type=Path, nargs="?", default=None,
                   help="a model repository (default: the default pcb zoo in the cache)")
    p.add_argument("--experts", type=int, default=40)
    p.add_argument("--profile", default="sata-530")
    args = p.parse_args(argv)
    if args.repo is None:
        from coserve.cli.cache import default_pcb_root

        args.repo = default_pcb_root("default")
    pace = storage_profile(args.profile).read_bytes_per_s
    rows = measure(args.repo, args.experts, args.profile)
    raw = statistics.median(rows["raw O_DIRECT"])
    print(f"{'row':28s} {'MB/s':>8s}  ratio")
    for label, values in rows.items():
        bps = statistics.median(values)
        paced_row = label.endswith(args.profile)
        ratio = (f"{bps / pace:.3f} of {pace / 1e6:.0f} MB/s" if paced_row and pace
                 else "" if label == "raw O_DIRECT" else f"{bps / raw:.2f} of raw")
        print(f"{label:28s} {bps / 1e6:8.0f}  {ratio}")
    per_expert = statistics.median(x / r for x, r in zip(rows["loader"], rows["raw O_DIRECT"], strict=True))
    print(f"loader / raw per expert (median): {per_expert:.2f} (target >= 0.90)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
