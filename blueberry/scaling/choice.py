"""The law `blueberry-scale` predicts with: every form fitted, weighted by how it extrapolated inside the
runs (`blueberry.scaling.select`), with intervals calibrated by the same backtests
(`blueberry.scaling.calibrate`), and bootstrap refits for the parameters' own intervals.

`choose_law` does it all on the runs it is given and on nothing else; `ChosenLaw.predictor()` is what a
plan needs of it, and `Predictor` is also what a `fit --json` file reads back into (`lawfile.py`).
With `force` one form takes weight 1; the others are still fitted and backtested, to be shown beside it.
With too few runs for any rolling origin the Chinchilla form (the default before selection existed) is
used with uncalibrated intervals, and the reports say so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from blueberry.errors import UserError
from blueberry.scaling.calibrate import METHOD as CALIBRATION_METHOD
from blueberry.scaling.calibrate import Calibration, bootstrap_interval, calibrate
from blueberry.scaling.fit import Bootstrap, LawFit, ScalingPoints, bootstrap_fit, fit_form, resamples
from blueberry.scaling.forms import FORMS, form_named
from blueberry.scaling.law import DataRange, StackedLaw, law_of
from blueberry.scaling.select import (WEIGHTINGS, Cut, Nested, by_distance, nested_predictions, rolling_cuts,
                                      stacked_log_predictions)

FALLBACK_FORM = "chinchilla"
WEIGHTING_TEXT = {"inverse-error": "weights proportional to 1 / (nested mean |log error|)^2",
                  "stacking": "stacking on the nested errors", "best": "the form of the lowest nested error"}
PARAMETER_LEVEL = 0.95  # the bootstrap's intervals, for parameters and for a plan's parameter-only interval


@dataclass(frozen=True)
class Predictor:
    """What a plan needs of a law: the point prediction, bootstrap draws (a law of arrays), the calibration,
    the runs it was fitted on and how it was chosen."""

    law: StackedLaw
    draws: StackedLaw | None  # parameters of shape (draws, 1)
    calibration: Calibration | None
    data_range: DataRange | None
    source: str
    choice: str  # how the law was chosen, for a reader
    weights: dict[str, float]
    residuals: np.ndarray | None = None  # the fitted runs' log residuals: one run's scatter about the law

    def distance(self, N, D):
        return self.data_range.distance(N, D) if self.data_range is not None else None

    def parameter_interval(self, N, D, level: float = PARAMETER_LEVEL) -> tuple[np.ndarray, np.ndarray] | None:
        """The bootstrap laws' central `level` at (N, D): the parameters' uncertainty alone."""
        if self.draws is None:
            return None
        losses = self.draws.loss(np.atleast_1d(np.asarray(N, np.float64)), np.atleast_1d(np.asarray(D, np.float64)))
        tails = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
        low, high = np.percentile(losses, tails, axis=0)  # over draws: one value per (N, D)
        return low, high

    def interval(self, N, D, level: float) -> tuple[np.ndarray, np.ndarray] | None:
        """The calibrated interval at (N, D): the union of the one the backtests measured at its distance
        and the bootstrap's predictive interval (`blueberry.scaling.calibrate`); either alone where the
        other is missing, None where both are."""
        parts = []
        if self.calibration is not None and self.data_range is not None and self.calibration.bounded(level):
            parts.append(self.calibration.interval(self.law.loss(N, D), self.distance(N, D), level))
        if self.draws is not None and self.residuals is not None:
            both, _ = bootstrap_interval(self.draws, self.residuals, N, D, level)
            parts.append((both[:, 0].reshape(np.shape(N)), both[:, 1].reshape(np.shape(N))))
        if not parts:
            return None
        return (np.minimum.reduce([p[0] for p in parts]), np.maximum.reduce([p[1] for p in parts]))

    def loss_draws(self, N: float, D: float) -> np.ndarray | None:
        """One loss's predictive distribution as draws: the conformal draws L_hat exp(s(d) z_i) and the
        bootstrap's log L*_b + r_j, pooled (either alone where the other is missing)."""
        parts = []
        if self.calibration is not None and self.data_range is not None:
            parts.append(self.calibration.draws(float(self.law.loss(N, D)), float(self.distance(N, D))))
        if self.draws is not None:
            with np.errstate(over="ignore"):
                log_draws = np.log(np.asarray(self.draws.loss(N, D), np.float64).ravel())
            residuals = self.residuals if self.residuals is not None else np.zeros(1)
            parts.append(np.exp((log_draws[:, None] + residuals[None, :]).ravel()))
        return np.concatenate(parts) if parts else None


