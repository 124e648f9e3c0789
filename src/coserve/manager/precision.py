"""Which stored precision a load reads: small pure policies (no torch), asked by the
expert manager on every load. Experts always execute in fp32; a lower-precision variant
only makes the storage read smaller (see coserve.loader.precision).

- `FixedPrecision(p)`: every load reads `p` (`--precision fp32|fp16|bf16|int8`).
- `AutoPrecision`: HOBBIT's rule (a cache-miss expert is loaded in low precision)
  adapted to CoE, where there is no gating score to say which expert matters less but
  there is a queue that says what waiting costs: a load reads the variant that loads
  fastest when requests wait on the executor (more than `pressure_s` of work queued or
  running, default 0), and fp32 otherwise; and when the engine is idle, one low-precision
  resident expert at a time is read again in fp32 (an upgrade: the same resident bytes,
  since a variant is expanded to fp32 in memory). "Fastest" is measured, not assumed
  (`LoadTimes`): a variant reads fewer bytes but costs an expansion pass, so on a fast
  SSD with busy cores fp32 can load sooner, and then auto keeps fp32.
"""

from __future__ import annotations

import statistics
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from coserve.errors import ConfigError
from coserve.types import FULL_PRECISION, PRECISIONS

AUTO = "auto"
PRECISION_MODES = (*PRECISIONS, AUTO)
# The smallest variant first: what a load under pressure reads, all else equal.
_LOW_FIRST = ("int8", "fp16", "bf16")


@dataclass(frozen=True)
class LoadContext:
    """What a precision choice may look at for one load."""

    expert: str
    available: tuple[str, ...]  # stored precisions, fp32 first
    backlog_s: float  # predicted work queued on the executor (execution and switches)
    load_s: Mapping[str, float]  # predicted storage read per available precision


class PrecisionPolicy(Protocol):
    name: str

    def choose(self, ctx: LoadContext) -> str:
        """The precision this load reads (one of ctx.available)."""
        ...

    def upgrades_when_idle(self) -> bool:
        """Whether an idle executor reads its low-precision residents again in fp32."""
        ...


@dataclass(frozen=True)
class FixedPrecision:
    """Every load reads `precision` (fp32 for an expert without that variant)."""

    precision: str = FULL_PRECISION

    @property
    def name(self) -> str:
        return self.precision

    def choose(self, ctx: LoadContext) -> str:
        return self.precision if self.precision in ctx.available else FULL_PRECISION

    def upgrades_when_idle(self) -> bool:
        return False


@dataclass(frozen=True)
class AutoPrecision:
    """The variant measured to load soonest whenever the executor has more than
    `pressure_s` of work queued or running (default 0: whenever anyone waits on the
    load); fp32 when no variant loads sooner or nothing waits; upgrades when idle.

    Why not fp32 while the queue is short: a load's extra fp32 time delays every request
    behind it, and a short queue does not mean slack (at a backlog's end the requests
    left are the oldest). With a fifth of the latency target as the threshold, auto
    read 14 of its 107 board A loads in fp32 as the queues drained and ran 14% slower
    than int8, whose accuracy equals fp32's there. A positive `pressure_s` keeps fp32
    for loads with less than that much work waiting, for a zoo whose variants cost
    accuracy."""

    pressure_s: float = 0.0
    name: str = AUTO

    def __post_init__(self) -> None:
        if not self.pressure_s >= 0:
            raise ConfigError(f"auto precision: pressure_s must be >= 0 seconds, got "
                              f"{self.pressure_s}")

    def choose(self, ctx: LoadContext) -> str:
        low = [p for p in _LOW_FIRST if p in ctx.available]
        if not low or ctx.backlog_s <= self.pressure_s:
            return FULL_PRECISION
        fp32_s = ctx.load_s.get(FULL_PRECISION, 0.0)
        # The smallest variant unless measured loads say another loads sooner.
        fastest = min(low, key=lambda p: ctx.load_s.get(p, 0.0))
        if ctx.load_s.get(fastest, 0.0) >= fp32_s and FULL_PRECISION in ctx.load_s:
            return FULL_PRECISION  # no variant loads sooner here: never trade for nothing
        return fastest

    def upgrades_when_idle(self) -> bool:
        return True


class LoadTimes:
    """Predicted seconds of a load at each precision, in two measured parts:

    - the storage read, seconds per stored byte: one estimate for every precision (they
      share the device), an exponentially weighted mean over every load, starting from
      the storage bandwidth;
    - the expansion to fp32, seconds per stored byte per precision: the median of that
      precision's last EXPAND_SAMPLES loads (0 for fp32, and for a variant before its
      first load, so a variant is tried first), forgotten once STALE_LOADS loads went
      by without one (so a variant that looked slow is tried again).

    Why not one estimate of whole loads per precision: a variant's only signal is its
    own loads, so one load slowed by another (a concurrent read, a preempted expansion)
    made int8 look slower than fp16, and then int8 was never read again (board A, 10%,
    trace: auto read 2.9 GB of fp16 against int8's 0.6 GB). A median shrugs off such an
    outlier; forgetting undoes a lock-in that a run of them causes."""

    EWMA_WEIGHT = 0.2  # of the newest load in the read estimate
    EXPAND_SAMPLES = 8
    STALE_LOADS = 32

    def __init__(self, storage_bytes_per_s: float) -> None:
        if not storage_bytes_per_s > 0:
            raise ConfigError(f"storage_bytes_per_s must be > 0, got {storage_bytes_per_s}")
        self._read_s_per_byte = 1.0 / storage_bytes_per_s
        self._expand: dict[str, deque[float]] = {}  # precision -> seconds per stored byte
        self._last_load: dict[str, int] = {}  # precision -> the load count at its last load
        self._num_loads = 0
        self._lock = threading.Lock()  # loads of several executors observe at once

    def observe(self, precision: str, num_bytes: int, read_s: float,
                expand_s: float = 0.0) -> None:
        """One load of `num_bytes` stored bytes: `read_s` reading, `expand_s` expanding."""
        if num_bytes <= 0:
            return
        w = self.EWMA_WEIGHT
        with self._lock:
            self._num_loads += 1
            self._read_s_per_byte = (1 - w) * self._read_s_per_byte + w * read_s / num_bytes
            if precision == FULL_PRECISION:
                return
            if self._num_loads - self._last_load.get(precision, self._num_loads) > self.STALE_LOADS:
                self._expand.pop(precision, None)
            self._last_load[precision] = self._num_loads
            samples = self._expand.setdefault(precision, deque(maxlen=self.EXPAND_SAMPLES))
            samples.append(expand_s / num_bytes)

    def predict_s(self, precision: str, num_bytes: int) -> float:
        with self._lock:
            samples = self._expand.get(precision)
            stale = self._num_loads - self._last_load.get(precision, 0) > self.STALE_LOADS
            expand = 0.0 if not samples or stale else statistics.median(samples)
            return num_bytes * (self._read_s_per_byte + expand)


def precision_policy(mode: str) -> PrecisionPolicy:
    """The policy for `--precision MODE`; ConfigError listing the modes."""
    if mode == AUTO:
        return AutoPrecision()
    if mode in PRECISIONS:
        return FixedPrecision(mode)
    raise ConfigError(f"unknown precision {mode!r}: choose one of {', '.join(PRECISION_MODES)}")
