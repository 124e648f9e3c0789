"""Run the benchmark: every policy on the same repository, trace, budget, executors and
storage profile, one after another in this process with one cost model, in each arrival
mode (a backlog, then the trace's offsets), plus a budget sweep (backlog only). Each row
is the `coserve run --json` statistics plus `arrivals`, `accuracy`, `deadline_misses`
and `switches_over_floor`."""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Callable, Sequence, Set
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from coserve.assembly import Assembly
from coserve.bench import ARRIVAL_MEANINGS, ARRIVAL_MODES, SWEEP_ARRIVALS
from coserve.config import EngineConfig
from coserve.engine.run import run_trace
from coserve.errors import ConfigError
from coserve.loader.storage import measure_raw_bandwidth, storage_profile
from coserve.plan import CostModel
from coserve.planfile import Plan
from coserve.policies import BASELINE_POLICY, DEFAULT_POLICY, POLICY_NAMES
from coserve.repository import CoEModel
from coserve.types import Request, Result

DEFECT_LABELS = frozenset({"defect", "flagged"})
SWITCH_FLOOR_DEFINITION = (
    "distinct experts the trace needs (the union of the experts on every request's path, "
    "over every row run) that coserve's initial placement at this budget does not hold: "
    "each must be loaded at least once, whatever the policy")
RAW_NUM_FILES = 8  # experts read raw, spread over the sizes, so the mix of file sizes
# (each read's fixed cost weighs more on a small file) matches what the rows load
RAW_STORAGE_DEFINITION = (
    f"unpaced O_DIRECT sequential reads into a reused aligned buffer of up to "
    f"{RAW_NUM_FILES} experts' files spread evenly over the experts by size, their bytes over "
    f"their time, measured before the rows run")
LOAD_BANDWIDTH_DEFINITION = (
    "a row's load_bandwidth_bytes_per_s: storage bytes read over the wall-clock time with at "
    "least one storage load in flight (read, allocation and tensor views included; "
    "overlapping loads counted once), paced by the storage profile")
# A peer's row in one arrival mode (True: a backlog), with `deadline_misses` counted
# against the engine's latency target.
PeerRun = Callable[[bool], dict[str, Any]]


def inspection_accuracy(results: Sequence[Result]) -> float | None:
    """Share of requests whose verdict (defective if any step's label is a defect label)
    matches the ground truth in fields['defect']; None without ground truth."""
    judged = [r for r in results if "defect" in r.fields]
    if not judged:
        return None
    right = sum(
        (any(s.label in DEFECT_LABELS for s in r.steps) == (r.fields["defect"] is not None))
        for r in judged if r.ok
    )
    return right / len(judged)


@dataclass
class BenchRun:
    metadata: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    sweep: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"metadata": self.metadata, "rows": self.rows, "sweep": self.sweep}


