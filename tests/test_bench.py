"""The pcb workload at tiny size, its traces, and the benchmark's report schema."""

import hashlib
import json

import pytest
import yaml

from coserve import EngineConfig, open_repository, parse_executors, read_trace
from coserve.bench.report import write_reports
from coserve.bench.runner import inspection_accuracy, run_bench
from coserve.cli import main
from coserve.zoo.pcb import BOARDS_FILE, build_pcb, pcb_requests

RUN_KEYS = ("policy", "num_requests", "throughput_rps", "num_switches", "bytes_read",
            "latency_p50_s", "latency_p99_s", "budget_bytes", "total_expert_bytes")
BENCH_KEYS = ("arrivals", "accuracy", "switches_over_floor", "deadline_misses", "deadline_miss_rate")


@pytest.fixture(scope="module")
def pcb_tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("pcb") / "pcb-tiny"
    build_pcb(root, size="tiny")
    return root


def test_tiny_pcb_zoo_is_a_valid_two_stage_repository(pcb_tiny):
    model = open_repository(pcb_tiny)
    meta = yaml.safe_load((pcb_tiny / BOARDS_FILE).read_text())
    classifiers = [e for e in model.experts if e.startswith("cls-")]
    detectors = [e for e in model.experts if e.startswith("det-")]
    assert len(classifiers) == 12 and len(detectors) >= 2
    # Detectors are shared: fewer detectors than component types routed to them.
    routed = {model.router.next(c, "pass", {})[0] for c in classifiers}
    assert routed == set(detectors)
    assert set(meta["boards"]) == {"A", "B"}
    assert all(model.router.next(c, "defect", {}) == () for c in classifiers)
    # Every expert has its own weights.
    digests = {hashlib.sha256((pcb_tiny / "weights" / f"{e}.safetensors").read_bytes()).digest()
               for e in model.experts}
    assert len(digests) == len(model.experts)
    assert min(meta["classifier_accuracy_at_10pct"].values()) > 0.8


def test_pcb_trace_is_deterministic_and_carries_ground_truth(pcb_tiny, tmp_path):
    a = pcb_requests(pcb_tiny, board="A", num_requests=200)
    b = pcb_requests(pcb_tiny, board="A", num_requests=200)
    assert [r.fields for r in a] == [r.fields for r in b]
    assert all((x.input == y.input).all() for x, y in zip(a, b, strict=True))
    defects = sum(r.fields["defect"] is not None for r in a)
    assert 5 <= defects <= 40  # the zoo's 10% defect rate
    assert a[1].arrival_s == pytest.approx(0.004)
    bom = yaml.safe_load((pcb_tiny / BOARDS_FILE).read_text())["boards"]["B"]
    assert {r.fields["component_type"] for r in pcb_requests(pcb_tiny, board="B", num_requests=50)} <= set(bom)


