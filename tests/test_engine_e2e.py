"""End to end on the tiny CoE with real weights: paths and outputs match the rules,
statistics add up, bad requests and broken experts fail only themselves."""

import asyncio
import json
import shutil

import pytest
import torch

from coserve import Engine, EngineConfig, Request, open_repository, parse_executors, read_trace
from coserve.cli import main
from coserve.errors import ConfigError, EngineClosedError, RequestError
from reference_routing import reference

NUM_REQUESTS = 120


@pytest.fixture(scope="module")
def model(tiny_zoo):
    return open_repository(tiny_zoo[0])


@pytest.fixture(scope="module")
def requests(tiny_zoo):
    return read_trace(tiny_zoo[1])[:NUM_REQUESTS]


def config(policy="coserve", **kw):
    kw.setdefault("budget_fraction", 0.3)
    kw.setdefault("executors", parse_executors("cpu:2"))
    return EngineConfig(policy=policy, measure_costs=False, **kw)


def test_every_request_follows_its_rules_with_the_right_outputs(model, requests):
    with Engine(model, config()) as engine:
        results = engine.run_trace(requests, realtime=False)
        stats = engine.stats()
    assert [r.request_id for r in results] == [r.request_id for r in requests]
    passed = 0
    for request, result in zip(requests, results, strict=True):
        assert result.ok, result.error
        path, steps = reference(model, request)
        assert list(result.path) == path
        for got, (label, detail) in zip(result.steps, steps, strict=True):
            assert got.label == label
            key = "scores" if "scores" in detail else "max_score"
            assert got.detail[key] == pytest.approx(detail[key], abs=1e-4)
        passed += len(path) == 2
    # The classifiers are calibrated to pass most components on to a detector.
    assert 0.6 * len(requests) < passed < len(requests)
    assert stats.num_completed == len(requests) and stats.num_failed == 0
    assert stats.num_switches > 0 and stats.bytes_read > 0
    assert set(stats.switches_by_path) == {"storage->cpu"}
    assert stats.num_pool_hits + stats.num_pool_misses == stats.num_batches


def test_all_resident_never_switches(model, requests):
    with Engine(model, config("all-resident")) as engine:
        results = engine.run_trace(requests[:40], realtime=False)
        stats = engine.stats()
    assert all(r.ok for r in results)
    assert stats.num_switches == 0 and stats.bytes_read == 0
    assert stats.budget_bytes is None


def test_async_infer_and_bad_requests(model, requests):
    with Engine(model, config()) as engine:
        result = asyncio.run(engine.infer(requests[0]))
        assert result.ok and result.path[0] == f"cls-{requests[0].fields['component_type']}"
        with pytest.raises(RequestError, match="component_type"):
            engine.submit(Request("bad-type", {"component_type": "nope"}, requests[0].input))
        with pytest.raises(RequestError, match=r"shape \[3, 32, 32\]"):
            engine.submit(Request("bad-shape", dict(requests[0].fields), torch.zeros(3, 8, 8)))
        # The engine keeps serving after rejecting them.
        assert engine.infer_sync(requests[1], timeout_s=60).ok


def test_an_engine_not_running_refuses_work_without_a_traceback(model, requests):
    engine = Engine(model, config())
    with pytest.raises(EngineClosedError):
        engine.run_trace(requests[:1])
    with pytest.raises(EngineClosedError):
        engine.submit(requests[0])
    with engine:
        assert engine.infer_sync(requests[0], timeout_s=60).ok
    with pytest.raises(EngineClosedError):
        engine.submit(requests[0])
    engine.close()  # a second close is harmless


def test_budget_too_small_says_the_minimum(model):
    with pytest.raises(ConfigError, match="at least"):
        Engine(model, config(budget_fraction=None, budget_bytes=1000))


