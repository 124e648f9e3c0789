"""Scheduler micro-benchmark: microseconds per task to enqueue (assign + arrange) and to
take (select + split + pop), with N tasks queued, for the `coserve` and `coserve-paper`
policy sets. A program that prints a table, not a timed test.

    .venv/bin/python scripts/bench_scheduler.py [--sizes 1000,10000,100000] [--paper-max 10000]

The Scheduler gets the policies the engine builds (Assembly.of(...)) on the tiny
CoE, with a fake clock and no executor threads. Its costs are extended to NUM_EXPERTS
experts of the tiny architectures, since a real mix has hundreds of experts (the
scheduler reads only an expert's name, architecture and bytes). Tasks arrive one every
ARRIVAL_S of fake time, experts drawn Zipf-skewed like a board's bill of materials, all
enqueued first, then taken a batch at a time, executor by executor, until empty. Pools
start empty (nothing resident). Each figure is the median of --repeats runs."""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from coserve.assembly import Assembly
from coserve.config import EngineConfig
from coserve.engine.costs import default_costs
from coserve.executors.spec import parse_executors
from coserve.plan import CostModel
from coserve.repository import CoEModel, open_repository
from coserve.scheduler.queues import Scheduler
from coserve.scheduler.task import Task
from coserve.zoo.tiny import build_tiny

POLICIES = ("coserve", "coserve-paper")
NUM_EXPERTS = 350  # the reference deployment: 342-352 component types per board
ZIPF_EXPONENT = 1.0  # the pcb zoo's bills of materials are Zipf-skewed
ARRIVAL_S = 0.004  # one component image every 4 ms, as on the reference line
LATENCY_TARGET_S = 5.0  # the engine's default
EXECUTORS = "cpu:2"
# The paper's list insert scans and shifts the queue (O(queue) per enqueue, O(n^2) to
# fill): 10k tasks take seconds, 100k would take many minutes.
PAPER_MAX_TASKS = 10_000
SEED = 0


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


@dataclass(frozen=True)
class Timing:
    enqueue_us: float  # per task
    take_us: float  # per task
    num_batches: int


def many_expert_costs(model: CoEModel, num_experts: int) -> CostModel:
    """The tiny CoE's default costs, plus synthetic experts copying its experts'
    architectures and bytes in turn, up to `num_experts` in all."""
    costs = default_costs(model)
    real = sorted(model.experts)
    arch_of, expert_bytes = dict(costs.arch_of), dict(costs.expert_bytes)
    for i in range(num_experts - len(real)):
        like = real[i % len(real)]
        arch_of[f"syn-{i:03d}"] = arch_of[like]
        expert_bytes[f"syn-{i:03d}"] = expert_bytes[like]
    return replace(costs, arch_of=arch_of, expert_bytes=expert_bytes)


def make_tasks(experts: Sequence[str], num_tasks: int, rng: random.Random) -> list[Task]:
    """`num_tasks` tasks, one every ARRIVAL_S, experts Zipf-skewed (rank 1 the commonest)."""
    weights = [1 / (rank + 1) ** ZIPF_EXPONENT for rank in range(len(experts))]
    picks = rng.choices(experts, weights=weights, k=num_tasks)
    return [Task(request_id=f"r{k}", expert=e, enqueued_s=k * ARRIVAL_S,
                 deadline_s=k * ARRIVAL_S + LATENCY_TARGET_S) for k, e in enumerate(picks)]


def build_scheduler(model: CoEModel, policy: str, costs: CostModel, clock: FakeClock) -> Scheduler:
    config = EngineConfig(policy=policy, executors=parse_executors(EXECUTORS),
                          latency_target_s=LATENCY_TARGET_S, measure_costs=False)
    assembly = Assembly.of(model, config).with_costs(costs)
    residency = assembly.build(clock=clock, usage=assembly.usage_tracker()).residency
    # The engine's scheduler, but over the padded experts: a synthetic expert has the
    # routing of none (the model does not know it), so it is fed by nothing.
    return Scheduler(
        processors=assembly.processors, assign=assembly.policies.assign,
        arrange=assembly.policies.arrange, select=assembly.policies.select, costs=costs,
        activation_bytes=config.activation_bytes, resident_of=residency.resident,
        in_host=residency.in_host, clock=clock,
        predecessors=lambda e: model.predecessors(e) if e in model.experts else frozenset(),
    )


