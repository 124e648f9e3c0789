"""Measurements on the real code paths: batches through the engine's Executor (a meta
skeleton with loaded tensors bound by functional_call), loads through its ExpertLoader
(honest O_DIRECT reads, side-stream device copies)."""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import torch

from coserve.engine.costs import leaf_output_bytes
from coserve.errors import ConfigError
from coserve.executors.executor import Executor, build_skeletons
from coserve.loader.arena import HostArena, arena_capacity_bytes
from coserve.loader.expert_loader import ExpertLoader
from coserve.loader.storage import Storage, measure_raw_bandwidth
from coserve.plan import processor_kind as kind_of
from coserve.planfile import LoadProfile
from coserve.profiler.fit import fit_line
from coserve.repository import ArchitectureSpec, CoEModel, ExpertSpec

# A batch slower than this ends the curve: larger ones would only be slower, and on a
# slow machine the profile must stay bounded.
MAX_BATCH_S = 2.0
DEFAULT_REPEATS = 5
LOAD_REPEATS = 3  # timed loads per expert
# Below this ratio of largest to smallest size, a time-against-bytes fit is mostly noise.
MIN_SIZE_SPREAD = 1.25
MIN_SECONDS_PER_BYTE = 1e-15  # 1 PB/s: only keeps the fitted slope positive
PAYLOAD_SEED = 0


def latency_curve(
    spec: ArchitectureSpec,
    weights: Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]],
    processor: str,
    batch_sizes: Sequence[int],
    inputs: Sequence[torch.Tensor] | None = None,
    repeats: int = DEFAULT_REPEATS,
    max_batch_s: float = MAX_BATCH_S,
) -> dict[int, float]:
    """Batch size -> median seconds of `Executor.execute` (stack, forward, decode).

    `weights`: one expert's tensors, or several experts' of this architecture; calls
    rotate through them, so weights come cold from memory as in the engine (where the
    next batch is usually another expert), not hot from a cache. A first pass warms up
    every size in increasing order and ends the curve after the first batch slower than
    `max_batch_s`; then `repeats` rounds time every size once each, interleaved, so a
    noisy moment on a shared machine blurs all sizes alike instead of bending the curve.
    `inputs` (each spec.input_shape) are cycled through; without them, seeded random
    items."""
    sizes = _check_batch_sizes(batch_sizes)
    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1 timed calls per batch size, got {repeats}")
    device = _device(processor)
    executor = Executor(0, device, build_skeletons({spec.name: spec}))
    sets = [weights] if isinstance(weights, Mapping) else list(weights)
    on_device = [{name: t.to(device) for name, t in w.items()} for w in sets]
    payloads = _payloads(spec, inputs, sizes[-1])
    turn = itertools.count()

    def call(n: int) -> object:
        return executor.execute(spec.name, on_device[next(turn) % len(on_device)], payloads[:n])

    measured: list[int] = []
    for n in sizes:  # warm-up pass: also finds where batches get too slow
        measured.append(n)
        if _timed_s(lambda n=n: call(n), device) > max_batch_s:
            break
    rounds = repeats if _timed_s(lambda: call(measured[-1]), device) <= max_batch_s else 1
    timings: dict[int, list[float]] = {n: [] for n in measured}
    for _ in range(rounds):
        for n in measured:
            timings[n].append(_timed_s(lambda n=n: call(n), device))
    return {n: statistics.median(t) for n, t in timings.items()}


def concurrent_slowdown(
    spec: ArchitectureSpec,
    tensors: Mapping[str, torch.Tensor],
    processor: str,
    curve: Mapping[int, float],
    num_executors: int,
    inputs: Sequence[torch.Tensor] | None = None,
    repeats: int = DEFAULT_REPEATS,
) -> float:
    """How much slower a batch runs while `num_executors` executors of this kind run
    batches at once (each in its own thread with its own skeleton, as in the engine):
    the median over the curve's sizes of (latency under load / latency alone). Cores,
    memory bandwidth and the GIL are shared; the simulator charges this factor."""
    device = _device(processor)
    on_device = {name: t.to(device) for name, t in tensors.items()}
    sizes = _slowdown_sizes(curve)
    payloads = _payloads(spec, inputs, max(sizes))
    executors = [Executor(i, device, build_skeletons({spec.name: spec})) for i in range(num_executors)]
    timings: list[dict[int, list[float]]] = [{n: [] for n in sizes} for _ in executors]

    def work(i: int) -> None:
        for _ in range(repeats + 1):  # the first round warms up
            for n in sizes:
                timings[i][n].append(_timed_s(
                    lambda n=n: executors[i].execute(spec.name, on_device, payloads[:n]), device))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(num_executors)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ratios = [statistics.median(t[n][1:]) / curve[n] for t in timings for n in sizes]
    return max(1.0, statistics.median(ratios))


