"""The plan file: round trip, validation errors that name the key, and the cost model a
plan gives the engine and the simulator."""

import copy
import json

import pytest

from coserve.errors import PlanError
from coserve.plan import ArchCost
from coserve.planfile import ArchProfile, LoadProfile, Plan, Recommendation


def make_plan(archs=("cls", "det"), experts=("a", "b")) -> Plan:
    profiles = {
        arch: ArchProfile(ArchCost(0.002 * (i + 1), 0.001, 8, 1 << 20),
                          {1: 0.003, 2: 0.005, 4: 0.009}, 1e-4, 0.03, 11_000_000)
        for i, arch in enumerate(archs)
    }
    return Plan(
        repository="demo",
        processors={"cpu": profiles},
        threads={"cpu": 1},
        loads={"storage->host": LoadProfile(1.2e9, 0.002, 6)},
        usage={e: 0.5 for e in experts},
        label_probs={e: {"pass": 0.9, "defect": 0.1} for e in experts},
        usage_source="rules",
        machine={"cpu_count": 2, "profiled_at": "2026-11-23T00:00:00+00:00"},
        recommended=Recommendation("cpu:1", 900, 600, 300, "sata-530", 123.4),
    )


def test_round_trip(tmp_path):
    plan = make_plan()
    path = plan.save(tmp_path / "sub" / "plan.json")
    loaded = Plan.load(path)
    assert loaded == plan
    assert loaded.to_json() == plan.to_json()
    assert json.loads(path.read_text())["format"] == "coserve-plan"


