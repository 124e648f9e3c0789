"""Where a simulated run's expert loads go, and how far its wall time is from what storage
allows. A diagnostic program that prints tables, not a test.

    .venv/bin/python scripts/switch_breakdown.py REPO TRACE --plan PLAN \\
        --budget-fraction 0.2 --storage sata-530 --executors cpu:2 --policy coserve [--backlog]

(the arguments of `coserve simulate`, read by its own parser).

For every load (one residency of an expert in one executor's pool) it records the tasks
that residency served, whether a prefetch or a demand started it, whether the other
executor had the expert's tasks queued, and what it evicted; it prints those by stage and
size class, the loads that served three tasks or fewer, and, on a synth zoo (synth.json
beside coe.yaml), the stage-1 experts by phase, hot (the phase's kinds) or cold.

The storage bound: an all-resident run of the same trace gives the earliest time each
expert's last task can be queued. Every expert whose last task is queued at or after t
must be resident after t, and at most the budget's bytes can be resident at t already,
so the wall time is at least max over t of t + (their bytes - budget) / storage speed."""

from __future__ import annotations

import collections
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from coserve.bench.runner import switch_floor
from coserve.cli import build_parser
from coserve.cli.options import planned_config
from coserve.config import EngineConfig
from coserve.loader.storage import storage_profile
from coserve.repository import CoEModel, open_repository
from coserve.scheduler.queues import Batch
from coserve.simulator.simulator import Simulator
from coserve.trace import read_trace
from coserve.types import Request

MB = 1e6


@dataclass
class Load:
    t: float
    executor: int
    expert: str
    num_bytes: int
    prefetch: bool
    queued_other: int  # the expert's tasks queued on other executors when it was loaded
    tasks: int = 0  # tasks this residency served
    evicted: tuple[str, ...] = ()


class RecordingSimulator(Simulator):
    """The simulator with every load, batch and eviction recorded (diagnostics only)."""

    def attach(self, loop: Any, **kwargs: Any) -> None:
        super().attach(loop, **kwargs)
        self.loads: list[Load] = []
        self.enqueued: list[tuple[float, str]] = []
        self._current: dict[tuple[int, str], Load] = {}
        self._gone: dict[int, list[str]] = collections.defaultdict(list)
        self._prefetching = False
        for i, pool in enumerate(self._residency.pools):
            pool.on_remove = lambda entry, i=i: self._gone[i].append(entry.expert)
        enqueue = self._scheduler.enqueue

        def recorded(task: Any) -> int:
            self.enqueued.append((self._clock(), task.expert))
            return enqueue(task)

        self._scheduler.enqueue = recorded  # type: ignore[method-assign]

    def _prefetch(self, i: int, expert: str, protected: frozenset[str]) -> None:
        self._prefetching = True
        try:
            super()._prefetch(i, expert, protected)
        finally:
            self._prefetching = False

    def _load(self, i: int, expert: str) -> float:
        queues = self._scheduler._queues
        other = sum(q.counts.get(expert, 0) for k, q in enumerate(queues) if k != i)
        load = Load(self._clock(), i, expert, self._residency.expert_bytes[expert],
                    self._prefetching, other, evicted=tuple(self._gone.pop(i, ())))
        self.loads.append(load)
        self._current[(i, expert)] = load
        return super()._load(i, expert)

    def _execute(self, i: int, batch: Batch, entry: Any) -> None:
        load = self._current.get((i, batch.expert))
        if load is not None:
            load.tasks += len(batch.tasks)
        super()._execute(i, batch, entry)


def _run(model: CoEModel, config: EngineConfig, plan: Any, requests: Sequence[Request],
         backlog: bool) -> tuple[RecordingSimulator, dict[str, Any]]:
    sim = RecordingSimulator(model, config, plan=plan)
    stats, _ = sim.run(requests, backlog)
    return sim, stats.to_dict()


def _table(title: str, rows: dict[Any, list[Load]]) -> None:
    print(f"\n{title}\n| group | loads | MB read | tasks/load median | mean | loads <= 3 tasks |")
    print("|---|---|---|---|---|---|")
    for key in sorted(rows):
        loads = rows[key]
        tasks = sorted(x.tasks for x in loads)
        print(f"| {key} | {len(loads)} | {sum(x.num_bytes for x in loads) / MB:.0f} | "
              f"{tasks[len(tasks) // 2]} | {sum(tasks) / len(tasks):.1f} | "
              f"{sum(1 for t in tasks if t <= 3)} |")


