"""Budgets per device: the CPU pool keeps --budget-bytes' meaning, each GPU has its own
(bytes or a fraction of its memory) split over its executors and checked against what
the device has (a fixed-size device stands in for the GPU this machine lacks), activation
memory per device, and the host cache on by default beside a GPU executor."""

import pytest
import torch

from coserve.assembly import Assembly
from coserve.cli import main
from coserve.config import DEFAULT_HOST_CACHE_FRACTION, EngineConfig
from coserve.engine.engine import Engine
from coserve.errors import ConfigError
from coserve.executors.budgets import (
    CUDA_RESERVE_BYTES,
    DeviceBudget,
    FixedDevices,
    parse_gpu_budgets,
)
from coserve.executors.spec import parse_executors
from coserve.repository import open_repository
from coserve.simulator import simulate
from coserve.trace import read_trace
from device_fixtures import plan_with_cuda

GB = 10**9


@pytest.fixture(scope="module")
def model(tiny_zoo):
    return open_repository(tiny_zoo[0])


def _config(executors, **kw):
    return EngineConfig(executors=parse_executors(executors), measure_costs=False, **kw)


def _largest(model):
    return max(e.num_bytes for e in model.experts.values())


# -- the option's syntax -------------------------------------------------------------------
def test_gpu_budget_syntax():
    assert parse_gpu_budgets("0.8") == (DeviceBudget("cuda", memory_fraction=0.8),)
    assert parse_gpu_budgets("12e9") == (DeviceBudget("cuda", budget_bytes=12 * GB),)
    assert parse_gpu_budgets("cuda:0=12e9, cuda:1=0.5") == (
        DeviceBudget("cuda:0", budget_bytes=12 * GB), DeviceBudget("cuda:1", memory_fraction=0.5))
    assert parse_gpu_budgets("1") == (DeviceBudget("cuda", memory_fraction=1.0),)  # all of it


@pytest.mark.parametrize("text", ["", "lots", "-3", "0", "cpu=1e9", "cuda:x=0.5", "cuda:0=0.5,cuda:0=1e9"])
def test_a_bad_gpu_budget_says_how_to_write_one(text):
    with pytest.raises(ConfigError, match="12e9|twice|cuda:N"):
        parse_gpu_budgets(text)


def test_device_budgets_are_validated():
    with pytest.raises(ConfigError, match="fraction of memory is for GPU"):
        DeviceBudget("cpu", memory_fraction=0.5)
    with pytest.raises(ConfigError, match="not both"):
        DeviceBudget("cuda:0", budget_bytes=10, memory_fraction=0.5)
    with pytest.raises(ConfigError, match="twice"):
        EngineConfig(device_budgets=(DeviceBudget("cuda", budget_bytes=10),) * 2)
    with pytest.raises(ConfigError, match="host_cache_bytes"):
        EngineConfig(host_cache_bytes=-1)


