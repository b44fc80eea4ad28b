"""Choosing among law forms by how they extrapolate: rolling-origin backtests inside the runs given, and
weights for the forms from them.

Rolling origin (`rolling_cuts`): sort the runs by N (or by compute C, as the user holds out) and, for each
fraction f in `CUT_FRACTIONS`, fit every form to the runs below the largest cut that leaves at most f of
them (ties stay together: a cut falls between two values, never inside one), and predict the runs at or
above it. Each (cut, predicted run) pair gives a nested error, log observed - log predicted, at a
distance: how far the run lies beyond that cut's fitted runs (`DataRange.distance`, in decades of N, D or
C). Only the runs handed in are used; a backtest hands in its fitted part alone.

Weights (`WEIGHTINGS`, default `inverse_error_weights`): each form's weight is proportional to the inverse
square of its nested score (its mean |log error| over the cuts, each cut equal), the inverse-MSE
combination of forecasts (Bates & Granger 1969). Why not stacking (weights fitted to minimise the stack's
own nested error, `stack_weights`) or picking the best form: with five cuts or fewer, fitted weights chase
the noise of the cuts (the "forecast combination puzzle": simple inverse-error weights usually beat
optimised ones out of sample, Smith & Wallis 2009), and a single pick throws away a form that is nearly as
good. Measured inside the Chinchilla runs below 1B, across five hold-outs none of which reaches 1B
(`python -m blueberry.bench.scaling_fit --inner`, docs/scaling.md), inverse-error weights predicted the
held-out runs best of the three. A softmax of scores would need a temperature, which nothing here sets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog

from blueberry.errors import UserError
from blueberry.scaling.fit import LawFit, ScalingPoints, fit_form
from blueberry.scaling.forms import FORMS
from blueberry.scaling.law import DataRange

CUT_FRACTIONS = (0.5, 0.6, 0.7, 0.8, 0.9)
CUT_BY = ("N", "compute")
# Each axis's term (a coefficient and an exponent) shares the irreducible loss with the other's: two sizes
# cannot pin down three numbers, and a fit of them extrapolates wildly, which would blame the form.
MIN_DISTINCT = 3
WEIGHT_FLOOR = 1e-4  # stacking weights below this are dropped (and the rest renormalised)


def axis(points: ScalingPoints, by: str) -> np.ndarray:
    if by not in CUT_BY:
        raise UserError(f"cut by one of {', '.join(CUT_BY)}, got {by!r}")
    return points.N if by == "N" else points.C


@dataclass(frozen=True)
class Cut:
    """Fit the runs with N (or C) below `value`, predict those at or above it."""

    value: float
    fitted: np.ndarray  # indices into the runs
    held: np.ndarray


def rolling_cuts(points: ScalingPoints, by: str, min_fit: int) -> list[Cut]:
    """The rolling origins: one per fraction of `CUT_FRACTIONS` (duplicates merged), each leaving at least
    `min_fit` runs to fit, with at least `MIN_DISTINCT` distinct N and D among them, and at least one run to
    predict."""
    x = axis(points, by)
    levels = np.unique(x)
    below = np.searchsorted(np.sort(x), levels, side="left")  # runs strictly below each level
    distinct = np.array([min(len(np.unique(points.N[x < v])), len(np.unique(points.D[x < v]))) for v in levels])
    cuts, seen = [], set()
    for fraction in CUT_FRACTIONS:
        ok = (below <= fraction * len(x)) & (below >= min_fit) & (below < len(x)) & (distinct >= MIN_DISTINCT)
        if not ok.any():
            continue
        value = float(levels[ok].max())
        if value in seen:
            continue
        seen.add(value)
        cuts.append(Cut(value, np.flatnonzero(x < value), np.flatnonzero(x >= value)))
    return cuts


@dataclass(frozen=True)
class Nested:
    """One form's predictions at every rolling origin: one entry per (cut, predicted run) pair."""

    form: str
    cut: np.ndarray  # index of the cut
    run: np.ndarray  # index of the predicted run
    distance: np.ndarray  # decades beyond the cut's fitted runs
    log_predicted: np.ndarray
    log_observed: np.ndarray

    @property
    def log_error(self) -> np.ndarray:
        """log(observed / predicted): positive where the form predicted too low a loss."""
        return self.log_observed - self.log_predicted

    def pair_weights(self) -> np.ndarray:
        """Each cut counts equally: a pair weighs 1 / (pairs of its cut) / (cuts)."""
        counts = np.bincount(self.cut)
        return 1.0 / counts[self.cut] / len(np.unique(self.cut))

    @property
    def score(self) -> float:
        """Mean |log error| over the cuts (each cut's mean, averaged)."""
        return float(np.sum(self.pair_weights() * np.abs(self.log_error)))


