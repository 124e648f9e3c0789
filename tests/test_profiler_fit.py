"""The profiler's fits on synthetic curves: no torch, no timing."""

import math
import subprocess
import sys

import pytest

from coserve.errors import ConfigError
from coserve.profiler.fit import MIN_SLOPE, fit_line, fit_linear, max_useful_batch

SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


def plateau_curve(knee: int = 8, k_s: float = 0.01, b_s: float = 0.05,
                  beyond_exponent: float = 1.0) -> dict[int, float]:
    """Linear K*n + B up to `knee`; beyond it per-item latency stays flat (exponent 1) or
    rises (exponent > 1), as when a batch outgrows the caches."""
    at_knee = k_s * knee + b_s
    return {n: k_s * n + b_s if n <= knee else at_knee * (n / knee) ** beyond_exponent
            for n in SIZES}


@pytest.mark.parametrize("beyond_exponent", [1.0, 1.3])
def test_max_useful_batch_is_the_knee_of_the_curve(beyond_exponent):
    assert max_useful_batch(plateau_curve(beyond_exponent=beyond_exponent)) == 8
    assert max_useful_batch(plateau_curve(knee=16, beyond_exponent=beyond_exponent), 0.0) == 16


def test_a_looser_tolerance_settles_for_a_smaller_batch():
    # per item: 0.01 + 0.05/n; within 20% of the best (0.01625) from n = 6 on
    assert max_useful_batch(plateau_curve(), tolerance=0.2) == 6


def test_a_curve_that_never_plateaus_uses_the_largest_batch():
    assert max_useful_batch({n: 0.001 * n + 0.5 for n in SIZES}) == 32


def test_per_item_latency_rising_from_the_start_means_batch_one():
    assert max_useful_batch({n: 0.01 * n ** 1.5 for n in SIZES}) == 1


def test_noise_free_linear_curve_is_recovered():
    fit = fit_linear({n: 0.003 * n + 0.002 for n in SIZES}, max_batch=32)
    assert fit.k_s == pytest.approx(0.003, abs=1e-9)
    assert fit.b_s == pytest.approx(0.002, abs=1e-9)
    assert fit.rmse_s < 1e-12 and fit.max_rel_error < 1e-9
    assert fit.predict(10) == pytest.approx(0.032, abs=1e-9)


def test_fit_uses_only_batches_up_to_max_batch():
    fit = fit_linear(plateau_curve(beyond_exponent=2.0), max_batch=8)
    assert (fit.k_s, fit.b_s) == (pytest.approx(0.01, abs=1e-9), pytest.approx(0.05, abs=1e-9))


def test_a_kinked_curve_has_fit_errors():
    curve = {1: 0.01, 2: 0.02, 4: 0.04, 8: 0.05, 16: 0.06}
    fit = fit_linear(curve, max_batch=16)
    assert fit.rmse_s > 1e-4
    assert fit.max_rel_error > 0.05
    worst = max(abs(fit.predict(n) - s) / s for n, s in curve.items())
    assert fit.max_rel_error == pytest.approx(worst)
    rmse = math.sqrt(sum((fit.predict(n) - s) ** 2 for n, s in curve.items()) / len(curve))
    assert fit.rmse_s == pytest.approx(rmse)


def test_a_negative_intercept_is_clipped_and_the_slope_refitted_through_the_origin():
    curve = {1: 0.001, 2: 0.004, 4: 0.010}  # unconstrained: b < 0
    fit = fit_linear(curve, max_batch=4)
    assert fit.b_s == 0.0
    assert fit.k_s == pytest.approx((0.001 + 0.008 + 0.040) / (1 + 4 + 16))


def test_a_falling_curve_gets_the_minimum_slope():
    fit = fit_linear({1: 0.05, 2: 0.04, 4: 0.03}, max_batch=4)
    assert fit.k_s == MIN_SLOPE
    assert fit.b_s == pytest.approx(0.04 - MIN_SLOPE * 7 / 3)


def test_a_single_point_is_all_per_item_cost():
    fit = fit_linear({1: 0.02, 4: 0.05}, max_batch=1)
    assert (fit.k_s, fit.b_s, fit.rmse_s, fit.max_rel_error) == (0.02, 0.0, 0.0, 0.0)


def test_fit_line_honours_its_slope_floor():
    fit = fit_line([(1e6, 0.001), (4e6, 0.001)], min_slope=1e-12)
    assert fit.k_s == 1e-12


@pytest.mark.parametrize("curve", [{}, {1: 0.0}, {1: -0.1}, {0: 0.1}, {1: math.nan},
                                   {1: math.inf}, {1.5: 0.1}, {True: 0.1}])
def test_bad_curves_are_config_errors(curve):
    with pytest.raises(ConfigError):
        max_useful_batch(curve)
    with pytest.raises(ConfigError):
        fit_linear(curve, max_batch=8)


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="tolerance"):
        max_useful_batch({1: 0.1}, tolerance=-0.1)
    with pytest.raises(ConfigError, match="max_batch"):
        fit_linear({2: 0.1, 4: 0.2}, max_batch=1)
    with pytest.raises(ConfigError):
        fit_line([], min_slope=1e-9)


def test_the_fit_module_does_not_import_torch():
    code = "import sys, coserve.profiler.fit; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