# -- pools per device ----------------------------------------------------------------------
def test_a_cpu_only_config_splits_as_before(model):
    """The paper's pools: each CPU executor its half."""
    budget = 4 * _largest(model)
    a = Assembly.of(model, _config("cpu:2", budget_bytes=budget, policy="coserve-paper"))
    assert a.pool_budgets == [budget // 2, budget // 2]
    assert a.shared_pools == []
    assert a.budget_bytes == budget
    assert a.host_cache_bytes == 0  # no GPU executor: host RAM is the executing tier
    assert a.activation_bytes == [EngineConfig().activation_bytes] * 2


def test_coserve_shares_one_pool_between_the_cpu_executors(model):
    """Each CPU executor's pool is the whole CPU budget, one pool between them; so the
    budget need only hold the largest expert once (the paper's halves need it twice)."""
    budget = 4 * _largest(model)
    a = Assembly.of(model, _config("cpu:2", budget_bytes=budget))
    assert a.shared_pools == [(0, 1)]
    assert a.pool_budgets == [budget, budget] and a.budget_bytes == budget
    Assembly.of(model, _config("cpu:2", budget_bytes=_largest(model)))  # fits once
    with pytest.raises(ConfigError, match="too small for 2 executor"):
        Assembly.of(model, _config("cpu:2", budget_bytes=_largest(model), policy="coserve-paper"))


def test_each_device_splits_its_own_budget(model):
    cpu, gpu = 2 * _largest(model), 3 * _largest(model)
    config = _config("cpu:1,cuda:0:3", budget_bytes=cpu,
                     device_budgets=parse_gpu_budgets(str(gpu)))
    a = Assembly.of(model, config, devices=FixedDevices({"cuda:0": 8 * GB}))
    assert a.processors == ["cpu", "cuda:0", "cuda:0", "cuda:0"]
    assert a.pool_budgets == [cpu, gpu // 3, gpu // 3, gpu // 3]
    assert a.budget_bytes == cpu + gpu
    assert [(p.device, p.executors) for p in a.pools] == [("cpu", (0,)), ("cuda:0", (1, 2, 3))]


def test_without_its_own_budget_a_gpu_gets_the_configured_one(model):
    """`--budget-fraction 0.2 --executors cuda:0:3,cpu:1`: 20% of expert bytes on each device."""
    config = _config("cuda:0:3,cpu:1", budget_fraction=0.6)
    a = Assembly.of(model, config, devices=FixedDevices({"cuda:0": 8 * GB}))
    share = int(0.6 * model.total_expert_bytes)
    assert a.pool_budgets == [share // 3] * 3 + [share]


def test_a_fraction_is_of_the_gpus_total_memory(model):
    config = _config("cuda:0:2,cuda:1:1", device_budgets=parse_gpu_budgets("cuda:0=0.5,cuda:1=0.25"))
    devices = FixedDevices({"cuda:0": 8 * GB, "cuda:1": 4 * GB})
    a = Assembly.of(model, config, devices=devices)
    assert a.pool_budgets == [2 * GB, 2 * GB, 1 * GB]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_fraction_on_an_unknown_machine_asks_for_bytes(model):
    config = _config("cuda:0:1", device_budgets=parse_gpu_budgets("0.5"))
    with pytest.raises(ConfigError, match="give it in bytes"):
        Assembly.of(model, config)  # a simulated machine, and this one has no GPU to ask


def test_a_gpu_budget_must_fit_the_free_memory_less_the_reserve(model):
    activation = 64 << 20
    free = CUDA_RESERVE_BYTES + 2 * activation + 10 * _largest(model)
    devices = FixedDevices({"cuda:0": 16 * GB}, free_bytes={"cuda:0": free})
    fits = _config("cuda:0:2", activation_bytes=activation,
                   device_budgets=(DeviceBudget("cuda", budget_bytes=10 * _largest(model)),))
    assert Assembly.of(model, fits, devices=devices).budget_bytes == 10 * _largest(model)
    too_big = _config("cuda:0:2", activation_bytes=activation,
                      device_budgets=(DeviceBudget("cuda", budget_bytes=10 * _largest(model) + 1),))
    with pytest.raises(ConfigError, match=r"cuda:0 cannot hold its budget.*reserved for the CUDA "
                                          r"context.*give --gpu-budget-bytes at most") as err:
        Assembly.of(model, too_big, devices=devices)
    assert "\n" not in str(err.value)
    fraction = _config("cuda:0:2", device_budgets=parse_gpu_budgets("0.9"))
    with pytest.raises(ConfigError, match="cannot hold"):
        Assembly.of(model, fraction, devices=devices)


def test_all_resident_on_a_gpu_must_hold_every_expert(model):
    small = FixedDevices({"cuda:0": CUDA_RESERVE_BYTES + model.total_expert_bytes})
    with pytest.raises(ConfigError, match="unlimited budget"):
        Assembly.of(model, _config("cuda:0:1", policy="all-resident"), devices=small)
    big = FixedDevices({"cuda:0": 2 * CUDA_RESERVE_BYTES + model.total_expert_bytes})
    assert Assembly.of(model, _config("cuda:0:1", policy="all-resident"), devices=big).budget_bytes is None


def test_each_gpu_pool_must_hold_the_largest_expert(model):
    config = _config("cuda:0:4", device_budgets=(DeviceBudget("cuda", budget_bytes=_largest(model)),))
    with pytest.raises(ConfigError, match="cuda:0: budget .* too small for 4 executor"):
        Assembly.of(model, config, devices=FixedDevices({"cuda:0": 8 * GB}))


def test_activation_memory_per_device(model):
    config = _config("cpu:1,cuda:0:2", activation_bytes=100 << 20,
                     device_budgets=(DeviceBudget("cuda:0", activation_bytes=1 << 30),))
    a = Assembly.of(model, config, devices=FixedDevices({"cuda:0": 80 * GB}))
    assert a.activation_bytes == [100 << 20, 1 << 30, 1 << 30]


def test_the_host_cache_is_on_by_default_beside_a_gpu(model):
    total = model.total_expert_bytes
    gpu = FixedDevices({"cuda:0": 8 * GB})
    assert Assembly.of(model, _config("cpu:1,cuda:0:1"), devices=gpu).host_cache_bytes == int(
        DEFAULT_HOST_CACHE_FRACTION * total)
    small_host = FixedDevices({"cuda:0": 8 * GB}, host_bytes=total)
    assert Assembly.of(model, _config("cuda:0:1"), devices=small_host).host_cache_bytes == total // 4
    off = _config("cuda:0:1", host_cache_bytes=0)
    assert Assembly.of(model, off, devices=gpu).host_cache_bytes == 0
    assert Assembly.of(model, _config("cpu:1")).host_cache_bytes == 0


# -- on this machine -----------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_machine_without_one_is_one_clear_line(model, tiny_zoo, capsys):
    with pytest.raises(ConfigError, match="need CUDA, which this machine lacks"):
        Engine(model, _config("cuda:0:1"))
    root, trace = tiny_zoo
    code = main(["run", str(root), str(trace), "--executors", "cpu:1,cuda:0:2",
                 "--gpu-budget-bytes", "0.5", "--no-measure"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error:") and "need CUDA" in err and "\n" not in err


def test_the_simulator_runs_a_per_device_config(model, tiny_zoo):
    requests = read_trace(tiny_zoo[1])[:150]
    plan = plan_with_cuda(model)
    gpu = 4 * _largest(model)
    config = EngineConfig(executors=parse_executors("cpu:1,cuda:0:2"), storage="sata-530",
                          budget_bytes=2 * _largest(model),
                          device_budgets=(DeviceBudget("cuda:0", budget_bytes=gpu,
                                                       activation_bytes=ITEMS_OF_32),))
    stats, results = simulate(model, requests, config, backlog=True, plan=plan)
    assert all(r.ok for r in results) and len(results) == len(requests)
    assert stats.budget_bytes == 2 * _largest(model) + gpu
    cpu_only = simulate(model, requests, EngineConfig(executors=parse_executors("cpu:1"),
                                                      storage="sata-530",
                                                      budget_bytes=2 * _largest(model)),
                        backlog=True, plan=plan)[0]
    # The plan's GPU is ~8x faster per item: two GPU executors beside the CPU finish sooner.
    assert stats.throughput_rps > 2 * cpu_only.throughput_rps


ITEMS_OF_32 = 32 * (2 << 20)  # a full GPU batch of the plan's item bytes


def test_simulating_gpu_executors_needs_a_plan_with_cuda_profiles(model, tiny_zoo):
    requests = read_trace(tiny_zoo[1])[:20]
    config = EngineConfig(executors=parse_executors("cuda:0:1"), budget_fraction=0.5)
    with pytest.raises(ConfigError, match="no cuda profile for the executors on cuda:0"):
        simulate(model, requests, config, backlog=True, plan=plan_with_cuda(model, cpu_only=True))


def test_the_scheduler_splits_by_each_executors_activation_memory():
    from coserve.plan import ArchCost, CostModel
    from coserve.scheduler.arrange import FifoArrange
    from coserve.scheduler.assign import MinMaxLatencyAssign
    from coserve.scheduler.queues import Scheduler
    from coserve.scheduler.select import HeadSelect
    from coserve.scheduler.task import Task

    cost = ArchCost(0.01, 0.001, 16, 1)  # one byte per batch item
    costs = CostModel(arch_of={"a": "x", "b": "x"}, expert_bytes={"a": 1, "b": 1},
                      arch_costs={("x", "cpu"): cost, ("x", "cuda"): cost},
                      storage_bytes_per_s=1e9, storage_fixed_s=0.0)
    clock = iter(range(1000)).__next__
    s = Scheduler(processors=["cpu", "cuda:0"], assign=MinMaxLatencyAssign(), arrange=FifoArrange(),
                  select=HeadSelect(), costs=costs, activation_bytes=[3, 7],
                  resident_of=lambda i: frozenset(), in_host=lambda e: False,
                  clock=lambda: float(clock()))
    queued = [0, 0]
    for i, expert in enumerate("ab" * 6):
        queued[s.enqueue(Task(request_id=f"r{i}", expert=expert, enqueued_s=0.0))] += 1
    assert queued == [6, 6]  # one expert per executor
    assert [len(s.take_batch(i).tasks) for i in (0, 1)] == [3, 6]  # 3 fit the CPU's, all the GPU's
