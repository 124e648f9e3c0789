"""Durable batch inspection on the tiny CoE: killed with SIGKILL halfway and started
again, every image is answered exactly once; bad files are rejected with their reason;
the CSV export is the database."""

import csv
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from coserve import EngineConfig, open_repository, parse_executors, read_trace
from coserve.cli import main
from coserve.errors import ConfigError
from coserve.inspect import COLUMNS, ResultStore, discover_lot, inspect_lot, read_image

NUM_PNG = 240
KILL_AFTER_ROWS = 20
DEADLINE_S = 60.0  # generous: only a hung run gets near it

# file name -> what its rejection must say
BAD_FILES = {
    "R__truncated.png": "cannot decode",
    "R__small.png": "is 8x8 pixels; the expert takes 32x32",
    "Z__unknown-type.png": "no expert for component_type 'Z'",
    "no-type.png": "cannot tell the component_type",
    "C__garbage.jpg": "cannot decode",
    "C__garbage.safetensors": "cannot read the safetensors file",
    "D__two-tensors.safetensors": "holds 2 tensors",
}


def quantised(x: torch.Tensor) -> np.ndarray:
    """[3, H, W] float -> [H, W, 3] uint8, as a camera would give it."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.fixture(scope="module")
def lot(tiny_zoo, tmp_path_factory):
    """NUM_PNG good PNGs, two good tensors, the bad files, and a file that is no image."""
    root = tmp_path_factory.mktemp("lot")
    requests = read_trace(tiny_zoo[1])
    good = {}
    for r in requests[:NUM_PNG]:
        name = f"{r.fields['component_type']}__{r.request_id}.png"
        Image.fromarray(quantised(r.input)).save(root / name)
        good[name] = r.fields["component_type"]
    for r in requests[NUM_PNG:NUM_PNG + 2]:
        name = f"{r.fields['component_type']}__{r.request_id}.safetensors"
        save_file({"image": r.input.contiguous()}, root / name)
        good[name] = r.fields["component_type"]
    png = (root / next(iter(good))).read_bytes()
    (root / "R__truncated.png").write_bytes(png[: len(png) // 2])
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "R__small.png")
    Image.fromarray(quantised(requests[0].input)).save(root / "Z__unknown-type.png")
    Image.fromarray(quantised(requests[0].input)).save(root / "no-type.png")
    (root / "C__garbage.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "C__garbage.safetensors").write_bytes(b"garbage")
    save_file({"a": requests[0].input, "b": requests[1].input}, root / "D__two-tensors.safetensors")
    (root / "notes.txt").write_text("not an image: not part of the lot")
    return root, good


def inspect_cmd(repo, lot_dir, db, *extra):
    return [sys.executable, "-m", "coserve.cli", "inspect", str(lot_dir), "--repo", str(repo),
            "--db", str(db), "--no-measure", "--executors", "cpu:2", *extra]


def db_rows(db) -> dict[str, tuple]:
    conn = sqlite3.connect(db)
    try:
        return {row[0]: row for row in conn.execute(f"SELECT {', '.join(COLUMNS)} FROM results")}
    finally:
        conn.close()


def num_rows(db) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(db, timeout=10)
    try:
        return conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.OperationalError:  # the run has not created the table yet
        return 0
    finally:
        conn.close()


def kill_after_rows(cmd, db, num) -> None:
    """Start `cmd`, SIGKILL it once `num` rows are committed (polling the database)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + DEADLINE_S
    try:
        while num_rows(db) < num:
            assert proc.poll() is None, f"the run ended before the kill: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "no rows committed in time"
            time.sleep(0.005)  # a polling interval, not synchronisation
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def read_csv(path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == COLUMNS
        return {row["path"]: row for row in reader}


def assert_csv_is_db(csv_rows, rows) -> None:
    assert set(csv_rows) == set(rows)
    for path, row in rows.items():
        expected = {c: "" if v is None else str(v) for c, v in zip(COLUMNS, row, strict=True)}
        assert csv_rows[path] == expected


def test_killed_run_resumes_and_answers_every_image_exactly_once(tiny_zoo, lot, tmp_path):
    repo = tiny_zoo[0]
    lot_dir, good = lot
    db = tmp_path / "results.sqlite"
    # A small in-flight window keeps the first run slow enough to be killed halfway.
    kill_after_rows(inspect_cmd(repo, lot_dir, db, "--max-inflight", "8"), db, KILL_AFTER_ROWS)
    before = db_rows(db)
    expected = set(good) | set(BAD_FILES)
    assert KILL_AFTER_ROWS <= len(before) < len(expected), "the kill must land mid-run"

    out_csv = tmp_path / "out.csv"
    done = subprocess.run(inspect_cmd(repo, lot_dir, db, "--export-csv", str(out_csv)),
                          capture_output=True, text=True, timeout=DEADLINE_S)
    assert done.returncode == 0, done.stderr
    assert f"{len(expected) - len(before)} images answered" in done.stdout
    assert f"{len(before)} already answered by earlier runs, skipped" in done.stdout

    rows = db_rows(db)
    assert set(rows) == expected  # every image, nothing else (notes.txt is no image)
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT path) FROM results").fetchone() == (len(expected),) * 2
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    # Nothing redone: rows committed before the kill are untouched, the rest are the second run's.
    assert {p: rows[p] for p in before} == before
    run_of = {p: row[COLUMNS.index("run_id")] for p, row in rows.items()}
    assert {run_of[p] for p in before} == {1}
    assert all(run_of[p] == 2 for p in expected - set(before))

    col = {c: i for i, c in enumerate(COLUMNS)}
    for name, component_type in good.items():
        row = rows[name]
        assert row[col["status"]] == "ok", row[col["error"]]
        assert row[col["component_type"]] == component_type
        experts = json.loads(row[col["experts"]])
        assert experts[0] == f"cls-{component_type}"
        assert len(json.loads(row[col["labels"]])) == len(experts)
        assert row[col["latency_s"]] > 0
    for name, reason in BAD_FILES.items():
        row = rows[name]
        assert row[col["status"]] == "rejected" and reason in row[col["error"]], row

    assert_csv_is_db(read_csv(out_csv), rows)
    exported = tmp_path / "export.csv"
    assert main(["inspect", "export", "--db", str(db), "--csv", str(exported)]) == 0
    assert_csv_is_db(read_csv(exported), rows)


