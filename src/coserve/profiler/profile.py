"""Profiling a repository on this machine into a plan: every architecture on every
processor kind, the load paths, and the usage probabilities."""

from __future__ import annotations

import os
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import torch

from coserve.config import EngineConfig
from coserve.engine.engine import Engine
from coserve.errors import ConfigError
from coserve.executors.spec import default_executors, parse_executors
from coserve.loader.expert_loader import ExpertLoader
from coserve.loader.storage import Storage, storage_profile
from coserve.plan import ArchCost
from coserve.planfile import HOST_TO_DEVICE_PATH, STORAGE_PATH, ArchProfile, LoadProfile, Plan
from coserve.policies import CEILING_POLICY
from coserve.profiler.fit import fit_linear, max_useful_batch
from coserve.profiler.measure import (
    activation_bytes_per_item,
    concurrent_slowdown,
    latency_curve,
    load_profile,
)
from coserve.repository import ArchitectureSpec, CoEModel, ExpertSpec, usage_from_sample
from coserve.types import Request, Result

DEFAULT_BATCH_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
PROCESSOR_KINDS = ("cpu", "cuda")
CALIBRATION_REQUESTS = 2000  # requests the engine calibration runs (the sample, replayed)
ROTATED_EXPERTS = 4  # experts whose weights the latency curve rotates through
MIN_SLOWDOWN = 0.5  # a calibration below this is a measurement fault, not a speed-up

Progress = Callable[[str, int, int], None]  # (what is being measured, steps done, steps)


def default_processors() -> tuple[str, ...]:
    return PROCESSOR_KINDS if torch.cuda.is_available() else ("cpu",)


def profile_repository(
    model: CoEModel,
    *,
    processors: Sequence[str] | None = None,
    threads: int | None = None,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    sample: Sequence[Request] | None = None,
    inputs_from: Sequence[Request] | None = None,
    progress: Progress | None = None,
    max_executors: int | None = None,
    calibration_requests: int = CALIBRATION_REQUESTS,
) -> Plan:
    """Measure `model` on this machine (see the package docstring for what).

    `processors`: kinds to profile (default 'cpu', plus 'cuda' when torch sees one).
    `threads`: intra-op threads while profiling (default: what one of the default CPU
    executors gets, so the curves match how the engine runs). `sample`: requests to
    route through the real experts for usage and label probabilities (default: the
    repository's rules). `inputs_from`: requests whose inputs feed the latency curves
    of architectures of that input shape (default: random inputs). `max_executors`:
    measure the slowdown of up to this many executors of a kind running at once
    (default: the cores, at most 4). `calibration_requests`: how many requests (the
    sample, replayed) each engine calibration run serves."""
    kinds = _check_processors(default_processors() if processors is None else processors)
    threads = default_executors()[0].num_threads if threads is None else threads
    if threads < 1:
        raise ConfigError(f"threads must be >= 1 intra-op threads, got {threads}")
    if sample is not None and not sample:
        raise ConfigError("the usage sample is empty: give some requests, or none to use "
                          "the repository's rules")
    steps = _Steps(progress, len(model.architectures) * len(kinds) + len(kinds) + bool(sample))
    load_average = _load_average()  # before our own work raises it
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # process-wide: restored below
    max_executors = max_executors or default_max_executors()
    try:
        storage = Storage(storage_profile("none"))
        # With a sample, the engine calibration measures the CPU slowdowns: the thread
        # micro-benchmark is then only needed for the other kinds.
        micro = {kind: 1 if sample is not None and kind == "cpu" else max_executors for kind in kinds}
        archs = _profile_architectures(model, kinds, batch_sizes, inputs_from, storage, steps,
                                       micro)
        loads = _profile_loads(model, kinds, storage, steps)
        plan = Plan(repository=model.name, processors=archs, threads=dict.fromkeys(kinds, threads),
                    loads=loads, usage=dict(model.usage), label_probs=_label_probs(model, []),
                    usage_source="rules", machine=_machine(batch_sizes, load_average))
        if sample is not None:
            plan = _route_sample(plan, model, sample, max_executors, calibration_requests, steps)
    finally:
        torch.set_num_threads(previous_threads)
    steps.finish()
    return plan


def profile_architecture(
    spec: ArchitectureSpec,
    tensors: Sequence[Mapping[str, torch.Tensor]],
    processor: str,
    batch_sizes: Sequence[int],
    inputs: Sequence[torch.Tensor] | None,
    footprint_bytes: int,
    max_executors: int = 1,
) -> ArchProfile:
    """One architecture on one processor kind: its curve, max useful batch and fit, and
    the slowdown with 2..max_executors executors of the kind running at once."""
    curve = latency_curve(spec, tensors, processor, batch_sizes, inputs)
    max_batch = max_useful_batch(curve)
    fit = fit_linear(curve, max_batch)
    cost = ArchCost(fit.k_s, fit.b_s, max_batch, activation_bytes_per_item(spec, processor))
    slowdown = {1: 1.0}
    for n in range(2, max_executors + 1):
        slowdown[n] = concurrent_slowdown(spec, tensors[0], processor, curve, n, inputs)
    return ArchProfile(cost, curve, fit.rmse_s, fit.max_rel_error, footprint_bytes, slowdown)


