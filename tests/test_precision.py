"""Precision tiers at rest: `coserve repo quantize` writes fp16/bf16/int8 variants that
validate like any weight file, load at their own size through the same Storage and
expand to fp32 with outputs close to fp32; `--precision` picks what every load reads,
and `auto` is a pure policy."""

import shutil
from dataclasses import replace

import pytest
import torch
import yaml

from coserve import Engine, EngineConfig, open_repository, parse_executors, read_trace
from coserve.cli import main
from coserve.errors import ConfigError, RepositoryError
from coserve.loader.precision import INT8_SCALE_SUFFIX, expand, quantize, variant_layout
from coserve.loader.safetensors_view import parse_safetensors
from coserve.manager.precision import (
    AutoPrecision,
    FixedPrecision,
    LoadContext,
    LoadTimes,
    precision_policy,
)
from coserve.repository.quantize import quantize_repository

NUM_REQUESTS = 80


@pytest.fixture(scope="module")
def quantized(tiny_zoo, tmp_path_factory):
    """A copy of the tiny zoo with int8 and fp16 variants."""
    root = tmp_path_factory.mktemp("quantized") / "repo"
    shutil.copytree(tiny_zoo[0], root)
    quantize_repository(root, "int8")
    quantize_repository(root, "fp16")
    return root


@pytest.fixture(scope="module")
def requests(tiny_zoo):
    return read_trace(tiny_zoo[1])[:NUM_REQUESTS]


def _tensors(path):
    return parse_safetensors(memoryview(bytearray(path.read_bytes())), source=path)


# -- the formats ---------------------------------------------------------------------------
def test_int8_is_per_output_channel_within_half_a_step():
    torch.manual_seed(0)
    w = torch.randn(32, 8, 3, 3) * torch.logspace(-3, 1, 32).reshape(32, 1, 1, 1)  # [O, I, kh, kw]
    bias = torch.randn(32)
    anchors = torch.rand(3, 3, 2) * 400  # small: not worth int8 (and not a weight)
    q = quantize({"conv.weight": w, "conv.bias": bias, "anchors": anchors}, "int8")
    assert q["conv.weight"].dtype == torch.int8
    assert q["conv.bias"].dtype == q["anchors"].dtype == torch.float32
    scale = q["conv.weight" + INT8_SCALE_SUFFIX]
    assert scale.shape == (32,)
    back = expand(q, "int8")
    assert set(back) == {"conv.weight", "conv.bias", "anchors"}
    assert torch.equal(back["anchors"], anchors)
    err = (back["conv.weight"] - w).abs().flatten(1).amax(dim=1)
    assert torch.all(err <= scale / 2 + 1e-7)  # each channel keeps its own resolution
    assert torch.equal(back["conv.bias"], bias)


def test_variant_layout_matches_what_quantize_writes():
    tensors = {"fc.weight": torch.randn(64, 32), "fc.bias": torch.randn(64),
               "head.weight": torch.randn(2, 16),
               "bn.num_batches_tracked": torch.tensor(7)}
    layout = {n: ({torch.float32: "F32", torch.int64: "I64"}[t.dtype], tuple(t.shape))
              for n, t in tensors.items()}
    names = {torch.int8: "I8", torch.float32: "F32", torch.int64: "I64", torch.float16: "F16",
             torch.bfloat16: "BF16"}
    for precision in ("int8", "fp16", "bf16"):
        written = {n: (names[t.dtype], tuple(t.shape))
                   for n, t in quantize(tensors, precision).items()}
        assert written == variant_layout(layout, precision)


def test_quantize_records_variants_and_is_idempotent(quantized):
    doc = yaml.safe_load((quantized / "coe.yaml").read_text())
    model = open_repository(quantized)
    for entry in doc["experts"]:
        expert = model.experts[entry["name"]]
        assert set(entry["variants"]) == {"int8", "fp16"}
        int8 = expert.variants["int8"]
        assert int8.file_bytes == entry["variants"]["int8"]["bytes"] == int8.weights_path.stat().st_size
        assert int8.weights_path.parent == expert.weights_path.parent
        assert int8.file_bytes < 0.3 * expert.file_bytes  # the int8 tier moves < 30% of fp32
    before = {p.name: p.read_bytes() for p in (quantized / "weights").iterdir()}
    yaml_before = (quantized / "coe.yaml").read_text()
    report = quantize_repository(quantized, "int8")
    assert report.num_written == 0 and report.num_kept == len(model.experts)
    assert {p.name: p.read_bytes() for p in (quantized / "weights").iterdir()} == before
    assert (quantized / "coe.yaml").read_text() == yaml_before