def test_bench_rows_reports_and_plots(pcb_tiny, tmp_path):
    model = open_repository(pcb_tiny)
    requests = pcb_requests(pcb_tiny, board="A", num_requests=80)
    config = EngineConfig(budget_fraction=0.4, executors=parse_executors("cpu:2"), measure_costs=False)
    policies = ("samba", "coserve", "all-resident")
    run = run_bench(model, requests, config, policies=policies,
                    sweep_fractions=(0.5,), sweep_policies=("coserve",), trace="test")
    paths = write_reports(run, tmp_path / "out.json", tmp_path / "report")
    data = json.loads((tmp_path / "out.json").read_text())
    # Both arrival modes by default, one after the other.
    assert [(r["policy"], r["arrivals"]) for r in data["rows"]] == [
        (p, mode) for mode in ("backlog", "trace") for p in policies]
    for row in data["rows"]:
        for key in (*RUN_KEYS, *BENCH_KEYS):
            assert key in row
        assert row["num_requests"] == 80 and row["num_failed"] == 0
        assert 0.8 < row["accuracy"] <= 1.0
        assert 0 <= row["deadline_misses"] <= 80
        assert row["deadline_miss_rate"] == pytest.approx(row["deadline_misses"] / 80)
    meta = data["metadata"]
    assert meta["storage"] == "none" and meta["budget_fraction"] == pytest.approx(0.4, abs=0.01)
    assert meta["raw_storage_bytes_per_s"] > 0 and meta["cpu_cores"] >= 1
    assert meta["arrivals"] == ["backlog", "trace"] and meta["sweep_arrivals"] == "backlog"
    assert_switch_floor(meta, data["rows"], len(model.experts))
    sweep = data["sweep"][0]
    assert sweep["budget_fraction"] == 0.5 and sweep["arrivals"] == "backlog"
    assert 0 <= sweep["switch_floor"] <= meta["num_experts_needed"]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| policy | arrivals |" in report and "coserve" in report and "Budget sweep" in report
    assert "switch floor" in report and "| trace |" in report and "| backlog |" in report
    pngs = [p for p in paths if p.suffix == ".png"]
    assert {p.name for p in pngs} == {"policies.png", "budget_sweep.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def assert_switch_floor(meta: dict, rows: list[dict], num_experts: int) -> None:
    """coserve loads every needed expert its initial placement lacks at least once: its
    rows are at or over the floor; all-resident holds everything and never switches."""
    floor = meta["switch_floor"]
    assert 0 <= floor <= meta["num_experts_needed"] <= num_experts
    for row in rows:
        if floor:
            assert row["switches_over_floor"] == pytest.approx(row["num_switches"] / floor)
        else:
            assert row["switches_over_floor"] is None
        if row["policy"] == "coserve":
            assert row["num_switches"] >= floor
        if row["policy"] == "all-resident":
            assert row["num_switches"] == 0


def test_accuracy_needs_ground_truth(tiny_zoo):
    from coserve.types import Result, Step

    step = Step(expert="cls-R", label="defect", detail={}, executor=0, batch_size=1,
                queued_s=0.0, exec_s=0.0)
    right = Result(request_id="a", ok=True, steps=(step,), submitted_s=0, completed_s=1, fields={"defect": "missing"})
    wrong = Result(request_id="b", ok=True, steps=(step,), submitted_s=0, completed_s=1, fields={"defect": None})
    assert inspection_accuracy([right, wrong]) == 0.5
    assert inspection_accuracy([Result(request_id="c", ok=True, steps=(step,), submitted_s=0, completed_s=1, fields={})]) is None


def test_cli_trace_make_and_bench_json(pcb_tiny, tmp_path, capsys):
    trace = tmp_path / "a.jsonl"
    assert main(["trace", "make", str(pcb_tiny), "--out", str(trace), "--num", "40", "--backlog"]) == 0
    assert len(read_trace(trace)) == 40 and read_trace(trace)[-1].arrival_s == 0
    out = tmp_path / "bench.json"
    # A latency target no answer can meet: every answer is late.
    code = main(["bench", str(pcb_tiny), str(trace), "--policies", "samba,coserve", "--sweep", "",
                 "--budget-fraction", "0.4", "--storage", "none", "--no-measure", "--no-plan",
                 "--arrivals", "trace", "--latency-target-s", "1e-9",
                 "--json-out", str(out), "--report-dir", str(tmp_path / "r")])
    assert code == 0
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert [(r["policy"], r["arrivals"]) for r in rows] == [("samba", "trace"), ("coserve", "trace")]
    assert all(r["deadline_misses"] == 40 and r["deadline_miss_rate"] == 1.0 for r in rows)
    assert data["metadata"]["arrivals"] == ["trace"]
    assert "late" in capsys.readouterr().out  # the table's deadline-miss column


def test_bench_with_a_plan_adds_the_planned_row_and_simulated_twins(pcb_tiny, tmp_path):
    from coserve.planfile import Plan
    from coserve.profiler import profile_repository

    trace = tmp_path / "a.jsonl"
    assert main(["trace", "make", str(pcb_tiny), "--out", str(trace), "--num", "60", "--backlog"]) == 0
    model = open_repository(pcb_tiny)
    requests = read_trace(trace)
    plan_path = profile_repository(model, batch_sizes=(1, 2, 4), sample=requests[:20],
                                   calibration_requests=60,
                                   max_executors=1).save(tmp_path / "plan.json")
    out = tmp_path / "bench.json"
    code = main(["bench", str(pcb_tiny), str(trace), "--policies", "samba,coserve", "--sweep", "",
                 "--budget-fraction", "0.4", "--storage", "none", "--plan", str(plan_path),
                 "--repeat", "3", "--json-out", str(out), "--report-dir", str(tmp_path / "r")])
    assert code == 0
    data = json.loads(out.read_text())
    rows = data["rows"]
    names = ["samba", "coserve (default)", "coserve (planned)"]
    assert [(r["policy"], r["arrivals"]) for r in rows] == [
        (n, mode) for mode in ("backlog", "trace") for n in names]
    assert data["metadata"]["planned"]["arrivals"] == "backlog"  # planned for the first mode
    planned = data["metadata"]["planned"]
    memory = int(0.4 * model.total_expert_bytes) + 2 * 256 * 2**20  # budget + default activations
    assert planned["memory_bytes"] == memory
    assert planned["budget_bytes"] + planned["activation_bytes"] * int(planned["executors"][4:]) <= memory
    assert rows[2]["budget_bytes"] == rows[5]["budget_bytes"] == planned["budget_bytes"]
    for row in rows:
        runs = row["throughput_rps_runs"]
        assert len(runs) == 3 and row["throughput_rps"] == sorted(runs)[1]  # the median run
        sim = row["simulated"]
        assert sim["throughput_rps"] > 0 and sim["throughput_ratio"] > 0
    assert all(r["num_completed"] == 60 for r in rows)
    assert "coserve (planned)" in (tmp_path / "r" / "report.md").read_text()
    assert Plan.load(plan_path).recommended is None  # the bench does not rewrite the plan