def test_without_recommendation_round_trips(tmp_path):
    plan = make_plan().with_recommendation(None)
    assert Plan.load(plan.save(tmp_path / "p.json")).recommended is None


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda d: d.update(format="something-else"), "format"),
        (lambda d: d.update(version=99), "version"),
        (lambda d: d.pop("processors"), "processors"),
        (lambda d: d["processors"].update(tpu={}), "processors"),
        (lambda d: d["processors"]["cpu"]["cls"].update(k_s=-1), "processors.cpu.cls.k_s"),
        (lambda d: d["processors"]["cpu"]["cls"].update(max_batch="8"), "processors.cpu.cls.max_batch"),
        (lambda d: d["processors"]["cpu"]["cls"]["latency_s"].update(zero=0.1), "processors.cpu.cls.latency_s"),
        (lambda d: d["loads"].pop("storage->host"), "loads"),
        (lambda d: d["loads"]["storage->host"].update(bytes_per_s=0), "loads.storage->host.bytes_per_s"),
        (lambda d: d["usage"]["experts"].update(a=1.5), "usage.experts.a"),
        (lambda d: d["usage"]["label_probs"]["a"].update(pass_=-0.1), "usage.label_probs.a.pass_"),
        (lambda d: d["recommended"].pop("budget_bytes"), "recommended.budget_bytes"),
        (lambda d: d["recommended"].update(activation_bytes=float("nan")), "recommended.activation_bytes"),
    ],
)
def test_validation_errors_name_the_key(mutate, key):
    doc = copy.deepcopy(make_plan().to_json())
    mutate(doc)
    with pytest.raises(PlanError) as err:
        Plan.from_json(doc, source="p.json")
    assert f"'{key}'" in str(err.value)
    assert "p.json" in str(err.value) and "coserve profile" in str(err.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(PlanError, match="does not exist"):
        Plan.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PlanError, match="not readable JSON"):
        Plan.load(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(PlanError, match="JSON object"):
        Plan.load(tmp_path / "list.json")


def test_cost_model_for_a_repository(tiny_zoo):
    from coserve.repository import open_repository

    model = open_repository(tiny_zoo[0])
    plan = make_plan(archs=tuple(model.architectures), experts=tuple(model.experts))
    costs = plan.cost_model(model)
    expert = next(iter(model.experts))
    arch = model.experts[expert].architecture
    assert costs.exec_s(expert, "cpu", 4) == pytest.approx(plan.processors["cpu"][arch].cost.exec_s(4))
    num_bytes = model.experts[expert].num_bytes
    assert costs.load_s(expert, "cpu", False) == pytest.approx(0.002 + num_bytes / 1.2e9)
    paced = plan.cost_model(model, storage_pace_bytes_per_s=530e6)
    assert paced.load_s(expert, "cpu", False) == pytest.approx(0.002 + num_bytes / 530e6)
    assert "plan" in costs.source


def test_a_plan_for_another_repository_is_refused(tiny_zoo):
    from coserve.repository import open_repository

    model = open_repository(tiny_zoo[0])
    with pytest.raises(PlanError, match="no cpu profile for architectures"):
        make_plan(archs=("other",), experts=tuple(model.experts)).cost_model(model)
    with pytest.raises(PlanError, match="lacks"):
        make_plan(archs=tuple(model.architectures), experts=("nope",)).cost_model(model)


def test_a_measured_curve_is_followed_between_its_points():
    from coserve.plan import ArchCost

    cost = ArchCost(0.001, 0.005, 16, 1, ((1, 0.006), (2, 0.008), (4, 0.010), (16, 0.020)))
    assert cost.exec_s(2) == pytest.approx(0.008)  # measured points exactly
    assert cost.exec_s(3) == pytest.approx(0.009)  # straight between them
    assert cost.exec_s(10) == pytest.approx(0.015)
    assert cost.exec_s(20) == pytest.approx(0.024)  # beyond the curve: K per item
    assert cost.scaled(2).exec_s(3) == pytest.approx(0.018)
    assert ArchCost(0.001, 0.005, 16, 1).exec_s(3) == pytest.approx(0.008)  # no curve: K*n + B


def test_the_cost_model_uses_the_curve_and_the_slowdown(tiny_zoo):
    from coserve.repository import open_repository

    model = open_repository(tiny_zoo[0])
    plan = make_plan(archs=tuple(model.architectures), experts=tuple(model.experts))
    arch = next(iter(model.architectures))
    plan = Plan.from_json({**plan.to_json(), "processors": {"cpu": {
        a: {**p, "slowdown": {"1": 1.0, "2": 1.5}} for a, p in plan.to_json()["processors"]["cpu"].items()}}})
    expert = next(e for e in model.experts.values() if e.architecture == arch).name
    one = plan.cost_model(model, executors_per_kind={"cpu": 1})
    two = plan.cost_model(model, executors_per_kind={"cpu": 2})
    assert one.exec_s(expert, "cpu", 2) == pytest.approx(0.005)  # the measured point, not K*2+B
    assert two.exec_s(expert, "cpu", 2) == pytest.approx(0.0075)
    assert plan.cost_model(model, executors_per_kind={"cpu": 4}).exec_s(expert, "cpu", 2) == \
        pytest.approx(0.0075)  # beyond the measured counts: the largest measured slowdown


# -- hostile plan files: one PlanError naming the file and key, never a traceback -------------
@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda d: d["processors"]["cpu"]["cls"].update(k_s=10**4000), "processors.cpu.cls.k_s"),
        (lambda d: d["processors"]["cpu"]["cls"].update(max_batch=1e300), "processors.cpu.cls.max_batch"),
        (lambda d: d["processors"]["cpu"]["cls"]["latency_s"].update({"²": 0.1}), "processors.cpu.cls.latency_s"),
        (lambda d: d["processors"]["cpu"]["cls"]["latency_s"].update({"9" * 5000: 0.1}), "processors.cpu.cls.latency_s"),
        (lambda d: d.update(repository={"name": "x"}), "repository"),
        (lambda d: d["usage"].update(source=["rules"]), "usage.source"),
        (lambda d: d.update(machine={"cuda": 3}), "machine.cuda"),
        (lambda d: d.update(machine={"cpu_count": "many"}), "machine.cpu_count"),
        (lambda d: d["recommended"].update(executors=7), "recommended.executors"),
        (lambda d: d.update(threads={"cpu": 10**30}), "threads.cpu"),
        (lambda d: d.update(submit_s=float("inf")), "submit_s"),
    ],
)
def test_hostile_values_name_the_key(mutate, key):
    doc = copy.deepcopy(make_plan().to_json())
    mutate(doc)
    with pytest.raises(PlanError) as err:
        Plan.from_json(doc, source="p.json")
    assert f"'{key}'" in str(err.value) and "p.json" in str(err.value), str(err.value)[:300]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('{"format": "coserve-plan", "version": 1, "submit_s": NaN}', "NaN"),
        ('{"format": "coserve-plan", "version": 1, "submit_s": Infinity}', "Infinity"),
        ("[" * 100_000 + "]" * 100_000, "nested"),
        ('{"machine": ' + "[" * 200 + "]" * 200 + "}", "nested"),
        ('{"format": "coserve-plan", "version": ' + "1" * 5000 + "}", "digits"),
    ],
    ids=["nan", "infinity", "deep", "deep-inside", "huge-int"],
)
def test_hostile_json_is_one_plan_error(tmp_path, text, fragment):
    path = tmp_path / "p.json"
    path.write_text(text)
    with pytest.raises(PlanError) as err:
        Plan.load(path)
    assert str(path) in str(err.value) and fragment in str(err.value), str(err.value)[:300]
    assert len(str(err.value)) < 1000


def test_coserve_run_answers_a_bad_plan_with_one_error_line(tiny_zoo, tmp_path, capsys):
    from coserve.cli import main

    plan = tmp_path / "p.json"
    plan.write_text("[" * 100_000 + "]" * 100_000)
    code = main(["run", str(tiny_zoo[0]), str(tiny_zoo[1]), "--plan", str(plan)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and str(plan) in err[0], err