@dataclass(frozen=True)
class FormResult:
    fit: LawFit
    nested: Nested | None  # None: no rolling origin could fit it
    bootstrap: Bootstrap | None  # refits of the forms with weight only


@dataclass(frozen=True)
class ChosenLaw:
    results: dict[str, FormResult]
    weights: dict[str, float]  # the forms with weight, by name
    forced: str | None
    weighting: str  # a key of `WEIGHTINGS`
    cut_by: str
    cuts: tuple[Cut, ...]  # the rolling origins kept
    calibration: Calibration | None
    data_range: DataRange
    residuals: np.ndarray  # the fitted runs' log residuals about the chosen law
    stack_nested: np.ndarray | None  # the stack's nested log errors, pair by pair
    dropped: dict[str, str]  # forms that could not be fitted to all the runs, and why

    @property
    def law(self) -> StackedLaw:
        return StackedLaw(tuple(self.results[n].fit.law for n in self.weights), tuple(self.weights.values()))

    @property
    def method(self) -> str:
        if self.forced is not None:
            return f"forced with --form {self.forced}"
        if self.cuts:
            return WEIGHTING_TEXT[self.weighting]
        default = (f"the {FALLBACK_FORM} form by default" if FALLBACK_FORM in self.weights
                   else f"the first form that fits, {next(iter(self.weights))} ({FALLBACK_FORM} did not)")
        return f"too few runs for a rolling origin: {default}"

    def draws(self) -> StackedLaw | None:
        """The stack of every chosen form's bootstrap laws (draw b of each from one resample), with each
        parameter an array of shape (draws, 1): its loss at m runs is (draws, m)."""
        if any(self.results[n].bootstrap is None for n in self.weights):
            return None
        laws = tuple(law_of(n, {k: v[:, None] for k, v in self.results[n].bootstrap.parameters(FORMS[n]).items()})
                     for n in self.weights)
        return StackedLaw(laws, tuple(self.weights.values()))

    def choice_text(self) -> str:
        """How the law was chosen, in one line."""
        weights = ", ".join(f"{n} {w:.2f}" for n, w in self.weights.items())
        return f"{weights} ({self.method}; rolling origin by {self.cut_by}, {len(self.cuts)} cuts)"

    def predictor(self, source: str) -> Predictor:
        return Predictor(self.law, self.draws(), self.calibration, self.data_range, source, self.choice_text(),
                         dict(self.weights), self.residuals)


def choose_law(points: ScalingPoints, *, force: str | None = None, forms: tuple[str, ...] | None = None,
               cut_by: str = "N", bootstrap: int = 200, seed: int = 0, weighting: str = "inverse-error") -> ChosenLaw:
    """Fit every form to `points`, backtest each at rolling origins inside them, weight the forms by
    `weighting` (a key of `WEIGHTINGS`; or give `force` weight 1), calibrate intervals on the weighted
    law's nested errors, and bootstrap the forms with weight (`bootstrap` refits on shared resamples; 0
    for none)."""
    names = list(forms or FORMS)
    if force is not None:
        form_named(force)
        names = [force] + [n for n in names if n != force]
    results: dict[str, LawFit] = {}
    dropped: dict[str, str] = {}
    for name in names:
        try:
            results[name] = fit_form(points, FORMS[name])
        except UserError as err:
            if name == force:
                raise
            dropped[name] = str(err)
    if not results:
        raise UserError(next(iter(dropped.values())))
    names = list(results)
    min_fit = 2 * max(len(FORMS[n].theta_names) for n in names)
    cuts = rolling_cuts(points, cut_by, min_fit)
    nested, kept = nested_predictions(points, cuts, names)
    cuts = tuple(cuts[i] for i in kept)
    if force is not None:
        weights = {force: 1.0}
    elif nested:
        weights = WEIGHTINGS[weighting](nested)
    else:
        fallback = FALLBACK_FORM if FALLBACK_FORM in results else names[0]
        weights = {fallback: 1.0}
    law = StackedLaw(tuple(results[n].law for n in weights), tuple(weights.values()))
    residuals = np.log(points.loss) - np.log(law.loss(points.N, points.D))
    calibration, stack_nested = None, None
    if nested:
        first = next(iter(nested.values()))
        stack_nested = first.log_observed - stacked_log_predictions(nested, weights)
        calibration = calibrate(stack_nested, first.distance, residuals)
    boots: dict[str, Bootstrap] = {}
    if bootstrap:
        indices = resamples(len(points), bootstrap, seed)
        boots = {n: bootstrap_fit(points, results[n], bootstrap, indices=indices) for n in weights}
    return ChosenLaw(results={n: FormResult(results[n], nested.get(n), boots.get(n)) for n in names},
                     weights=weights, forced=force, weighting=weighting, cut_by=cut_by, cuts=cuts,
                     calibration=calibration,
                     data_range=DataRange.of(points.N, points.D), residuals=residuals, stack_nested=stack_nested,
                     dropped=dropped)