def bench_metadata(model: CoEModel, requests: Sequence[Request], config: EngineConfig,
                   trace: str, arrivals: Sequence[str]) -> dict[str, Any]:
    budget = config.resolve_budget(model.total_expert_bytes)
    pace = storage_profile(config.storage).read_bytes_per_s
    return {
        "repository": str(model.root),
        "model": model.name,
        "num_experts": len(model.experts),
        "total_expert_bytes": model.total_expert_bytes,
        "trace": trace,
        "num_requests": len(requests),
        "arrivals": list(arrivals),
        "arrival_meanings": {mode: ARRIVAL_MEANINGS[mode] for mode in arrivals},
        "sweep_arrivals": SWEEP_ARRIVALS,
        "latency_target_s": config.latency_target_s,
        "budget_bytes": budget,
        "budget_fraction": budget / model.total_expert_bytes if budget else None,
        "storage": config.storage,
        "storage_paced_bytes_per_s": pace,
        "raw_storage_bytes_per_s": raw_storage_bandwidth(model),
        "raw_storage_definition": RAW_STORAGE_DEFINITION,
        "load_bandwidth_definition": LOAD_BANDWIDTH_DEFINITION,
        "executors": [f"{e.processor}x{e.num_threads}t" for e in config.executors],
        "cpu_cores": os.cpu_count(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def raw_storage_bandwidth(model: CoEModel) -> float:
    """The raw O_DIRECT read bandwidth the rows' loader bandwidth is compared with."""
    by_size = sorted(model.experts.values(), key=lambda e: (e.file_bytes, e.name))
    step = max(1, len(by_size) // RAW_NUM_FILES)
    sample = by_size[step // 2 :: step][:RAW_NUM_FILES] or by_size
    seconds = [e.file_bytes / measure_raw_bandwidth(e.weights_path) for e in sample]
    return sum(e.file_bytes for e in sample) / sum(seconds)


def run_bench(
    model: CoEModel,
    requests: Sequence[Request],
    config: EngineConfig,
    policies: Sequence[str] = POLICY_NAMES,
    arrivals: Sequence[str] = ARRIVAL_MODES,
    sweep_fractions: Sequence[float] = (),
    sweep_policies: Sequence[str] = (BASELINE_POLICY, DEFAULT_POLICY),
    peer: PeerRun | None = None,
    trace: str = "",
    on_row: Callable[[dict[str, Any]], None] | None = None,
    plan: Plan | None = None,
    repeat: int = 1,
    precisions: Sequence[str] = (),
) -> BenchRun:
    """Every policy in turn (`repeat` rounds of them; each row is the median run), in
    each arrival mode; then the sweep, in a backlog. With a `plan`, coserve runs twice:
    `coserve (default)` (the configuration given, costs measured at start-up) and
    `coserve (planned)` (the planner's executors and split of the same memory: the expert
    budget plus the default's activation areas, planned for the first arrival mode); and
    each engine row gets its simulated twin, so the simulator's agreement with the engine
    is measured in the same run. `precisions`: every policy row once per stored precision
    (`coserve repo quantize`), interleaved in the same rounds, named `policy @ precision`."""
    if repeat < 1:
        raise ConfigError(f"repeat must be >= 1 runs per row, got {repeat}")
    arrivals = checked_arrivals(arrivals)
    bench = _Bench(model, requests, config, plan, on_row,
                   BenchRun(bench_metadata(model, requests, config, trace, arrivals)))
    bench.run.metadata["repeat"] = repeat
    variants = with_precisions(bench.variants(policies, arrivals[0]), precisions)
    for mode in arrivals:
        bench.policy_rows(variants, repeat, mode)
        if peer is not None:
            bench.add({**peer(mode == "backlog"), "arrivals": mode})
    for fraction in sweep_fractions:
        for policy in sweep_policies:
            bench.sweep_row(policy, fraction)
    add_switch_floor(bench.run, model, config, bench.needed)
    return bench.run


def checked_arrivals(arrivals: Sequence[str]) -> tuple[str, ...]:
    """The arrival modes, each once, in the order given; ConfigError for an unknown one."""
    modes = tuple(dict.fromkeys(arrivals))
    unknown = [m for m in modes if m not in ARRIVAL_MODES]
    if unknown or not modes:
        raise ConfigError(f"arrival modes {list(arrivals)}: give one or both of "
                          f"{', '.join(ARRIVAL_MODES)}")
    return modes


def switch_floor(model: CoEModel, config: EngineConfig, needed: Set[str]) -> int:
    """The compulsory switches: experts in `needed` that coserve's initial placement
    under `config`'s budget and executors does not hold (see SWITCH_FLOOR_DEFINITION)."""
    placement = Assembly.of(model, replace(config, policy=DEFAULT_POLICY)).initial_placement()
    return len(set(needed) - set().union(*placement))


def add_switch_floor(run: BenchRun, model: CoEModel, config: EngineConfig,
                     needed: Set[str]) -> None:
    """The run's switch floor in the metadata, and each row's switches over it (the
    sweep's rows over the floor at their own budget); None where the floor is 0."""
    floor = switch_floor(model, config, needed)
    run.metadata.update(switch_floor=floor, num_experts_needed=len(needed),
                        switch_floor_definition=SWITCH_FLOOR_DEFINITION)
    for row in run.rows:
        row["switches_over_floor"] = row["num_switches"] / floor if floor else None
    for row in run.sweep:
        cfg = replace(config, budget_bytes=None, budget_fraction=row["budget_fraction"])
        row["switch_floor"] = swept = switch_floor(model, cfg, needed)
        row["switches_over_floor"] = row["num_switches"] / swept if swept else None


@dataclass(frozen=True)
class _Variant:
    label: str | None  # the row's name when it is not the policy's
    config: EngineConfig
    with_plan: bool = False


def with_precisions(variants: Sequence[_Variant], precisions: Sequence[str]) -> list[_Variant]:
    """Each variant once per precision (none given: as they are)."""
    if not precisions:
        return list(variants)
    return [replace(v, label=f"{v.label or v.config.policy} @ {p}",
                    config=replace(v.config, precision=p))
            for v in variants for p in dict.fromkeys(precisions)]


@dataclass
class _Bench:
    model: CoEModel
    requests: Sequence[Request]
    config: EngineConfig
    plan: Plan | None
    on_row: Callable[[dict[str, Any]], None] | None
    run: BenchRun
    costs: CostModel | None = None  # measured once, shared by every row without a plan
    needed: set[str] = field(default_factory=set)  # experts on any request's path, any row

    def variants(self, policies: Sequence[str], mode: str) -> list[_Variant]:
        """One per policy; with a plan, coserve as given and as planned (for `mode`)."""
        variants = []
        for policy in policies:
            planned = self.plan is not None and policy == DEFAULT_POLICY
            variants.append(_Variant(f"{DEFAULT_POLICY} (default)" if planned else None,
                                     replace(self.config, policy=policy)))
            if planned:
                assert self.plan is not None
                candidate = plan_for_bench(self.model, self.requests, self.config, self.plan,
                                           mode == "backlog")
                self.run.metadata["planned"] = {**asdict(candidate), "arrivals": mode}
                variants.append(_Variant(f"{DEFAULT_POLICY} (planned)", candidate.config(self.config), True))
        return variants

    def policy_rows(self, variants: Sequence[_Variant], repeat: int, mode: str) -> None:
        """Every variant `repeat` times, in rounds (so a slow spell of a shared machine
        falls on all of them alike); each row is the run of median throughput, with
        every run's throughput beside it."""
        runs: list[list[dict[str, Any]]] = [[] for _ in variants]
        for _ in range(repeat):
            for v, done in zip(variants, runs, strict=True):
                done.append(self.one(v.config, mode, v.label, v.with_plan, twin=False))
        for v, done in zip(variants, runs, strict=True):
            ordered = sorted(done, key=lambda r: r["throughput_rps"])
            row = {**ordered[(len(ordered) - 1) // 2],
                   "throughput_rps_runs": [r["throughput_rps"] for r in done]}
            if self.plan is not None:
                row["simulated"] = self.twin(v.config, mode, row, v.with_plan)
            self.add(row)

    def sweep_row(self, policy: str, fraction: float) -> None:
        cfg = replace(self.config, policy=policy, budget_bytes=None, budget_fraction=fraction)
        row = self.one(cfg, SWEEP_ARRIVALS)
        self.run.sweep.append({"budget_fraction": fraction, **row})
        if self.on_row:
            self.on_row({**row, "policy": f"{policy} @ {fraction:.0%}"})

    def one(self, cfg: EngineConfig, mode: str, label: str | None = None,
            with_plan: bool = False, twin: bool = True) -> dict[str, Any]:
        plan = self.plan if with_plan else None
        stats, results, measured = run_trace(self.model, self.requests, cfg, mode == "backlog",
                                             None if with_plan else self.costs, plan)
        if not with_plan:
            self.costs = measured
        self.needed.update(expert for r in results for expert in r.path)
        row = {**stats.to_dict(), "arrivals": mode, "accuracy": inspection_accuracy(results),
               "escalated": stats.escalated_share if self.model.router.cascade else None,
               "deadline_misses": stats.num_deadline_misses, "precision": cfg.precision}
        if label:
            row["policy"] = label
        if self.plan is not None and twin:
            row["simulated"] = self.twin(cfg, mode, row, with_plan)
        return row

    def twin(self, cfg: EngineConfig, mode: str, row: dict[str, Any],
             with_plan: bool) -> dict[str, Any] | None:
        assert self.plan is not None
        if cfg.precision == "auto":
            return None  # the simulator models fixed precisions only
        return simulated_twin(self.model, self.requests, cfg, self.plan, mode == "backlog",
                              row["throughput_rps"], row["num_switches"],
                              None if with_plan else self.costs)

    def add(self, row: dict[str, Any]) -> None:
        self.run.rows.append(row)
        if self.on_row:
            self.on_row(row)


def bench_memory_bytes(model: CoEModel, config: EngineConfig) -> int:
    """What coserve (default) holds: its expert budget plus an activation area per
    executor. The planned row splits the same amount."""
    budget = config.resolve_budget(model.total_expert_bytes) or model.total_expert_bytes
    return budget + len(config.executors) * config.activation_bytes


def plan_for_bench(model: CoEModel, requests: Sequence[Request], config: EngineConfig,
                   plan: Plan, backlog: bool):
    from coserve.planner.planner import Planner, default_executor_options
    from coserve.planner.recommend import gpu_memory_bytes

    # GPU layouts are planned with this machine's free GPU memory (none without a GPU).
    planner = Planner(model, plan, requests, config, backlog, gpu_memory_bytes=gpu_memory_bytes(None))
    return planner.plan_memory(bench_memory_bytes(model, config),
                               default_executor_options(plan)).best


def simulated_twin(model: CoEModel, requests: Sequence[Request], config: EngineConfig,
                   plan: Plan, backlog: bool, real_rps: float, real_switches: int,
                   scheduling_costs: CostModel | None = None) -> dict[str, Any]:
    """The same configuration on the simulator, and how far it is from the real run:
    timed by the plan, scheduled with the cost model the engine scheduled with."""
    from coserve.simulator import simulate

    sim, _ = simulate(model, requests, config, backlog=backlog, plan=plan,
                      scheduling_costs=scheduling_costs)
    return {
        "throughput_rps": sim.throughput_rps,
        "num_switches": sim.num_switches,
        "throughput_ratio": sim.throughput_rps / real_rps if real_rps else None,
        "switches_ratio": sim.num_switches / real_switches if real_switches else None,
    }
