"""The planner on the tiny CoE: feasible splits, the best candidate, the capacity
commands, and a plan's recommendation reaching `coserve run`."""

import json

import pytest

from coserve.cli import main
from coserve.config import EngineConfig
from coserve.executors.spec import parse_executors
from coserve.planfile import Plan, PlanError
from coserve.planner import Planner
from coserve.profiler import profile_repository
from coserve.repository import open_repository
from coserve.trace import read_trace


@pytest.fixture(scope="module")
def setup(tiny_zoo, tmp_path_factory):
    root, trace = tiny_zoo
    model = open_repository(root)
    requests = read_trace(trace)
    plan = profile_repository(model, batch_sizes=(1, 2, 4, 8, 16), sample=requests[:100],
                              calibration_requests=300,
                              max_executors=2)
    path = plan.save(tmp_path_factory.mktemp("plan") / "plan.json")
    return model, requests, plan, path, root, trace


def test_split_points_are_feasible(setup):
    model, requests, plan, *_ = setup
    planner = Planner(model, plan, requests, EngineConfig(storage="sata-530"))
    largest = max(e.num_bytes for e in model.experts.values())
    item = max(p.cost.item_bytes for p in plan.processors["cpu"].values())
    memory = model.total_expert_bytes // 2
    for option in ("cpu:1", "cpu:2"):
        k = len(parse_executors(option))
        points = planner.split_points(memory, option)
        assert points and points == sorted(points)
        for n in points:
            c = planner.simulate(memory, option, n)
            assert c.budget_bytes >= k * largest
            assert c.activation_bytes >= item
            assert c.budget_bytes + k * c.activation_bytes <= memory
    assert planner.split_points(largest, "cpu:2") == []  # cannot hold two pools


def test_plan_memory_picks_the_best_simulated_candidate(setup):
    model, requests, plan, *_ = setup
    planner = Planner(model, plan, requests, EngineConfig(storage="sata-530"))
    result = planner.plan_memory(model.total_expert_bytes // 2, ["cpu:1", "cpu:2"])
    assert set(result.searches) == {"cpu:1", "cpu:2"}
    assert result.best.items_per_s == max(c.items_per_s for c in result.candidates)
    assert len(result.candidates) == sum(len(s.points) for s in result.searches.values())
    with pytest.raises(Exception, match="give more memory"):
        planner.plan_memory(1000, ["cpu:1"])


def test_plan_command_writes_a_recommendation_that_run_uses(setup, tmp_path):
    model, _, _, path, root, trace = setup
    out = tmp_path / "planned.json"
    memory = model.total_expert_bytes // 2
    assert main(["plan", str(root), str(trace), "--plan", str(path), "--budget-bytes", str(memory),
                 "--executors-options", "cpu:1;cpu:2", "--storage", "sata-530", "--out", str(out),
                 "--report-dir", str(tmp_path / "r")]) == 0
    rec = Plan.load(out).recommended
    assert rec is not None and rec.memory_bytes == memory
    assert rec.budget_bytes + len(parse_executors(rec.executors)) * rec.activation_bytes <= memory
    assert (tmp_path / "r" / "capacity.png").stat().st_size > 0
    assert Plan.load(path).recommended is None  # --out leaves the profiled plan alone


def test_run_and_simulate_with_a_plan(setup, tmp_path, capsys):
    _, _, plan, path, root, trace = setup
    rec_path = plan.with_recommendation(
        plan.recommended or _rec()).save(tmp_path / "rec.json")
    assert main(["run", str(root), str(trace), "--plan", str(rec_path), "--backlog", "--json",
                 "--storage", "sata-530"]) == 0
    captured = capsys.readouterr()
    real = json.loads(captured.out)
    assert "predicted for storage 'none'" in captured.err  # the plan assumed another storage
    assert len(real["switches_per_executor"]) == 1  # the recommendation's cpu:1
    assert real["budget_bytes"] == _rec().budget_bytes
    assert real["cost_source"].startswith("plan")
    assert main(["simulate", str(root), str(trace), "--plan", str(rec_path), "--backlog", "--json",
                 "--storage", "sata-530"]) == 0
    sim = json.loads(capsys.readouterr().out)
    assert sim.keys() == real.keys()
    assert sim["budget_bytes"] == real["budget_bytes"] and sim["num_completed"] == real["num_completed"]


def _rec():
    from coserve.planfile import Recommendation

    return Recommendation("cpu:1", 40_000_000, 20_000_000, 20_000_000, "none", 100.0)


def test_unreachable_target_and_bad_options(setup, capsys):
    _, _, _, path, root, trace = setup
    assert main(["plan", str(root), str(trace), "--plan", str(path), "--target-throughput", "1e9",
                 "--executors-options", "cpu:1", "--points", "3"]) == 1
    assert "no memory size reaches" in capsys.readouterr().out
    assert main(["plan", str(root), str(trace), "--plan", str(path), "--budget-bytes", "1000000",
                 "--executors-options", "gpu:9"]) == 2
    assert main(["simulate", str(root), str(trace), "--plan", str(path.parent / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_plan_from_another_machine_is_flagged(setup, tmp_path, capsys):
    _, _, plan, _, root, trace = setup
    other = plan.__class__(**{**plan.__dict__, "machine": {**plan.machine, "cpu_count": 96}})
    path = other.save(tmp_path / "other.json")
    assert main(["simulate", str(root), str(trace), "--plan", str(path), "--backlog", "--json"]) == 0
    assert "profiled on 96 cores" in capsys.readouterr().err
    assert other.machine_differences(96, plan.machine["cuda"]) == []


def test_a_plan_profiled_on_a_busy_machine_is_flagged(setup, tmp_path, capsys):
    _, _, plan, _, root, trace = setup
    assert "load_average_1m" in plan.machine  # recorded when profiling starts
    cpus = plan.machine["cpu_count"]
    busy = plan.__class__(**{**plan.__dict__, "machine": {**plan.machine, "load_average_1m": 0.9 * cpus}})
    path = busy.save(tmp_path / "busy.json")
    assert main(["simulate", str(root), str(trace), "--plan", str(path), "--backlog", "--json"]) == 0
    assert "profiled while the machine was busy" in capsys.readouterr().err
    quiet = {**plan.machine, "load_average_1m": 0.1 * cpus}
    assert plan.__class__(**{**plan.__dict__, "machine": quiet}).machine_differences(
        cpus, plan.machine["cuda"]) == []
    broken = json.loads(json.dumps(busy.to_json()))
    broken["machine"]["load_average_1m"] = "high"
    with pytest.raises(PlanError, match="load_average_1m"):
        Plan.from_json(broken)
