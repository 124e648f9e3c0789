"""The simulator: deterministic, the engine's statistics keys, the engine's policies. The
simulated twin of every engine row in `coserve bench` measures its agreement with the engine."""

from dataclasses import replace

import pytest

from coserve.config import EngineConfig
from coserve.engine.run import run_trace
from coserve.executors.spec import parse_executors
from coserve.plan import executors_per_kind
from coserve.profiler import profile_repository
from coserve.repository import open_repository
from coserve.simulator import RecordedLabels, SampledLabels, simulate
from coserve.trace import read_trace
from coserve.types import Request


@pytest.fixture(scope="module")
def tiny(tiny_zoo):
    root, trace = tiny_zoo
    return open_repository(root), read_trace(trace)


@pytest.fixture(scope="module")
def plan(tiny):
    """Profiled here, on the machine the test runs on, with the engine calibration."""
    model, requests = tiny
    return profile_repository(model, batch_sizes=(1, 2, 4, 8, 16, 32), sample=requests[:200],
                              inputs_from=requests[:64], max_executors=2)


def _config(policy="coserve", executors="cpu:2", fraction=0.3):
    return EngineConfig(policy=policy, budget_fraction=fraction, storage="sata-530",
                        executors=parse_executors(executors))


def test_simulation_is_deterministic(tiny, plan):
    model, requests = tiny
    first, results_a = simulate(model, requests, _config(), backlog=True, plan=plan)
    second, results_b = simulate(model, requests, _config(), backlog=True, plan=plan)
    assert first == second
    assert [r.path for r in results_a] == [r.path for r in results_b]
    assert first.num_completed == len(requests) and first.num_failed == 0
    assert first.extra["simulated"] is True


def test_same_keys_as_a_real_run(tiny, plan):
    model, requests = tiny
    sim, _ = simulate(model, requests[:50], _config(), backlog=True, plan=plan)
    real, _, _ = run_trace(model, requests[:50], replace(_config(), measure_costs=False),
                           backlog=True, plan=plan)
    assert sim.to_dict().keys() == real.to_dict().keys()
    assert sim.policy == real.policy == "coserve"


def test_it_runs_the_policy_sets(tiny, plan):
    """samba's FIFO order and LRU eviction switch far more than coserve's grouping on the
    same simulated trace: the policies, not the simulator, make the difference."""
    model, requests = tiny
    samba, _ = simulate(model, requests, _config("samba"), backlog=True, plan=plan)
    coserve, _ = simulate(model, requests, _config("coserve"), backlog=True, plan=plan)
    resident, _ = simulate(model, requests, _config("all-resident"), backlog=True, plan=plan)
    assert coserve.num_switches * 3 < samba.num_switches
    assert coserve.mean_batch_size > 3 * samba.mean_batch_size
    assert resident.num_switches == 0
    assert len(samba.switches_per_executor) == 1  # samba merges executors, as in the engine


def test_replayed_labels_follow_the_engine_paths(tiny, plan):
    model, requests = tiny
    _, real, _ = run_trace(model, requests[:80], replace(_config(), measure_costs=False),
                           backlog=True, plan=plan)
    labels = RecordedLabels(real, SampledLabels(plan.label_probs))
    _, simulated = simulate(model, requests[:80], _config(), backlog=True, plan=plan, labels=labels)
    assert [r.path for r in simulated] == [r.path for r in real]


def test_arrivals_and_rejected_requests(tiny, plan):
    model, requests = tiny
    # Spaced at ten times the time a backlog of the same requests takes per request (the plan
    # is profiled on this machine, loaded or not: a fixed spacing could exceed capacity).
    backlog, _ = simulate(model, requests[:40], _config(), backlog=True, plan=plan)
    gap_s = 10 * backlog.wall_s / 40
    spaced = [replace(r, arrival_s=i * gap_s) for i, r in enumerate(requests[:40])]
    bad = Request("bad", {"component_type": "no-such-type"}, None, 0.0)
    stats, results = simulate(model, [*spaced, bad], _config(), plan=plan)
    assert stats.num_completed == 40 and results[-1].error_kind.value == "rejected"
    assert stats.wall_s >= 39 * gap_s  # the last request cannot finish before it arrives
    # Spaced out, a request whose expert is not resident may wait for others to join its
    # group (coserve's switch hold), but never past its latency target.
    assert stats.num_deadline_misses == 0
    assert stats.latency_p99_s < _config().latency_target_s


def test_a_plan_cost_model_follows_the_executor_layout(tiny, plan):
    model, _ = tiny
    one = plan.cost_model(model, None, executors_per_kind(["cpu"]))
    two = plan.cost_model(model, None, executors_per_kind(["cpu", "cpu"]))
    expert = next(iter(model.experts))
    slowdown = plan.processors["cpu"][model.experts[expert].architecture].slowdown
    assert two.exec_s(expert, "cpu", 8) / one.exec_s(expert, "cpu", 8) == pytest.approx(
        slowdown[2] / slowdown[1])
