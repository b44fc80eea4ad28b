"""Choosing among law forms and calibrating intervals: the rolling origins cut where they say (ties kept
together, enough distinct sizes below each cut), the nested score and the inverse-error weights equal their
definitions computed naively, the stacking programme reaches the best weights of a fine simplex grid, the
weights favour the form the runs were drawn from, the split-conformal quantiles are the order statistics
of their definition and cover at least their level on exchangeable errors, and a calibrated interval is the
union of its two parts."""

import math

import numpy as np
import pytest

from blueberry.scaling.calibrate import bootstrap_interval, calibrate
from blueberry.scaling.choice import choose_law
from blueberry.scaling.fit import ScalingPoints
from blueberry.scaling.law import KaplanLaw, Law
from blueberry.scaling.select import (MIN_DISTINCT, Nested, inverse_error_weights, rolling_cuts, stack_weights)


def grid_of(law, sizes: int, budgets: int, noise: float, seed: int = 0) -> ScalingPoints:
    rng = np.random.default_rng(seed)
    N, D = (a.ravel() for a in np.meshgrid(np.logspace(7, 10, sizes), np.logspace(8.5, 12, budgets)))
    return ScalingPoints(N, D, law.loss(N, D) * np.exp(rng.normal(0, noise, len(N))))


CHINCHILLA = Law(E=1.69, A=406.4, B=1410.7, alpha=0.34, beta=0.28)
KAPLAN = KaplanLaw(N_c=8.8e13, D_c=5.4e13, alpha_N=0.076, alpha_D=0.095)


def test_rolling_cuts_fall_between_sizes_and_leave_enough_below():
    points = grid_of(CHINCHILLA, 8, 4, 0.0)
    cuts = rolling_cuts(points, "N", min_fit=10)
    assert len(cuts) >= 2
    sizes = np.unique(points.N)
    for cut in cuts:
        assert cut.value in sizes  # a cut is a size: every run of it is predicted, none is split
        assert np.all(points.N[cut.fitted] < cut.value) and np.all(points.N[cut.held] >= cut.value)
        assert len(cut.fitted) + len(cut.held) == len(points) and len(cut.fitted) >= 10
        assert len(np.unique(points.N[cut.fitted])) >= MIN_DISTINCT
        assert len(cut.fitted) <= 0.9 * len(points)
    assert len({c.value for c in cuts}) == len(cuts)
    by_compute = rolling_cuts(points, "compute", min_fit=10)
    assert all(np.all(points.C[c.fitted] < c.value) for c in by_compute)


def nested(errors_by_cut: list[list[float]], name: str = "f", offset: float = 0.0) -> Nested:
    cut = np.concatenate([np.full(len(e), i) for i, e in enumerate(errors_by_cut)])
    error = np.concatenate([np.asarray(e, float) for e in errors_by_cut])
    observed = np.log(np.linspace(2.0, 3.0, len(error)))
    return Nested(name, cut, np.arange(len(error)), np.zeros(len(error)), observed - error - offset, observed)


def test_the_nested_score_is_the_mean_over_cuts_of_each_cuts_mean_error():
    n = nested([[0.01, -0.03], [0.02, 0.02, -0.02, 0.06]])
    assert n.score == pytest.approx(np.mean([np.mean([0.01, 0.03]), np.mean([0.02, 0.02, 0.02, 0.06])]), rel=1e-12)


def test_inverse_error_weights_are_inverse_squared_scores():
    forms = {"a": nested([[0.01, 0.02]], "a"), "b": nested([[0.02, 0.04]], "b"), "c": nested([[0.04, 0.02]], "c")}
    weights = inverse_error_weights(forms)
    raw = {k: 1 / v.score ** 2 for k, v in forms.items()}
    assert weights == pytest.approx({k: v / sum(raw.values()) for k, v in raw.items()}, rel=1e-12)
    assert sum(weights.values()) == pytest.approx(1.0)


