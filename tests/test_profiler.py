"""The offline profiler on the tiny CoE: what the plan holds, not how fast this machine is."""

import pytest
import torch
from safetensors.torch import load_file

from coserve.cli import main
from coserve.errors import ConfigError
from coserve.loader.storage import Storage, storage_profile
from coserve.planfile import STORAGE_PATH, Plan
from coserve.profiler import profile_repository
from coserve.profiler.measure import fit_load, latency_curve, load_profile
from coserve.repository import Stage, open_repository
from coserve.trace import read_trace

BATCH_SIZES = (1, 2, 4)
NUM_SAMPLE = 40


@pytest.fixture(scope="module")
def model(tiny_zoo):
    return open_repository(tiny_zoo[0])


@pytest.fixture(scope="module")
def sample(tiny_zoo):
    return read_trace(tiny_zoo[1])[:NUM_SAMPLE]


@pytest.fixture(scope="module")
def plan(model):
    return profile_repository(model, processors=("cpu",), threads=1, batch_sizes=BATCH_SIZES,
                              max_executors=1)


@pytest.fixture(scope="module")
def sampled_plan(model, sample):
    return profile_repository(model, processors=("cpu",), threads=1, batch_sizes=(1,),
                              max_executors=1, calibration_requests=100,
                              sample=sample, inputs_from=sample)


def test_every_architecture_has_a_cpu_profile(model, plan):
    assert set(plan.processors) == {"cpu"}
    assert set(plan.processors["cpu"]) == set(model.architectures)
    for arch, profile in plan.processors["cpu"].items():
        assert set(profile.latency_s) == set(BATCH_SIZES)
        assert all(s > 0 for s in profile.latency_s.values())
        assert profile.cost.k_s > 0 and profile.cost.b_s >= 0
        assert profile.cost.max_batch in BATCH_SIZES
        assert profile.cost.item_bytes > 0
        footprints = {e.num_bytes for e in model.experts.values() if e.architecture == arch}
        assert profile.footprint_bytes in footprints
        assert profile.fit_rmse_s >= 0 and profile.fit_max_rel_error >= 0


def test_plan_metadata_and_load_model(model, plan):
    storage = plan.loads[STORAGE_PATH]
    assert storage.bytes_per_s > 0 and storage.fixed_s >= 0 and storage.samples > 0
    assert plan.threads == {"cpu": 1}
    assert plan.repository == model.name
    assert plan.machine["batch_sizes"] == list(BATCH_SIZES)
    assert plan.machine["torch"] == torch.__version__
    assert plan.recommended is None
    plan.check_covers(model)  # what the engine checks before using it
    assert plan.cost_model(model).storage_bytes_per_s == storage.bytes_per_s


def test_usage_without_a_sample_is_the_rules(model, plan):
    assert plan.usage_source == "rules"
    assert plan.usage == dict(model.usage)
    assert plan.label_probs == {e: dict(p) for e, p in model.label_probs.items()}


def test_plan_round_trips_through_its_file(plan, tmp_path):
    loaded = Plan.load(plan.save(tmp_path / "plan.json"))
    assert loaded.to_json() == plan.to_json()


def test_usage_from_a_routed_sample(model, sampled_plan):
    assert sampled_plan.usage_source == f"routed sample of {NUM_SAMPLE} requests"
    assert set(sampled_plan.usage) == set(model.experts)
    stage = {e.name: e.stage for e in model.experts.values()}
    first = [e for e in model.experts if stage[e] is Stage.PRELIMINARY]
    # Every request starts at exactly one classifier...
    assert sum(sampled_plan.usage[e] for e in first) == pytest.approx(1.0)
    # ...and goes on to one detector exactly when the classifier said "pass".
    passed = sum(sampled_plan.usage[e] * sampled_plan.label_probs[e]["pass"] for e in first)
    detectors = sum(u for e, u in sampled_plan.usage.items() if stage[e] is Stage.SUBSEQUENT)
    assert detectors == pytest.approx(passed)
    for expert, probs in sampled_plan.label_probs.items():
        assert sum(probs.values()) == pytest.approx(1.0), expert


def test_experts_the_sample_never_reached_keep_the_rules_label_probs(model, sampled_plan):
    unreached = [e for e, u in sampled_plan.usage.items() if u == 0]
    assert unreached, "the 40-request sample should miss a rare component type"
    for expert in unreached:
        assert sampled_plan.label_probs[expert] == dict(model.label_probs[expert])


def test_progress_is_reported_step_by_step(model):
    calls = []
    profile_repository(model, processors=("cpu",), threads=1, batch_sizes=(1,), max_executors=1,
                       progress=lambda what, done, total: calls.append((what, done, total)))
    total = len(model.architectures) + 1  # each architecture on the cpu, then the storage reads
    assert [c[1:] for c in calls] == [(i, total) for i in range(total + 1)]
    assert {f"{arch} on cpu" for arch in model.architectures} <= {c[0] for c in calls}


