"""`blueberry-scale backtest`: the hold-out picks the runs it says, the errors are the chosen law's own
(recomputed in float64 from its parameters and weights), the interval of bootstrap draws plus residuals is
the closed-form quantile when the draws are all one law, the held-out runs never reach the selection (their
losses changed, the weights, calibration and intervals stay bit for bit), and on runs drawn from a known
law with log-normal scatter the calibrated 80% intervals cover about 80% of the held-out runs."""

import json

import numpy as np
import pytest

from blueberry.cli import scale as scale_cli
from blueberry.errors import UserError
from blueberry.scaling.backtest import Holdout, run_backtest
from blueberry.scaling.calibrate import bootstrap_interval
from blueberry.scaling.fit import ScalingPoints
from blueberry.scaling.law import PARAMETER_NAMES, Law

TRUE = Law(E=1.69, A=406.4, B=1410.7, alpha=0.34, beta=0.28)


def grid(sizes: int, budgets: int, noise: float, seed: int = 0) -> ScalingPoints:
    rng = np.random.default_rng(seed)
    N, D = (a.ravel() for a in np.meshgrid(np.logspace(7, 9.5, sizes), np.logspace(8.5, 11.5, budgets)))
    return ScalingPoints(N, D, TRUE.loss(N, D) * np.exp(rng.normal(0, noise, len(N))))


def test_holdout_by_threshold_and_by_fraction_with_ties():
    points = grid(5, 4, 0.0)  # 5 sizes, each at 4 token counts: every N appears 4 times
    by_n = Holdout("N", threshold=points.N.max() / 2).mask(points)
    assert np.array_equal(by_n, points.N >= points.N.max() / 2) and by_n.sum() == 4
    # 10% of 20 runs is 2, but the largest N is shared by 4 runs: all 4 go, none is split from its size.
    assert Holdout("N", fraction=0.1).mask(points).sum() == 4
    by_c = Holdout("compute", fraction=0.25).mask(points)
    assert by_c.sum() == 5 and points.C[by_c].min() >= points.C[~by_c].max()


@pytest.mark.parametrize("holdout, message", [
    (dict(by="N", threshold=1e12), "no run to hold out"),
    (dict(by="N", threshold=1.0), "are all the runs"),
])
def test_a_holdout_that_leaves_nothing_is_refused(holdout, message):
    with pytest.raises(UserError, match=message):
        Holdout(**holdout).mask(grid(4, 4, 0.0))


def test_interval_of_one_law_plus_residuals_is_the_residual_quantile():
    # Every bootstrap draw the same law: the predictive distribution is log L + r, so the interval is
    # L * exp(quantile of r) exactly, and the parameter-only interval is L itself.
    draws = Law(**{k: np.full((7, 1), getattr(TRUE, k)) for k in PARAMETER_NAMES})
    residuals = np.random.default_rng(0).normal(0, 0.01, 101)
    N, D = np.array([1e9, 3e10]), np.array([2e10, 6e11])
    both, parameter = bootstrap_interval(draws, residuals, N, D, level=0.8)
    expected = TRUE.loss(N, D)[:, None] * np.exp(np.quantile(residuals, [0.1, 0.9]))[None, :]
    np.testing.assert_allclose(both, expected, rtol=1e-12)
    np.testing.assert_allclose(parameter, np.repeat(TRUE.loss(N, D)[:, None], 2, axis=1), rtol=1e-12)


def test_errors_and_coverage_are_those_of_the_fitted_law():
    points = grid(6, 6, 0.01)
    result = run_backtest(points, Holdout("compute", fraction=0.2), level=0.8, bootstrap=8, seed=0)
    log_predicted = 0.0
    for name, weight in result.chosen.weights.items():
        law = result.chosen.results[name].fit.law
        log_predicted = log_predicted + weight * np.log(law.loss(result.held.N, result.held.D))
    log_error = np.log(result.held.loss) - log_predicted
    assert len(result.held) + len(result.fitted) == len(points) and result.held.C.min() > result.fitted.C.max()
    assert result.mean_abs_log_error == pytest.approx(np.mean(np.abs(log_error)), rel=1e-12)
    assert abs(result.log_error[result.worst]) == pytest.approx(np.max(np.abs(log_error)), rel=1e-12)
    inside = (result.interval[:, 0] <= result.held.loss) & (result.held.loss <= result.interval[:, 1])
    assert result.coverage == np.mean(inside)
    assert np.all(result.interval[:, 0] < result.interval[:, 1])
    # The calibrated interval is the calibration's own at each run's distance beyond the fitted runs.
    calibration, fitted = result.chosen.calibration, result.chosen.data_range
    low, high = calibration.interval(result.predicted, fitted.distance(result.held.N, result.held.D), 0.8)
    np.testing.assert_array_equal(result.interval, np.column_stack((low, high)))
    # Residual scatter widens the parameter-only interval on both sides.
    assert np.all(result.bootstrap_interval[:, 0] <= result.parameter_interval[:, 0])
    assert np.all(result.bootstrap_interval[:, 1] >= result.parameter_interval[:, 1])
    assert sum(row["runs"] for row in result.by_distance()) == len(result.held)


