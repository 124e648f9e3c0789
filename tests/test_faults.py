"""A CI-sized part of the fault matrix (scripts/faults.py): fresh `coserve serve`
subprocesses on loopback, one fault each; nothing lost, nothing stuck, the server alive
and serving afterwards, and each row's own check."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import faults  # noqa: E402

ROWS = ["raise", "base-exception", "truncated", "bomb-png"]


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    ctx = faults.make_context(tmp_path_factory.mktemp("faults"))
    yield ctx
    faults.kill_all()


@pytest.mark.parametrize("name", ROWS)
def test_fault_row(context, name):
    (row,) = faults.run_rows(context, [name])
    assert row.ok, faults.cells(row)
    assert row.lost == 0 and row.stuck == 0
    assert row.alive.startswith("yes")
