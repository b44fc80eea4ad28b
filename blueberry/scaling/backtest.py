"""Backtesting the law: fit on the smaller runs, predict the larger ones, and measure the error and how
often the prediction intervals hold what was observed.

Which runs are held out: those at or above a threshold of compute C = 6ND or of size N, or the largest
fraction of them by either (`Holdout`). The rest are fitted exactly as `blueberry-scale fit` fits
(`fit_law`: Chinchilla approach 3, Huber on log loss).

Each held-out run is predicted by the fit, and its prediction interval is the central `level` of
log L*_b + r_j over every pair of a bootstrap refit b (`bootstrap_law`: parameter uncertainty) and a
residual r_j = log L_j - log L_hat(N_j, D_j) of a fitted run j (the scatter of a single run about the
law). The two are drawn independently, so the interval is for one new run, not for the law's mean.
It assumes the law's form holds beyond the fitted runs: what its coverage measures is whether it does.

Errors are in log loss: |log L - log L_hat| is the relative error of the prediction (0.01 is 1%).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from blueberry.errors import UserError
from blueberry.scaling.fit import LawFit, ScalingPoints, bootstrap_law, fit_law
from blueberry.scaling.law import PARAMETER_NAMES, Law

HOLDOUT_BY = ("compute", "N")


@dataclass(frozen=True)
class Holdout:
    """Which runs to hold out: by compute or by N, those >= `threshold`, or the largest `fraction`."""

    by: str = "compute"
    threshold: float | None = None
    fraction: float | None = None

    def __post_init__(self) -> None:
        if self.by not in HOLDOUT_BY:
            raise UserError(f"--holdout must be one of {', '.join(HOLDOUT_BY)}, got {self.by!r}")
        if (self.threshold is None) == (self.fraction is None):
            raise UserError("give one of --holdout-min (hold out runs at or above it) or --holdout-fraction")
        if self.threshold is not None and not (math.isfinite(self.threshold) and self.threshold > 0):
            raise UserError(f"--holdout-min must be a positive finite number, got {self.threshold}")
        if self.fraction is not None and not 0 < self.fraction < 1:
            raise UserError(f"--holdout-fraction must be in (0, 1), got {self.fraction}")

    @property
    def describe(self) -> str:
        quantity = "compute C" if self.by == "compute" else "N"
        if self.threshold is not None:
            return f"runs with {quantity} >= {self.threshold:.3g}"
        return f"the largest {self.fraction:.0%} of runs by {quantity}"

    def values(self, points: ScalingPoints) -> np.ndarray:
        return points.C if self.by == "compute" else points.N

    def mask(self, points: ScalingPoints) -> np.ndarray:
        """True for the held-out runs. A fraction holds out the top ceil(fraction x runs), and every run
        tied with the smallest of them."""
        values = self.values(points)
        if self.threshold is not None:
            held = values >= self.threshold
        else:
            count = math.ceil(self.fraction * len(values))
            held = values >= np.sort(values)[len(values) - count]
        if not held.any():
            raise UserError(f"no run to hold out: no {self.describe.removeprefix('runs with ')} "
                            f"(the largest {'C' if self.by == 'compute' else 'N'} is {values.max():.3g})")
        if held.all():
            raise UserError(f"{self.describe} are all the runs: nothing is left to fit "
                            f"(the smallest {'C' if self.by == 'compute' else 'N'} is {values.min():.3g})")
        return held


@dataclass(frozen=True)
class Backtest:
    holdout: Holdout
    level: float
    fit: LawFit
    fitted: ScalingPoints
    held: ScalingPoints
    predicted: np.ndarray  # the fit's loss at each held-out run
    interval: np.ndarray  # (m, 2): parameter uncertainty and residual scatter together
    parameter_interval: np.ndarray  # (m, 2): bootstrap refits alone
    bootstrap: int

    @property
    def log_error(self) -> np.ndarray:
        """log(observed / predicted) of each held-out run: positive where the law predicted too low a loss."""
        return np.log(self.held.loss) - np.log(self.predicted)

    @property
    def mean_abs_log_error(self) -> float:
        return float(np.mean(np.abs(self.log_error)))

    @property
    def worst(self) -> int:
        """Index of the held-out run with the largest |log error|."""
        return int(np.argmax(np.abs(self.log_error)))

    @property
    def inside(self) -> np.ndarray:
        return (self.interval[:, 0] <= self.held.loss) & (self.held.loss <= self.interval[:, 1])

    @property
    def coverage(self) -> float:
        return float(self.inside.mean())

    @property
    def parameter_coverage(self) -> float:
        low, high = self.parameter_interval.T
        return float(((low <= self.held.loss) & (self.held.loss <= high)).mean())

    def coverage_band(self, sigmas: float = 2.0) -> tuple[float, float]:
        """Coverage a calibrated interval would show on this many held-out runs, +- `sigmas` binomial
        standard deviations (runs treated as independent)."""
        sd = math.sqrt(self.level * (1 - self.level) / len(self.held))
        return max(0.0, self.level - sigmas * sd), min(1.0, self.level + sigmas * sd)

    def by_distance(self) -> list[dict[str, float]]:
        """Error and coverage per doubling of the held-out quantity beyond the largest fitted run's."""
        values = self.holdout.values(self.held) / self.holdout.values(self.fitted).max()
        bins = np.floor(np.log2(np.maximum(values, 1.0)) + 1e-12).astype(int)
        rows = []
        for b in np.unique(bins):
            k = bins == b
            rows.append({"from": float(2.0 ** b), "to": float(2.0 ** (b + 1)), "runs": int(k.sum()),
                         "mean_abs_log_error": float(np.mean(np.abs(self.log_error[k]))),
                         "mean_log_error": float(np.mean(self.log_error[k])), "coverage": float(self.inside[k].mean())})
        return rows

    def to_dict(self) -> dict[str, object]:
        worst = self.worst
        return {
            "holdout": self.holdout.describe, "level": self.level, "bootstrap": self.bootstrap,
            "fitted_runs": len(self.fitted), "held_out_runs": len(self.held),
            "law": self.fit.law.to_dict(),
            "mean_abs_log_error": self.mean_abs_log_error, "mean_log_error": float(np.mean(self.log_error)),
            "worst": {"N": float(self.held.N[worst]), "D": float(self.held.D[worst]),
                      "loss": float(self.held.loss[worst]), "predicted": float(self.predicted[worst]),
                      "log_error": float(self.log_error[worst])},
            "coverage": self.coverage, "parameter_only_coverage": self.parameter_coverage,
            "calibrated_coverage_band": list(self.coverage_band()),
            "by_distance": self.by_distance(),
            "runs": [{"N": float(n), "D": float(d), "loss": float(loss), "predicted": float(p), "low": float(lo),
                      "high": float(hi)} for n, d, loss, p, (lo, hi)
                     in zip(self.held.N, self.held.D, self.held.loss, self.predicted, self.interval)],
        }


