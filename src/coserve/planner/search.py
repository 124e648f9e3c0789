"""The decay-window search: try the top-N experts resident for growing N and stop once
throughput falls below the linear trend of the points before it (the gains have decayed
into a loss: more expert memory now costs more in activation memory than it saves in
switches). Pure Python; `evaluate` is the simulator (fast) or the engine (confirming)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

DEFAULT_WINDOW = 3  # earlier points the trend is fitted to
DEFAULT_TOLERANCE = 0.02  # a drop smaller than this (relative) is noise, not a decay


@dataclass(frozen=True)
class SearchResult:
    best: int  # the candidate with the highest throughput seen
    best_value: float
    points: tuple[tuple[int, float], ...]  # (candidate, throughput) in evaluation order
    stopped_early: bool  # the trend test ended the search before the last candidate


def decay_window_search(
    evaluate: Callable[[int], float],
    candidates: Sequence[int],
    window: int = DEFAULT_WINDOW,
    tolerance: float = DEFAULT_TOLERANCE,
) -> SearchResult:
    """Evaluate candidates in increasing order; stop at the first point that is below
    both the linear trend of the `window` points before it and the best point so far, by
    more than `tolerance`. Returns the best point seen. A plateau does not stop the
    search (it is not below the best); a concave rise does not either (it still beats
    the best)."""
    ordered = sorted(set(candidates))
    if not ordered:
        raise ValueError("decay_window_search needs at least one candidate")
    points: list[tuple[int, float]] = []
    best_n, best_y = ordered[0], float("-inf")
    for n in ordered:
        y = evaluate(n)
        earlier = points[-window:]
        points.append((n, y))
        if y > best_y:
            best_n, best_y = n, y
            continue
        if len(earlier) >= 2 and _decayed(earlier, n, y, best_y, tolerance):
            return SearchResult(best_n, best_y, tuple(points), n != ordered[-1])
    return SearchResult(best_n, best_y, tuple(points), False)


def _decayed(earlier: Sequence[tuple[int, float]], n: int, y: float, best: float,
             tolerance: float) -> bool:
    trend = linear_trend(earlier)(n)
    return y < trend * (1 - tolerance) and y < best * (1 - tolerance)


def linear_trend(points: Sequence[tuple[float, float]]) -> Callable[[float], float]:
    """The least-squares line through `points` (at least two distinct x)."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx if sxx else 0.0
    return lambda x: mean_y + slope * (x - mean_x)