def test_png_decodes_to_the_quantised_tensor(tiny_zoo, lot):
    lot_dir, good = lot
    name = next(n for n in good if n.endswith(".png"))
    x = read_image(lot_dir / name, (3, 32, 32))  # [3, 32, 32]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
    pixels = np.array(Image.open(lot_dir / name))  # [32, 32, 3] uint8
    assert torch.equal(x, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)


def test_manifest_names_the_component_types(tiny_zoo, tmp_path):
    model = open_repository(tiny_zoo[0])
    requests = read_trace(tiny_zoo[1])[:3]
    lot_dir = tmp_path / "lot"
    (lot_dir / "sub").mkdir(parents=True)
    for r, name in zip(requests, ["a.png", "sub/b.png", "unlisted.png"], strict=True):
        Image.fromarray(quantised(r.input)).save(lot_dir / name)
    (lot_dir / "manifest.csv").write_text(
        "filename,component_type,board\n"
        f"a.png,{requests[0].fields['component_type']},A7\n"
        f"sub/b.png,{requests[1].fields['component_type']},A7\n"
        "gone.png,R,A7\n"
        "c.png,,A7\n"
    )
    items = {i.path: i for i in discover_lot(lot_dir, "component_type")}
    assert items["a.png"].fields == {"component_type": requests[0].fields["component_type"], "board": "A7"}

    config = EngineConfig(executors=parse_executors("cpu:2"), measure_costs=False)
    db = tmp_path / "results.sqlite"
    with ResultStore(db, lot_dir, tiny_zoo[0]) as store:
        summary = inspect_lot(model, lot_dir, store, config)
    assert summary.counts == {"ok": 2, "failed": 0, "rejected": 3} and summary.num_remaining == 0
    col = {c: i for i, c in enumerate(COLUMNS)}
    rows = db_rows(db)
    assert rows["sub/b.png"][col["component_type"]] == requests[1].fields["component_type"]
    assert "listed in manifest.csv line 4 but the file is missing" in rows["gone.png"][col["error"]]
    assert "gives no component_type" in rows["c.png"][col["error"]]
    assert "not listed in manifest.csv" in rows["unlisted.png"][col["error"]]


