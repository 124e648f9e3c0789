"""Eviction on a real repository: what stage 1 knows of the routing graph. A routing
callable reaches experts the static table does not name, so their predecessors are
learned from the routing observed; the experts queued in the scheduler (the residency
asks it through the assembly's wiring) count as present."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from coserve import EngineConfig, parse_executors
from coserve.assembly import Assembly
from coserve.engine.costs import default_costs
from coserve.manager.eviction import TwoStageEviction
from coserve.manager.residency import Residency
from coserve.manager.usage import UsageTracker
from coserve.repository import CoEModel, open_repository, write_repository
from coserve.scheduler.task import Task
from coserve.stats import StatsRecorder
from coserve.tracker import RequestTracker
from coserve.types import Request, Step

CLS = {"factory": "repo_fixtures:TinyNet", "args": {"num_classes": 2},
       "input_shape": [3, 8, 8], "labels": ["pass", "defect"]}
DET = {"factory": "repo_fixtures:TinyNet", "args": {"num_classes": 3, "width": 2},
       "input_shape": [3, 8, 8], "labels": ["ok", "shifted", "reversed"]}
# cls-C is the least likely to be used; the detectors are likelier (a routed sample's).
USAGE = {"cls-R": 0.5, "cls-C": 0.1, "det-a": 0.4, "det-b": 0.4}


def _expert(name: str, architecture: str, stage: str) -> dict[str, str]:
    return {"name": name, "architecture": architecture,
            "weights": f"weights/{name}.safetensors", "stage": stage}


@pytest.fixture
def model(tmp_path: Path) -> CoEModel:
    """det-b is reached only through the routing callable (large parts): the static
    table names no predecessor of it."""
    spec = {
        "name": "callable-routing",
        "architectures": {"cls": CLS, "det": DET},
        "experts": [_expert("cls-R", "cls", "preliminary"), _expert("cls-C", "cls", "preliminary"),
                    _expert("det-a", "det", "subsequent"), _expert("det-b", "det", "subsequent")],
        "routing": {"first": {"field": "component_type", "map": {"R": "cls-R", "C": "cls-C"}},
                    "next": {"cls-R": {"pass": "det-a"}},
                    "callable": "repo_fixtures:route_by_size"},
        "usage_prior": {"field": "component_type", "counts": {"R": 50, "C": 50}},
    }
    torch.manual_seed(0)
    from repo_fixtures import TinyNet

    for expert in spec["experts"]:
        path = tmp_path / expert["weights"]
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(TinyNet(**spec["architectures"][expert["architecture"]]["args"]).state_dict(),
                  str(path))
    write_repository(tmp_path, spec)
    return open_repository(tmp_path, trust_code=True)


def nbytes(model: CoEModel, *experts: str) -> int:
    return sum(model.experts[e].num_bytes for e in experts)


def residency(model: CoEModel, usage: UsageTracker) -> Residency:
    """Pool 0 holds det-b and cls-C and is full; pool 1 is empty."""
    r = Residency(budgets=[nbytes(model, "det-b", "cls-C"), nbytes(model, "cls-R")],
                  expert_bytes={e.name: e.num_bytes for e in model.experts.values()},
                  subsequent=model.subsequent_experts, predecessors=model.predecessors,
                  evict=TwoStageEviction(), usage=usage, clock=lambda: 0.0)
    for expert in ("det-b", "cls-C"):
        assert r.reserve(0, expert, frozenset())
        r.pools[0].entries[expert].tensors = {}
    return r


def route_a_large_part(model: CoEModel, usage: UsageTracker) -> None:
    """One request through the tracker: cls-R passes it, the callable sends it to det-b."""
    tracker = RequestTracker(clock=lambda: 0.0, stats=StatsRecorder(1), usage=usage,
                             latency_target_s=5.0)
    tracker.open()
    fields = {"component_type": "R", "size": "large"}
    state = tracker.admit(Request("r1", fields, None), model.router.first(fields), lambda r: None)
    following = model.router.next("cls-R", "pass", fields)
    assert following == ("det-b",)
    tracker.advance(state, Step(expert="cls-R", label="pass", detail={}, executor=0,
                                batch_size=1, queued_s=0.0, exec_s=0.0), following)


def test_a_callable_only_expert_is_left_to_stage_two_until_a_predecessor_is_seen(model):
    assert model.predecessors("det-b") == frozenset()  # nothing in the static table
    r = residency(model, UsageTracker(USAGE, 0.5, 50))
    assert r.reserve(0, "det-a", frozenset())
    assert set(r.resident(0)) == {"det-b", "det-a"}  # cls-C, the least likely, left


def test_predecessors_learned_from_routing_decide_stage_one(model):
    usage = UsageTracker(USAGE, 0.5, 50)
    route_a_large_part(model, usage)
    assert usage.predecessors() == {"det-b": frozenset({"cls-R"})}
    # cls-R is present nowhere: nothing can reach det-b soon, so it goes first.
    r = residency(model, usage)
    assert r.reserve(0, "det-a", frozenset())
    assert set(r.resident(0)) == {"cls-C", "det-a"}
    # With cls-R resident in the other pool, det-b is reachable: usage decides again.
    r = residency(model, usage)
    assert r.reserve(1, "cls-R", frozenset())
    assert r.reserve(0, "det-a", frozenset())
    assert set(r.resident(0)) == {"det-b", "det-a"}


def test_the_assembly_wires_the_scheduler_s_queue_into_eviction(model):
    config = EngineConfig(budget_bytes=nbytes(model, "det-a", "cls-C"),
                          executors=parse_executors("cpu:1"), measure_costs=False)
    assembly = Assembly.of(model, config, costs=default_costs(model), usage=USAGE)
    parts = assembly.build(clock=lambda: 0.0, usage=assembly.usage_tracker())
    r = parts.residency
    for expert in ("det-a", "cls-C"):
        assert r.reserve(0, expert, frozenset())
        r.pools[0].entries[expert].tensors = {}
    # cls-R is resident nowhere, but a task of it is queued: its next step is det-a.
    parts.scheduler.enqueue(Task(request_id="r1", expert="cls-R", enqueued_s=0.0))
    assert parts.scheduler.queued_experts() == {"cls-R"}
    assert r.reserve(0, "det-b", frozenset())
    assert set(r.resident(0)) == {"det-a", "det-b"}  # stage 2 took cls-C
