"""The planner: for a memory size, which executors and which split of that memory
between expert weights and activations give the most throughput on a workload.

For each executor option it runs the decay-window search over the usage CDF (the
top-N experts by usage resident, N growing; what is left of the memory is activation
memory, which caps the batch), each point a simulator run; the best candidates can then
be confirmed on the real engine. `capacity_curve` repeats this over memory sizes to
answer "how much memory for X images/s" and "how fast with Y bytes"."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from coserve.config import EngineConfig
from coserve.errors import ConfigError
from coserve.executors.spec import parse_executors
from coserve.planfile import Plan, Recommendation
from coserve.planner.search import SearchResult, decay_window_search
from coserve.policies import DEFAULT_POLICY
from coserve.repository import CoEModel
from coserve.simulator import SampledLabels, Simulator
from coserve.types import Request

MAX_POINTS = 12  # split candidates per executor option


@dataclass(frozen=True)
class Candidate:
    executors: str  # as --executors takes it
    memory_bytes: int
    budget_bytes: int  # expert weights, all executors together
    activation_bytes: int  # per executor
    num_resident: int  # top-N experts by usage the budget was sized for
    items_per_s: float  # simulated throughput (requests per second)
    switches: int

    def config(self, base: EngineConfig) -> EngineConfig:
        return replace(base, policy=DEFAULT_POLICY, executors=parse_executors(self.executors),
                       budget_bytes=self.budget_bytes, budget_fraction=None,
                       activation_bytes=self.activation_bytes)

    def recommendation(self, storage: str, confirmed: float | None = None) -> Recommendation:
        return Recommendation(self.executors, self.memory_bytes, self.budget_bytes,
                              self.activation_bytes, storage, self.items_per_s, confirmed)


@dataclass(frozen=True)
class MemoryPlan:
    """The search at one memory size: every simulated point, and the best."""

    memory_bytes: int
    best: Candidate
    candidates: tuple[Candidate, ...]
    searches: dict[str, SearchResult]  # executor option -> its decay-window search


def default_executor_options(plan: Plan, cores: int | None = None) -> list[str]:
    """CPU executor counts from 1 to the cores (at most 4), plus CUDA mixes when
    the plan profiled a GPU."""
    cores = cores or os.cpu_count() or 1
    options = [f"cpu:{n}" for n in range(1, max(1, min(4, cores)) + 1)]
    if "cuda" in plan.processors:
        options += ["cuda:0:1", "cuda:0:2", "cpu:1,cuda:0:1", "cpu:1,cuda:0:2"]
    return options


class Planner:
    def __init__(self, model: CoEModel, plan: Plan, requests: Sequence[Request],
                 base: EngineConfig | None = None, backlog: bool = True,
                 progress: Callable[[str, int, int], None] | None = None) -> None:
        """`requests`: the workload to plan for (a trace); `base`: storage profile and
        the other settings the plan keeps."""
        self.model = model
        self.plan = plan
        self.requests = requests
        self.base = replace(base or EngineConfig(), measure_costs=False)
        self.backlog = backlog
        self._progress = progress
        plan.check_covers(model)
        self._labels = SampledLabels(plan.label_probs or model.label_probs)
        ranked = sorted(model.experts, key=lambda e: (-plan.usage.get(e, 0.0), e))
        self._cumulative = [0]
        for expert in ranked:
            self._cumulative.append(self._cumulative[-1] + model.experts[expert].num_bytes)
        self._largest = max(e.num_bytes for e in model.experts.values())
        self._item_bytes = max(p.cost.item_bytes for archs in plan.processors.values()
                               for p in archs.values())
        self._done = 0

    # -- one memory size -----------------------------------------------------------------
    def plan_memory(self, memory_bytes: int, executor_options: Sequence[str]) -> MemoryPlan:
        candidates: list[Candidate] = []
        searches: dict[str, SearchResult] = {}
        for option in executor_options:
            points = self.split_points(memory_bytes, option)
            if not points:
                continue
            seen: dict[int, Candidate] = {}

            def evaluate(n: int, option: str = option, seen: dict = seen) -> float:
                seen[n] = self.simulate(memory_bytes, option, n)
                return seen[n].items_per_s

            searches[option] = decay_window_search(evaluate, points)
            candidates += seen.values()
        if not candidates:
            raise ConfigError(
                f"{memory_bytes} bytes cannot hold the largest expert ({self._largest} bytes) "
                f"plus one batch item's activations ({self._item_bytes} bytes) per executor: "
                f"give more memory")
        best = max(candidates, key=lambda c: (c.items_per_s, -c.memory_bytes))
        return MemoryPlan(memory_bytes, best, tuple(candidates), searches)

    def split_points(self, memory_bytes: int, executors: str) -> list[int]:
        """Values of N (top-N experts resident) worth trying: from the fewest that give
        every pool room for the largest expert, to the most that leave one batch item of
        activation memory per executor; at most MAX_POINTS, evenly spread."""
        k = len(parse_executors(executors))
        room = memory_bytes - k * self._item_bytes
        floor = k * self._largest
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
        k = len(parse_executors(executors))
        budget = max(self._cumulative[num_resident], k * self._largest)
        activation = (memory_bytes - budget) // k
        candidate = Candidate(executors, memory_bytes, budget, activation, num_resident, 0.0, 0)
        stats, _ = Simulator(self.model, candidate.config(self.base), labels=self._labels,
                             plan=self.plan).run(self.requests, self.backlog)
        self._done += 1
        if self._progress:
            self._progress(f"{executors}, {budget / 1e6:.0f} MB experts", self._done, 0)
        return replace(candidate, items_per_s=stats.throughput_rps, switches=stats.num_switches)

    # -- capacity questions --------------------------------------------------------------
    def capacity_curve(self, memories: Sequence[int], executor_options: Sequence[str]) -> list[MemoryPlan]:
        return [self.plan_memory(m, executor_options) for m in memories]

    def full_memory_bytes(self, executors: int = 1) -> int:
        """Memory that holds every expert plus a default activation area per executor."""
        return self._cumulative[-1] + executors * self.base.activation_bytes

    def min_memory_bytes(self, executors: int = 1) -> int:
        return executors * (self._largest + self._item_bytes)


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