def _law_losses(samples: dict[str, np.ndarray], N: np.ndarray, D: np.ndarray) -> np.ndarray:
    """(draws, runs) losses of every bootstrap law at every (N, D)."""
    E, A, B, alpha, beta = (samples[k][:, None] for k in PARAMETER_NAMES)
    return E + A / np.power(N[None, :], alpha) + B / np.power(D[None, :], beta)


def prediction_intervals(law: Law, samples: dict[str, np.ndarray], residuals: np.ndarray, N: np.ndarray,
                         D: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """(interval, parameter-only interval), each (runs, 2), at `level` for new runs at (N, D): quantiles
    of exp(log L*_b + r_j) over all pairs (b, j) of bootstrap laws and log residuals."""
    tails = np.array([(1 - level) / 2, (1 + level) / 2])
    log_draws = np.log(_law_losses(samples, np.asarray(N), np.asarray(D)))  # (B, m)
    parameter = np.exp(np.quantile(log_draws, tails, axis=0).T)
    both = np.empty((log_draws.shape[1], 2))
    for i in range(log_draws.shape[1]):
        both[i] = np.exp(np.quantile((log_draws[:, i, None] + residuals[None, :]).ravel(), tails))
    return both, parameter


def run_backtest(points: ScalingPoints, holdout: Holdout, level: float = 0.8, bootstrap: int = 200,
                 seed: int = 0) -> Backtest:
    """Fit the runs `holdout` leaves, predict those it holds out, with intervals at `level`."""
    if not 0 < level < 1:
        raise UserError(f"--level must be in (0, 1), got {level}")
    if bootstrap < 2:
        raise UserError(f"--bootstrap must be at least 2 for an interval, got {bootstrap}")
    held_mask = holdout.mask(points)
    fitted, held = points.take(np.flatnonzero(~held_mask)), points.take(np.flatnonzero(held_mask))
    fit = fit_law(fitted)
    if not fit.converged:
        raise UserError("the fit of the runs left after the hold-out did not converge: hold out fewer runs")
    samples = bootstrap_law(fitted, fit, bootstrap, seed=seed).samples
    residuals = np.log(fitted.loss) - np.log(fit.law.loss(fitted.N, fitted.D))
    interval, parameter = prediction_intervals(fit.law, samples, residuals, held.N, held.D, level)
    return Backtest(holdout=holdout, level=level, fit=fit, fitted=fitted, held=held,
                    predicted=np.asarray(fit.law.loss(held.N, held.D)), interval=interval,
                    parameter_interval=parameter, bootstrap=bootstrap)


def backtest_text(result: Backtest, source: str) -> str:
    """The backtest as a reader wants it: what was fitted and held out, the error, the coverage."""
    law, worst = result.fit.law, result.worst
    low, high = result.coverage_band()
    quantity = "C" if result.holdout.by == "compute" else "N"
    lines = [f"Backtest on {source}: fit {len(result.fitted)} runs, predict {len(result.held)} held out "
             f"({result.holdout.describe})",
             f"  law of the fitted runs  E {law.E:.4g}, A {law.A:.4g}, B {law.B:.4g}, alpha {law.alpha:.4f}, "
             f"beta {law.beta:.4f}",
             f"  mean |log error|        {result.mean_abs_log_error:.4f}  (mean log(observed/predicted) "
             f"{np.mean(result.log_error):+.4f}: the law predicts too "
             f"{'low' if np.mean(result.log_error) > 0 else 'high'} a loss)",
             f"  worst                   {result.log_error[worst]:+.4f} at N = {result.held.N[worst]:.3g}, "
             f"D = {result.held.D[worst]:.3g}: loss {result.held.loss[worst]:.4f}, predicted "
             f"{result.predicted[worst]:.4f}",
             f"  {result.level:.0%} interval coverage   {result.coverage:.1%} of held-out runs inside "
             f"(bootstrap {result.bootstrap} refits + residual scatter); a calibrated interval: "
             f"{low:.0%} to {high:.0%}",
             f"  parameters alone        {result.parameter_coverage:.1%} inside (bootstrap refits, no residual "
             "scatter)",
             f"  by distance beyond the largest fitted {quantity}:",
             f"    {'x largest':>12} {'runs':>5} {'mean |log err|':>15} {'mean log err':>13} {'coverage':>9}"]
    for row in result.by_distance():
        lines.append(f"    {row['from']:>5g} to {row['to']:<4g} {row['runs']:5d} {row['mean_abs_log_error']:15.4f} "
                     f"{row['mean_log_error']:+13.4f} {row['coverage']:9.1%}")
    return "\n".join(lines)
