"""The host arena (alignment, reuse, coalescing, exhaustion, fragmentation figures), reads
straight into its extents, the cached header layout, and the one-transfer device copy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from coserve.errors import ConfigError, ExpertError
from coserve.loader.arena import (
    ARENA_ALIGN_BYTES,
    ArenaExhausted,
    Extent,
    HostArena,
    arena_capacity_bytes,
)
from coserve.loader.expert_loader import ExpertLoader, bulk_copy
from coserve.loader.storage import Storage, storage_profile
from coserve.manager.manager import is_out_of_memory

PAGE = ARENA_ALIGN_BYTES
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"conv.weight": torch.randn(16, 3, 3, 3, generator=gen),
            "bn.num_batches": torch.tensor(7, dtype=torch.int64),
            "half": torch.randn(33, generator=gen).half(),
            "mask": torch.randint(0, 2, (5, 3), generator=gen).bool(),
            "empty": torch.zeros(0, 4),
            "fc.weight": torch.randn(10, 250, generator=gen)}


def _expert_files(tmp_path: Path, num: int = 3) -> dict[str, tuple[Path, int]]:
    files = {}
    for i in range(num):
        path = tmp_path / f"e{i}.safetensors"
        save_file(_weights(i), path)
        files[f"e{i}"] = (path, path.stat().st_size)
    return files


def _assert_same(loaded: dict[str, torch.Tensor], originals: dict[str, torch.Tensor]) -> None:
    assert loaded.keys() == originals.keys()
    for name, t in originals.items():
        assert loaded[name].dtype == t.dtype and loaded[name].shape == t.shape, name
        assert torch.equal(loaded[name].cpu(), t), name


# -- the allocator ---------------------------------------------------------------------------
def test_extents_are_page_aligned_and_rounded_up_to_pages():
    arena = HostArena(10 * PAGE)
    a, b = arena.allocate(1), arena.allocate(PAGE + 1)
    assert (a.offset, a.num_bytes) == (0, PAGE)
    assert (b.offset, b.num_bytes) == (PAGE, 2 * PAGE)
    view = arena.view(b)
    assert view.nbytes == 2 * PAGE and not view.readonly
    address = torch.frombuffer(view, dtype=torch.uint8).data_ptr()
    assert address % PAGE == 0  # O_DIRECT can read straight into it


def test_capacity_is_rounded_up_to_a_page_and_used_bytes_add_up():
    arena = HostArena(3 * PAGE + 5)
    assert arena.capacity_bytes == 4 * PAGE
    arena.allocate(PAGE)
    s = arena.stats()
    assert (s.capacity_bytes, s.used_bytes, s.free_bytes, s.num_extents) == (4 * PAGE, PAGE, 3 * PAGE, 1)
    assert s.pinned_bytes == 0  # pin=False: nothing page-locked


def test_freed_extents_are_reused_first_fit():
    arena = HostArena(4 * PAGE)
    a = arena.allocate(PAGE)
    arena.allocate(PAGE)
    arena.free(a)
    assert arena.allocate(PAGE) == Extent(0, PAGE)


def test_freed_neighbours_coalesce_into_one_extent():
    arena = HostArena(4 * PAGE)
    a, b, c, d = (arena.allocate(PAGE) for _ in range(4))
    arena.free(a)
    arena.free(c)
    s = arena.stats()
    assert (s.free_bytes, s.largest_free_bytes) == (2 * PAGE, PAGE)
    assert s.fragmentation == pytest.approx(0.5)  # two holes of one page each
    arena.free(b)  # joins a and c into three pages
    assert arena.stats().largest_free_bytes == 3 * PAGE
    arena.free(d)
    s = arena.stats()
    assert (s.largest_free_bytes, s.num_extents, s.fragmentation) == (4 * PAGE, 0, 0.0)
    assert arena.allocate(4 * PAGE) == Extent(0, 4 * PAGE)


def test_exhaustion_is_refused_with_a_clear_out_of_memory_error():
    arena = HostArena(4 * PAGE)
    a = arena.allocate(PAGE)
    arena.allocate(PAGE)
    arena.allocate(PAGE)
    arena.free(a)  # two free pages, but not next to each other
    assert not arena.can_allocate(2 * PAGE) and arena.can_allocate(PAGE)
    with pytest.raises(ArenaExhausted, match="no free extent of 8192 bytes.*largest free 4096") as err:
        arena.allocate(2 * PAGE)
    assert is_out_of_memory(err.value)  # the manager's out-of-memory, not the expert's fault
    assert arena.stats().used_bytes == 2 * PAGE  # the refusal changed nothing


@pytest.mark.parametrize("capacity", [0, -1, 1.5])
def test_a_bad_capacity_says_how_to_fix_it(capacity):
    with pytest.raises(ConfigError, match="positive number of bytes"):
        HostArena(capacity)


def test_capacity_holds_the_host_cache_and_the_loads_in_flight():
    sizes = [(10_000, 10_100), (20_000, 20_100)]  # (tensor bytes, file bytes)
    capacity = arena_capacity_bytes(sizes, host_cache_bytes=20_000, num_loads_in_flight=2)
    # the cache's budget scaled by the worst page-rounded file / tensor ratio, plus two
    # of the largest extent
    ratio = 3 * PAGE / 10_000
    expected = -(-(int(20_000 * ratio + 0.999) + 2 * 5 * PAGE) // PAGE) * PAGE
    assert capacity == expected
    # never more cache than every expert at once
    assert arena_capacity_bytes(sizes, 10**12, 1) == 3 * PAGE + 5 * PAGE + 5 * PAGE


# -- reads into the arena ----------------------------------------------------------------------
def test_read_host_lands_in_an_extent_and_release_gives_it_back(tmp_path):
    files = _expert_files(tmp_path)
    arena = HostArena(arena_capacity_bytes([(1, s) for _, s in files.values()], 0, 3))
    loader = ExpertLoader(Storage(storage_profile("none")), files, arena=arena)

    copy, seconds = loader.read_host("e1")

    assert seconds > 0 and copy.extent is not None
    _assert_same(copy.tensors, _weights(1))
    base = torch.frombuffer(arena.view(copy.extent), dtype=torch.uint8).data_ptr()
    assert copy.tensors["fc.weight"].data_ptr() > base  # a view into the extent, no copy
    assert arena.stats().used_bytes == copy.extent.num_bytes
    copy.release()
    assert arena.stats().used_bytes == 0


def test_a_failed_load_gives_its_extent_back(tmp_path):
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes((10**9).to_bytes(8, "little") + b"{" * 5000)  # a header longer than the file
    arena = HostArena(4 * PAGE)
    loader = ExpertLoader(Storage(storage_profile("none")), {"bad": (path, 5008)}, arena=arena)
    with pytest.raises(ExpertError, match="corrupt|truncated|header"):
        loader.read_host("bad")
    assert arena.stats().used_bytes == 0


def test_a_full_arena_refuses_a_read_as_out_of_memory(tmp_path):
    files = _expert_files(tmp_path, 2)
    arena = HostArena(files["e0"][1])  # room for one expert
    loader = ExpertLoader(Storage(storage_profile("none")), files, arena=arena)
    first, _ = loader.read_host("e0")
    with pytest.raises(ArenaExhausted):
        loader.read_host("e1")
    first.release()
    _assert_same(loader.read_host("e1")[0].tensors, _weights(1))


def test_later_loads_reuse_the_layout_and_notice_a_changed_file(tmp_path):
    files = _expert_files(tmp_path, 1)
    loader = ExpertLoader(Storage(storage_profile("none")), files)
    _assert_same(loader.read("e0")[0], _weights(0))
    _assert_same(loader.read("e0")[0], _weights(0))  # views built during the read
    # Same size, different header (a tensor renamed): the cached layout must not be used.
    path, size = files["e0"]
    renamed = {("fc.wEight" if k == "fc.weight" else k): v for k, v in _weights(0).items()}
    save_file(renamed, path)
    assert path.stat().st_size == size
    _assert_same(loader.read("e0")[0], renamed)


def test_the_cpu_path_reads_into_buffers_of_its_own(tmp_path):
    files = _expert_files(tmp_path, 1)
    loader = ExpertLoader(Storage(storage_profile("none")), files)
    assert loader.arena is None
    first, second = loader.read("e0")[0], loader.read("e0")[0]
    assert first["fc.weight"].data_ptr() != second["fc.weight"].data_ptr()
    assert loader.busy_s() > 0


# -- the device copy -------------------------------------------------------------------------
def test_bulk_copy_rebuilds_every_view_from_one_storage(tmp_path):
    files = _expert_files(tmp_path, 1)
    tensors, _ = ExpertLoader(Storage(storage_profile("none")), files).read("e0")
    shared = {t.untyped_storage().data_ptr() for t in tensors.values() if t.numel()}
    assert len(shared) == 1  # parse_safetensors' views share one storage
    moved = bulk_copy(tensors, "cpu")
    _assert_same(moved, _weights(0))
    assert moved["fc.weight"].untyped_storage().data_ptr() in shared


def test_bulk_copy_copies_tensors_of_their_own_one_by_one():
    tensors = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4, dtype=torch.int32)}
    _assert_same(bulk_copy(tensors, "cpu"), tensors)


@needs_cuda
def test_pinned_arena_pins_exactly_its_capacity():
    arena = HostArena(10 * PAGE + 1, pin=True)
    assert arena.stats().pinned_bytes == arena.capacity_bytes == 11 * PAGE
    extent = arena.allocate(PAGE)
    assert torch.frombuffer(arena.view(extent), dtype=torch.uint8).is_pinned()


@needs_cuda
def test_device_load_is_one_transfer_of_the_extent(tmp_path):
    files = _expert_files(tmp_path, 2)
    arena = HostArena(arena_capacity_bytes([(1, s) for _, s in files.values()], 0, 2), pin=True)
    loader = ExpertLoader(Storage(storage_profile("none")), files, arena=arena)
    copy, _ = loader.read_host("e1")
    on_device, seconds = loader.to_device(copy.tensors, "cuda:0")
    copy.release()
    assert seconds > 0
    assert all(t.device.type == "cuda" for t in on_device.values() if t.numel())
    _assert_same(on_device, _weights(1))
    shared = {t.untyped_storage().data_ptr() for t in on_device.values() if t.numel()}
    assert len(shared) == 1


# -- the GPU check scripts ---------------------------------------------------------------------
SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
# The scripts import this checkout's coserve, whatever the venv has installed.
SCRIPT_ENV = {**os.environ, "PYTHONPATH": str(SCRIPTS.parent / "src")}


def test_gpu_check_script_is_valid_bash_and_runs_what_the_issue_asks():
    script = SCRIPTS / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    for needed in ("torch==2.13.0", "h2d_bandwidth.py", "--executors cuda:0:3,cpu:1",
                   "samba,coserve-paper,coserve,all-resident", "0.2 * total", "zoo build pcb"):
        assert needed in text, needed


def test_h2d_bandwidth_says_no_cuda_and_exits_0_on_a_cpu_machine():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the script measures instead")
    done = subprocess.run([sys.executable, str(SCRIPTS / "h2d_bandwidth.py")],
                          capture_output=True, text=True, timeout=120, env=SCRIPT_ENV)
    assert done.returncode == 0, done.stderr
    assert "no CUDA" in done.stdout


def test_loader_bandwidth_script_prints_its_rows(tiny_zoo):
    done = subprocess.run([sys.executable, str(SCRIPTS / "loader_bandwidth.py"), str(tiny_zoo[0]),
                           "--experts", "2", "--profile", "nvme-3000"],
                          capture_output=True, text=True, timeout=120, env=SCRIPT_ENV)
    assert done.returncode == 0, done.stderr
    for row in ("raw O_DIRECT", "loader nvme-3000", "of raw", "loader / raw per expert"):
        assert row in done.stdout, row


def test_layouts_read_up_front_serve_first_loads_and_skip_broken_files(tmp_path):
    files = _expert_files(tmp_path, 2)
    files["gone"] = (tmp_path / "missing.safetensors", 100)
    loader = ExpertLoader(Storage(storage_profile("none")), files)
    assert loader.read_layouts() == 2  # the missing file is left to its own load
    _assert_same(loader.read("e1")[0], _weights(1))
    with pytest.raises(ExpertError, match="does not exist"):
        loader.read("gone")
