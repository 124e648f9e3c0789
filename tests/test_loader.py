"""The loader: honest storage reads, pacing, and zero-copy safetensors parsing."""

from __future__ import annotations

import errno
import json
import os
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from coserve.errors import ConfigError, ExpertError
from coserve.loader import (
    DTYPES,
    STORAGE_PROFILES,
    ReadMode,
    Storage,
    StorageProfile,
    expected_file_bytes,
    measure_raw_bandwidth,
    parse_safetensors,
    read_header,
    storage_profile,
)

UNPACED = storage_profile("none")


def _tensors_of_every_dtype() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for i, (name, dtype) in enumerate(DTYPES.items()):
        shape = (3 + i, 7)  # odd sizes: the file is no multiple of 4096 bytes
        if dtype.is_floating_point:
            tensor = (torch.randn(shape, generator=gen) * 4).to(dtype)
        elif dtype == torch.bool:
            tensor = torch.randint(0, 2, shape, generator=gen).bool()
        else:
            tensor = torch.randint(0, 100, shape, generator=gen).to(dtype)
        tensors[f"t_{name}"] = tensor
    tensors["scalar"] = torch.tensor(2.5)
    tensors["empty"] = torch.zeros(0, 5)
    tensors["big"] = torch.randn(1000, 37, generator=gen)  # several pages
    return tensors


