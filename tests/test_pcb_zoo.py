"""The circuit-board zoo builder: the pretrained lane ships as safetensors package data,
and a build in worker processes writes the same files as one in this process."""

import hashlib
from importlib import resources
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from coserve.errors import ConfigError
from coserve.zoo import pcb
from coserve.zoo.pcb_train import SHIPPED_LANE_FILE, DefectLane, shipped_lane

# Four types, two detectors, few training images: seconds, every code path of a build.
MICRO = pcb.PcbSize("micro", 4, 32, 10, 16, 1, 1, (0.33, 0.125), (0.33, 0.125), 16)


def test_the_shipped_lane_is_small_safetensors_package_data():
    data = resources.files("coserve.zoo").joinpath(SHIPPED_LANE_FILE)
    assert data.is_file() and len(data.read_bytes()) < 2_000_000
    with resources.as_file(data) as path, safe_open(path, "pt") as f:
        names = set(f.keys())
    assert names == set(DefectLane().state_dict())
    lane = shipped_lane()
    for t in lane.state_dict().values():
        if t.is_floating_point():  # shipped at float16 precision, used as float32
            assert t.dtype == torch.float32 and torch.equal(t.half().float(), t)
    # A fresh copy each time: fine-tuning one must not move the next.
    with torch.no_grad():
        lane.conv1.weight.zero_()
    assert shipped_lane().conv1.weight.abs().sum() > 0


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_parallel_build_writes_the_same_files_as_a_serial_one(tmp_path, monkeypatch):
    monkeypatch.setitem(pcb.SIZES, "micro", MICRO)
    calls = []
    pcb.build_pcb(tmp_path / "serial", size="micro", num_workers=1)
    pcb.build_pcb(tmp_path / "parallel", size="micro", num_workers=2,
                  progress=lambda what, done, total: calls.append((what, done, total)))
    serial, parallel = _digests(tmp_path / "serial"), _digests(tmp_path / "parallel")
    assert len(serial) == 2 + MICRO.num_types + 2  # coe.yaml, boards.yaml, the experts
    assert parallel == serial
    # Progress is reported in this process, once per expert, counting up to the total.
    assert [done for _, done, _ in calls] == list(range(1, MICRO.num_types + 3))
    assert {total for _, _, total in calls} == {MICRO.num_types + 2}
    assert {f"weights/{what}.safetensors" for what, _, _ in calls} == {
        name for name in serial if name.startswith("weights/")}


def test_num_workers_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="num_workers"):
        pcb.build_pcb(tmp_path, size="tiny", num_workers=0)
