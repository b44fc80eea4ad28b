"""Backtesting the law: choose and fit it on the smaller runs, predict the larger ones, and measure the
error and how often the prediction intervals hold what was observed.

Which runs are held out: those at or above a threshold of compute C = 6ND or of size N, or the largest
fraction of them by either (`Holdout`). The rest, and only the rest, go through `choose_law` exactly as
`blueberry-scale fit` does: every form fitted, the forms weighted by rolling-origin backtests inside the
fitted runs (cut by the same quantity as the hold-out), intervals calibrated on those nested errors. The
held-out runs never reach the selection, the weights or the calibration.

Each held-out run gets the calibrated interval at its distance beyond the fitted runs
(`blueberry.scaling.calibrate`: the union of the nested errors' conformal interval and the bootstrap's),
and for comparison each part alone and the bootstrap laws' spread alone.

Errors are in log loss: |log L - log L_hat| is the relative error of the prediction (0.01 is 1%).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from blueberry.errors import UserError
from blueberry.scaling.calibrate import bootstrap_interval
from blueberry.scaling.choice import ChosenLaw, choose_law, forms_table
from blueberry.scaling.fit import ScalingPoints
from blueberry.scaling.select import distance_bins

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
    chosen: ChosenLaw  # chosen, weighted and calibrated on the fitted runs alone
    fitted: ScalingPoints
    held: ScalingPoints
    predicted: np.ndarray  # the chosen law's loss at each held-out run
    distance: np.ndarray  # each held-out run's distance beyond the fitted runs, decades
    interval: np.ndarray | None  # (m, 2) calibrated (the union of the next two); None: neither exists
    conformal_interval: np.ndarray | None  # (m, 2) from the nested errors alone
    bootstrap_interval: np.ndarray | None  # (m, 2) bootstrap laws and residual scatter alone
    parameter_interval: np.ndarray | None  # (m, 2) bootstrap laws alone
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

    def _inside(self, interval: np.ndarray | None) -> np.ndarray | None:
        if interval is None:
            return None
        return (interval[:, 0] <= self.held.loss) & (self.held.loss <= interval[:, 1])

    @property
    def inside(self) -> np.ndarray | None:
        """Which held-out runs the calibrated intervals hold."""
        return self._inside(self.interval)

    @property
    def coverage(self) -> float | None:
        return None if self.interval is None else float(self.inside.mean())

    @property
    def conformal_coverage(self) -> float | None:
        return None if self.conformal_interval is None else float(self._inside(self.conformal_interval).mean())

    @property
    def bootstrap_coverage(self) -> float | None:
        return None if self.bootstrap_interval is None else float(self._inside(self.bootstrap_interval).mean())

    @property
    def parameter_coverage(self) -> float | None:
        return None if self.parameter_interval is None else float(self._inside(self.parameter_interval).mean())

    def form_errors(self) -> dict[str, float]:
        """Each form's own fit of the fitted runs, scored on the held-out runs: what it would have done
        alone (shown, never used to choose)."""
        return {name: float(np.mean(np.abs(np.log(self.held.loss) - np.log(r.fit.law.loss(self.held.N,
                                                                                            self.held.D)))))
                for name, r in self.chosen.results.items()}

    def coverage_band(self, sigmas: float = 2.0) -> tuple[float, float]:
        """Coverage a calibrated interval would show on this many held-out runs, +- `sigmas` binomial
        standard deviations (runs treated as independent)."""
        sd = math.sqrt(self.level * (1 - self.level) / len(self.held))
        return max(0.0, self.level - sigmas * sd), min(1.0, self.level + sigmas * sd)

    def by_distance(self) -> list[dict[str, float]]:
        """Error and coverage per doubling of distance beyond the fitted runs."""
        bins = distance_bins(self.distance)
        rows = []
        for b in np.unique(bins):
            k = bins == b
            row = {"from": float(2.0 ** b), "to": float(2.0 ** (b + 1)), "runs": int(k.sum()),
                   "mean_abs_log_error": float(np.mean(np.abs(self.log_error[k]))),
                   "mean_log_error": float(np.mean(self.log_error[k]))}
            if self.interval is not None:
                row["coverage"] = float(self.inside[k].mean())
                row["interval_width"] = float(np.mean(np.log(self.interval[k, 1] / self.interval[k, 0])))
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, object]:
        from blueberry.scaling.choice import chosen_payload

        worst = self.worst
        runs = []
        for i in range(len(self.held)):
            run = {"N": float(self.held.N[i]), "D": float(self.held.D[i]), "loss": float(self.held.loss[i]),
                   "predicted": float(self.predicted[i]), "distance": float(self.distance[i])}
            for key, interval in (("interval", self.interval), ("bootstrap_interval", self.bootstrap_interval)):
                run[key] = None if interval is None else [float(interval[i, 0]), float(interval[i, 1])]
            runs.append(run)
        return {
            "holdout": self.holdout.describe, "level": self.level, "bootstrap": self.bootstrap,
            "fitted_runs": len(self.fitted), "held_out_runs": len(self.held),
            "choice": chosen_payload(self.chosen, None),
            "mean_abs_log_error": self.mean_abs_log_error, "mean_log_error": float(np.mean(self.log_error)),
            "form_held_out_errors": self.form_errors(),
            "worst": {"N": float(self.held.N[worst]), "D": float(self.held.D[worst]),
                      "loss": float(self.held.loss[worst]), "predicted": float(self.predicted[worst]),
                      "log_error": float(self.log_error[worst])},
            "coverage": self.coverage, "conformal_coverage": self.conformal_coverage,
            "bootstrap_coverage": self.bootstrap_coverage,
            "parameter_only_coverage": self.parameter_coverage,
            "calibrated_coverage_band": list(self.coverage_band()),
            "by_distance": self.by_distance(), "runs": runs,
        }


def run_backtest(points: ScalingPoints, holdout: Holdout, level: float = 0.8, bootstrap: int = 200,
                 seed: int = 0, force: str | None = None, weighting: str = "inverse-error") -> Backtest:
    """Hold out what `holdout` says, choose and calibrate the law on the rest (`choose_law`, cut by the
    hold-out's quantity), predict the held-out runs with intervals at `level`."""
    if not 0 < level < 1:
        raise UserError(f"--level must be in (0, 1), got {level}")
    if bootstrap == 1 or bootstrap < 0:
        raise UserError(f"--bootstrap must be 0 (no bootstrap intervals) or at least 2, got {bootstrap}")
    held_mask = holdout.mask(points)
    fitted, held = points.take(np.flatnonzero(~held_mask)), points.take(np.flatnonzero(held_mask))
    chosen = choose_law(fitted, force=force, cut_by=holdout.by, bootstrap=bootstrap, seed=seed, weighting=weighting)
    predictor = chosen.predictor("the fitted runs")
    predicted = np.asarray(chosen.law.loss(held.N, held.D))
    distance = chosen.data_range.distance(held.N, held.D)
    calibrated = predictor.interval(held.N, held.D, level)
    conformal = (None if chosen.calibration is None or not chosen.calibration.bounded(level)
                 else np.column_stack(chosen.calibration.interval(predicted, distance, level)))
    both = parameter = None
    if predictor.draws is not None:
        both, parameter = bootstrap_interval(predictor.draws, chosen.residuals, held.N, held.D, level)
    return Backtest(holdout=holdout, level=level, chosen=chosen, fitted=fitted, held=held, predicted=predicted,
                    distance=distance, interval=None if calibrated is None else np.column_stack(calibrated),
                    conformal_interval=conformal, bootstrap_interval=both, parameter_interval=parameter,
                    bootstrap=bootstrap)


def _coverage(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def backtest_text(result: Backtest, source: str) -> str:
    """The backtest as a reader wants it: the selection inside the fitted runs, what the held-out runs
    showed of each form and of the choice, the error, the coverage, all by distance."""
    worst = result.worst
    low, high = result.coverage_band()
    chosen = result.chosen
    lines = [f"Backtest on {source}: fit {len(result.fitted)} runs, predict {len(result.held)} held out "
             f"({result.holdout.describe})",
             f"  selection inside the {len(result.fitted)} fitted runs only (rolling origin by {chosen.cut_by}, cuts "
             f"at {', '.join(f'{c.value:.3g}' for c in chosen.cuts) or 'none'}): nested mean |log error| per "
             "distance beyond each cut"]
    lines += forms_table(chosen)
    lines.append(f"  chosen                  {chosen.choice_text()}")
    for name, law in ((n, chosen.results[n].fit.law) for n in chosen.weights):
        lines.append(f"  {name:23} {law.describe()}")
    errors = result.form_errors()
    lines.append("  held out, each form alone (shown, not used): "
                 + ", ".join(f"{name} {value:.4f}" for name, value in errors.items()))
    mean = float(np.mean(result.log_error))
    lines += [f"  mean |log error|        {result.mean_abs_log_error:.4f}  (mean log(observed/predicted) {mean:+.4f}: "
              f"the law predicts too {'low' if mean > 0 else 'high'} a loss)",
              f"  worst                   {result.log_error[worst]:+.4f} at N = {result.held.N[worst]:.3g}, "
              f"D = {result.held.D[worst]:.3g}: loss {result.held.loss[worst]:.4f}, predicted "
              f"{result.predicted[worst]:.4f}",
              f"  {result.level:.0%} interval coverage   calibrated {_coverage(result.coverage)} (a calibrated "
              f"interval on {len(result.held)} runs: {low:.0%} to {high:.0%}); its parts alone: backtest errors "
              f"{_coverage(result.conformal_coverage)}, bootstrap + residual scatter "
              f"{_coverage(result.bootstrap_coverage)}; parameters alone {_coverage(result.parameter_coverage)}",
              "  by distance beyond the fitted runs:",
              f"    {'x beyond':>12} {'runs':>5} {'mean |log err|':>15} {'mean log err':>13} {'coverage':>9} "
              f"{'interval width':>15}"]
    for row in result.by_distance():
        coverage = f"{row['coverage']:9.1%}" if "coverage" in row else f"{'-':>9}"
        width = f"{100 * row['interval_width']:14.2f}%" if "interval_width" in row else f"{'-':>15}"
        lines.append(f"    {row['from']:>5g} to {row['to']:<4g} {row['runs']:5d} {row['mean_abs_log_error']:15.4f} "
                     f"{row['mean_log_error']:+13.4f} {coverage} {width}")
    return "\n".join(lines)