def default_max_executors() -> int:
    """Executors per processor kind the planner may try: up to the cores (at most 4)."""
    return max(1, min(4, os.cpu_count() or 1))


class _Steps:
    """Progress reporting: what is measured now, out of how many steps."""

    def __init__(self, callback: Progress | None, total: int) -> None:
        self._callback = callback
        self._total = total
        self._done = 0

    def start(self, what: str) -> None:
        if self._callback is not None:
            self._callback(what, self._done, self._total)
        self._done += 1

    def finish(self) -> None:
        if self._callback is not None:
            self._callback("done", self._total, self._total)


def _check_processors(processors: Sequence[str]) -> tuple[str, ...]:
    kinds = tuple(dict.fromkeys(processors))
    bad = [p for p in kinds if p not in PROCESSOR_KINDS]
    if not kinds or bad:
        raise ConfigError(f"processors {list(processors)}: profile kinds 'cpu' and/or 'cuda' "
                          f"(every CUDA device shares the 'cuda' profile)")
    if "cuda" in kinds and not torch.cuda.is_available():
        raise ConfigError("cannot profile 'cuda': torch sees no CUDA device; profile the "
                          "cpu only (--processors cpu)")
    return kinds


def _profile_architectures(
    model: CoEModel,
    kinds: Sequence[str],
    batch_sizes: Sequence[int],
    inputs_from: Sequence[Request] | None,
    storage: Storage,
    steps: _Steps,
    max_executors: Mapping[str, int],
) -> dict[str, dict[str, ArchProfile]]:
    """Experts of one architecture differ only in weights, so one expert stands for all."""
    profiles: dict[str, dict[str, ArchProfile]] = {kind: {} for kind in kinds}
    for arch, spec in model.architectures.items():
        tensors, footprint_bytes = _representative_weights(model, spec, storage)
        inputs = _inputs_for(spec, inputs_from)
        for kind in kinds:
            steps.start(f"{arch} on {kind}")
            profiles[kind][arch] = profile_architecture(
                spec, tensors, kind, batch_sizes, inputs, footprint_bytes, max_executors[kind])
    return profiles


def _representative_weights(
    model: CoEModel, spec: ArchitectureSpec, storage: Storage
) -> tuple[list[dict[str, torch.Tensor]], int]:
    """Up to ROTATED_EXPERTS experts' tensors, read like the engine reads them (the
    curve rotates through them), and the footprint of one; for an architecture no
    expert uses, freshly initialised weights (costs depend on shapes, not values)."""
    experts = [e for e in model.experts.values() if e.architecture == spec.name][:ROTATED_EXPERTS]
    if not experts:
        tensors = dict(spec.build(device="cpu").state_dict())
        return [tensors], sum(t.numel() * t.element_size() for t in tensors.values())
    loader = ExpertLoader(storage, {e.name: (e.weights_path, e.file_bytes) for e in experts})
    return [loader.read(e.name)[0] for e in experts], experts[0].num_bytes


def _inputs_for(
    spec: ArchitectureSpec, requests: Sequence[Request] | None
) -> list[torch.Tensor] | None:
    shape = tuple(spec.input_shape)
    inputs = [r.input for r in requests or () if tuple(getattr(r.input, "shape", ())) == shape]
    return inputs or None


def _profile_loads(
    model: CoEModel, kinds: Sequence[str], storage: Storage, steps: _Steps
) -> dict[str, LoadProfile]:
    experts = [e.name for e in _load_experts(model)]
    steps.start(f"storage reads of {len(experts)} experts")
    loads = {STORAGE_PATH: load_profile(model, experts, storage, "cpu")}
    if "cuda" in kinds:
        steps.start(f"host->cuda copies of {len(experts)} experts")
        loads[HOST_TO_DEVICE_PATH] = load_profile(model, experts, storage, "cuda")
    return loads


def _load_experts(model: CoEModel) -> list[ExpertSpec]:
    """The smallest and the largest file of each architecture: sizes as different as
    the repository has, so that the fixed cost and the bandwidth can be told apart."""
    picks: dict[str, ExpertSpec] = {}
    for arch in model.architectures:
        experts = [e for e in model.experts.values() if e.architecture == arch]
        if experts:
            for e in (min(experts, key=_file_bytes), max(experts, key=_file_bytes)):
                picks.setdefault(e.name, e)
    return list(picks.values())


def _file_bytes(expert: ExpertSpec) -> int:
    return expert.file_bytes


