"""Run a trace through a fresh engine per policy: what `coserve run`, `coserve demo`
and the benchmark share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from coserve.config import EngineConfig
from coserve.engine.engine import Engine
from coserve.plan import CostModel
from coserve.planfile import Plan
from coserve.repository import CoEModel
from coserve.stats import EngineStats
from coserve.types import Request, Result


def run_trace(
    model: CoEModel,
    requests: Sequence[Request],
    config: EngineConfig,
    backlog: bool = False,
    costs: CostModel | None = None,
    plan: Plan | None = None,
) -> tuple[EngineStats, list[Result], CostModel]:
    """One engine, one trace. With `backlog`, every request is submitted at once (the
    throughput question); otherwise at its arrival offset."""
    with Engine(model, config, costs=costs, plan=plan) as engine:
        results = engine.run_trace(requests, realtime=not backlog)
        stats = engine.stats()
        assert engine.costs is not None
        return stats, results, engine.costs


def compare_policies(
    model: CoEModel,
    requests: Sequence[Request],
    config: EngineConfig,
    policies: Sequence[str],
    backlog: bool = False,
    plan: Plan | None = None,
) -> list[EngineStats]:
    """The same trace, budget, executors and storage under each policy, one after another
    in this process, with one cost model measured once (so only the policy differs)."""
    rows: list[EngineStats] = []
    costs: CostModel | None = None
    for policy in policies:
        stats, _, measured = run_trace(model, requests, replace(config, policy=policy), backlog,
                                       costs, plan)
        # A plan's costs depend on the executor layout, so each engine derives its own.
        costs = measured if plan is None else None
        rows.append(stats)
    return rows
