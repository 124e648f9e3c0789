"""The synth zoo: a three-stage CoE with fan-out, spread expert sizes, about even usage
and a trace whose input mix shifts half way; it validates and runs through the engine."""

import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import torch

from coserve.architectures import WideMLP
from coserve.cli import main
from coserve.cli.zoo import SYNTH_SIZES
from coserve.config import EngineConfig
from coserve.engine.run import run_trace
from coserve.errors import ConfigError
from coserve.repository import open_repository
from coserve.repository.spec import Stage
from coserve.trace import read_trace
from coserve.zoo import synth

NUM_PER_STAGE = synth.SIZES["tiny"].experts_per_stage


@pytest.fixture(scope="module")
def synth_tiny(tmp_path_factory):
    return synth.build_synth(tmp_path_factory.mktemp("synth") / "tiny", size="tiny")


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_tiny_synth_validates_with_three_stages_and_fan_out(synth_tiny):
    model = open_repository(synth_tiny[0])
    assert model.warnings == ()
    assert len(model.experts) == 3 * NUM_PER_STAGE
    stages = Counter(e.stage for e in model.experts.values())
    assert stages == {Stage.PRELIMINARY: NUM_PER_STAGE, Stage.SUBSEQUENT: 2 * NUM_PER_STAGE}
    assert model.router.first({"kind": "k03"}) == ("s1-03",)
    router = model.router
    for stage in (1, 2):
        for i in range(NUM_PER_STAGE):
            table = router.next_table[f"s{stage}-{i:02d}"]
            assert table["stop"] == () and len(table["next"]) == len(table["alt"]) == 1
            assert len(table["fan"]) == 2  # one output, two next-stage experts at once
            assert all(t.startswith(f"s{stage + 1}-") for t in router.successors(f"s{stage}-{i:02d}"))
    # The two branches of a stage-1 fan never meet at one stage-3 expert.
    for i in range(NUM_PER_STAGE):
        left, right = router.next_table[f"s1-{i:02d}"]["fan"]
        assert not router.successors(left) & router.successors(right)
    assert all(not router.successors(f"s3-{i:02d}") for i in range(NUM_PER_STAGE))


def test_tiny_sizes_spread_within_a_few_mb(synth_tiny):
    model = open_repository(synth_tiny[0])
    sizes = [e.num_bytes for e in model.experts.values()]
    assert min(sizes) < 50_000 and max(sizes) > 300_000 and max(sizes) / min(sizes) > 7
    assert 2_000_000 < model.total_expert_bytes < 6_000_000
    # The largest fits one of two executors' share of a 30% budget.
    assert max(sizes) < 0.15 * model.total_expert_bytes
    assert len(model.architectures) == len(synth.SIZES["tiny"].class_bytes)


def test_default_size_is_a_few_gb_from_a_few_mb_to_150_mb():
    spec = synth.SIZES["default"]
    arch_bytes = [WideMLP.num_bytes(synth._width(c, spec)) for c in range(len(spec.class_bytes))]
    assert 2.5e6 < min(arch_bytes) < 4e6 and 1.45e8 < max(arch_bytes) <= 1.5e8
    classes = synth._size_classes(spec, seed=0)
    total = sum(arch_bytes[c] for c in classes.values())
    assert len(classes) == 63 and 2e9 < total < 3e9


def test_usage_prior_is_about_even(synth_tiny):
    usage = open_repository(synth_tiny[0]).usage
    assert max(usage.values()) / min(usage.values()) < 2