def test_profiling_restores_the_thread_setting(model):
    before = torch.get_num_threads()
    profile_repository(model, processors=("cpu",), threads=before + 1, batch_sizes=(1,),
                       max_executors=1)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("kwargs, match", [
    ({"processors": ("tpu",)}, "processors"),
    ({"batch_sizes": ()}, "batch sizes"),
    ({"batch_sizes": (0, 1)}, "batch sizes"),
    ({"threads": 0}, "threads"),
    ({"sample": []}, "sample is empty"),
])
def test_bad_settings_are_config_errors(model, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        profile_repository(model, **{"batch_sizes": (1,), **kwargs})


def test_a_sample_for_another_repository_is_a_config_error(model, sample):
    foreign = [type(r)(r.request_id, {"component_type": "nope"}, r.input) for r in sample[:3]]
    with pytest.raises(ConfigError, match="none of the 3 sample requests"):
        profile_repository(model, processors=("cpu",), batch_sizes=(1,), sample=foreign)


def _weights(model, arch):
    expert = next(e for e in model.experts.values() if e.architecture == arch)
    return model.architectures[arch], load_file(expert.weights_path)


def test_latency_curve_stops_after_a_slow_batch(model):
    spec, tensors = _weights(model, "cls-tiny")
    assert list(latency_curve(spec, tensors, "cpu", (4, 1, 2), repeats=1)) == [1, 2, 4]
    assert list(latency_curve(spec, tensors, "cpu", (1, 2, 4), repeats=1, max_batch_s=0.0)) == [1]


def test_latency_curve_checks_its_inputs(model):
    spec, tensors = _weights(model, "cls-tiny")
    with pytest.raises(ConfigError, match="input_shape"):
        latency_curve(spec, tensors, "cpu", (1,), inputs=[torch.zeros(1, 8, 8)])
    with pytest.raises(ConfigError, match="repeats"):
        latency_curve(spec, tensors, "cpu", (1,), repeats=0)


def test_fit_load_separates_fixed_cost_from_bandwidth():
    bps, fixed_s = 500e6, 0.002
    points = [(b, fixed_s + b / bps) for b in (2e6, 2e6, 7e6, 7e6)]
    load = fit_load(points, lambda: pytest.fail("sizes differ enough to fit"))
    assert load.bytes_per_s == pytest.approx(bps)
    assert load.fixed_s == pytest.approx(fixed_s)
    assert load.samples == 4


def test_fit_load_of_one_size_takes_the_raw_bandwidth():
    points = [(7e6, 0.003 + 7e6 / 1e9), (7e6, 0.005 + 7e6 / 1e9), (7e6, 0.004 + 7e6 / 1e9)]
    load = fit_load(points, lambda: 1e9)
    assert load.bytes_per_s == 1e9
    assert load.fixed_s == pytest.approx(0.004)
    assert fit_load(points, lambda: 1e6).fixed_s == 0.0  # floored: no negative fixed cost


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_profiling_cuda_without_a_device_says_so(model):
    with pytest.raises(ConfigError, match="no CUDA device"):
        profile_repository(model, processors=("cpu", "cuda"), batch_sizes=(1,))
    with pytest.raises(ConfigError, match="no CUDA device"):
        load_profile(model, list(model.experts)[:1], Storage(storage_profile("none")), "cuda")


def test_cli_profile_writes_a_loadable_plan(tiny_zoo, tmp_path, capsys):
    root, trace = tiny_zoo
    out = tmp_path / "plan.json"
    assert main(["profile", str(root), "--out", str(out), "--batch-sizes", "1,2",
                 "--sample", str(trace), "--sample-size", "20", "--threads", "1",
                 "--max-executors", "1", "--calibration-requests", "40"]) == 0
    plan = Plan.load(out)
    plan.check_covers(open_repository(root))
    assert plan.usage_source == "routed sample of 20 requests"
    assert all(set(p.latency_s) == {1, 2} for p in plan.processors["cpu"].values())
    printed = capsys.readouterr().out
    assert "cls-tiny" in printed and "MB/s" in printed and f"wrote {out}" in printed


@pytest.mark.parametrize("args, match", [
    (["{missing}", "--out", "{out}"], "coe.yaml does not exist"),
    (["{root}", "--out", "{out}", "--sample", "{missing}"], "does not exist"),
    (["{root}", "--out", "{out}", "--batch-sizes", "1,x"], "--batch-sizes"),
])
def test_cli_profile_errors_are_one_line(tiny_zoo, tmp_path, capsys, args, match):
    names = {"root": tiny_zoo[0], "out": tmp_path / "plan.json", "missing": tmp_path / "nope"}
    assert main(["profile", *(a.format(**names) for a in args)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and match in err[-1]
    assert not (tmp_path / "plan.json").exists()