def chosen_payload(chosen: ChosenLaw, source: str | None) -> dict[str, object]:
    """Everything `fit --json` records, so a plan can be re-derived from it: every form's parameters
    (with bootstrap summaries and draws where refitted), its nested errors, the cuts, the weights and how
    they were chosen, the calibration and the runs' range."""
    forms = {}
    for name, result in chosen.results.items():
        form, law = FORMS[name], result.fit.law
        entry: dict[str, object] = {"title": form.title, "reference": form.reference, "formula": law.describe(),
                                    "weight": chosen.weights.get(name, 0.0), "objective": result.fit.objective,
                                    "converged": result.fit.converged}
        values = law.to_dict() | law.derived()
        boot = result.bootstrap
        entry["parameters"] = {k: boot.summary(k, v, PARAMETER_LEVEL) if boot else {"estimate": v, "se": None,
                                                                                     "ci": None}
                               for k, v in values.items()}
        if result.nested is not None:
            n = result.nested
            entry["score"] = n.score
            entry["by_distance"] = by_distance(n.distance, n.log_error)
            entry["nested"] = {"cut": n.cut.tolist(), "run": n.run.tolist(), "distance": n.distance.tolist(),
                               "log_error": n.log_error.tolist()}
        entry["bootstrap_samples"] = {k: v.tolist() for k, v in boot.samples.items()} if boot else None
        forms[name] = entry
    stack: dict[str, object] = {"weights": chosen.weights, "method": chosen.method,
                                "residuals": chosen.residuals.tolist()}
    if chosen.stack_nested is not None:
        first = next(r.nested for r in chosen.results.values() if r.nested is not None)
        stack["by_distance"] = by_distance(first.distance, chosen.stack_nested)
        stack["score"] = float(np.sum(first.pair_weights() * np.abs(chosen.stack_nested)))
    return {"format": "blueberry-scale fit, law forms", "source": source, "runs": chosen.data_range.runs,
            "data_range": chosen.data_range.to_dict(), "forced": chosen.forced,
            "selection": {"cut_by": chosen.cut_by, "cuts": [{"value": c.value, "fitted_runs": len(c.fitted),
                                                             "predicted_runs": len(c.held)} for c in chosen.cuts],
                          "weighting": chosen.weighting},
            "stack": stack, "forms": forms, "dropped": chosen.dropped,
            "calibration": chosen.calibration.to_dict() if chosen.calibration is not None else None,
            "calibration_method": CALIBRATION_METHOD}