def test_variant_outputs_are_close_to_fp32_on_sample_inputs(quantized, requests):
    model = open_repository(quantized)
    for expert in model.experts.values():
        arch = model.architectures[expert.architecture]
        module = arch.build()
        x = torch.stack([r.input for r in requests[:32]])  # [N, C, H, W]
        with torch.inference_mode():
            module.load_state_dict(_tensors(expert.weights_path))
            ref = module(x)
            for precision, tolerance in (("fp16", 0.01), ("int8", 0.08)):
                variant = _tensors(expert.variants[precision].weights_path)
                module.load_state_dict(expand(variant, precision))
                out = module(x)
                rel = (out - ref).norm() / ref.norm()
                assert rel < tolerance, (expert.name, precision, float(rel))


# -- validation ----------------------------------------------------------------------------
def _edit_variant(root, **change):
    doc = yaml.safe_load((root / "coe.yaml").read_text())
    doc["experts"][0]["variants"]["int8"].update(change)
    (root / "coe.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


@pytest.fixture
def broken(quantized, tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(quantized, root)
    return root


def test_a_missing_variant_file_is_a_clear_error(broken):
    (broken / "weights" / "cls-R.int8.safetensors").unlink()
    with pytest.raises(RepositoryError, match=r"cls-R.*int8 variant.*does not exist.*quantize"):
        open_repository(broken)


def test_a_stale_variant_size_is_a_clear_error(broken):
    _edit_variant(broken, bytes=123)
    with pytest.raises(RepositoryError, match=r"coe.yaml records 123.*quantize"):
        open_repository(broken)


def test_a_variant_of_the_wrong_dtype_is_refused(broken):
    fp16 = yaml.safe_load((broken / "coe.yaml").read_text())["experts"][0]["variants"]["fp16"]
    _edit_variant(broken, weights=fp16["weights"], bytes=fp16["bytes"])
    with pytest.raises(RepositoryError, match=r"int8 variant.*do not match"):
        open_repository(broken)


def test_an_unknown_precision_key_is_refused(broken):
    doc = yaml.safe_load((broken / "coe.yaml").read_text())
    doc["experts"][0]["variants"]["int4"] = doc["experts"][0]["variants"]["int8"]
    (broken / "coe.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(RepositoryError, match=r"int4.*not a stored precision"):
        open_repository(broken)


# -- loading a variant in the engine -------------------------------------------------------
def _run(model, requests, precision):
    cfg = EngineConfig(budget_fraction=0.3, executors=parse_executors("cpu:2"),
                       measure_costs=False, precision=precision)
    with Engine(model, cfg) as engine:
        results = engine.run_trace(requests, realtime=False)
        return results, engine.stats()


def test_int8_reads_fewer_bytes_and_records_its_precision(quantized, requests):
    model = open_repository(quantized)
    fp32, fp32_stats = _run(model, requests, "fp32")
    int8, int8_stats = _run(model, requests, "int8")
    assert all(r.ok for r in fp32 + int8)
    assert set(int8_stats.loads_by_precision) == {"int8"}
    assert int8_stats.bytes_read == int8_stats.bytes_read_by_precision["int8"]
    fp32_per_load = fp32_stats.bytes_read / fp32_stats.loads_by_precision["fp32"]
    int8_per_load = int8_stats.bytes_read / int8_stats.loads_by_precision["int8"]
    assert int8_per_load < 0.3 * fp32_per_load
    assert {s.precision for r in int8 for s in r.steps} == {"int8"}
    assert {s.precision for r in fp32 for s in r.steps} == {"fp32"}
    assert sum(int8_stats.tasks_by_precision.values()) == sum(len(r.steps) for r in int8)
    # the same verdicts, request by request, but for a rare borderline input
    same = sum(a.path == b.path and [s.label for s in a.steps] == [s.label for s in b.steps]
               for a, b in zip(fp32, int8, strict=True))
    assert same >= 0.95 * len(requests)


def test_a_precision_without_variants_says_how_to_write_them(tiny_zoo):
    model = open_repository(tiny_zoo[0])
    with pytest.raises(ConfigError, match=r"no int8 variant.*coserve repo quantize"):
        Engine(model, EngineConfig(precision="int8", measure_costs=False))
    with pytest.raises(ConfigError, match="unknown precision 'int4'"):
        EngineConfig(precision="int4")


# -- the policy (no torch needed) ----------------------------------------------------------
def _ctx(backlog_s, available=("fp32", "fp16", "int8"), load_s=None):
    load_s = load_s or {"fp32": 0.5, "fp16": 0.25, "int8": 0.125}
    return LoadContext("cls-R", available, backlog_s, {p: load_s[p] for p in available})


def test_fixed_precision_reads_its_variant_or_fp32():
    assert FixedPrecision("int8").choose(_ctx(0.0)) == "int8"
    assert FixedPrecision("int8").choose(_ctx(0.0, ("fp32",))) == "fp32"
    assert not FixedPrecision("int8").upgrades_when_idle()


def test_auto_goes_low_whenever_anyone_waits_on_the_load():
    auto = precision_policy("auto")
    assert isinstance(auto, AutoPrecision) and auto.pressure_s == 0.0
    # a short queue is no slack: 0.2 s queued still reads the variant (a fifth of the
    # latency target used to keep fp32 here, and lost 14% at a backlog's end on board A)
    assert auto.choose(_ctx(0.2)) == "int8"
    assert auto.choose(_ctx(0.0)) == "fp32"  # nothing waits: fp32 costs no one
    assert auto.choose(_ctx(3.0, ("fp32", "fp16"))) == "fp16"
    assert auto.choose(_ctx(3.0, ("fp32",))) == "fp32"
    assert auto.upgrades_when_idle()
    # measured: expanding int8 costs more than its smaller read saves (a fast SSD, busy cores)
    slow_expand = {"fp32": 0.5, "fp16": 0.7, "int8": 0.6}
    assert auto.choose(_ctx(3.0, load_s=slow_expand)) == "fp32"
    assert auto.choose(_ctx(3.0, load_s={"fp32": 0.5, "fp16": 0.3, "int8": 0.4})) == "fp16"
    # a zoo whose variants cost accuracy may keep fp32 below some queued work
    patient = AutoPrecision(pressure_s=1.0)
    assert patient.choose(_ctx(0.2)) == "fp32" and patient.choose(_ctx(3.0)) == "int8"


def test_load_times_share_the_read_and_measure_each_expansion():
    times = LoadTimes(storage_bytes_per_s=100.0)
    assert times.predict_s("int8", 50) == pytest.approx(0.5)  # the bandwidth alone
    times.observe("int8", 50, read_s=1.0, expand_s=0.5)  # read 0.02 s/B, expand 0.01 s/B
    w = LoadTimes.EWMA_WEIGHT
    read = (1 - w) * 0.01 + w * 0.02
    assert times.predict_s("int8", 50) == pytest.approx(50 * (read + 0.01))
    assert times.predict_s("fp32", 200) == pytest.approx(200 * read)  # the same device
    assert times.predict_s("fp16", 100) == pytest.approx(100 * read)  # not expanded yet
    times.observe("int8", 50, read_s=read * 50, expand_s=0.0)
    assert times.predict_s("int8", 50) == pytest.approx(50 * (read + 0.005))  # the median


def test_one_slow_expansion_does_not_move_the_estimate():
    """A preempted expansion is an outlier: the median of the last loads ignores it."""
    times = LoadTimes(storage_bytes_per_s=100.0)
    for expand_s in (0.01, 0.01, 0.01, 10.0):
        times.observe("int8", 10, read_s=0.1, expand_s=expand_s)
    assert times.predict_s("int8", 10) == pytest.approx(0.1 + 0.01)


def test_a_variant_not_read_for_a_while_is_tried_again():
    times = LoadTimes(storage_bytes_per_s=100.0)
    for _ in range(3):
        times.observe("int8", 10, read_s=0.1, expand_s=1.0)  # slow while the cores were busy
    times.observe("fp16", 20, read_s=0.2, expand_s=0.02)
    assert times.predict_s("int8", 10) > times.predict_s("fp16", 20)
    for _ in range(LoadTimes.STALE_LOADS):
        times.observe("fp16", 20, read_s=0.2, expand_s=0.02)
    assert times.predict_s("int8", 10) == pytest.approx(0.1)  # forgotten: the read alone
    assert times.predict_s("int8", 10) < times.predict_s("fp16", 20)
    times.observe("int8", 10, read_s=0.1, expand_s=0.01)  # measured afresh, not averaged
    assert times.predict_s("int8", 10) == pytest.approx(0.1 + 0.01)


def test_a_slow_read_does_not_lock_a_variant_out():
    """A variant read while another load held the device is slow because of the device:
    the read estimate is every precision's, so int8 stays the fastest and is read again
    (one estimate per precision made int8 look slower than fp16 for good)."""
    times = LoadTimes(storage_bytes_per_s=100.0)
    times.observe("int8", 10, read_s=1.0, expand_s=0.01)  # 10x the device's time: contention
    times.observe("fp16", 20, read_s=0.2, expand_s=0.01)
    predicted = {p: times.predict_s(p, b) for p, b in (("fp32", 40), ("fp16", 20), ("int8", 10))}
    assert predicted["int8"] < predicted["fp16"] < predicted["fp32"]
    assert AutoPrecision().choose(_ctx(1.0, load_s=predicted)) == "int8"


# -- the command ---------------------------------------------------------------------------
def test_repo_quantize_command(tiny_zoo, tmp_path, capsys):
    root = tmp_path / "repo"
    shutil.copytree(tiny_zoo[0], root)
    assert main(["repo", "quantize", str(root), "--to", "bf16"]) == 0
    assert "bf16: wrote 12 variant(s), kept 0" in capsys.readouterr().out
    assert all("bf16" in e.variants for e in open_repository(root).experts.values())
    with pytest.raises(SystemExit):
        main(["repo", "quantize", str(root), "--to", "int4"])


class _VariantLoader:
    """A fake loader with fp32 and int8 files: what is read at which precision."""

    def __init__(self):
        self.reads = []

    def available(self, expert):
        return ("fp32", "int8")

    def file_bytes(self, expert, precision):
        return {"fp32": 40, "int8": 10}[precision]

    def read_timed(self, expert, precision="fp32"):
        self.reads.append((expert, precision))
        return {"weight": f"{expert}@{precision}"}, 0.1, 0.0

    def to_device(self, tensors, processor):
        return tensors, 0.0


def test_auto_loads_low_under_pressure_and_upgrades_when_idle():
    from coserve.manager.eviction import TwoStageEviction
    from coserve.manager.manager import ExpertManager
    from coserve.manager.residency import Residency
    from coserve.manager.usage import UsageTracker
    from coserve.stats import StatsRecorder

    backlog = {"s": 10.0}  # seconds of work queued: pressure
    sizes = {"cls-a": 40, "cls-b": 40}
    residency = Residency(budgets=[100], expert_bytes=sizes, subsequent=frozenset(),
                          predecessors=lambda e: frozenset(), evict=TwoStageEviction(),
                          usage=UsageTracker({"cls-a": 0.6, "cls-b": 0.4}, 0.5, 50),
                          clock=lambda: 0.0)
    loader, stats = _VariantLoader(), StatsRecorder(1)
    manager = ExpertManager(
        processors=["cpu"], residency=residency, loader=loader, stats=stats,
        precision=AutoPrecision(pressure_s=1.0), backlog_s=lambda i: backlog["s"],
        storage_bytes_per_s=100.0)
    a = manager.acquire(0, "cls-a")
    assert a.precision == "int8" and a.tensors == {"weight": "cls-a@int8"}
    manager.release(0, a)
    backlog["s"] = 0.0  # the queue drained: there is time for fp32
    b = manager.acquire(0, "cls-b")
    assert b.precision == "fp32"
    manager.release(0, b)
    manager.upgrade(0)
    manager.close(wait=True)  # the upgrade ran on the prefetcher
    assert loader.reads == [("cls-a", "int8"), ("cls-b", "fp32"), ("cls-a", "fp32")]
    entry = residency.pools[0].entries["cls-a"]
    assert entry.precision == "fp32" and entry.tensors == {"weight": "cls-a@fp32"}
    s = stats.snapshot(1.0, 0, policy="coserve", budget_bytes=100, total_expert_bytes=80,
                       storage="none", cost_source="test")
    assert s.loads_by_precision == {"int8": 1, "fp32": 2}
    assert s.bytes_read_by_precision == {"int8": 10, "fp32": 80}
    assert s.num_upgrades == 1
    assert residency.pool_bytes(0) == 80  # an upgrade does not change resident bytes


def test_the_simulator_reads_a_stored_variant_at_its_own_size(quantized, requests):
    from coserve.engine.costs import default_costs
    from coserve.simulator import simulate

    model = open_repository(quantized)
    base = EngineConfig(budget_fraction=0.3, executors=parse_executors("cpu:1"),
                        storage="sata-530", measure_costs=False)
    fp32, _ = simulate(model, requests, base, costs=default_costs(model), backlog=True)
    int8, results = simulate(model, requests, replace(base, precision="int8"),
                             costs=default_costs(model), backlog=True)
    assert all(r.ok for r in results)
    assert set(int8.loads_by_precision) == {"int8"} and set(fp32.loads_by_precision) == {"fp32"}
    sizes = {e.name: e.variants["int8"].file_bytes for e in model.experts.values()}
    assert int8.bytes_read_by_precision["int8"] == int8.bytes_read
    assert int8.bytes_read <= int8.num_switches * max(sizes.values())
    assert int8.bytes_read < 0.4 * fp32.bytes_read * int8.num_switches / max(fp32.num_switches, 1)
    assert int8.tasks_by_precision == {"int8": sum(len(r.steps) for r in results)}
    with pytest.raises(ConfigError, match="not --precision auto"):
        simulate(model, requests, replace(base, precision="auto"), costs=default_costs(model))
    with pytest.raises(ConfigError, match="repo quantize"):
        simulate(model, requests, replace(base, precision="bf16"), costs=default_costs(model))
