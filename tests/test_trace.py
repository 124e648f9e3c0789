"""The trace format round trip and its errors."""

import json

import pytest
import torch

from coserve import Request, read_trace, write_trace
from coserve.errors import TraceError


def test_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    requests = [
        Request(f"q{i}", {"component_type": "R", "board": "A", "defect": None if i % 2 else "missing"},
                torch.rand(3, 8, 8, generator=g), arrival_s=0.004 * i)
        for i in range(5)
    ]
    path = write_trace(tmp_path / "t.jsonl", requests)
    back = read_trace(path)
    assert [r.request_id for r in back] == [r.request_id for r in requests]
    for a, b in zip(requests, back, strict=True):
        assert a.fields == b.fields and a.arrival_s == pytest.approx(b.arrival_s)
        assert torch.equal(a.input, b.input)


def test_errors_name_the_line(tmp_path):
    path = write_trace(tmp_path / "t.jsonl", [Request("q0", {"component_type": "R"}, torch.zeros(3, 4, 4))])
    lines = path.read_text().splitlines()
    bad = json.loads(lines[0])
    del bad["arrival_s"]
    path.write_text(lines[0] + "\n" + json.dumps({**bad, "id": "q1"}) + "\n")
    with pytest.raises(TraceError, match=r"t\.jsonl:2"):
        read_trace(path)
    path.write_text(lines[0] + "\n" + lines[0] + "\n")
    with pytest.raises(TraceError, match="appears twice"):
        read_trace(path)
    with pytest.raises(TraceError, match="does not exist"):
        read_trace(tmp_path / "nope.jsonl")