def test_stop_finishes_what_is_in_flight(tiny_zoo, lot, tmp_path):
    model = open_repository(tiny_zoo[0])
    lot_dir, _ = lot
    stop = threading.Event()
    config = EngineConfig(executors=parse_executors("cpu:2"), measure_costs=False)
    db = tmp_path / "results.sqlite"
    with ResultStore(db, lot_dir, tiny_zoo[0]) as store:
        summary = inspect_lot(model, lot_dir, store, config, max_inflight=4,
                              progress=lambda done, _total: stop.set() if done >= 5 else None,
                              stop=stop)
        assert sum(store.counts().values()) == summary.num_answered
    assert 5 <= summary.num_answered < summary.num_images
    assert summary.num_remaining == summary.num_images - summary.num_answered


def test_one_writer_per_database_and_one_lot_per_database(tiny_zoo, tmp_path):
    db = tmp_path / "results.sqlite"
    (tmp_path / "lot").mkdir()
    with ResultStore(db, tmp_path / "lot", tiny_zoo[0]), pytest.raises(ConfigError, match="another"):
        ResultStore(db, tmp_path / "lot", tiny_zoo[0])
    with pytest.raises(ConfigError, match="its own --db"):
        ResultStore(db, tmp_path, tiny_zoo[0])
    (tmp_path / "not-a-db").write_text("hello")
    with pytest.raises(ConfigError, match="new --db"):
        ResultStore(tmp_path / "not-a-db", tmp_path / "lot", tiny_zoo[0])


# -- retries, the repository's identity, symlinks, one writer per file -------------------------
def small_lot(tiny_zoo, lot_dir, num=3):
    """`num` good PNGs named by component type; their names."""
    lot_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for r in read_trace(tiny_zoo[1])[:num]:
        name = f"{r.fields['component_type']}__{r.request_id}.png"
        Image.fromarray(quantised(r.input)).save(lot_dir / name)
        names.append(name)
    return names


def test_failed_rows_not_caused_by_the_image_are_retried_and_retry_failed_retries_all(tiny_zoo, tmp_path):
    from coserve.inspect import InspectRow, Status

    model = open_repository(tiny_zoo[0])
    lot_dir = tmp_path / "lot"
    quarantined, broken, good = small_lot(tiny_zoo, lot_dir)
    db = tmp_path / "results.sqlite"
    with ResultStore(db, lot_dir, tiny_zoo[0]) as store:  # an earlier run's failures
        for name, kind in ((quarantined, "expert_quarantined"), (broken, "expert_failed")):
            store.add(InspectRow(name, name.split("__")[0], Status.FAILED, 0.0, 0.0,
                                 error="it failed", error_kind=kind))
    config = EngineConfig(executors=parse_executors("cpu:1"), measure_costs=False)
    col = {c: i for i, c in enumerate(COLUMNS)}

    with ResultStore(db, lot_dir, tiny_zoo[0]) as store:
        summary = inspect_lot(model, lot_dir, store, config)
    rows = db_rows(db)
    assert summary.num_skipped == 1 and summary.counts["ok"] == 2  # the quarantined one and good
    assert rows[quarantined][col["status"]] == "ok" and rows[quarantined][col["error_kind"]] is None
    assert rows[broken][col["status"]] == "failed" and rows[broken][col["run_id"]] == 1
    assert rows[good][col["status"]] == "ok"

    with ResultStore(db, lot_dir, tiny_zoo[0]) as store:
        summary = inspect_lot(model, lot_dir, store, config, retry_failed=True)
    rows = db_rows(db)
    assert summary.num_skipped == 2 and summary.counts["ok"] == 1
    assert {row[col["status"]] for row in rows.values()} == {"ok"} and len(rows) == 3


