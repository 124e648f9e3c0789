"""The planner per device, on a plan with cuda profiles (input written as a GPU machine's
profile would be): executor counts per processor, each device's memory split searched on
its own, and `coserve plan` recommending e.g. `cuda:0:3,cpu:1` with each pool's budget."""

import json
from dataclasses import replace

import pytest
import torch

from coserve.assembly import Assembly
from coserve.cli import main
from coserve.config import EngineConfig
from coserve.errors import ConfigError, PlanError
from coserve.executors.budgets import DeviceBudget
from coserve.planfile import Plan, PoolRecommendation, Recommendation
from coserve.planner import Planner, default_executor_options
from coserve.planner.planner import devices_of
from coserve.planner.recommend import apply_recommendation
from coserve.repository import open_repository
from coserve.trace import read_trace
from device_fixtures import plan_with_cuda

NUM_REQUESTS = 120


@pytest.fixture(scope="module")
def setup(tiny_zoo):
    root, trace = tiny_zoo
    model = open_repository(root)
    return model, read_trace(trace)[:NUM_REQUESTS], plan_with_cuda(model)


def _largest(model):
    return max(e.num_bytes for e in model.experts.values())


def test_options_per_processor(setup):
    model, _, plan = setup
    assert devices_of("cuda:0:3,cpu:1") == {"cuda:0": 3, "cpu": 1}
    options = default_executor_options(plan, cores=2)
    assert options[:2] == ["cpu:1", "cpu:2"]
    assert {"cuda:0:1", "cuda:0:3", "cuda:0:3,cpu:1"} <= set(options)
    assert default_executor_options(plan_with_cuda(model, cpu_only=True), cores=2) == ["cpu:1", "cpu:2"]


def test_each_device_splits_its_own_memory(setup):
    model, requests, plan = setup
    cpu_memory, gpu_memory = model.total_expert_bytes // 2, model.total_expert_bytes
    planner = Planner(model, plan, requests, EngineConfig(storage="sata-530"),
                      gpu_memory_bytes={"cuda:0": gpu_memory})
    result = planner.plan_memory(cpu_memory, ["cpu:1", "cuda:0:3,cpu:1"])
    assert set(result.searches) == {"cpu:1", "cuda:0:3,cpu:1 cuda:0", "cuda:0:3,cpu:1 cpu"}
    mixed = [c for c in result.candidates if c.executors == "cuda:0:3,cpu:1"]
    assert mixed
    for c in mixed:
        gpu, cpu = c.pools
        assert (gpu.device, gpu.num_executors, cpu.device, cpu.num_executors) == ("cuda:0", 3, "cpu", 1)
        assert gpu.budget_bytes + 3 * gpu.activation_bytes <= gpu_memory == gpu.memory_bytes
        assert cpu.budget_bytes + cpu.activation_bytes <= cpu_memory == cpu.memory_bytes
        assert c.budget_bytes == gpu.budget_bytes + cpu.budget_bytes
    # The GPU splits were searched with the CPU held, then the CPU's with the GPU's best.
    assert len({c.pools[0].num_resident for c in mixed}) > 1
    assert len({c.pools[1].num_resident for c in mixed}) > 1
    # The plan's GPU is ~8x faster per item than its CPU.
    assert result.best.executors == "cuda:0:3,cpu:1"


