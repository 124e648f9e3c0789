"""The pcb zoo's confidence cascade: the threshold calibration, and a built cascade zoo
that opens, keeps the full classifiers' weights, and serves on the real engine."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import yaml

from coserve import Engine, EngineConfig, open_repository, parse_executors
from coserve.types import LOW_CONFIDENCE
from coserve.zoo import pcb
from coserve.zoo.pcb_cascade import CASCADE_TARGET, calibrate

MICRO = pcb.PcbSize("micro", 4, 32, 10, 16, 1, 1, (0.33, 0.125), (0.33, 0.125), 16)


def test_calibration_takes_the_lowest_threshold_that_is_accurate_enough() -> None:
    # Ten clean images (rate 0.5 weighs both classes alike); the three least sure are wrong.
    top = torch.tensor([0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93, 0.70, 0.60, 0.55])
    truth = torch.tensor([False] * 5 + [True] * 5)
    said = truth.clone()
    said[[7, 8, 9]] = ~said[[7, 8, 9]]
    result = calibrate(top, said, truth, defect_rate=0.5, target=0.99)
    assert result.threshold == pytest.approx(0.93)  # the seven right ones stay sure
    assert result.sure_accuracy == pytest.approx(1.0)
    assert result.escalated == pytest.approx(3 * 0.1)  # three defects of five, weight 0.5
    assert sum(result.label_probs.values()) == pytest.approx(1.0, abs=1e-9)
    assert result.label_probs[LOW_CONFIDENCE] == pytest.approx(result.escalated)
    assert result.accuracy == pytest.approx(0.7)
    # Nothing reaches the target: escalate everything.
    none = calibrate(top, ~truth, truth, defect_rate=0.1, target=CASCADE_TARGET)
    assert none.threshold == 1.0 and none.escalated == pytest.approx(0.9, abs=0.11)


def _digests(root: Path, prefix: str) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / "weights").glob(f"{prefix}*"))}


@pytest.mark.slow
def test_a_cascade_zoo_opens_keeps_the_classifiers_and_serves(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(pcb.SIZES, "micro", MICRO)
    plain = pcb.build_pcb(tmp_path / "plain", size="micro", num_workers=1)
    root = pcb.build_pcb(tmp_path / "cascade", size="micro", num_workers=1, cascade=True)
    model = open_repository(root)
    lites = sorted(name for name in model.experts if name.startswith("cls-lite-"))
    assert len(lites) == 2  # one per detector
    assert set(model.router.cascade) == set(lites)
    full = {p.removesuffix(".safetensors") for p in _digests(plain, "cls-")}
    assert full <= model.subsequent_experts  # reached only by escalation now
    # The full classifiers and detectors are the plain zoo's, byte for byte.
    assert {k: v for k, v in _digests(root, "").items() if not k.startswith("cls-lite")} == \
        _digests(plain, "")
    meta = yaml.safe_load((root / pcb.BOARDS_FILE).read_text())
    assert set(meta["cascade_at_10pct"]) == set(lites)
    for lite in lites:
        rule = model.router.cascade[lite]
        assert {f"cls-{kind}" for kind in rule.by_value} == {
            t for targets in rule.by_value.values() for t in targets}
        assert model.label_probs[lite][LOW_CONFIDENCE] == pytest.approx(
            meta["cascade_at_10pct"][lite]["escalated"], abs=1e-4)
        assert model.usage[lite] > 0
    requests = pcb.pcb_requests(root, board="A", num_requests=24, interval_s=0)
    config = EngineConfig(executors=parse_executors("cpu:1"), storage="none")
    with Engine(model, config) as engine:
        results = engine.run_trace(requests, realtime=False)
    assert all(r.ok for r in results)
    for result in results:
        first = result.steps[0]
        kind = result.fields["component_type"]
        assert first.expert.startswith("cls-lite-")
        if first.label == LOW_CONFIDENCE:
            assert result.steps[1].expert == f"cls-{kind}"
        else:
            assert all(not s.expert.startswith("cls-") or s is first for s in result.steps)