def test_stacking_reaches_the_best_weights_of_a_fine_simplex_grid():
    rng = np.random.default_rng(0)
    observed = np.log(rng.uniform(2, 3, 40))
    cut = np.repeat([0, 1, 2, 3], 10)
    forms = {name: Nested(name, cut, np.arange(40), np.zeros(40), observed + rng.normal(bias, 0.01, 40), observed)
             for name, bias in (("a", 0.02), ("b", -0.015), ("c", 0.005))}
    weights = stack_weights(forms)
    P = np.column_stack([f.log_predicted for f in forms.values()])
    c = forms["a"].pair_weights()

    def objective(w):
        return np.sum(c * np.abs(observed - P @ w))

    ours = objective(np.array([weights.get(k, 0.0) for k in forms]))
    steps = np.linspace(0, 1, 101)
    grid = min(objective(np.array([a, b, 1 - a - b])) for a in steps for b in steps if a + b <= 1 + 1e-12)
    assert ours <= grid + 1e-12 and sum(weights.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("truth, name", [(CHINCHILLA, "chinchilla"), (KAPLAN, "kaplan")])
def test_the_weights_favour_the_form_the_runs_were_drawn_from(truth, name):
    chosen = choose_law(grid_of(truth, 8, 6, 0.003, seed=5), bootstrap=0)
    assert max(chosen.weights, key=chosen.weights.get) == name, chosen.weights


def conformal_naive(z: np.ndarray, level: float) -> tuple[float, float]:
    """Split-conformal bounds by their definition: the k-th smallest score with k = ceil((n+1)(1+level)/2)
    for the upper, and the mirror-image order statistic for the lower."""
    ordered = sorted(z)
    n = len(ordered)
    k_high = math.ceil((n + 1) * (1 + level) / 2)
    k_low = math.floor((n + 1) * (1 - level) / 2)
    return (ordered[k_low - 1] if k_low >= 1 else -math.inf, ordered[k_high - 1] if k_high <= n else math.inf)


def test_the_conformal_quantiles_are_the_order_statistics_and_cover_their_level():
    rng = np.random.default_rng(2)
    errors, distance = rng.normal(0, 0.01, 19), rng.uniform(0, 1, 19)
    calibration = calibrate(errors, distance, rng.normal(0, 0.005, 50))
    for level in (0.5, 0.8, 0.9):
        assert calibration.quantiles(level) == conformal_naive(calibration.scores, level)
    assert calibration.quantiles(0.95) == (-math.inf, math.inf)  # 19 errors cannot bound a 95% interval
    hits = []  # exchangeable errors: a new one falls inside at least `level` of the time
    for _ in range(4000):
        z = rng.standard_normal(20)
        low, high = conformal_naive(z[:19], 0.8)
        hits.append(low <= z[19] <= high)
    assert np.mean(hits) >= 0.8 - 3 * math.sqrt(0.16 / 4000)


def test_the_calibration_scale_is_the_residual_scatter_plus_the_least_squares_slope():
    rng = np.random.default_rng(3)
    distance = rng.uniform(0, 1.2, 60)
    errors = rng.normal(0, 1, 60) * (0.004 + 0.01 * distance)
    residuals = rng.normal(0, 0.004, 80)
    c = calibrate(errors, distance, residuals)
    sigma = np.mean(np.abs(residuals))
    assert c.sigma == pytest.approx(sigma, rel=1e-12)
    assert c.kappa == pytest.approx(np.sum(distance * (np.abs(errors) - sigma)) / np.sum(distance ** 2), rel=1e-12)
    np.testing.assert_allclose(c.scores, errors / (sigma + c.kappa * distance), rtol=1e-12)
    low, high = c.interval(np.array([2.0, 2.0]), np.array([0.0, 1.0]), 0.8)
    assert high[1] - low[1] > high[0] - low[0]  # wider farther out


def test_a_calibrated_interval_is_the_union_of_its_parts():
    points = grid_of(CHINCHILLA, 7, 6, 0.004, seed=1)
    predictor = choose_law(points, bootstrap=30).predictor("test")
    N, D = np.array([3e10, 1e11]), np.array([3e12, 1e13])
    low, high = predictor.interval(N, D, 0.8)
    conformal = predictor.calibration.interval(predictor.law.loss(N, D), predictor.data_range.distance(N, D), 0.8)
    both, _ = bootstrap_interval(predictor.draws, predictor.residuals, N, D, 0.8)
    np.testing.assert_array_equal(low, np.minimum(conformal[0], both[:, 0]))
    np.testing.assert_array_equal(high, np.maximum(conformal[1], both[:, 1]))
