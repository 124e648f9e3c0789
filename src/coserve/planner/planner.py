"""The planner: for a memory size, which executors and which split of that memory
between expert weights and activations give the most throughput on a workload.

For each executor option it runs the decay-window search over the usage CDF (the
top-N experts by usage resident, N growing; what is left of the memory is activation
memory, which caps the batch), each point a simulator run. An option on several devices
(`cuda:0:3,cpu:1`) splits each device's memory on its own: one search per device, the
others held at their best so far; the best candidates can then
be confirmed on the real engine. `capacity_curve` repeats this over memory sizes to
answer "how much memory for X images/s" and "how fast with Y bytes"."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from coserve.config import EngineConfig
from coserve.errors import ConfigError
from coserve.executors.budgets import DeviceBudget, group_devices
from coserve.executors.spec import parse_executors
from coserve.plan import processor_kind
from coserve.planfile import Plan, PoolRecommendation, Recommendation
from coserve.planner.search import SearchResult, decay_window_search
from coserve.policies import DEFAULT_POLICY
from coserve.repository import CoEModel
from coserve.simulator import SampledLabels, Simulator
from coserve.types import Request

MAX_POINTS = 12  # split candidates per executor option and device
GPU_COUNTS = (1, 2, 3)  # GPU executors per GPU the default options try


@dataclass(frozen=True)
class PoolSplit(PoolRecommendation):
    """One device's share of a candidate: its pool as a recommendation records it, and
    the top-N experts by usage its budget was sized for."""

    num_resident: int

    def recommended(self) -> PoolRecommendation:
        """The pool as the plan file records it (without the search's own figures)."""
        return PoolRecommendation(self.device, self.num_executors, self.memory_bytes,
                                  self.budget_bytes, self.activation_bytes)


@dataclass(frozen=True)
class Candidate:
    """One simulated point. With one device (a CPU-only option) the totals are that
    device's; with several, `pools` holds each device's split, `budget_bytes` and
    `memory_bytes` are their sums and `activation_bytes` is the first pool's."""

    executors: str  # as --executors takes it
    memory_bytes: int
    budget_bytes: int  # expert weights, all executors together
    activation_bytes: int  # per executor
    num_resident: int  # top-N experts by usage the budget was sized for (the first pool's)
    items_per_s: float  # simulated throughput (requests per second)
    switches: int
    pools: tuple[PoolSplit, ...] = ()

    def config(self, base: EngineConfig) -> EngineConfig:
        """The engine config that runs this candidate: the CPU pool in budget_bytes and
        activation_bytes, each GPU's pool as its own device budget."""
        first = self.pools[0] if self.pools else None
        cpu = next((p for p in self.pools if p.device == "cpu"), first)
        gpus = tuple(DeviceBudget(p.device, budget_bytes=p.budget_bytes,
                                  activation_bytes=p.activation_bytes)
                     for p in self.pools if p.device != "cpu")
        return replace(base, policy=DEFAULT_POLICY, executors=parse_executors(self.executors),
                       budget_bytes=cpu.budget_bytes if cpu else self.budget_bytes,
                       budget_fraction=None, device_budgets=gpus,
                       activation_bytes=cpu.activation_bytes if cpu else self.activation_bytes)

    def recommendation(self, storage: str, confirmed: float | None = None) -> Recommendation:
        pools = tuple(p.recommended() for p in self.pools)
        return Recommendation(self.executors, self.memory_bytes, self.budget_bytes,
                              self.activation_bytes, storage, self.items_per_s, confirmed,
                              pools if len(pools) > 1 else ())


@dataclass(frozen=True)
class MemoryPlan:
    """The search at one memory size: every simulated point, and the best."""

    memory_bytes: int
    best: Candidate
    candidates: tuple[Candidate, ...]
    searches: dict[str, SearchResult]  # executor option (and device, with several) -> its search


def default_executor_options(plan: Plan, cores: int | None = None) -> list[str]:
    """CPU executor counts from 1 to the cores (at most 4), plus, when the plan profiled
    a GPU, 1 to 3 executors on cuda:0 alone and beside one CPU executor."""
    cores = cores or os.cpu_count() or 1
    options = [f"cpu:{n}" for n in range(1, max(1, min(4, cores)) + 1)]
    if "cuda" in plan.processors:
        options += [f"cuda:0:{n}" for n in GPU_COUNTS] + [f"cuda:0:{n},cpu:1" for n in GPU_COUNTS]
    return options


def devices_of(executors: str) -> dict[str, int]:
    """'cuda:0:3,cpu:1' -> {'cuda:0': 3, 'cpu': 1}, in order of first appearance."""
    return {d: len(ix) for d, ix in group_devices([s.processor for s in parse_executors(executors)]).items()}


class Planner:
    def __init__(self, model: CoEModel, plan: Plan, requests: Sequence[Request],
                 base: EngineConfig | None = None, backlog: bool = True,
                 progress: Callable[[str, int, int], None] | None = None,
                 gpu_memory_bytes: Mapping[str, int] | None = None) -> None:
        """`requests`: the workload to plan for (a trace); `base`: storage profile and
        the other settings the plan keeps. `gpu_memory_bytes`: each GPU's memory for
        experts plus activations ('cuda' for every GPU); options on a GPU not named are
        left out. The memory sizes the questions sweep are the CPU's."""
        self.model = model
        self.plan = plan
        self.requests = requests
        self.base = replace(base or EngineConfig(), measure_costs=False)
        self.backlog = backlog
        self.gpu_memory_bytes = dict(gpu_memory_bytes or {})
        self._progress = progress
        plan.check_covers(model)
        self._labels = SampledLabels(plan.label_probs or model.label_probs)
        ranked = sorted(model.experts, key=lambda e: (-plan.usage.get(e, 0.0), e))
        self._cumulative = [0]
        for expert in ranked:
            self._cumulative.append(self._cumulative[-1] + model.experts[expert].num_bytes)
        self._largest = max(e.num_bytes for e in model.experts.values())
        self._item_bytes = {kind: max(p.cost.item_bytes for p in archs.values())
                            for kind, archs in plan.processors.items()}
        self._done = 0

    # -- one memory size -----------------------------------------------------------------
    def plan_memory(self, memory_bytes: int, executor_options: Sequence[str]) -> MemoryPlan:
        candidates: list[Candidate] = []
        searches: dict[str, SearchResult] = {}
        for option in executor_options:
            memories = self.device_memory(memory_bytes, option)
            if memories is not None:
                found, option_searches = self._search(option, memories)
                candidates += found
                searches.update(option_searches)
        if not candidates:
            raise ConfigError(
                f"{memory_bytes} bytes cannot hold the largest expert ({self._largest} bytes) "
                f"plus one batch item's activations ({max(self._item_bytes.values())} bytes) per "
                f"executor: give more memory (and each GPU's, for GPU options)")
        best = max(candidates, key=lambda c: (c.items_per_s, -c.memory_bytes))
        return MemoryPlan(memory_bytes, best, tuple(candidates), searches)

    def device_memory(self, memory_bytes: int, executors: str) -> dict[str, int] | None:
        """Each device's memory in `executors` (the CPU's is `memory_bytes`); None when a
        GPU's is not known."""
        memories = {}
        for device in devices_of(executors):
            known = memory_bytes if device == "cpu" else self.gpu_memory_bytes.get(
                device, self.gpu_memory_bytes.get("cuda"))
            if known is None:
                return None
            memories[device] = known
        return memories

    def _search(self, option: str, memories: Mapping[str, int]
                ) -> tuple[list[Candidate], dict[str, SearchResult]]:
        """The decay-window search for each device in turn (GPUs first: they do most of
        the work), the others held at their best so far (at first, their middle point)."""
        counts = devices_of(option)
        points = {d: self._points(memories[d], k, d) for d, k in counts.items()}
        if not all(points.values()):
            return [], {}
        chosen = {d: p[len(p) // 2] for d, p in points.items()}
        seen: dict[tuple[int, ...], Candidate] = {}
        searches = {}
        for device in sorted(counts, key=lambda d: d == "cpu"):

            def evaluate(n: int, device: str = device) -> float:
                split = {**chosen, device: n}
                key = tuple(split[d] for d in counts)
                if key not in seen:
                    seen[key] = self._simulate(option, memories, split)
                return seen[key].items_per_s

            result = decay_window_search(evaluate, points[device])
            chosen[device] = result.best
            searches[option if len(counts) == 1 else f"{option} {device}"] = result
        return list(seen.values()), searches

    def split_points(self, memory_bytes: int, executors: str) -> list[int]:
        """Values of N (top-N experts resident) worth trying on a one-device option."""
        (device, k), = devices_of(executors).items()
        return self._points(memory_bytes, k, device)

    def _points(self, memory_bytes: int, num_executors: int, device: str) -> list[int]:
        """From the fewest top-N experts that give every pool room for the largest
        expert, to the most that leave one batch item of activation memory per executor;
        at most MAX_POINTS, evenly spread."""
        kind = processor_kind(device)
        if kind not in self._item_bytes:
            raise ConfigError(f"the plan has no {kind} profile for option executors on {device}: "
                              f"profile on a machine with one (coserve profile), or plan other "
                              f"executor options")
        room = memory_bytes - num_executors * self._item_bytes[kind]
        floor = num_executors * self._largest
        feasible = [n for n, b in enumerate(self._cumulative) if max(b, floor) <= room]
        if not feasible:
            return []
        low = next(n for n in feasible if self._cumulative[n] >= floor or n == feasible[-1])
        high = feasible[-1]
        if high - low < MAX_POINTS:
            return list(range(low, high + 1))
        step = (high - low) / (MAX_POINTS - 1)
        return sorted({low + round(step * i) for i in range(MAX_POINTS)})

    def simulate(self, memory_bytes: int, executors: str, num_resident: int) -> Candidate:
        """One point of a one-device option."""
        (device, _), = devices_of(executors).items()
        return self._simulate(executors, {device: memory_bytes}, {device: num_resident})

    def _simulate(self, executors: str, memories: Mapping[str, int],
                  resident: Mapping[str, int]) -> Candidate:
        pools = tuple(self._split(d, k, memories[d], resident[d])
                      for d, k in devices_of(executors).items())
        first = pools[0]
        candidate = Candidate(executors, sum(p.memory_bytes for p in pools),
                              sum(p.budget_bytes for p in pools), first.activation_bytes,
                              first.num_resident, 0.0, 0, pools)
        stats, _ = Simulator(self.model, candidate.config(self.base), labels=self._labels,
                             plan=self.plan).run(self.requests, self.backlog)
        self._done += 1
        if self._progress:
            self._progress(f"{executors}, {candidate.budget_bytes / 1e6:.0f} MB experts", self._done, 0)
        return replace(candidate, items_per_s=stats.throughput_rps, switches=stats.num_switches)

    def _split(self, device: str, num_executors: int, memory_bytes: int, num_resident: int) -> PoolSplit:
        budget = max(self._cumulative[num_resident], num_executors * self._largest)
        return PoolSplit(device, num_executors, memory_bytes, budget,
                         (memory_bytes - budget) // num_executors, num_resident)

    # -- capacity questions --------------------------------------------------------------
    def capacity_curve(self, memories: Sequence[int], executor_options: Sequence[str]) -> list[MemoryPlan]:
        return [self.plan_memory(m, executor_options) for m in memories]

    def full_memory_bytes(self, executors: int = 1) -> int:
        """Memory that holds every expert plus a default activation area per executor."""
        return self._cumulative[-1] + executors * self.base.activation_bytes

    def min_memory_bytes(self, executors: int = 1) -> int:
        return executors * (self._largest + max(self._item_bytes.values()))


def confirm(model: CoEModel, plan: Plan, requests: Sequence[Request], candidates: Sequence[Candidate],
            base: EngineConfig, backlog: bool = True) -> list[tuple[Candidate, float]]:
    """Run each candidate on the real engine: (candidate, measured requests per second)."""
    from coserve.engine.run import run_trace

    measured = []
    for c in candidates:
        stats, _, _ = run_trace(model, requests, c.config(replace(base, measure_costs=False)),
                                backlog, plan=plan)
        measured.append((c, stats.throughput_rps))
    return measured
