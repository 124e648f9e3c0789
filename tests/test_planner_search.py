"""The decay-window search on synthetic throughput curves with known shapes."""

import pytest

from coserve.planner.search import decay_window_search, linear_trend


def _recorder(curve):
    calls = []

    def evaluate(n):
        calls.append(n)
        return curve(n)

    return evaluate, calls


def test_finds_the_known_peak_and_stops_after_it():
    # Rises linearly to a peak at n=12 (fewer switches), then falls (batches squeezed
    # by shrinking activation memory).
    def curve(n):
        return 100 + 10 * n if n <= 12 else 220 - 25 * (n - 12)

    evaluate, calls = _recorder(curve)
    result = decay_window_search(evaluate, range(0, 41, 2))
    assert result.best == 12
    assert result.best_value == 220
    assert result.stopped_early
    assert max(calls) < 20  # the points past the decay are never simulated
    assert calls == sorted(calls)


def test_a_peak_between_grid_points_picks_the_nearest_evaluated():
    def curve(n):
        return -((n - 7.4) ** 2)

    result = decay_window_search(curve, [1, 3, 5, 7, 9, 11, 13, 15])
    assert result.best == 7


def test_a_plateau_or_a_concave_rise_does_not_stop_the_search():
    evaluate, calls = _recorder(lambda n: min(n, 10) * 5.0)
    result = decay_window_search(evaluate, range(1, 21))
    assert calls == list(range(1, 21))
    assert not result.stopped_early
    assert result.best == 10  # the first point of the plateau: the least memory

    evaluate, calls = _recorder(lambda n: 100 * n ** 0.5)
    result = decay_window_search(evaluate, range(1, 30))
    assert result.best == 29 and not result.stopped_early


def test_noise_below_tolerance_does_not_stop_it():
    values = {1: 10.0, 2: 20.0, 3: 30.0, 4: 29.9, 5: 50.0, 6: 60.0}
    result = decay_window_search(values.__getitem__, list(values), tolerance=0.02)
    assert result.best == 6 and not result.stopped_early


def test_linear_trend_and_bad_input():
    line = linear_trend([(0, 1.0), (2, 5.0), (4, 9.0)])
    assert line(10) == pytest.approx(21.0)
    with pytest.raises(ValueError):
        decay_window_search(lambda n: 1.0, [])
