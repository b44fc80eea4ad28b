"""Prediction intervals calibrated by the rolling-origin backtests, widening with extrapolation distance,
and never narrower than the bootstrap's.

The method has two parts, and a plan's interval is their union at its point:

1. Split-conformal prediction (Vovk et al. 2005; Lei et al. 2018) on the nested errors, each normalised by
   a scale that grows linearly with the distance beyond the fitted runs (Lei et al.'s locally weighted
   residuals, with distance as the covariate):

       s(d) = sigma + kappa d                     d in decades beyond the fitted runs (`DataRange.distance`)
       z_i  = e_i / s(d_i)                        e_i = log observed - log predicted, one per nested pair
       interval at d:  L_hat exp(s(d) q_low), L_hat exp(s(d) q_high)

   with q_low, q_high the split-conformal order statistics of the z_i for the level (the
   ceil((n + 1)(1 + level)/2)-th smallest and its mirror), so the interval is asymmetric when the form
   errs one way beyond its data. sigma is the scale at no distance, the mean |log residual| of the fitted
   runs about the fit (the scatter of one run about the law); kappa the least-squares slope of
   |e_i| - sigma on d_i through the origin, floored at 0.
2. The bootstrap's predictive interval (`bootstrap_interval`): the central `level` of log L*_b + r_j over
   every pair of a bootstrap law b and a log residual r_j of a fitted run.

Why both: the nested errors see how a form bends away beyond its data, which the bootstrap cannot (it
resamples runs inside the range: on the Chinchilla runs fitted below 1B its intervals held 42.6% of the
larger runs for a nominal 80%); the bootstrap sees how little the final fit's data pins down a point,
which nested fits of other runs can under-state. Why a linear scale in log distance: the nested errors
grow with distance and are too few to estimate a curve per distance; one free number, and the conformal
quantiles set the level. Chosen by backtests inside the Chinchilla runs below 1B (docs/scaling.md): the
union covered more of the held-out runs than either part, and normalising by the bootstrap's spread
instead of by distance covered less. What it does not guarantee: nested pairs of one cut share a fit,
errors at different distances are not exchangeable, and a form chosen on smaller runs can bend away at
larger ones in ways no cut saw, so coverage is approximate; beyond the largest distance the backtests
reached the scale is an extrapolation, which a plan says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

METHOD = ("the union of split-conformal intervals on the rolling-origin nested errors, normalised by "
          "s(d) = sigma + kappa d (d: decades beyond the fitted runs), and the bootstrap's predictive interval "
          "(bootstrap laws plus the fitted runs' residuals)")


def bootstrap_interval(draws, residuals: np.ndarray, N, D, level: float) -> tuple[np.ndarray, np.ndarray]:
    """(interval, parameter-only interval), each (runs, 2), at `level` for new runs at (N, D): quantiles
    of exp(log L*_b + r_j) over all pairs (b, j) of the bootstrap laws `draws` (a law of (B, 1) arrays)
    and the log residuals, and of exp(log L*_b) alone."""
    tails = np.array([(1 - level) / 2, (1 + level) / 2])
    N, D = np.atleast_1d(np.asarray(N, np.float64)), np.atleast_1d(np.asarray(D, np.float64))
    with np.errstate(over="ignore"):  # a far-off draw's N^alpha may overflow: its term is then 0
        log_draws = np.log(draws.loss(N[None, :], D[None, :]))  # (B, m)
    parameter = np.exp(np.quantile(log_draws, tails, axis=0).T)
    both = np.empty((log_draws.shape[1], 2))
    for i in range(log_draws.shape[1]):
        both[i] = np.exp(np.quantile((log_draws[:, i, None] + residuals[None, :]).ravel(), tails))
    return both, parameter


@dataclass(frozen=True)
class Calibration:
    sigma: float  # the scale at no distance: mean |log residual| of the fitted runs
    kappa: float  # growth of the scale per decade of distance
    scores: np.ndarray  # the nested errors normalised by s(d): z_i
    distances: np.ndarray  # each nested pair's distance, decades

    def scale(self, distance):
        return self.sigma + self.kappa * np.asarray(distance, np.float64)

    def quantiles(self, level: float) -> tuple[float, float]:
        """Split-conformal (q_low, q_high) of the normalised errors; -inf / inf where there are too few
        nested errors for the level ((n + 1)(1 + level)/2 > n)."""
        z = np.sort(self.scores)
        n = len(z)
        upper = math.ceil((n + 1) * (1 + level) / 2)
        lower = math.floor((n + 1) * (1 - level) / 2)
        return (float(z[lower - 1]) if lower >= 1 else -math.inf, float(z[upper - 1]) if upper <= n else math.inf)

    def bounded(self, level: float) -> bool:
        """Whether there are enough nested errors for a finite interval at `level`."""
        return all(math.isfinite(q) for q in self.quantiles(level))

    def interval(self, loss, distance, level: float) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) conformal losses for predictions `loss` at `distance` decades beyond the fitted runs."""
        q_low, q_high = self.quantiles(level)
        s = self.scale(distance)
        with np.errstate(over="ignore"):
            return np.asarray(loss) * np.exp(s * q_low), np.asarray(loss) * np.exp(s * q_high)

    def draws(self, loss: float, distance: float) -> np.ndarray:
        """The calibrated predictive distribution of one loss: loss exp(s(d) z_i) for every nested score."""
        return loss * np.exp(self.scale(distance) * self.scores)

    @property
    def max_distance(self) -> float:
        """The farthest the backtests predicted, in decades."""
        return float(self.distances.max())

    def to_dict(self) -> dict[str, object]:
        return {"method": METHOD, "sigma": self.sigma, "kappa": self.kappa, "scores": self.scores.tolist(),
                "distances": self.distances.tolist(), "max_distance": self.max_distance}


def calibrate(log_error: np.ndarray, distance: np.ndarray, residuals: np.ndarray) -> Calibration:
    """The calibration of nested errors `log_error` at `distance` (decades), with `residuals` the fitted
    runs' log residuals about the full fit (their mean |.| is sigma)."""
    log_error, distance = np.asarray(log_error, np.float64), np.asarray(distance, np.float64)
    sigma = float(np.mean(np.abs(residuals)))
    sigma = max(sigma, 1e-12)  # noiseless runs: the scale must still divide
    squares = float(np.sum(distance ** 2))
    kappa = max(0.0, float(np.sum(distance * (np.abs(log_error) - sigma)) / squares)) if squares > 0 else 0.0
    return Calibration(sigma=sigma, kappa=kappa, scores=log_error / (sigma + kappa * distance), distances=distance)


def calibration_from_dict(raw: dict) -> Calibration:
    return Calibration(sigma=float(raw["sigma"]), kappa=float(raw["kappa"]),
                       scores=np.asarray(raw["scores"], np.float64), distances=np.asarray(raw["distances"], np.float64))