def test_the_trace_shifts_half_way(synth_tiny):
    root, trace = synth_tiny
    requests = read_trace(trace)
    manifest = json.loads((root / synth.MANIFEST_FILE).read_text())["trace"]
    shift = manifest["shift_index"]
    assert len(requests) == manifest["num_requests"] and shift == len(requests) // 2
    assert [r.arrival_s for r in requests[:3]] == [0.0, 0.004, 0.008]
    assert requests[shift].arrival_s == pytest.approx(manifest["shift_arrival_s"])
    for phase, part in ((0, requests[:shift]), (1, requests[shift:])):
        assert {r.fields["phase"] for r in part} == {phase}
        own = sum(r.fields["kind"] in manifest["phase_kinds"][phase] for r in part)
        assert own / len(part) > 0.8
    model = open_repository(root)
    assert model.usage["s1-00"] == pytest.approx(
        sum(r.fields["kind"] == "k00" for r in requests) / len(requests))
    assert f"shifts at request {shift}" in (root / "coe.yaml").read_text()


def test_the_engine_runs_every_request_through_the_stages(synth_tiny):
    root, trace = synth_tiny
    model, requests = open_repository(root), read_trace(trace)
    stats, results, _ = run_trace(model, requests, EngineConfig(budget_fraction=0.3), backlog=True)
    assert len(results) == len(requests) and all(r.ok for r in results)
    # The budget makes it switch: every expert is used (below) and at most 30% of the bytes
    # were placed at start, so at least the other 70% are read.
    assert stats.bytes_read >= 0.7 * model.total_expert_bytes and stats.num_switches > 0
    paths = [r.path for r in results]
    assert sum(any(e.startswith("s3-") for e in p) for p in paths) > len(paths) / 3
    assert any(sum(e.startswith("s2-") for e in p) == 2 for p in paths)  # fan-out ran
    assert {e for p in paths for e in p} == set(model.experts)
    labels: dict[str, Counter] = defaultdict(Counter)
    for result in results:
        for step in result.steps:
            labels[step.expert][step.label] += 1
    for expert, counts in labels.items():
        n = sum(counts.values())
        if n >= 20:  # decided by the expert's inference, and not degenerate
            assert len(counts) >= 3 and max(counts.values()) / n < 0.6, (expert, counts)


def test_the_command_builds_the_same_files_from_the_same_seed(synth_tiny, tmp_path, capsys):
    out = tmp_path / "again"
    assert main(["zoo", "build", "synth", "--size", "tiny", "--out", str(out)]) == 0
    assert _digests(out) == _digests(synth_tiny[0])
    assert main(["zoo", "build", "synth", "--size", "tiny", "--out", str(out)]) == 0
    assert "already holds" in capsys.readouterr().out
    assert main(["zoo", "build", "synth", "--size", "tiny", "--out", str(out), "--seed", "1",
                 "--force"]) == 0
    assert _digests(out)["weights/s1-00.safetensors"] != _digests(synth_tiny[0])["weights/s1-00.safetensors"]
    open_repository(out)


def test_fit_bias_spreads_skewed_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(400, 4, generator=g) + torch.tensor([3.0, 0.0, -1.0, 0.5])  # [400, 4]
    shares = torch.bincount((logits + synth.fit_bias(logits)).argmax(1), minlength=4) / 400
    assert (shares - 0.25).abs().max() < 0.03


def test_wide_mlp_bytes_follow_its_width():
    module = WideMLP(width=50)
    assert sum(t.numel() * t.element_size() for t in module.state_dict().values()) == WideMLP.num_bytes(50)
    assert WideMLP.width_for_bytes(WideMLP.num_bytes(1234)) == 1234
    decoded = module.eval().decode(module(torch.randn(5, 3, 16, 16)))
    assert len(decoded) == 5 and all(0 <= d.label_index < 4 for d in decoded)
    with pytest.raises(ValueError, match="width"):
        WideMLP(width=0)


def test_sizes_are_checked_and_named_alike_in_the_command_line():
    assert tuple(synth.SIZES) == SYNTH_SIZES
    with pytest.raises(ConfigError, match="odd"):
        synth.SynthSize("bad", 10, (1000, 2000), 10, 16)
    with pytest.raises(ConfigError, match="unknown synth size"):
        synth.synth_size("huge")