def _by_stage_and_size(sim: RecordingSimulator) -> None:
    rows: dict[Any, list[Load]] = collections.defaultdict(list)
    for load in sim.loads:
        rows[(load.expert.split("-")[0], round(load.num_bytes / MB))].append(load)
    _table("loads by (stage, MB)", rows)


def _synth_phases(sim: RecordingSimulator, root: Path) -> None:
    meta = root / "synth.json"
    if not meta.exists():
        return
    trace = json.loads(meta.read_text())["trace"]
    shift_s = trace["shift_arrival_s"]
    first = {f"s1-{k[1:]}" for k in trace["phase_kinds"][0]}
    rows: dict[Any, list[Load]] = collections.defaultdict(list)
    for load in sim.loads:
        phase = 0 if load.t < shift_s else 1
        stage = load.expert.split("-")[0]
        if stage == "s1":
            stage = "s1 hot" if (load.expert in first) == (phase == 0) else "s1 cold"
        rows[(phase, stage)].append(load)
    _table(f"loads by (phase, stage); phase 1 from {shift_s} s", rows)


def _waste(sim: RecordingSimulator) -> None:
    small = [x for x in sim.loads if x.tasks <= 3]
    split = [x for x in sim.loads if x.queued_other]
    prefetched = [x for x in sim.loads if x.prefetch]
    print(f"\nloads serving <= 3 tasks: {len(small)}, {sum(x.num_bytes for x in small) / MB:.0f} MB")
    print(f"loads while another executor had the expert's tasks queued: {len(split)}, "
          f"{sum(x.num_bytes for x in split) / MB:.0f} MB")
    print(f"prefetches: {len(prefetched)} of {len(sim.loads)} loads")
    victims = collections.Counter(v.split("-")[0] for x in sim.loads for v in x.evicted)
    print(f"evicted, by stage: {dict(victims)}")


def storage_bound_s(model: CoEModel, config: EngineConfig, plan: Any,
                    requests: Sequence[Request], backlog: bool) -> tuple[float, float, int]:
    """(the wall-time bound, the t it is taken at, the switch floor), from an all-resident
    run: the floor is the experts the trace needs that initial placement could not hold."""
    sim, _ = _run(model, replace(config, policy="all-resident"), plan, requests, backlog)
    floor = switch_floor(model, config, {expert for _, expert in sim.enqueued})
    last: dict[str, float] = {}
    for t, expert in sim.enqueued:
        last[expert] = max(last.get(expert, 0.0), t)
    size = {e.name: e.num_bytes for e in model.experts.values()}
    budget = config.resolve_budget(model.total_expert_bytes) or 0
    speed = storage_profile(config.storage).read_bytes_per_s
    assert speed, "the bound needs a storage profile with a read speed (e.g. sata-530)"
    best = (0.0, 0.0)
    for t in sorted(set(last.values())):
        needed = sum(size[e] for e, at in last.items() if at >= t)
        best = max(best, (t + max(0, needed - budget) / speed, t))
    return best[0], best[1], floor


def main() -> None:
    args = build_parser().parse_args(["simulate", *sys.argv[1:]])
    model = open_repository(args.repo, trust_code=args.trust_repo_code)
    config, plan = planned_config(args, args.policy)
    requests = read_trace(args.trace)
    sim, stats = _run(model, config, plan, requests, args.backlog)
    print(f"{args.policy}: {stats['throughput_rps']:.1f} req/s, {stats['num_switches']} switches, "
          f"{stats['bytes_read'] / MB:.0f} MB read, wall {stats['wall_s']:.2f} s")
    _by_stage_and_size(sim)
    _synth_phases(sim, args.repo)
    _waste(sim)
    bound, at, floor = storage_bound_s(model, config, plan, requests, args.backlog)
    print(f"\nstorage bound: wall >= {bound:.2f} s (taken at t = {at:.2f} s), "
          f"<= {len(requests) / bound:.1f} req/s; switch floor {floor} "
          f"({stats['num_switches'] / max(floor, 1):.1f}x)")


if __name__ == "__main__":
    main()
