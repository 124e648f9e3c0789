"""The storage tier: honest, paced whole-file reads of expert weight files.

An expert that is in none of coserve's pools must cost a real storage read, so the OS
page cache must never act as a hidden free tier: reads use O_DIRECT where the
filesystem allows it, and otherwise drop the file's cached pages around a normal read.
A storage profile can pace reads to a slower device (e.g. the 530 MB/s SATA SSD of the
reference deployment) so that benchmarks on a fast machine see the target hardware.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import mmap
import os
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from coserve.errors import ConfigError, ExpertError

# O_DIRECT needs buffer address, file offset and length aligned to the logical block
# size; 4096 covers every common device (512-byte and 4K-native sectors alike).
DIRECT_IO_ALIGN_BYTES = 4096

# Large requests keep the device queue deep (the block layer splits one O_DIRECT
# request into many in-flight bios); larger chunks gained nothing measurable.
READ_CHUNK_BYTES = 16 * 1024 * 1024

# The x86-64 / arm64 (4 KiB base page) transparent huge page size.
HUGE_PAGE_BYTES = 2 * 1024 * 1024
# Buffers one readv fills at most (Linux's UIO_MAXIOV).
_IOV_MAX = getattr(os, "IOV_MAX", 1024)

# Threads reading files while their callers build tensor views (`Storage.load`'s
# `then`); preadv releases the GIL. One per concurrent load is plenty.
NUM_READERS = 8

T = TypeVar("T")
# Allocates the destination of a read: given the bytes needed (the file size rounded up
# to DIRECT_IO_ALIGN_BYTES), a page-aligned writable buffer at least that long.
Allocate = Callable[[int], memoryview]


@dataclass(frozen=True)
class StorageProfile:
    """A storage device to model. `read_bytes_per_s=None` reads at the real device speed."""

    name: str
    read_bytes_per_s: float | None

    def __post_init__(self) -> None:
        if self.read_bytes_per_s is not None and not self.read_bytes_per_s > 0:
            raise ConfigError(
                f"storage profile {self.name!r}: read_bytes_per_s must be a positive number "
                f"of bytes per second (e.g. 530e6) or None for unpaced reads, "
                f"got {self.read_bytes_per_s!r}"
            )


STORAGE_PROFILES: dict[str, StorageProfile] = {
    profile.name: profile
    for profile in (
        StorageProfile("none", None),
        # The reference deployment's SATA SSD.
        StorageProfile("sata-530", 530e6),
        # The ~3 GB/s SSD of the unified-memory reference machine.
        StorageProfile("nvme-3000", 3000e6),
    )
}


def storage_profile(name: str) -> StorageProfile:
    """The named profile from STORAGE_PROFILES; ConfigError listing the valid names."""
    try:
        return STORAGE_PROFILES[name]
    except KeyError:
        valid = ", ".join(sorted(STORAGE_PROFILES))
        raise ConfigError(f"unknown storage profile {name!r}: choose one of {valid}") from None


class ReadMode(enum.Enum):
    """How a read bypassed the page cache."""

    DIRECT = "direct"  # O_DIRECT: the page cache is never touched
    FADVISE = "fadvise"  # normal read, cached pages dropped before and after


@dataclass(frozen=True)
class StorageStats:
    """A snapshot of a Storage's counters. `read_time_s` is summed over readers, so with
    concurrent readers it can exceed wall-clock time."""

    num_reads: int
    bytes_read: int
    read_time_s: float
    num_direct_reads: int
    num_fadvise_reads: int
    # wall-clock time with at least one read in flight: bytes_read / busy_s is the
    # bandwidth the device delivered, which read_time_s (summed) understates as soon as
    # reads overlap (each also waits for the others on a shared device)
    busy_s: float = 0.0


class BusyClock:
    """Wall-clock time with at least one operation in flight (the union of intervals),
    thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._num_in_flight = 0
        self._since_s = 0.0
        self._busy_s = 0.0

    def enter(self) -> None:
        with self._lock:
            if self._num_in_flight == 0:
                self._since_s = self._clock()
            self._num_in_flight += 1

    def exit(self) -> None:
        with self._lock:
            self._num_in_flight -= 1
            if self._num_in_flight == 0:
                self._busy_s += self._clock() - self._since_s

    def num_in_flight(self) -> int:
        with self._lock:
            return self._num_in_flight

    def busy_s(self) -> float:
        with self._lock:
            running_s = self._clock() - self._since_s if self._num_in_flight else 0.0
            return self._busy_s + running_s