def _route_sample(
    plan: Plan, model: CoEModel, sample: Sequence[Request], max_executors: int,
    calibration_requests: int, steps: _Steps,
) -> Plan:
    """Usage and label probabilities from the sample routed through the real experts,
    and the CPU slowdowns calibrated on the engine itself: the sample runs (all experts
    resident) with 1..max_executors CPU executors, and each architecture's slowdown is
    the engine's total batch time over what the measured curve predicts for those batches. This
    catches what the thread micro-benchmark cannot: the engine's own Python work
    (routing, queueing) competing for the GIL and the cores."""
    steps.start(f"routing {len(sample)} sample requests on the engine")
    # The calibration needs more batches than a small sample makes: replay it.
    copies = max(1, -(-calibration_requests // len(sample)))
    replayed = [replace(r, request_id=f"{k}/{r.request_id}") for k in range(copies) for r in sample]
    runs = {k: _route(model, replayed, plan, k) for k in range(1, max_executors + 1)}
    routed = [r for r in runs[1][0][: len(sample)] if r.ok]
    if not routed:
        raise ConfigError(f"none of the {len(sample)} sample requests could be routed: check "
                          f"that the sample trace was made for repository {model.name!r}")
    usage = usage_from_sample(model, [r.path for r in routed])
    results = {k: run[0] for k, run in runs.items()}
    cpu = {arch: replace(p, slowdown={**p.slowdown, **_engine_slowdowns(model, arch, p, results)})
           for arch, p in plan.processors["cpu"].items()}
    return replace(plan, processors={**plan.processors, "cpu": cpu}, usage=usage,
                   label_probs=_label_probs(model, routed),
                   usage_source=f"routed sample of {len(routed)} requests",
                   task_overhead_s={k: run[1] / max(1, run[2]) for k, run in runs.items()},
                   submit_s=statistics.median(run[3] for run in runs.values()) / len(replayed))


def _engine_slowdowns(model: CoEModel, arch: str, profile: ArchProfile,
                      runs: Mapping[int, Sequence[Result]]) -> dict[int, float]:
    slowdowns: dict[int, float] = {}
    for k, results in runs.items():
        # Each batch once (its tasks share one Step timing), weighted by its time: the
        # ratio of sums, as a run's throughput sums its batches (slow moments included,
        # which a median would leave out).
        batches = {(step.executor, step.expert, step.batch_size, step.exec_s)
                   for r in results for step in r.steps
                   if model.experts[step.expert].architecture == arch}
        alone = profile.curve_cost()
        predicted = sum(alone.exec_s(n) for _, _, n, _ in batches)
        if predicted > 0:
            slowdowns[k] = max(MIN_SLOWDOWN, sum(s for *_, s in batches) / predicted)
    return slowdowns


def _route(model: CoEModel, sample: Sequence[Request], plan: Plan,
           num_executors: int) -> tuple[list[Result], float, int, float]:
    """The sample through the real experts, all resident, on `num_executors` CPU
    executors, with the profiled costs (batches as large as the engine will run):
    (results, executor seconds spent besides executing, tasks run, seconds it took to
    queue the backlog)."""
    config = EngineConfig(policy=CEILING_POLICY, executors=parse_executors(f"cpu:{num_executors}"),
                          measure_costs=False)
    with Engine(model, config, plan=plan) as engine:
        results = engine.run_trace(sample, realtime=False)
        stats = engine.stats()
    tasks = sum(len(r.steps) for r in results)
    return results, sum(stats.handling_s_per_executor), tasks, stats.extra["backlog_submit_s"]


def _label_probs(model: CoEModel, routed: Sequence[Result]) -> dict[str, dict[str, float]]:
    """P(label | expert) as observed in `routed`; the repository's prior (else uniform)
    for experts no routed request reached."""
    seen: dict[str, Counter[str]] = defaultdict(Counter)
    for result in routed:
        for step in result.steps:
            seen[step.expert][step.label] += 1
    probs: dict[str, dict[str, float]] = {}
    for name, expert in model.experts.items():
        labels = model.architectures[expert.architecture].labels
        counts = seen.get(name)
        if counts:
            total = sum(counts.values())
            probs[name] = {label: counts[label] / total
                           for label in dict.fromkeys([*labels, *counts])}
        else:
            prior = model.label_probs.get(name)
            probs[name] = dict(prior) if prior else dict.fromkeys(labels, 1 / len(labels))
    return probs


def _load_average() -> float | None:
    """The 1-minute load average (None where the OS has none): a plan profiled while
    other work ran reads slow (a board A plan profiled beside other work on 2 cores timed
    16-image batches 17-20% slower than a quiet profile and the engine did)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _machine(batch_sizes: Sequence[int], load_average: float | None) -> dict[str, Any]:
    cuda = ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if torch.cuda.is_available() else [])
    return {
        "profiled_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": cuda,
        "batch_sizes": sorted(set(batch_sizes)),
        "load_average_1m": load_average,  # when profiling started
    }