def interval_rows(calibration: Calibration, level: float, distances=(0.0, 0.3, 0.6, 1.0)) -> list[str]:
    """The calibrated interval, as percentages of the prediction, at a few distances."""
    q_low, q_high = calibration.quantiles(level)
    if not (math.isfinite(q_low) and math.isfinite(q_high)):
        return [f"unbounded: {len(calibration.scores)} nested errors cannot bound a {level:.0%} interval (split-conformal "
                f"needs at least {math.ceil((1 + level) / (1 - level))}); the bootstrap's interval stands alone"]
    rows = []
    for d in distances:
        s = calibration.scale(d)
        rows.append(f"{10 ** d:>6.3g}x beyond   {100 * (np.exp(s * q_low) - 1):+7.2f}% to "
                    f"{100 * (np.exp(s * q_high) - 1):+6.2f}%" + ("   (past the backtests' reach)"
                                                                   if d > calibration.max_distance else ""))
    return rows


def forms_table(chosen: ChosenLaw) -> list[str]:
    """The forms side by side: weight, nested mean |log error| overall and per doubling of distance."""
    bins = sorted({(row["from"], row["to"]) for r in chosen.results.values() if r.nested is not None
                   for row in by_distance(r.nested.distance, r.nested.log_error)})
    head = f"  {'form':12}{'weight':>7}{'nested':>9}" + "".join(f"{f'{a:g}-{b:g}x':>10}" for a, b in bins)
    lines = [head]

    def row(label: str, weight: str, distance: np.ndarray | None, error: np.ndarray | None, score: float | None):
        cells = {(r["from"], r["to"]): r["mean_abs_log_error"] for r in by_distance(distance, error)} \
            if error is not None else {}
        overall = f"{score:9.4f}" if score is not None else f"{'-':>9}"
        lines.append(f"  {label:12}{weight:>7}{overall}" + "".join(
            f"{cells[b]:10.4f}" if b in cells else f"{'-':>10}" for b in bins))

    for name, result in chosen.results.items():
        n = result.nested
        row(name, f"{chosen.weights.get(name, 0.0):.2f}", n.distance if n else None, n.log_error if n else None,
            n.score if n else None)
    if chosen.stack_nested is not None and len(chosen.weights) > 1:
        first = next(r.nested for r in chosen.results.values() if r.nested is not None)
        row("stack", "", first.distance, chosen.stack_nested,
            float(np.sum(first.pair_weights() * np.abs(chosen.stack_nested))))
    return lines


def chosen_text(chosen: ChosenLaw, source: str, level: float) -> str:
    """`fit`'s report: the forms side by side, how they were weighted, each chosen form's parameters
    and the calibrated intervals."""
    cuts = ", ".join(f"{c.value:.3g}" for c in chosen.cuts) or "none"
    lines = [f"Law forms fitted to {chosen.data_range.runs} runs from {source}",
             f"  rolling origin by {chosen.cut_by}: fit below each cut ({cuts}), predict the runs above; nested "
             "mean |log error| (0.01 is 1%) per distance beyond each cut's fitted runs:"]
    lines += forms_table(chosen)
    lines.append(f"  weights: {chosen.choice_text()}")
    for name, reason in chosen.dropped.items():
        lines.append(f"  {name}: not fitted ({reason})")
    for name in chosen.weights:
        result = chosen.results[name]
        lines.append(f"  {name} ({FORMS[name].title}): {result.fit.law.describe()}")
        lines.append(f"    {'':8}{'estimate':>12}{'s.e.':>12}   95% interval")
        boot = result.bootstrap
        for key, value in (result.fit.law.to_dict() | result.fit.law.derived()).items():
            if boot is not None and key in boot.samples:
                s = boot.summary(key, value, PARAMETER_LEVEL)
                lines.append(f"    {key:8}{value:12.4g}{s['se']:12.4g}   [{s['ci'][0]:.4g}, {s['ci'][1]:.4g}]")
            else:
                lines.append(f"    {key:8}{value:12.4g}{'-':>12}   -")
    if chosen.calibration is None:
        lines.append("  intervals: not calibrated (no rolling origin had enough runs below it); a plan shows the "
                     "bootstrap's")
    else:
        c = chosen.calibration
        lines.append(f"  calibrated {level:.0%} interval of one run's loss ({len(c.scores)} nested errors; scale "
                     f"{c.sigma:.4f} + {c.kappa:.4f} per decade; backtests reached {10 ** c.max_distance:.3g}x):")
        lines += [f"    {row}" for row in interval_rows(c, level)]
    return "\n".join(lines)