def test_a_candidate_runs_as_its_per_device_config(setup):
    model, requests, plan = setup
    planner = Planner(model, plan, requests, EngineConfig(storage="sata-530"),
                      gpu_memory_bytes={"cuda": model.total_expert_bytes})
    best = planner.plan_memory(model.total_expert_bytes // 2, ["cuda:0:2,cpu:1"]).best
    config = best.config(EngineConfig())
    gpu, cpu = best.pools
    assert config.budget_bytes == cpu.budget_bytes and config.activation_bytes == cpu.activation_bytes
    assert config.device_budgets == (DeviceBudget("cuda:0", budget_bytes=gpu.budget_bytes,
                                                  activation_bytes=gpu.activation_bytes),)
    a = Assembly.of(model, config)
    assert a.pool_budgets == [gpu.budget_bytes // 2] * 2 + [cpu.budget_bytes]
    assert a.activation_bytes == [gpu.activation_bytes] * 2 + [cpu.activation_bytes]
    rec = best.recommendation("sata-530")
    assert [p.device for p in rec.pools] == ["cuda:0", "cpu"]
    applied = apply_recommendation(EngineConfig(budget_fraction=0.5), replace(plan, recommended=rec),
                                   keep_executors=False, keep_budget=False)
    assert applied.budget_fraction is None
    assert Assembly.of(model, applied).pool_budgets == a.pool_budgets


def test_gpu_options_need_the_gpus_memory(setup):
    model, requests, plan = setup
    planner = Planner(model, plan, requests)
    with pytest.raises(ConfigError, match="each GPU"):
        planner.plan_memory(model.total_expert_bytes, ["cuda:0:1"])
    cpu_only = Planner(model, plan_with_cuda(model, cpu_only=True), requests,
                       gpu_memory_bytes={"cuda": model.total_expert_bytes})
    with pytest.raises(ConfigError, match="no cuda profile"):
        cpu_only.plan_memory(model.total_expert_bytes, ["cuda:0:1"])


def test_pools_in_the_plan_file(setup, tmp_path):
    _, _, plan = setup
    rec = Recommendation("cuda:0:3,cpu:1", 900, 600, 50, "sata-530", 123.4, None,
                         (PoolRecommendation("cuda:0", 3, 600, 450, 50),
                          PoolRecommendation("cpu", 1, 300, 150, 150)))
    path = plan.with_recommendation(rec).save(tmp_path / "plan.json")
    assert Plan.load(path).recommended == rec
    doc = json.loads(path.read_text())
    doc["recommended"]["pools"][0]["device"] = "gpu0"
    with pytest.raises(PlanError, match=r"recommended.pools.0.device"):
        Plan.from_json(doc)
    del doc["recommended"]["pools"]
    assert Plan.from_json(doc).recommended.pools == ()  # plans written before pools


def test_plan_command_recommends_a_mix_with_each_pools_budget(setup, tiny_zoo, tmp_path, capsys):
    model, _, plan = setup
    root, trace = tiny_zoo
    path = plan.save(tmp_path / "gpu-plan.json")
    out = tmp_path / "planned.json"
    memory = model.total_expert_bytes // 2
    assert main(["plan", str(root), str(trace), "--plan", str(path), "--budget-bytes", str(memory),
                 "--executors-options", "cpu:1;cuda:0:3,cpu:1", "--gpu-memory-bytes",
                 str(model.total_expert_bytes), "--limit", str(NUM_REQUESTS), "--confirm", "0",
                 "--storage", "sata-530", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rec = Plan.load(out).recommended
    assert rec.executors == "cuda:0:3,cpu:1" and [p.device for p in rec.pools] == ["cuda:0", "cpu"]
    gpu, cpu = rec.pools
    assert "recommended for" in printed and "cuda:0 x3: experts" in printed
    assert (f"--executors cuda:0:3,cpu:1 --budget-bytes {cpu.budget_bytes} "
            f"--gpu-budget-bytes cuda:0={gpu.budget_bytes}") in printed


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_plan_command_without_gpu_memory(setup, tiny_zoo, tmp_path, capsys):
    model, _, plan = setup
    root, trace = tiny_zoo
    path = plan.save(tmp_path / "gpu-plan.json")
    args = ["plan", str(root), str(trace), "--plan", str(path), "--budget-bytes",
            str(model.total_expert_bytes // 2), "--limit", "40", "--confirm", "0",
            "--out", str(tmp_path / "out.json")]
    assert main([*args, "--executors-options", "cuda:0:1"]) == 2
    assert "give --gpu-memory-bytes" in capsys.readouterr().err
    assert main(args) == 0  # the default options: the GPU ones left out, with a note
    assert "GPU options left out" in capsys.readouterr().err
    assert Plan.load(tmp_path / "out.json").recommended.executors.startswith("cpu:")
