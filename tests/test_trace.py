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


# -- hostile or broken traces: one TraceError naming the file and line, never a traceback -----
def one_line_trace(tmp_path, **changes):
    """A one-request trace whose line is changed by `changes` (a value None deletes)."""
    path = write_trace(tmp_path / "t.jsonl", [Request("q0", {"component_type": "R"}, torch.zeros(3, 4, 4))])
    obj = json.loads(path.read_text())
    for key, value in changes.items():
        obj[key] = value
    path.write_text("# a comment\n" + json.dumps(obj) + "\n")
    return path


@pytest.mark.parametrize(("raw", "fragment"), [
    ('"arrival_s": Infinity', "arrival_s"),
    ('"arrival_s": -Infinity', "arrival_s"),
    ('"arrival_s": NaN', "arrival_s"),
    ('"arrival_s": 1e999', "finite"),
    ('"arrival_s": -0.5', ">= 0"),
    ('"arrival_s": 1e12', "at most"),
    ('"arrival_s": ' + "9" * 4000, "arrival_s"),
    ('"arrival_s": ' + "9" * 5000, "digits"),
    ('"arrival_s": "0.5"', "number"),
    ('"arrival_s": true', "number"),
    ('"fields": {"component_type": "R", "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "nest"),
    ('"fields": {"component_type": "R", "x": ' + "[" * 100 + "]" * 100 + "}", "nest"),
    ('"fields": {"component_type": "R", "n": ' + "9" * 400 + "}", "integer"),
    ('"fields": {"component_type": "R", "n": NaN}', "NaN"),
    ('"fields": [["component_type", "R"]]', "fields"),
    ('"id": {"a": 1}', "id"),
    ('"input": {"file": 7, "key": "q0"}', "input"),
    ('"input": "t.jsonl.inputs.safetensors"', "input"),
])
def test_hostile_values_are_one_trace_error_naming_the_line(tmp_path, raw, fragment):
    path = one_line_trace(tmp_path)
    key = raw.split(":", 1)[0]
    obj = json.loads(path.read_text().splitlines()[1])
    text = json.dumps(obj)
    start = text.index(key)
    # Replace the key's value in the JSON text by the raw (possibly non-JSON) one.
    depth, end = 0, start + len(key) + 2
    while True:
        ch = text[end]
        depth += ch in "{["
        depth -= ch in "}]"
        if depth < 0 or (depth == 0 and ch == ","):
            break
        end += 1
    path.write_text("# a comment\n" + text[:start] + raw + text[end:] + "\n")
    with pytest.raises(TraceError) as info:
        read_trace(path)
    message = str(info.value)
    assert f"{path}:2" in message and fragment in message, message
    assert len(message) < 1000, message[:200]


def test_an_input_file_that_is_not_safetensors(tmp_path):
    path = one_line_trace(tmp_path)
    (tmp_path / "t.jsonl.inputs.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(TraceError) as info:
        read_trace(path)
    assert f"{path}:2" in str(info.value) and "not a safetensors file" in str(info.value)


def test_a_trace_that_is_not_text(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(TraceError, match="UTF-8"):
        read_trace(path)


@pytest.mark.parametrize("raw", ['"arrival_s": Infinity', '"arrival_s": NaN'])
def test_coserve_run_answers_a_bad_trace_with_one_error_line(tiny_zoo, tmp_path, capsys, raw):
    from coserve.cli import main

    lines = tiny_zoo[1].read_text().splitlines()[:3]
    obj = json.loads(lines[1])
    obj["input"]["file"] = str(tiny_zoo[1].parent / obj["input"]["file"])
    text = json.dumps(obj).replace(f'"arrival_s": {json.dumps(obj["arrival_s"])}', raw)
    trace = tmp_path / "bad.jsonl"
    trace.write_text("\n".join([text]) + "\n")
    code = main(["run", str(tiny_zoo[0]), str(trace), "--no-measure", "--executors", "cpu:1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:"), err
    assert f"{trace}:1" in err[0] and "arrival_s" in err[0]