def nested_predictions(points: ScalingPoints, cuts: list[Cut], forms: list[str]) -> tuple[dict[str, Nested],
                                                                                           list[int]]:
    """Every form fitted at every cut and its predictions of the runs above the cut. A cut at which some
    form cannot be fitted (too few distinct sizes, no valid law) is left out for all forms, so their
    errors stay comparable pair by pair; the second value lists the cuts kept."""
    kept, per_form = [], {name: [] for name in forms}
    for i, cut in enumerate(cuts):
        fitted, held = points.take(cut.fitted), points.take(cut.held)
        try:
            fits: dict[str, LawFit] = {name: fit_form(fitted, FORMS[name]) for name in forms}
        except UserError:
            continue
        kept.append(i)
        distance = DataRange.of(fitted.N, fitted.D).distance(held.N, held.D)
        for name, fit in fits.items():
            per_form[name].append((np.full(len(held), i), cut.held, distance, np.log(fit.law.loss(held.N, held.D))))
    nested = {}
    for name, parts in per_form.items():
        if parts:
            cut, run, distance, predicted = (np.concatenate(p) for p in zip(*parts))
            nested[name] = Nested(name, cut, run, distance, predicted, np.log(points.loss[run]))
    return nested, kept


def inverse_error_weights(nested: dict[str, Nested]) -> dict[str, float]:
    """w_k proportional to 1 / score_k^2 (see the module's docstring); a form with no nested error (it
    reproduced every nested run exactly) takes all the weight."""
    scores = {name: n.score for name, n in nested.items()}
    exact = [name for name, score in scores.items() if score == 0]
    if exact:
        return {exact[0]: 1.0}
    inverse = {name: 1 / score ** 2 for name, score in scores.items()}
    total = sum(inverse.values())
    return {name: value / total for name, value in inverse.items()}


def best_form(nested: dict[str, Nested]) -> dict[str, float]:
    """All the weight to the form of the lowest nested score."""
    return {min(nested, key=lambda name: nested[name].score): 1.0}


def stack_weights(nested: dict[str, Nested]) -> dict[str, float]:
    """Stacking weights (Wolpert 1992): w >= 0, sum w = 1, minimising the stack's own mean |nested log
    error| (each cut equal), solved exactly as the linear programme over (w, t),

        minimise sum_i c_i t_i  subject to  |y_i - P_i w| <= t_i,  sum w = 1,  w >= 0,

    with y the log observed losses, P the forms' log predictions and c the pair weights."""
    names = list(nested)
    if len(names) == 1:
        return {names[0]: 1.0}
    first = nested[names[0]]
    P = np.column_stack([nested[name].log_predicted for name in names])  # (pairs, forms)
    y, c = first.log_observed, first.pair_weights()
    pairs, k = P.shape
    eye = np.eye(pairs)
    A_ub = np.block([[-P, -eye], [P, -eye]])
    b_ub = np.concatenate((-y, y))
    A_eq = np.concatenate((np.ones(k), np.zeros(pairs)))[None, :]
    result = linprog(np.concatenate((np.zeros(k), c)), A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=[1.0],
                     bounds=[(0, None)] * (k + pairs), method="highs")
    if not result.success:  # the programme is always feasible and bounded; a solver failure is ours
        raise RuntimeError(f"stacking weights: {result.message}")
    w = np.where(result.x[:k] < WEIGHT_FLOOR, 0.0, result.x[:k])
    return {name: float(v) for name, v in zip(names, w / w.sum()) if v > 0}


WEIGHTINGS = {"inverse-error": inverse_error_weights, "stacking": stack_weights, "best": best_form}


def stacked_log_predictions(nested: dict[str, Nested], weights: dict[str, float]) -> np.ndarray:
    """The stack's nested log predictions, pair by pair."""
    return sum(w * nested[name].log_predicted for name, w in weights.items())


def distance_bins(distance: np.ndarray) -> np.ndarray:
    """Each distance's doubling bin: 0 for up to 2x beyond the fitted runs (inside included), 1 for 2x-4x..."""
    return np.floor(np.maximum(distance, 0.0) / np.log10(2.0) + 1e-12).astype(int)


def by_distance(distance: np.ndarray, log_error: np.ndarray) -> list[dict[str, float]]:
    """Mean |log error| and mean log error per doubling of distance."""
    bins = distance_bins(distance)
    return [{"from": float(2.0 ** b), "to": float(2.0 ** (b + 1)), "pairs": int((bins == b).sum()),
             "mean_abs_log_error": float(np.mean(np.abs(log_error[bins == b]))),
             "mean_log_error": float(np.mean(log_error[bins == b]))} for b in np.unique(bins)]