def test_the_held_out_runs_never_reach_the_selection():
    """Change every held-out run's loss: the chosen forms, their weights and parameters, the calibration and
    the intervals stay bit for bit; only the errors move."""
    points = grid(6, 6, 0.01, seed=3)
    holdout = Holdout("N", fraction=0.3)
    first = run_backtest(points, holdout, bootstrap=10, seed=0)
    held = holdout.mask(points)
    changed = ScalingPoints(points.N, points.D, np.where(held, points.loss * np.exp(np.random.default_rng(1).normal(
        0.05, 0.1, len(points))), points.loss))
    second = run_backtest(changed, holdout, bootstrap=10, seed=0)
    assert second.chosen.weights == first.chosen.weights
    for name, result in first.chosen.results.items():
        assert second.chosen.results[name].fit.law == result.fit.law
    assert second.chosen.calibration.sigma == first.chosen.calibration.sigma
    assert second.chosen.calibration.kappa == first.chosen.calibration.kappa
    np.testing.assert_array_equal(second.chosen.calibration.scores, first.chosen.calibration.scores)
    np.testing.assert_array_equal(second.interval, first.interval)
    np.testing.assert_array_equal(second.bootstrap_interval, first.bootstrap_interval)
    assert not np.allclose(second.log_error, first.log_error)


@pytest.mark.slow
def test_intervals_are_calibrated_where_the_law_holds():
    """Runs drawn from the law itself with 1% log-normal scatter: pooled over five draws of the data (120
    held-out runs, the 3 largest of 8 sizes each time), the calibrated 80% intervals cover 80% +- 3 binomial
    standard deviations (0.69 to 0.91)."""
    inside = []
    for seed in range(5):
        result = run_backtest(grid(8, 8, 0.01, seed), Holdout("N", fraction=0.3), level=0.8, bootstrap=30, seed=seed)
        inside.extend(result.inside)
    sd = np.sqrt(0.8 * 0.2 / len(inside))
    assert len(inside) == 120 and abs(np.mean(inside) - 0.8) < 3 * sd, np.mean(inside)


def test_cli_backtest_text_json_and_plot(tmp_path, capsys):
    points = grid(6, 6, 0.01)
    csv = tmp_path / "runs.csv"
    csv.write_text("N,D,loss\n" + "".join(f"{n},{d},{x}\n" for n, d, x in zip(points.N, points.D, points.loss)))
    out, png = tmp_path / "backtest.json", tmp_path / "backtest.png"
    assert scale_cli.main(["backtest", "--csv", str(csv), "--holdout", "N", "--holdout-min", str(points.N.max()),
                           "--bootstrap", "8", "--json", str(out), "--plot", str(png)]) == 0
    text = capsys.readouterr().out
    assert "fit 30 runs, predict 6 held out (runs with N >=" in text and "80% interval coverage" in text
    assert "selection inside the 30 fitted runs only" in text and "kaplan" in text
    payload = json.loads(out.read_text())
    assert payload["held_out_runs"] == 6 and len(payload["runs"]) == 6
    errors = [abs(np.log(r["loss"] / r["predicted"])) for r in payload["runs"]]
    assert payload["mean_abs_log_error"] == pytest.approx(np.mean(errors), rel=1e-12)
    assert payload["coverage"] == np.mean([r["interval"][0] <= r["loss"] <= r["interval"][1] for r in payload["runs"]])
    assert payload["choice"]["stack"]["weights"] and payload["choice"]["calibration"]["scores"]
    assert png.read_bytes()[:4] == b"\x89PNG"