def test_cli_retry_failed_and_a_changed_repository(tiny_zoo, tmp_path, capsys):
    import shutil

    import yaml

    lot_dir = tmp_path / "lot"
    names = small_lot(tiny_zoo, lot_dir, num=2)
    repo = tmp_path / "repo"
    shutil.copytree(tiny_zoo[0], repo)
    db = tmp_path / "results.sqlite"
    args = ["inspect", str(lot_dir), "--repo", str(repo), "--db", str(db), "--no-measure",
            "--executors", "cpu:1"]
    assert main(args) == 0
    with sqlite3.connect(db) as conn:  # pretend the first image failed on its expert
        conn.execute("UPDATE results SET status = 'failed', error_kind = 'expert_failed' "
                     "WHERE path = ?", (names[0],))
    conn.close()
    capsys.readouterr()
    assert main([*args, "--retry-failed"]) == 0
    assert "1 images answered" in capsys.readouterr().out

    spec = yaml.safe_load((repo / "coe.yaml").read_text())
    spec["usage_prior"]["counts"]["R"] += 1  # another repository, as far as rows go
    (repo / "coe.yaml").write_text(yaml.safe_dump(spec))
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "--accept-repo-change" in err[0], err
    assert "tiny-pcb@" in err[0]
    assert main([*args, "--accept-repo-change"]) == 0
    assert main(args) == 0  # the new repository is now the last run's


def test_symlinks_that_leave_the_lot_are_rejected_and_not_read(tiny_zoo, tmp_path):
    lot_dir = tmp_path / "lot"
    (name,) = small_lot(tiny_zoo, lot_dir, num=1)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "R__secret.png").write_bytes(b"not for the lot")
    (lot_dir / "R__leak.png").symlink_to(outside / "R__secret.png")
    (lot_dir / "more").symlink_to(outside, target_is_directory=True)
    (lot_dir / "R__alias.png").symlink_to(lot_dir / name)  # stays inside: read
    items = {i.path: i for i in discover_lot(lot_dir, "component_type")}
    assert set(items) == {name, "R__alias.png", "R__leak.png", "more"}
    assert items[name].problem is None and items["R__alias.png"].problem is None
    for path in ("R__leak.png", "more"):
        assert "leads outside the lot folder: not read" in items[path].problem
    (lot_dir / "manifest.csv").write_text(f"filename,component_type\n{name},R\nR__leak.png,R\n"
                                          "R__alias.png,R\n")
    items = {i.path: i for i in discover_lot(lot_dir, "component_type")}
    assert "leads outside the lot folder" in items["R__leak.png"].problem
    assert items["R__alias.png"].problem is None

    model = open_repository(tiny_zoo[0])
    config = EngineConfig(executors=parse_executors("cpu:1"), measure_costs=False)
    with ResultStore(tmp_path / "r.sqlite", lot_dir, tiny_zoo[0]) as store:
        summary = inspect_lot(model, lot_dir, store, config)
    assert summary.counts == {"ok": 2, "failed": 0, "rejected": 2}


def test_two_spellings_of_one_database_get_one_writer(tiny_zoo, tmp_path):
    (tmp_path / "lot").mkdir()
    db = tmp_path / "results.sqlite"
    link = tmp_path / "link.sqlite"
    link.symlink_to(db)
    with ResultStore(db, tmp_path / "lot", tiny_zoo[0]), pytest.raises(ConfigError, match="another"):
        ResultStore(link, tmp_path / "lot", tiny_zoo[0])


def test_a_schema_1_database_is_upgraded_and_resumed(tiny_zoo, tmp_path):
    lot_dir = tmp_path / "lot"
    (name,) = small_lot(tiny_zoo, lot_dir, num=1)
    db = tmp_path / "old.sqlite"
    conn = sqlite3.connect(db)
    conn.executescript(
        "CREATE TABLE runs (run_id INTEGER PRIMARY KEY, started_at TEXT NOT NULL, lot_dir TEXT "
        "NOT NULL, repo TEXT NOT NULL, pid INTEGER NOT NULL);"
        "CREATE TABLE results (path TEXT PRIMARY KEY, component_type TEXT, status TEXT NOT NULL, "
        "labels TEXT, experts TEXT, outputs TEXT, error TEXT, latency_s REAL, submitted_at TEXT "
        "NOT NULL, finished_at TEXT NOT NULL, run_id INTEGER NOT NULL);"
        "PRAGMA user_version = 1;")
    conn.execute("INSERT INTO runs VALUES (1, 't', ?, ?, 1)", (str(lot_dir.resolve()), "r"))
    conn.execute("INSERT INTO results VALUES (?, 'R', 'ok', NULL, NULL, NULL, NULL, 0.1, 't', "
                 "'t', 1)", (name,))
    conn.commit()
    conn.close()
    with ResultStore(db, lot_dir, tiny_zoo[0], repo_identity="x@1") as store:
        assert store.done_paths() == {name}