def time_once(scheduler: Scheduler, clock: FakeClock, tasks: Sequence[Task]) -> Timing:
    """Enqueue every task at its arrival time, then take batches until every queue is empty."""
    t0 = time.perf_counter()
    for task in tasks:
        clock.now_s = task.enqueued_s
        scheduler.enqueue(task)
    enqueue_s = time.perf_counter() - t0
    num_executors = len(scheduler.processors)
    num_taken = num_batches = 0
    t0 = time.perf_counter()
    while num_taken < len(tasks):
        progressed = False
        for i in range(num_executors):
            batch = scheduler.take_batch(i)
            if batch is not None:
                scheduler.batch_done(i)
                num_taken += len(batch.tasks)
                num_batches += 1
                progressed = True
        if not progressed:  # every queued group is held back: let virtual time pass
            wakes = [w for i in range(num_executors) if (w := scheduler.wake_s(i)) is not None]
            assert wakes, "tasks queued but no executor could take a batch"
            clock.now_s = max(clock.now_s, min(wakes))
    take_s = time.perf_counter() - t0
    n = len(tasks)
    return Timing(1e6 * enqueue_s / n, 1e6 * take_s / n, num_batches)


def median_timing(model: CoEModel, policy: str, costs: CostModel, num_tasks: int,
                  repeats: int) -> Timing:
    """The median enqueue and take figures of `repeats` fresh schedulers, each on the same tasks."""
    runs = []
    for _ in range(repeats):
        tasks = make_tasks(sorted(costs.arch_of), num_tasks, random.Random(SEED))
        clock = FakeClock()
        runs.append(time_once(build_scheduler(model, policy, costs, clock), clock, tasks))
    return Timing(statistics.median(r.enqueue_us for r in runs),
                  statistics.median(r.take_us for r in runs),
                  int(statistics.median(r.num_batches for r in runs)))


def print_table(rows: Sequence[tuple[str, int, Timing | None]]) -> None:
    print(f"{'policy':<15}{'tasks':>9}{'enqueue us/task':>17}{'take us/task':>14}"
          f"{'total us/task':>15}{'batches':>9}")
    for policy, n, t in rows:
        if t is None:
            print(f"{policy:<15}{n:>9}{'skipped: over --paper-max':>40}")
            continue
        print(f"{policy:<15}{n:>9}{t.enqueue_us:>17.1f}{t.take_us:>14.1f}"
              f"{t.enqueue_us + t.take_us:>15.1f}{t.num_batches:>9}")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,10000,100000", help="queued tasks, comma-separated")
    p.add_argument("--paper-max", type=int, default=PAPER_MAX_TASKS,
                   help=f"the most tasks coserve-paper is run with (default {PAPER_MAX_TASKS}: "
                        f"its enqueue is O(queue))")
    p.add_argument("--repeats", type=int, default=3, help="runs per figure; the median is shown")
    return p.parse_args(argv)


def main(argv: Sequence[str] = ()) -> int:
    args = parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        root, _ = build_tiny(Path(tmp) / "tiny")
        model = open_repository(root)
        costs = many_expert_costs(model, NUM_EXPERTS)
        rows = []
        for policy in POLICIES:
            for n in sizes:
                skip = policy == "coserve-paper" and n > args.paper_max
                rows.append((policy, n, None if skip else median_timing(model, policy, costs, n,
                                                                         args.repeats)))
    print(f"scheduler micro-benchmark: {NUM_EXPERTS} experts (Zipf {ZIPF_EXPONENT:g}), "
          f"executors {EXECUTORS}, a task every {ARRIVAL_S * 1e3:g} ms of fake time, "
          f"latency target {LATENCY_TARGET_S:g} s, pools empty; median of {args.repeats} runs")
    print_table(rows)
    print(f"coserve-paper is capped at {args.paper_max} tasks: its list insert behind the "
          f"expert's last task is O(queue) per enqueue (--paper-max to change)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