class _SerialDevice:
    """The pacing model: one device that serves reads one after another at a fixed
    speed, so concurrent readers share its bandwidth like they share one SSD."""

    def __init__(self, read_bytes_per_s: float | None) -> None:
        self._read_bytes_per_s = read_bytes_per_s
        self._lock = threading.Lock()
        self._busy_until_s = 0.0

    def reserve(self, nbytes: int) -> float | None:
        """Book the device for `nbytes`; returns the monotonic time the read may finish
        (None when unpaced)."""
        if self._read_bytes_per_s is None:
            return None
        with self._lock:
            begin_s = max(time.monotonic(), self._busy_until_s)
            self._busy_until_s = begin_s + nbytes / self._read_bytes_per_s
            return self._busy_until_s

    @staticmethod
    def wait_until(deadline_s: float | None) -> None:
        if deadline_s is None:
            return
        # A loop, because a signal may cut a sleep short on some platforms.
        while (remaining_s := deadline_s - time.monotonic()) > 0:
            time.sleep(remaining_s)


class _DirectIOUnsupported(Exception):
    """The filesystem refused O_DIRECT (EINVAL); fall back to fadvise."""


class Storage:
    """One storage device shared by every loader in the process (thread-safe).

    `read(path)` returns the whole file in one fresh, page-aligned, writable buffer,
    ready for zero-copy tensor views (see `parse_safetensors`); `load` reads into a
    buffer the caller allocates (e.g. a host arena's extent) and builds views of it
    while the read is in flight.
    """

    def __init__(self, profile: StorageProfile, direct_io: bool = True) -> None:
        self.profile = profile
        self.direct_io = direct_io
        self._device = _SerialDevice(profile.read_bytes_per_s)
        self._lock = threading.Lock()
        # st_dev of filesystems that refused O_DIRECT, so each pays the failed probe once.
        self._no_direct_devices: set[int] = set()
        self._num_reads = 0
        self._bytes_read = 0
        self._read_time_s = 0.0
        self._num_reads_by_mode = dict.fromkeys(ReadMode, 0)
        self._last_read_mode: ReadMode | None = None
        self._busy = BusyClock()
        self._readers = ThreadPoolExecutor(NUM_READERS, thread_name_prefix="coserve-read")

    @property
    def last_read_mode(self) -> ReadMode | None:
        """How the most recent read avoided the page cache (None before any read)."""
        return self._last_read_mode

    def stats(self) -> StorageStats:
        with self._lock:
            return StorageStats(
                num_reads=self._num_reads,
                bytes_read=self._bytes_read,
                read_time_s=self._read_time_s,
                num_direct_reads=self._num_reads_by_mode[ReadMode.DIRECT],
                num_fadvise_reads=self._num_reads_by_mode[ReadMode.FADVISE],
                busy_s=self._busy.busy_s(),
            )

    def read(self, path: Path, expected_bytes: int | None = None) -> memoryview:
        """Read the whole file from the device (never from the page cache), paced by
        the profile. ExpertError if it is missing, unreadable, or not `expected_bytes`
        long."""
        return self.load(path, expected_bytes)[0]

    def load(self, path: Path, expected_bytes: int | None = None, *,
             into: Allocate | None = None,
             then: Callable[[memoryview], T] | None = None) -> tuple[memoryview, T | None]:
        """Read the whole file into `into(aligned_bytes)` (default: a fresh page-aligned
        buffer) and return (the file's bytes, `then(those bytes)`). `then` runs while
        the file is being read: it may build views of the buffer but must not read it
        (`ExpertLoader` builds tensor views from a layout it parsed before). Pacing
        books the device when the load starts, so allocation and view building overlap
        the modelled read instead of adding to it. ExpertError as for `read`."""
        path = Path(path)
        start_s = time.monotonic()
        st = _stat_weights_file(path)
        _check_size(path, st.st_size, expected_bytes)
        self._busy.enter()
        try:
            deadline_s = self._device.reserve(st.st_size)
            dest = (into or _fresh_buffer)(_aligned_bytes(st.st_size))
            _check_destination(dest, st.st_size)
            result, mode = self._read_uncached(path, st, dest, then)
            self._device.wait_until(deadline_s)
        finally:
            self._busy.exit()
        self._record(st.st_size, time.monotonic() - start_s, mode)
        return dest[: st.st_size], result

    def _read_uncached(self, path: Path, st: os.stat_result, dest: memoryview,
                       then: Callable[[memoryview], T] | None) -> tuple[T | None, ReadMode]:
        if self._uses_direct_io(st):
            try:
                return self._read_file(path, st.st_size, dest, then, True), ReadMode.DIRECT
            except _DirectIOUnsupported:
                with self._lock:
                    self._no_direct_devices.add(st.st_dev)
        return self._read_file(path, st.st_size, dest, then, False), ReadMode.FADVISE

    def _read_file(self, path: Path, size: int, dest: memoryview,
                   then: Callable[[memoryview], T] | None, direct: bool) -> T | None:
        fd = _open(path, os.O_DIRECT if direct else 0)
        try:
            if not direct:
                # Drop before the read so that pages cached by anyone else do not make
                # this read free, and after it so that we do not leave a free copy behind.
                _drop_cached_pages(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            result = self._fill_overlapped(fd, path, dest, size, then, direct)
            if not direct:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        return result

    def _fill_overlapped(self, fd: int, path: Path, dest: memoryview, size: int,
                         then: Callable[[memoryview], T] | None, direct: bool) -> T | None:
        """The whole file in one request on a reader thread while `then` runs here. One
        request: on the development VM splitting the read in two (even both in flight
        at once) cost more than the parse it would let start early."""
        if then is None:
            _fill(fd, path, dest, (0, size), size, direct)
            return None
        issued = threading.Event()
        whole = self._readers.submit(_fill_issued, issued, fd, path, dest, (0, size),
                                          size, direct)
        # `then` holds the GIL; the reader must have issued its read first, or it could
        # wait a whole switch interval (5 ms) for the GIL just to start.
        issued.wait()
        try:
            return then(dest[:size])
        finally:
            whole.result()  # the buffer and the descriptor are in use until it is done

    def _record(self, nbytes: int, elapsed_s: float, mode: ReadMode) -> None:
        with self._lock:
            self._num_reads += 1
            self._bytes_read += nbytes
            self._read_time_s += elapsed_s
            self._num_reads_by_mode[mode] += 1
            self._last_read_mode = mode

    def _uses_direct_io(self, st: os.stat_result) -> bool:
        return self.direct_io and st.st_dev not in self._no_direct_devices


def _aligned_bytes(nbytes: int) -> int:
    return max(1, -(-nbytes // DIRECT_IO_ALIGN_BYTES)) * DIRECT_IO_ALIGN_BYTES


def _fresh_buffer(nbytes: int) -> memoryview:
    return memoryview(aligned_buffer(nbytes))


def _check_destination(dest: memoryview, size: int) -> None:
    # Internal contract of `into` (an allocator bug, never user input).
    assert dest.nbytes >= _aligned_bytes(size) and not dest.readonly, (dest.nbytes, size)


def measure_raw_bandwidth(path: Path, storage: Storage | None = None) -> float:
    """Bytes/s of one plain sequential read of `path` into a reused aligned buffer,
    with O_DIRECT (page cache dropped first): the ceiling that `Storage.read` plus
    parsing is compared against in benchmarks.

    It measures the device as this process sees it: other processes' I/O, container
    I/O limits and the filesystem all count, so measure on an otherwise idle machine.
    With `storage`, its `direct_io` setting is honoured and the read books that
    storage's paced device like any other read (so a paced profile caps the figure),
    but it is not counted in that storage's stats.
    """
    path = Path(path)
    st = _stat_weights_file(path)
    device = storage._device if storage is not None else _SerialDevice(None)
    direct_io = storage._uses_direct_io(st) if storage is not None else True
    start_s = time.monotonic()
    deadline_s = device.reserve(st.st_size)
    if direct_io:
        try:
            _stream_file(path, st.st_size, os.O_DIRECT)
        except _DirectIOUnsupported:
            direct_io = False
    if not direct_io:
        _stream_file(path, st.st_size, 0)
    device.wait_until(deadline_s)
    elapsed_s = time.monotonic() - start_s
    return st.st_size / elapsed_s if elapsed_s > 0 else float("inf")


def _stat_weights_file(path: Path) -> os.stat_result:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ExpertError(
            f"expert weights file {path} does not exist: check the model repository "
            f"(the weights path in coe.yaml, or an incomplete download)"
        ) from None
    except OSError as exc:
        raise ExpertError(f"cannot stat expert weights file {path}: {exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise ExpertError(
            f"expert weights path {path} is not a regular file: check the model repository"
        )
    return st


def _check_size(path: Path, actual_bytes: int, expected_bytes: int | None) -> None:
    if expected_bytes is None or actual_bytes == expected_bytes:
        return
    if actual_bytes < expected_bytes:
        raise _truncated(path, actual_bytes, expected_bytes)
    raise ExpertError(
        f"expert weights file {path} is {actual_bytes} bytes but {expected_bytes} were "
        f"expected: the file is corrupt or does not match the model repository; "
        f"re-download or re-export it"
    )


def _truncated(path: Path, actual_bytes: int, expected_bytes: int) -> ExpertError:
    return ExpertError(
        f"expert weights file {path} is truncated: {actual_bytes} of {expected_bytes} "
        f"bytes; re-download or re-export it"
    )


def aligned_buffer(nbytes: int) -> mmap.mmap:
    """A fresh anonymous mapping of `nbytes` rounded up to DIRECT_IO_ALIGN_BYTES, faulted
    in as huge pages where the kernel allows."""
    # Anonymous mmaps are page-aligned, which O_DIRECT requires, and writable, which
    # torch.frombuffer wants (it warns on read-only buffers).
    num_blocks = max(1, -(-nbytes // DIRECT_IO_ALIGN_BYTES))
    # MAP_PRIVATE: the default MAP_SHARED would make it shmem, which gets no
    # transparent huge pages.
    buf = mmap.mmap(
        -1, num_blocks * DIRECT_IO_ALIGN_BYTES, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    )
    back_with_huge_pages(buf)
    return buf


def back_with_huge_pages(buf: mmap.mmap) -> None:
    """Fault the buffer in as 2 MiB transparent huge pages before the read.

    Pages that O_DIRECT pins on first touch come in as 4 KiB pages, and the device
    then receives requests made of 4 KiB segments: on the development VM a 100 MB read
    into a fresh buffer ran at ~0.75 GB/s with 4 KiB pages, ~1.4 GB/s with the madvise
    alone and ~1.6 GB/s with huge pages faulted in first (raw device: ~2.1). Writing one
    byte every 2 MiB reaches every aligned 2 MiB region (whatever the mapping's
    alignment) and makes the kernel allocate it as one huge page. Best effort: with
    THP disabled this faults a few 4 KiB pages early, which costs nothing extra.
    """
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return
    try:
        buf.madvise(mmap.MADV_HUGEPAGE)
    except OSError:
        return
    with memoryview(buf) as view:
        _touch_every(view, HUGE_PAGE_BYTES)


def _touch_every(view: memoryview, stride: int) -> None:
    """Write a zero byte every `stride` bytes of `view`, in the kernel: one readv from
    /dev/zero per IOV_MAX pages, so the page faults (the kernel zeroing each 2 MiB page)
    run without the GIL. A Python loop of `view[i] = 0` held the GIL through every
    fault: in a board A run (1.9 GB loaded) that was a quarter of the time any thread
    held the GIL, and the executors' forwards waited for it between their ops."""
    offsets = range(0, len(view), stride)
    try:
        zero = os.open("/dev/zero", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # no /dev/zero (a sandbox): touch from Python
        for offset in offsets:
            view[offset] = 0
        return
    try:
        for begin in range(0, len(offsets), _IOV_MAX):
            os.readv(zero, [view[o:o + 1] for o in offsets[begin:begin + _IOV_MAX]])
    finally:
        os.close(zero)


def _open(path: Path, flags: int) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | flags)
    except OSError as exc:
        if exc.errno == errno.EINVAL and flags & os.O_DIRECT:
            raise _DirectIOUnsupported from exc
        raise ExpertError(f"cannot open expert weights file {path}: {exc}") from exc


def _pread_into(fd: int, path: Path, view: memoryview, offset: int, direct: bool) -> int:
    try:
        return os.preadv(fd, [view], offset)
    except OSError as exc:
        # Some filesystems accept O_DIRECT at open and refuse it at read time.
        if exc.errno == errno.EINVAL and direct:
            raise _DirectIOUnsupported from exc
        raise ExpertError(f"cannot read expert weights file {path}: {exc}") from exc


def _fill(fd: int, path: Path, dest: memoryview, span: tuple[int, int], size: int,
          direct: bool) -> None:
    """Read the file (`size` bytes) from offset span[0] (aligned) up to at least span[1]
    into the same offsets of `dest`, in large chunks. Requests are rounded up to the
    alignment, so the final chunk comes back short at end of file."""
    offset, until = span
    while offset < until:
        end = min(offset + READ_CHUNK_BYTES, dest.nbytes)
        num_read = _pread_into(fd, path, dest[offset:end], offset, direct)
        short = num_read < end - offset
        offset += num_read
        # pread on a regular file is short only at end of file, so a short read before
        # `until` means the file shrank under us (and would leave the next O_DIRECT
        # offset unaligned).
        if short and offset < size:
            raise _truncated(path, offset, size)


def _fill_issued(issued: threading.Event, fd: int, path: Path, dest: memoryview,
                 span: tuple[int, int], size: int, direct: bool) -> None:
    issued.set()  # the read below releases the GIL as it starts
    _fill(fd, path, dest, span, size, direct)


def _drop_cached_pages(fd: int) -> None:
    # DONTNEED only drops clean pages; a freshly written file's dirty pages would stay
    # cached (and make the next read free) until written back, so write them first.
    # Best effort: some filesystems refuse fdatasync on read-only descriptors.
    with contextlib.suppress(OSError):
        os.fdatasync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def _stream_file(path: Path, size: int, flags: int) -> None:
    """Read the whole file through one reused chunk buffer (no per-file allocation)."""
    chunk = aligned_buffer(min(size, READ_CHUNK_BYTES))
    view = memoryview(chunk)
    fd = _open(path, flags)
    try:
        _drop_cached_pages(fd)
        offset = 0
        while offset < size:
            n = _pread_into(fd, path, view, offset, direct=bool(flags & os.O_DIRECT))
            if n == 0:
                raise _truncated(path, offset, size)
            offset += n
        if not flags & os.O_DIRECT:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
        view.release()
        chunk.close()
