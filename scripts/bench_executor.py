"""Executor micro-benchmark: one batch through the executor as it was (torch.func's
functional_call binding the expert's tensors on every call) and as it is (Binder: the
skeleton's slots resolved once per architecture), on one expert of each architecture,
interleaved, one intra-op thread. Checks that both give the same outputs, then prints
the median milliseconds per batch and the ratio. A program that prints a table, not a
timed test.

    .venv/bin/python scripts/bench_executor.py [REPO] [--batches 1,8] [--repeats 15]

REPO defaults to the default pcb zoo in the cache (`coserve zoo pcb` builds it). Also
with --device cuda:0 where a GPU is present (the new executor on its own stream)."""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.func import functional_call

from coserve.executors.executor import Executor, build_skeletons
from coserve.loader.safetensors_view import parse_safetensors
from coserve.repository import open_repository

DEFAULT_REPO = Path.home() / ".cache/coserve/zoo/pcb-default"


def _functional_call(skeleton: torch.nn.Module, tensors, inputs, device: torch.device):
    with torch.inference_mode():
        x = torch.stack(list(inputs)).to(device)  # [N, C, H, W]
        out = functional_call(skeleton, dict(tensors), (x,))
        return skeleton.decode(out.cpu() if device.type == "cuda" else out)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _compare(skeleton: torch.nn.Module, new: Executor, architecture: str, tensors, inputs,
             device: torch.device, repeats: int) -> tuple[float, float]:
    """Median seconds per batch, as it was and as it is, interleaved."""
    a = _functional_call(skeleton, tensors, inputs, device)
    b = new.execute(architecture, tensors, inputs)
    assert [d.label_index for d in a] == [d.label_index for d in b], "outputs differ"
    before, after = [], []
    for _ in range(repeats):
        before.append(_timed(lambda: _functional_call(skeleton, tensors, inputs, device)))
        after.append(_timed(lambda: new.execute(architecture, tensors, inputs)))
    return statistics.median(before), statistics.median(after)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("repo", type=Path, nargs="?", default=DEFAULT_REPO)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(1)
    model = open_repository(args.repo)
    device = torch.device(args.device)
    new = Executor(0, args.device, build_skeletons(model.architectures))
    old = build_skeletons(model.architectures)
    print(f"{'architecture':14s} {'tensors':>7s} {'batch':>5s} {'functional_call ms':>18s} "
          f"{'binder ms':>9s} {'ratio':>5s}")
    seen: set[str] = set()
    for expert in model.experts.values():
        if expert.architecture in seen:
            continue
        seen.add(expert.architecture)
        raw = memoryview(bytearray(expert.weights_path.read_bytes()))
        tensors = {k: t.to(device) for k, t in parse_safetensors(raw).items()}
        spec = model.architectures[expert.architecture]
        for n in (int(b) for b in args.batches.split(",")):
            inputs = [torch.randn(*spec.input_shape) for _ in range(n)]
            mb, ma = _compare(old[expert.architecture], new, expert.architecture, tensors,
                              inputs, device, args.repeats)
            print(f"{expert.architecture:14s} {len(tensors):7d} {n:5d} {mb * 1e3:18.2f} "
                  f"{ma * 1e3:9.2f} {ma / mb:5.2f}")


if __name__ == "__main__":
    main()