def _slowdown_sizes(curve: Mapping[int, float]) -> list[int]:
    """Three sizes across the curve (fewer if it is shorter), skipping very slow ones."""
    sizes = sorted(n for n, s in curve.items() if s <= MAX_BATCH_S / 4) or [min(curve)]
    return sorted({sizes[0], sizes[len(sizes) // 2], sizes[-1]})


def activation_bytes_per_item(spec: ArchitectureSpec, processor: str) -> int:
    """Bytes of every leaf module's output for one item: the upper bound the engine
    splits batches by (the same count as its start-up measurement)."""
    device = _device(processor)
    return leaf_output_bytes(spec.build(device=device), spec, device)


def load_profile(
    model: CoEModel, experts: Sequence[str], storage: Storage, processor_kind: str
) -> LoadProfile:
    """The load model of one tier path, fitted over LOAD_REPEATS loads of each expert:
    'cpu' measures storage -> host (ExpertLoader.read of the file), 'cuda' host -> device
    (ExpertLoader.to_device of the tensors). Give experts of different sizes, so that
    the fixed cost and the bandwidth can be told apart."""
    if not experts:
        raise ConfigError("load_profile needs at least one expert to load")
    unknown = [e for e in experts if e not in model.experts]
    if unknown:
        raise ConfigError(f"cannot profile loads of unknown experts {unknown[:5]}: use "
                          f"names from the repository's coe.yaml")
    specs = [model.experts[e] for e in experts]
    kind = _kind(processor_kind)
    # Host copies in a pinned arena for device copies, as the engine's loader makes them.
    arena = (HostArena(arena_capacity_bytes([(e.num_bytes, e.file_bytes) for e in specs], 0,
                                            len(specs)), pin=True)
             if kind == "cuda" else None)
    loader = ExpertLoader(storage, {e.name: (e.weights_path, e.file_bytes) for e in specs},
                          arena=arena)
    if kind == "cpu":
        points = _storage_points(loader, specs)
        largest = max(specs, key=lambda e: e.file_bytes)
        return fit_load(points, lambda: measure_raw_bandwidth(largest.weights_path))
    points = _to_device_points(loader, specs)
    return fit_load(points, lambda: _fastest_bytes_per_s(points))


def fit_load(
    points: Sequence[tuple[float, float]], raw_bytes_per_s: Callable[[], float]
) -> LoadProfile:
    """seconds = fixed_s + bytes / bytes_per_s over (bytes, seconds) points. When the
    sizes are too alike to separate the two terms (or the fit finds no bandwidth), the
    bandwidth comes from `raw_bytes_per_s()` and the fixed cost is what remains."""
    sizes = [x for x, _ in points]
    if max(sizes) >= MIN_SIZE_SPREAD * min(sizes):
        fit = fit_line(points, MIN_SECONDS_PER_BYTE)
        if fit.k_s > MIN_SECONDS_PER_BYTE:
            return LoadProfile(1 / fit.k_s, fit.b_s, len(points))
    bps = raw_bytes_per_s()
    fixed_s = max(0.0, statistics.median(s - x / bps for x, s in points))
    return LoadProfile(bps, fixed_s, len(points))


def _storage_points(loader: ExpertLoader, specs: Sequence[ExpertSpec]) -> list[tuple[float, float]]:
    """(file bytes, seconds) of whole-file reads: what a switch from storage costs."""
    loader.read(specs[0].name)  # warm-up: the first read pays imports and buffer set-up
    return [(float(e.file_bytes), loader.read(e.name)[1])
            for e in specs for _ in range(LOAD_REPEATS)]


def _to_device_points(loader: ExpertLoader, specs: Sequence[ExpertSpec]) -> list[tuple[float, float]]:
    """(tensor bytes, seconds) of copies from host memory to cuda:0."""
    if not torch.cuda.is_available():
        raise ConfigError("cannot profile host -> cuda loads: torch sees no CUDA device; "
                          "profile the cpu only (--processors cpu)")
    on_host = {e.name: loader.read_host(e.name)[0].tensors for e in specs}
    loader.to_device(on_host[specs[0].name], "cuda:0")  # warm-up: context and stream set-up
    return [(float(e.num_bytes), loader.to_device(on_host[e.name], "cuda:0")[1])
            for e in specs for _ in range(LOAD_REPEATS)]


def _fastest_bytes_per_s(points: Sequence[tuple[float, float]]) -> float:
    """The bandwidth of the largest load's fastest copy: the link speed, fixed cost in."""
    largest = max(x for x, _ in points)
    return largest / min(s for x, s in points if x == largest)


def _timed_s(call: Callable[[], object], device: str) -> float:
    t0 = time.perf_counter()
    call()
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _payloads(
    spec: ArchitectureSpec, inputs: Sequence[torch.Tensor] | None, num_items: int
) -> list[torch.Tensor]:
    if not inputs:
        g = torch.Generator().manual_seed(PAYLOAD_SEED)
        return [torch.rand(spec.input_shape, generator=g) for _ in range(num_items)]  # [C, H, W]
    bad = [tuple(x.shape) for x in inputs if tuple(x.shape) != tuple(spec.input_shape)]
    if bad:
        raise ConfigError(f"inputs of shape {bad[0]} do not fit architecture {spec.name!r} "
                          f"(input_shape {tuple(spec.input_shape)}): give inputs of that shape")
    return [inputs[i % len(inputs)] for i in range(num_items)]


def _check_batch_sizes(batch_sizes: Sequence[int]) -> list[int]:
    sizes = sorted(set(batch_sizes))
    if not sizes or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sizes):
        raise ConfigError(f"batch sizes must be integers >= 1 (e.g. 1,2,4,8), got {list(batch_sizes)}")
    return sizes


def _kind(processor: str) -> str:
    kind = kind_of(processor)
    if kind not in ("cpu", "cuda"):
        raise ConfigError(f"processor {processor!r} is not 'cpu' or 'cuda'")
    return kind


def _device(processor: str) -> str:
    """The torch device a processor kind is measured on: every CUDA device shares one
    profile, measured on cuda:0."""
    kind = _kind(processor)
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError("cannot profile on cuda: torch sees no CUDA device; "
                          "profile the cpu only (--processors cpu)")
    return processor if kind == "cpu" or ":" in processor else "cuda:0"
