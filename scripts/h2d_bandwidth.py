"""Host -> device bandwidth of coserve's loader against a plain pinned `copy_`, measured
in the same run, interleaved, on the same bytes.

    python scripts/h2d_bandwidth.py [REPO] [--device cuda:0] [--repeats 5]

REPO: a model repository whose experts are copied (default: a synthetic ~100 MB expert
of 122 tensors, a ResNet's count, written to a temporary directory). Rows:
- loader: `ExpertLoader.read_host` into a pinned `HostArena` extent (not timed), then
  `ExpertLoader.to_device` (timed): one transfer of the extent on the copy stream, views;
- pinned copy_: one `torch.empty(n, pin_memory=True)` buffer, `dev.copy_(host,
  non_blocking=True)` and a synchronize: the link's ceiling for that many bytes;
- per-tensor pageable: each tensor `.to(device)` from ordinary memory (what the
  engine's loader did before the arena), for reference.
Without CUDA it says so and exits 0 (it runs in the CPU test suite).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def _synthetic_expert(directory: Path) -> dict[str, tuple[Path, int]]:
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)
    # 122 tensors of mixed sizes, ~100 MB in all (a ResNet-50/101's tensor count)
    tensors = {f"layer{i}.weight": torch.randn(((i % 7) + 1) * 29_000, generator=gen)
               for i in range(122)}
    path = directory / "synthetic.safetensors"
    save_file(tensors, path)
    return {"synthetic": (path, path.stat().st_size)}


def _repo_experts(repo: Path, limit: int) -> dict[str, tuple[Path, int]]:
    from coserve.repository import open_repository

    model = open_repository(repo)
    largest = sorted(model.experts.values(), key=lambda e: -e.file_bytes)[:limit]
    return {e.name: (e.weights_path, e.file_bytes) for e in largest}


def _timed(fn, device: str) -> float:
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def measure(files: dict[str, tuple[Path, int]], device: str, repeats: int) -> list[tuple[str, float]]:
    from coserve.loader.arena import HostArena, arena_capacity_bytes
    from coserve.loader.expert_loader import ExpertLoader
    from coserve.loader.storage import Storage, storage_profile

    arena = HostArena(arena_capacity_bytes([(s, s) for _, s in files.values()], 0, len(files)),
                      pin=True)
    loader = ExpertLoader(Storage(storage_profile("none")), files, arena=arena)
    copies = {name: loader.read_host(name)[0] for name in files}
    num_bytes = {name: sum(t.nbytes for t in c.tensors.values()) for name, c in copies.items()}
    pinned = {n: torch.empty(b, dtype=torch.uint8, pin_memory=True) for n, b in num_bytes.items()}
    on_device = {n: torch.empty(b, dtype=torch.uint8, device=device) for n, b in num_bytes.items()}
    pageable = {n: {k: t.clone() for k, t in c.tensors.items()} for n, c in copies.items()}
    rows: dict[str, list[float]] = {"loader (arena, one transfer)": [], "pinned copy_": [],
                                    "per-tensor pageable .to()": []}
    for name in files:  # warm-up: CUDA context, streams, allocator
        loader.to_device(copies[name].tensors, device)
        on_device[name].copy_(pinned[name], non_blocking=True)
    for _ in range(repeats):
        for name in files:  # interleaved, so a noisy spell falls on every row alike
            b = num_bytes[name]
            rows["loader (arena, one transfer)"].append(
                b / _timed(lambda n=name: loader.to_device(copies[n].tensors, device), device))
            rows["pinned copy_"].append(b / _timed(
                lambda n=name: on_device[n].copy_(pinned[n], non_blocking=True), device))
            rows["per-tensor pageable .to()"].append(b / _timed(
                lambda n=name: [t.to(device) for t in pageable[n].values()], device))
    return [(label, statistics.median(v)) for label, v in rows.items()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("repo", type=Path, nargs="?", default=None)
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--experts", type=int, default=4, help="the largest N experts of REPO")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("h2d_bandwidth: no CUDA device visible to torch: nothing to measure (ok)")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        files = (_repo_experts(args.repo, args.experts) if args.repo
                 else _synthetic_expert(Path(tmp)))
        rows = measure(files, args.device, args.repeats)
    ceiling = dict(rows)["pinned copy_"]
    print(f"host -> {args.device} ({torch.cuda.get_device_name(args.device)}), "
          f"{len(files)} expert(s), median of {args.repeats} x {len(files)} copies")
    print(f"{'path':32s} {'GB/s':>8s} {'vs pinned copy_':>16s}")
    for label, bps in rows:
        print(f"{label:32s} {bps / 1e9:8.2f} {bps / ceiling:15.2f}x")
    loader_ratio = dict(rows)["loader (arena, one transfer)"] / ceiling
    print(f"loader / pinned copy_ = {loader_ratio:.2f} (target >= 0.80): "
          f"{'ok' if loader_ratio >= 0.8 else 'BELOW TARGET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
