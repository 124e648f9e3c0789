"""Which stored precision a load reads: small pure policies (no torch), asked by the
expert manager on every load. Experts always execute in fp32; a lower-precision variant
only makes the storage read smaller (see coserve.loader.precision).

- `FixedPrecision(p)`: every load reads `p` (`--precision fp32|fp16|bf16|int8`).
- `AutoPrecision`: HOBBIT's rule (a cache-miss expert is loaded in low precision)
  adapted to CoE, where there is no gating score to say which expert matters less but
  there is a queue that says what waiting costs: a load reads the variant that loads
  fastest when the executor's queued work plus the fp32 read would not finish within
  `pressure_s` (the requests behind this load would wait longer than the read saves in
  accuracy risk), and fp32 otherwise; and when the engine is idle, one low-precision
  resident expert at a time is read again in fp32 (an upgrade: the same resident bytes,
  since a variant is expanded to fp32 in memory). "Fastest" is measured, not assumed
  (`LoadTimes`): a variant reads fewer bytes but costs an expansion pass, so on a fast
  SSD with busy cores fp32 can load sooner, and then auto keeps fp32.
"""

from __future__ import annotations

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
    """The smallest variant when the queue says waiting costs more than accuracy; fp32
    when there is time; upgrades when idle. `pressure_s`: queued seconds beyond which
    the fp32 read's extra time is worth saving (default: a fifth of the latency target,
    so the queue's requests keep most of their slack)."""

    pressure_s: float
    name: str = AUTO

    def __post_init__(self) -> None:
        if not self.pressure_s >= 0:
            raise ConfigError(f"auto precision: pressure_s must be >= 0 seconds, got "
                              f"{self.pressure_s}")

    def choose(self, ctx: LoadContext) -> str:
        low = [p for p in _LOW_FIRST if p in ctx.available]
        if not low:
            return FULL_PRECISION
        fp32_s = ctx.load_s.get(FULL_PRECISION, 0.0)
        # The smallest variant unless measured loads say another loads sooner.
        fastest = min(low, key=lambda p: ctx.load_s.get(p, 0.0))
        if ctx.load_s.get(fastest, 0.0) >= fp32_s and FULL_PRECISION in ctx.load_s:
            return FULL_PRECISION  # no variant loads sooner here: never trade for nothing
        return fastest if ctx.backlog_s + fp32_s > self.pressure_s else FULL_PRECISION

    def upgrades_when_idle(self) -> bool:
        return True


class LoadTimes:
    """Seconds per stored byte of a load (read plus expansion), per precision: an
    exponentially weighted mean of what loads took, starting from the storage bandwidth
    alone (so a variant, whose expansion is not known yet, is tried first). Thread-safe
    enough for its use: a float per key, replaced whole."""

    EWMA_WEIGHT = 0.2  # of the newest load: a few loads follow a change of conditions

    def __init__(self, storage_bytes_per_s: float) -> None:
        if not storage_bytes_per_s > 0:
            raise ConfigError(f"storage_bytes_per_s must be > 0, got {storage_bytes_per_s}")
        self._prior_s_per_byte = 1.0 / storage_bytes_per_s
        self._s_per_byte: dict[str, float] = {}

    def observe(self, precision: str, num_bytes: int, seconds: float) -> None:
        if num_bytes <= 0:
            return
        seen = self._s_per_byte.get(precision)
        new = seconds / num_bytes
        self._s_per_byte[precision] = new if seen is None else (
            (1 - self.EWMA_WEIGHT) * seen + self.EWMA_WEIGHT * new)

    def predict_s(self, precision: str, num_bytes: int) -> float:
        return num_bytes * self._s_per_byte.get(precision, self._prior_s_per_byte)


def precision_policy(mode: str, latency_target_s: float) -> PrecisionPolicy:
    """The policy for `--precision MODE`; ConfigError listing the modes."""
    if mode == AUTO:
        return AutoPrecision(pressure_s=latency_target_s / 5)
    if mode in PRECISIONS:
        return FixedPrecision(mode)
    raise ConfigError(f"unknown precision {mode!r}: choose one of {', '.join(PRECISION_MODES)}")