def _save(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    save_file(tensors, path)
    return path


def _write_raw(path: Path, header: dict, data: bytes) -> Path:
    header_json = json.dumps(header).encode()
    path.write_bytes(len(header_json).to_bytes(8, "little") + header_json + data)
    return path


def _supports_direct_io(directory: Path) -> bool:
    probe = directory / "probe"
    probe.write_bytes(b"\0" * 4096)
    try:
        os.close(os.open(probe, os.O_RDONLY | os.O_DIRECT))
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    return True


def _bytes_of(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(-1).view(torch.uint8)


def _assert_same(loaded: dict[str, torch.Tensor], originals: dict[str, torch.Tensor]) -> None:
    assert loaded.keys() == originals.keys()
    for name, original in originals.items():
        assert loaded[name].dtype == original.dtype, name
        assert loaded[name].shape == original.shape, name
        # Bitwise: torch.equal has no CPU kernel for float8.
        assert torch.equal(_bytes_of(loaded[name]), _bytes_of(original)), name


# --- round trip -----------------------------------------------------------------


@pytest.mark.parametrize("direct_io", [True, False])
def test_round_trip_every_dtype(tmp_path: Path, direct_io: bool) -> None:
    originals = _tensors_of_every_dtype()
    path = _save(tmp_path / "expert.safetensors", originals)
    assert path.stat().st_size % 4096 != 0

    storage = Storage(UNPACED, direct_io=direct_io)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's warning about a read-only buffer
        loaded = parse_safetensors(storage.read(path), path)

    _assert_same(loaded, originals)


def test_tensors_are_views_into_the_read_buffer(tmp_path: Path) -> None:
    path = _save(tmp_path / "expert.safetensors", {"w": torch.arange(10, dtype=torch.float32)})
    buf = Storage(UNPACED).read(path)
    weight = parse_safetensors(buf, path)["w"]

    weight[0] = 42.0
    assert torch.frombuffer(buf, dtype=torch.float32, count=10, offset=len(buf) - 40)[0] == 42.0


def test_read_header_matches_the_file(tmp_path: Path) -> None:
    originals = _tensors_of_every_dtype()
    path = _save(tmp_path / "expert.safetensors", originals)

    header = read_header(path)

    assert header["t_BF16"] == ("BF16", tuple(originals["t_BF16"].shape))
    assert header["scalar"] == ("F32", ())
    assert header.keys() == originals.keys()
    assert expected_file_bytes(path) == path.stat().st_size


# --- how reads avoid the page cache ---------------------------------------------


def test_direct_io_is_used_where_the_filesystem_supports_it(tmp_path: Path) -> None:
    if not _supports_direct_io(tmp_path):
        pytest.skip("tmp_path's filesystem refuses O_DIRECT")
    path = _save(tmp_path / "expert.safetensors", {"w": torch.ones(3, 5)})
    storage = Storage(UNPACED)

    storage.read(path)

    assert storage.last_read_mode is ReadMode.DIRECT
    assert storage.stats().num_direct_reads == 1


def test_direct_io_false_reads_through_fadvise(tmp_path: Path) -> None:
    path = _save(tmp_path / "expert.safetensors", {"w": torch.ones(3, 5)})
    storage = Storage(UNPACED, direct_io=False)

    loaded = parse_safetensors(storage.read(path), path)

    assert torch.equal(loaded["w"], torch.ones(3, 5))
    assert storage.last_read_mode is ReadMode.FADVISE
    assert storage.stats().num_fadvise_reads == 1


def test_falls_back_once_per_device_when_o_direct_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    originals = {"w": torch.arange(6.0)}
    path = _save(tmp_path / "expert.safetensors", originals)
    real_open = os.open
    num_direct_opens = 0

    def open_refusing_direct(file, flags, *args):  # a filesystem without O_DIRECT
        nonlocal num_direct_opens
        if flags & os.O_DIRECT:
            num_direct_opens += 1
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(file, flags, *args)

    monkeypatch.setattr(os, "open", open_refusing_direct)
    storage = Storage(UNPACED)
    for _ in range(2):
        _assert_same(parse_safetensors(storage.read(path), path), originals)

    assert storage.last_read_mode is ReadMode.FADVISE
    assert num_direct_opens == 1


# --- pacing ---------------------------------------------------------------------


def test_pacing_holds_a_read_to_the_profile_speed(tmp_path: Path) -> None:
    path = _save(tmp_path / "expert.safetensors", {"w": torch.zeros(2_000_000)})  # ~8 MB
    storage = Storage(StorageProfile("test-80", 80e6))

    start_s = time.monotonic()
    storage.read(path)

    assert time.monotonic() - start_s >= 0.1
    assert storage.stats().read_time_s >= 0.1


def test_concurrent_readers_share_one_paced_device(tmp_path: Path) -> None:
    paths = [
        _save(tmp_path / f"expert{i}.safetensors", {"w": torch.zeros(1_000_000)})  # ~4 MB
        for i in range(2)
    ]
    storage = Storage(StorageProfile("test-80", 80e6))
    paced_s = sum(path.stat().st_size for path in paths) / 80e6
    start = threading.Barrier(2)

    def read(path: Path) -> None:
        start.wait()
        storage.read(path)

    start_s = time.monotonic()
    threads = [threading.Thread(target=read, args=(path,)) for path in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert time.monotonic() - start_s >= paced_s
    assert storage.stats().num_reads == 2


def test_raw_bandwidth_through_a_paced_storage_is_capped(tmp_path: Path) -> None:
    path = _save(tmp_path / "expert.safetensors", {"w": torch.zeros(250_000)})  # ~1 MB
    storage = Storage(StorageProfile("test-80", 80e6))

    assert measure_raw_bandwidth(path) > 0
    assert measure_raw_bandwidth(path, storage) <= 80e6
    assert storage.stats().num_reads == 0


# --- counters -------------------------------------------------------------------


def test_counters_add_up(tmp_path: Path) -> None:
    paths = [
        _save(tmp_path / f"expert{i}.safetensors", {"w": torch.zeros(100 * (i + 1))})
        for i in range(3)
    ]
    storage = Storage(UNPACED)
    for path in paths:
        storage.read(path)
    storage.read(paths[0])

    stats = storage.stats()
    assert stats.num_reads == 4
    assert stats.bytes_read == sum(p.stat().st_size for p in paths) + paths[0].stat().st_size
    assert stats.num_direct_reads + stats.num_fadvise_reads == 4
    assert stats.read_time_s > 0


# --- errors ---------------------------------------------------------------------


def test_truncated_file_is_reported_as_truncated(tmp_path: Path) -> None:
    path = _save(tmp_path / "expert.safetensors", {"a": torch.ones(100), "b": torch.ones(100)})
    full_bytes = path.stat().st_size
    os.truncate(path, full_bytes - 10)

    with pytest.raises(ExpertError, match="truncated") as parse_error:
        parse_safetensors(Storage(UNPACED).read(path), path)
    assert "'b'" in str(parse_error.value)
    with pytest.raises(ExpertError, match="truncated"):
        Storage(UNPACED).read(path, expected_bytes=full_bytes)
    assert expected_file_bytes(path) == full_bytes  # a validator can spot it from the header


def test_file_cut_inside_the_header_is_truncated(tmp_path: Path) -> None:
    path = _save(tmp_path / "expert.safetensors", {"a": torch.ones(100)})
    os.truncate(path, 20)

    with pytest.raises(ExpertError, match="truncated"):
        parse_safetensors(Storage(UNPACED).read(path), path)
    with pytest.raises(ExpertError, match="truncated"):
        read_header(path)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.safetensors"

    with pytest.raises(ExpertError, match="nowhere.safetensors") as error:
        Storage(UNPACED).read(path)
    assert "repository" in str(error.value)
    with pytest.raises(ExpertError, match="nowhere.safetensors"):
        read_header(path)


def test_corrupt_header_json(tmp_path: Path) -> None:
    path = tmp_path / "expert.safetensors"
    path.write_bytes((11).to_bytes(8, "little") + b'{"w": {"dty' + b"\0" * 16)

    with pytest.raises(ExpertError, match="corrupt"):
        parse_safetensors(Storage(UNPACED).read(path), path)
    with pytest.raises(ExpertError, match="corrupt"):
        read_header(path)


@pytest.mark.parametrize(
    ("header", "data_bytes", "problem"),
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, 12, "overlaps"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, 12, "gap"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, 8, "needs 12"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, 9, "follow"),
        ({"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, 8, "unsupported"),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, 8, "shape"),
        ([1, 2], 0, "not a JSON object"),
    ],
)  # fmt: skip
def test_malformed_layouts_name_the_problem(
    tmp_path: Path, header: dict, data_bytes: int, problem: str
) -> None:
    path = _write_raw(tmp_path / "expert.safetensors", header, b"\0" * data_bytes)

    with pytest.raises(ExpertError, match=problem):
        parse_safetensors(Storage(UNPACED).read(path), path)


def test_metadata_is_accepted(tmp_path: Path) -> None:
    header = {
        "__metadata__": {"format": "pt"},
        "w": {"dtype": "I16", "shape": [2], "data_offsets": [0, 4]},
    }
    path = _write_raw(tmp_path / "expert.safetensors", header, b"\1\0\2\0")

    loaded = parse_safetensors(Storage(UNPACED).read(path), path)

    assert loaded["w"].tolist() == [1, 2]


def test_unknown_storage_profile_lists_the_names() -> None:
    with pytest.raises(ConfigError) as error:
        storage_profile("bogus")
    for name in ("none", "sata-530", "nvme-3000"):
        assert name in str(error.value)
    assert STORAGE_PROFILES["sata-530"].read_bytes_per_s == 530e6


def test_profile_speed_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="read_bytes_per_s"):
        StorageProfile("broken", 0)
