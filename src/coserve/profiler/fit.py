"""Fitting measured latencies: the maximum useful batch of a latency curve and the
linear model latency = k_s * n + b_s the scheduler predicts with.

Pure Python (no torch): the fits are tested on synthetic curves."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from coserve.errors import ConfigError

MIN_SLOPE = 1e-9  # ArchCost needs k_s > 0; a flat or falling curve is noise, not free items
DEFAULT_PLATEAU_TOLERANCE = 0.05  # per-item latency within 5% of the best has plateaued


@dataclass(frozen=True)
class LatencyFit:
    """y = k_s * x + b_s over the points fitted, and how far the points are from it."""

    k_s: float
    b_s: float
    rmse_s: float  # root-mean-square of fit - measured
    max_rel_error: float  # worst |fit - measured| / measured

    def predict(self, x: float) -> float:
        return self.k_s * x + self.b_s


def max_useful_batch(
    curve: Mapping[int, float], tolerance: float = DEFAULT_PLATEAU_TOLERANCE
) -> int:
    """The smallest batch size whose per-item latency is within `tolerance` (relative) of
    the best per-item latency measured: larger batches buy no throughput, only latency
    and activation memory."""
    _check_curve(curve)
    if not tolerance >= 0:  # NaN fails this too
        raise ConfigError(f"plateau tolerance must be >= 0 (e.g. 0.05 for 5%), got {tolerance}")
    per_item_s = {n: latency_s / n for n, latency_s in curve.items()}
    best_s = min(per_item_s.values())
    return min(n for n, s in per_item_s.items() if s <= best_s * (1 + tolerance))


def fit_linear(curve: Mapping[int, float], max_batch: int) -> LatencyFit:
    """Least-squares latency = k_s * n + b_s over the batch sizes n <= max_batch, with
    b_s >= 0 and k_s >= MIN_SLOPE (what ArchCost accepts)."""
    _check_curve(curve)
    points = [(float(n), s) for n, s in sorted(curve.items()) if n <= max_batch]
    if not points:
        raise ConfigError(f"no batch size in the curve is <= max_batch={max_batch}: "
                          f"measure batch 1, or raise max_batch to at least {min(curve)}")
    return fit_line(points, MIN_SLOPE)


def fit_line(points: Sequence[tuple[float, float]], min_slope: float) -> LatencyFit:
    """Least-squares y = k * x + b with b >= 0 and k >= min_slope.

    A negative intercept is refitted through the origin (a fixed cost cannot be
    negative); a slope below `min_slope` is raised to it and the intercept refitted.
    One distinct x gives the line through the origin and that point."""
    if not points:
        raise ConfigError("cannot fit a line to no points: measure at least one")
    if not all(math.isfinite(y) and y > 0 for _, y in points):
        raise ConfigError(f"cannot fit measured times {[y for _, y in points]}: times are "
                          f"positive finite seconds; measure again")
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    x_mean, y_mean = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - x_mean) ** 2 for x in xs)
    if sxx == 0:
        k, b = y_mean / x_mean, 0.0
    else:
        k = sum((x - x_mean) * (y - y_mean) for x, y in points) / sxx
        b = y_mean - k * x_mean
    if b < 0:
        k, b = sum(x * y for x, y in points) / sum(x * x for x in xs), 0.0
    if k < min_slope:
        k = min_slope
        b = max(0.0, y_mean - k * x_mean)
    return _with_errors(k, b, points)


def _with_errors(k: float, b: float, points: Sequence[tuple[float, float]]) -> LatencyFit:
    residuals = [k * x + b - y for x, y in points]
    rmse = math.sqrt(sum(r * r for r in residuals) / len(residuals))
    max_rel = max(abs(r) / y for r, (_, y) in zip(residuals, points, strict=True))
    return LatencyFit(k, b, rmse, max_rel)


def _check_curve(curve: Mapping[int, float]) -> None:
    if not curve:
        raise ConfigError("the latency curve is empty: measure at least batch size 1")
    for n, latency_s in curve.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"latency curve batch size {n!r} is not an integer >= 1")
        if not (isinstance(latency_s, int | float) and math.isfinite(latency_s) and latency_s > 0):
            raise ConfigError(f"latency curve value for batch {n} is {latency_s!r}; latencies "
                              f"are positive finite seconds: measure it again")