def test_broken_expert_fails_only_its_requests(tiny_zoo, tmp_path, requests):
    root = tmp_path / "repo"
    shutil.copytree(tiny_zoo[0], root)
    model = open_repository(root)
    # Break a detector after the repository was validated: its file goes missing.
    (root / "weights" / "det-passive.safetensors").unlink()
    with Engine(model, config()) as engine:
        results = engine.run_trace(requests, realtime=False)
    needs_broken = {"R", "C", "L"}
    failed = [r for r in results if not r.ok]
    assert failed, "some requests must have reached the broken detector"
    for r in failed:
        assert r.fields["component_type"] in needs_broken
        assert "det-passive" in r.error
    assert all(r.ok for r in results if r.fields["component_type"] not in needs_broken)
    assert len(results) == len(requests)  # none lost


def test_cli_run_json(tiny_zoo, capsys):
    root, trace = tiny_zoo
    code = main(["run", str(root), str(trace), "--policy", "samba", "--budget-fraction", "0.3",
                 "--backlog", "--no-measure", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    for key in ("policy", "num_requests", "throughput_rps", "num_switches", "bytes_read",
                "latency_p50_s", "latency_p99_s", "budget_bytes", "total_expert_bytes"):
        assert key in out
    assert out["policy"] == "samba" and out["num_requests"] == len(read_trace(trace))
    assert out["budget_bytes"] == int(0.3 * out["total_expert_bytes"])


def test_cli_reports_bad_input_without_traceback(tiny_zoo, capsys, tmp_path):
    code = main(["run", str(tmp_path), str(tiny_zoo[1])])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and "Traceback" not in err


def test_coserve_switches_less_than_samba_on_a_skewed_trace(model, tiny_zoo):
    """One executor and a backlog queued whole before the first batch: deterministic."""
    requests = read_trace(tiny_zoo[1])
    switches = {}
    for policy in ("samba", "coserve", "coserve"):
        cfg = config(policy, budget_fraction=0.3, executors=parse_executors("cpu:1"))
        with Engine(model, cfg) as engine:
            assert all(r.ok for r in engine.run_trace(requests, realtime=False))
            switches.setdefault(policy, []).append(engine.stats().num_switches)
    coserve_runs, samba = switches["coserve"], switches["samba"][0]
    assert coserve_runs[0] == coserve_runs[1], "the same run must switch the same"
    assert coserve_runs[0] * 3 < samba, switches


def test_usage_from_a_routed_sample_drives_placement(model, requests):
    from coserve.repository import usage_from_sample

    # A sample in which only the rare "F" components appear: placement must follow it.
    sample = [("cls-F", "det-misc")] * 9 + [("cls-F",)]
    usage = usage_from_sample(model, sample)
    assert usage["cls-F"] == 1.0 and usage["det-misc"] == pytest.approx(0.9)
    cfg = config(executors=parse_executors("cpu:1"))
    with Engine(model, cfg, usage=usage) as engine:
        assert {"cls-F", "det-misc"} <= engine.resident()[0]
    with Engine(model, cfg) as engine:
        assert "cls-F" not in engine.resident()[0]
    with pytest.raises(ConfigError, match="unknown experts"):
        Engine(model, cfg, usage={"nope": 1.0})


def test_failing_routing_rule_fails_only_its_requests(tiny_zoo, tmp_path, requests):
    import yaml

    root = tmp_path / "repo"
    shutil.copytree(tiny_zoo[0], root)
    spec = yaml.safe_load((root / "coe.yaml").read_text())
    spec["routing"]["callable"] = "routing_fixtures:route_or_raise"
    (root / "coe.yaml").write_text(yaml.safe_dump(spec))
    model = open_repository(root, trust_code=True)
    with Engine(model, config(executors=parse_executors("cpu:1"))) as engine:
        results = engine.run_trace(requests, realtime=False)
        after = engine.infer_sync(requests[0], timeout_s=60)  # the executor is still alive
    by_type = {}
    for r in results:
        by_type.setdefault(r.fields["component_type"], []).append(r)
    assert by_type["D"] and all(not r.ok and "boom" in r.error for r in by_type["D"])
    assert all(r.ok for t, rs in by_type.items() if t != "D" for r in rs)
    assert after.ok == (requests[0].fields["component_type"] != "D")
