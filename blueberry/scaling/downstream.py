"""Downstream accuracy from loss: a sigmoid fitted to evaluated runs, and what it predicts for a plan.

The form is the second step of Bhagia et al. (2024, "Establishing Task Scaling Laws via
Compute-Efficient Model Ladders", arXiv:2412.04403, as implemented in marin's scaling-law code),
Acc(L) = a / (1 + exp(-k' (L - L0))) + b with k' < 0, written here with its asymptotes named:

    acc(L) = floor + (ceiling - floor) / (1 + exp(k (L - L0))),   k > 0,

floor the accuracy of a model that has learnt nothing (chance: 1/4 on four-choice tasks, 0 on CORE's
centred scale), ceiling what a model of vanishing loss would reach, L0 the loss half-way between them
and k how sharply accuracy rises there. Llama 3 (Dubey et al. 2024, section 3.2.1) predicts task
accuracy from loss with a sigmoid too. The loss here is the lab's validation loss (`final/val_loss`),
the same loss the scaling law predicts, so a planned model's loss maps to an accuracy; Bhagia et al.
use a task-specific loss instead and find it predicts a little better.

Fit: least squares on accuracy (`scipy.optimize.least_squares`, trust-region reflective, analytic
Jacobian), the best end point of a grid of starts; the floor is fixed at chance when given (recommended:
a handful of small runs near chance cannot pin it down) and fitted otherwise. Uncertainty: bootstrap
refits on runs resampled with replacement, and the residual scatter of the runs about the fit (a new
model's accuracy is one draw of that scatter: evaluation noise of a finite task included).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares
from scipy.special import expit

from blueberry.errors import UserError

SIGMOID_NAMES = ("floor", "ceiling", "k", "L0")


@dataclass(frozen=True)
class Sigmoid:
    floor: float
    ceiling: float
    k: float
    L0: float

    def __call__(self, loss: float | np.ndarray) -> float | np.ndarray:
        return self.floor + (self.ceiling - self.floor) * expit(-self.k * (np.asarray(loss) - self.L0))

    def loss_for(self, accuracy: float) -> float:
        """The loss at which the curve reaches `accuracy`: nan outside (floor, ceiling), which it never reaches."""
        if not self.floor < accuracy < self.ceiling:
            return math.nan
        return self.L0 + math.log((self.ceiling - self.floor) / (accuracy - self.floor) - 1) / self.k

    def to_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in SIGMOID_NAMES}


def _residuals_and_jacobian(free: tuple[str, ...], fixed: dict[str, float], loss: np.ndarray, acc: np.ndarray):
    def unpack(theta: np.ndarray) -> dict[str, float]:
        return {**fixed, **dict(zip(free, theta))}

    def residuals(theta: np.ndarray) -> np.ndarray:
        return Sigmoid(**unpack(theta))(loss) - acc

    def jacobian(theta: np.ndarray) -> np.ndarray:
        p = unpack(theta)
        s = expit(-p["k"] * (loss - p["L0"]))
        ds = s * (1 - s)
        span = p["ceiling"] - p["floor"]
        columns = {"floor": 1 - s, "ceiling": s, "k": -span * ds * (loss - p["L0"]), "L0": span * ds * p["k"]}
        return np.column_stack([columns[name] for name in free])

    return residuals, jacobian


# Box bounds: accuracies and CORE's centred scores lie in [-1, 1]; k > 0 makes accuracy fall as loss rises.
BOUNDS = {"floor": (-1.0, 1.0), "ceiling": (-1.0, 1.0), "k": (1e-6, np.inf), "L0": (-np.inf, np.inf)}


def _solve(loss: np.ndarray, acc: np.ndarray, floor: float | None, starts: list[dict[str, float]]) -> Sigmoid | None:
    free = tuple(n for n in SIGMOID_NAMES if not (n == "floor" and floor is not None))
    fixed = {"floor": floor} if floor is not None else {}
    residuals, jacobian = _residuals_and_jacobian(free, fixed, loss, acc)
    lower, upper = zip(*(BOUNDS[n] for n in free))
    best, best_cost = None, np.inf
    for start in starts:
        x0 = np.clip([start[n] for n in free], np.array(lower) + 1e-9, np.array(upper) - 1e-9)
        res = least_squares(residuals, x0, jac=jacobian, bounds=(lower, upper), method="trf", x_scale="jac",
                            ftol=1e-15, xtol=1e-15, gtol=1e-15, max_nfev=2000)
        if np.all(np.isfinite(res.x)) and res.cost < best_cost:
            best, best_cost = res.x, res.cost
    return None if best is None else Sigmoid(**{**fixed, **{n: float(v) for n, v in zip(free, best)}})


def _grid_starts(loss: np.ndarray, acc: np.ndarray, floor: float | None) -> list[dict[str, float]]:
    spread = max(float(np.ptp(loss)), 1e-6)
    low = floor if floor is not None else float(acc.min())
    starts = []
    for L0, k, ceiling in itertools.product(np.quantile(loss, [0.0, 0.25, 0.5, 0.75, 1.0]),
                                            (1.0 / spread, 4.0 / spread, 16.0 / spread),
                                            (float(acc.max()), (float(acc.max()) + 1) / 2, 1.0)):
        starts.append({"floor": low, "ceiling": max(ceiling, low + 1e-3), "k": k, "L0": float(L0)})
    return starts


@dataclass(frozen=True)
class SigmoidFit:
    sigmoid: Sigmoid
    floor_fixed: bool
    loss: np.ndarray
    accuracy: np.ndarray
    samples: dict[str, np.ndarray] | None = None  # bootstrap refits, one array per parameter

    @property
    def residuals(self) -> np.ndarray:
        return self.accuracy - self.sigmoid(self.loss)

    def draws(self) -> list[Sigmoid]:
        if not self.samples:
            return [self.sigmoid]
        return [Sigmoid(*values) for values in zip(*(self.samples[n] for n in SIGMOID_NAMES))]


def evaluated_runs(rows: list[dict], metric: str, loss_col: str, source: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(loss, accuracy, runs left out) of the runs that have both `metric` and `loss_col`; none is a
    one-line `UserError` naming the accuracy-like columns there are."""
    from blueberry.scaling.runs import column

    evaluated = [r for r in rows if r.get(metric) not in (None, "") and r.get(loss_col) not in (None, "")]
    if not evaluated:
        metrics = sorted({k for r in rows for k in r if k.startswith("val/") or k.endswith(("acc", "acc_norm"))})
        raise UserError(f"no run of {source} has both {metric!r} and {loss_col!r} (accuracy-like columns: "
                        f"{', '.join(metrics)[:200] or 'none'}); choose them with --metric and --loss-col")
    return (np.array(column(evaluated, loss_col, source)), np.array(column(evaluated, metric, source)),
            len(rows) - len(evaluated))


def fit_sigmoid(loss: np.ndarray, accuracy: np.ndarray, floor: float | None = None) -> Sigmoid:
    """The least-squares sigmoid through (loss, accuracy) runs; `floor` fixed when given."""
    loss, accuracy = np.asarray(loss, np.float64), np.asarray(accuracy, np.float64)
    free = len(SIGMOID_NAMES) - (floor is not None)
    if len(loss) <= free:
        fix = "" if floor is not None else " (or fix the floor with --chance)"
        raise UserError(f"{len(loss)} evaluated runs cannot determine the sigmoid's {free} free parameters: "
                        f"need at least {free + 1}{fix}")
    if np.ptp(loss) <= 0:
        raise UserError("the evaluated runs all have the same loss: the sigmoid needs runs of different losses")
    fitted = _solve(loss, accuracy, floor, _grid_starts(loss, accuracy, floor))
    if fitted is None or fitted.ceiling <= fitted.floor:
        raise UserError("no sigmoid with accuracy rising as loss falls fits these runs: check the metric and loss "
                        "columns")
    return fitted


def fit_downstream(loss: np.ndarray, accuracy: np.ndarray, floor: float | None = None, bootstrap: int = 200,
                   seed: int = 0) -> SigmoidFit:
    """`fit_sigmoid` and `bootstrap` refits on resampled runs, each warm-started from the full fit (a
    resample with a single loss is drawn again)."""
    loss, accuracy = np.asarray(loss, np.float64), np.asarray(accuracy, np.float64)
    if floor is not None and not -1 <= floor < 1:
        raise UserError(f"--chance must be in [-1, 1), got {floor}")
    if np.any((accuracy < -1) | (accuracy > 1)):
        raise UserError("accuracies must lie in [-1, 1] (a fraction, or a centred CORE score); is the metric a "
                        "percentage?")
    sigmoid = fit_sigmoid(loss, accuracy, floor)
    if bootstrap == 0:
        return SigmoidFit(sigmoid, floor is not None, loss, accuracy)
    rng = np.random.default_rng(seed)
    starts = [sigmoid.to_dict()]  # a resample's optimum lies near the full data's
    draws: list[Sigmoid] = []
    for _ in range(10 * bootstrap):
        if len(draws) == bootstrap:
            break
        idx = rng.integers(0, len(loss), len(loss))
        if np.ptp(loss[idx]) <= 0:
            continue
        refit = _solve(loss[idx], accuracy[idx], floor, starts)
        if refit is not None:
            draws.append(refit)
    if len(draws) < bootstrap:
        raise UserError(f"only {len(draws)} of {bootstrap} bootstrap refits of the sigmoid succeeded: too few runs")
    samples = {n: np.array([getattr(d, n) for d in draws]) for n in SIGMOID_NAMES}
    return SigmoidFit(sigmoid, floor is not None, loss, accuracy, samples)


def quantiles(values: np.ndarray, level: float) -> tuple[float, float]:
    """The central `level` of `values` as sample values (no interpolation, so infinities stay infinities)."""
    tails = [(1 - level) / 2, (1 + level) / 2]
    low, high = np.quantile(np.asarray(values, np.float64), tails, method="inverted_cdf")
    return float(low), float(high)


def predict_accuracy(fit: SigmoidFit, loss_draws: np.ndarray, level: float = 0.95) -> tuple[float, tuple[float, float]]:
    """Accuracy of one new model whose loss is uncertain as `loss_draws`: the sigmoid at the draws'
    median, and the central `level` of sigmoid_b(L_b) + r_j over bootstrap sigmoids b paired with loss
    draws, and residuals r_j of the fitted runs."""
    loss_draws = np.atleast_1d(np.asarray(loss_draws, np.float64))
    sigmoids = fit.draws()
    count = max(len(sigmoids), len(loss_draws))
    central = np.array([sigmoids[i % len(sigmoids)](loss_draws[i % len(loss_draws)]) for i in range(count)])
    spread = (central[:, None] + fit.residuals[None, :]).ravel()
    return float(fit.sigmoid(float(np.median(loss_draws)))), quantiles(spread, level)


def payload(fit: SigmoidFit, metric: str, loss_col: str, source: str, level: float = 0.95) -> dict[str, object]:
    """What `blueberry-scale downstream --json` writes and `plan --downstream` reads."""
    out: dict[str, object] = {"metric": metric, "loss_col": loss_col, "source": source, "floor_fixed": fit.floor_fixed,
                              "form": "acc = floor + (ceiling - floor) / (1 + exp(k (L - L0)))  [Bhagia et al. 2024]"}
    for name in SIGMOID_NAMES:
        entry: dict[str, object] = {"estimate": getattr(fit.sigmoid, name), "se": None, "ci": None}
        if fit.samples is not None and not (name == "floor" and fit.floor_fixed):
            entry["se"] = float(np.std(fit.samples[name], ddof=1))
            entry["ci"] = list(quantiles(fit.samples[name], level))
        out[name] = entry
    out["runs"] = {"loss": fit.loss.tolist(), "accuracy": fit.accuracy.tolist()}
    if fit.samples is not None:
        out["bootstrap_samples"] = {n: v.tolist() for n, v in fit.samples.items()}
    return out


def read_downstream_json(path: Path) -> tuple[SigmoidFit, dict[str, str]]:
    """The fit and its labels (metric, loss_col, source) from a `downstream --json` file; anything that is
    not such a file is a one-line `UserError`."""
    redo = "write it again with `blueberry-scale downstream --json`"
    if path.is_dir():
        raise UserError(f"--downstream {path} is a directory: give the `blueberry-scale downstream --json` file")
    if not path.is_file():
        raise UserError(f"--downstream {path} does not exist: write one with "
                        f"`blueberry-scale downstream --json {path}`")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UserError(f"--downstream {path} is not a `blueberry-scale downstream --json` file (not JSON text): "
                        f"{redo}") from None
    if not isinstance(raw, dict):
        raise UserError(f"--downstream {path}: expected a JSON object: {redo}")

    def numbers(value: object, what: str) -> np.ndarray:
        if not isinstance(value, list) or not value or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise UserError(f"--downstream {path}: {what} must be a list of numbers (got {value!r:.60}): {redo}")
        array = np.array(value, np.float64)
        if not np.all(np.isfinite(array)):
            raise UserError(f"--downstream {path}: {what} holds NaN or infinity: {redo}")
        return array

    values = {}
    for name in SIGMOID_NAMES:
        entry = raw.get(name)
        value = entry.get("estimate") if isinstance(entry, dict) else None
        values[name] = float(numbers([value], f"{name}.estimate")[0])
    sigmoid = Sigmoid(**values)
    if not (sigmoid.k > 0 and sigmoid.ceiling > sigmoid.floor):
        raise UserError(f"--downstream {path}: k must be > 0 and ceiling > floor (got k {sigmoid.k:g}, floor "
                        f"{sigmoid.floor:g}, ceiling {sigmoid.ceiling:g}): {redo}")
    runs = raw.get("runs")
    if not isinstance(runs, dict):
        raise UserError(f"--downstream {path}: runs must hold the fitted runs' loss and accuracy: {redo}")
    loss, accuracy = numbers(runs.get("loss"), "runs.loss"), numbers(runs.get("accuracy"), "runs.accuracy")
    if len(loss) != len(accuracy):
        raise UserError(f"--downstream {path}: runs.loss and runs.accuracy differ in length: {redo}")
    samples = None
    if raw.get("bootstrap_samples") is not None:
        draws = raw["bootstrap_samples"]
        if not isinstance(draws, dict):
            raise UserError(f"--downstream {path}: bootstrap_samples must be an object of lists: {redo}")
        samples = {n: numbers(draws.get(n), f"bootstrap_samples[{n!r}]") for n in SIGMOID_NAMES}
        if len({len(v) for v in samples.values()}) > 1:
            raise UserError(f"--downstream {path}: bootstrap_samples lists differ in length: {redo}")
    labels = {k: str(raw.get(k, "?")) for k in ("metric", "loss_col", "source")}
    return SigmoidFit(sigmoid, bool(raw.get("floor_fixed")), loss, accuracy, samples), labels


def downstream_text(fit: SigmoidFit, labels: dict[str, str], level: float = 0.95) -> str:
    s = fit.sigmoid
    lines = [f"Downstream: {labels['metric']} against {labels['loss_col']}, {len(fit.loss)} runs from "
             f"{labels['source']}",
             "  acc(L) = floor + (ceiling - floor) / (1 + exp(k (L - L0)))   [Bhagia et al. 2024, step 2]",
             f"  {'':8}{'estimate':>10}{'s.e.':>10}   {level:.0%} interval"]
    for name in SIGMOID_NAMES:
        estimate = getattr(s, name)
        if name == "floor" and fit.floor_fixed:
            lines.append(f"  {name:8}{estimate:10.4g}{'fixed':>10}   (--chance)")
            continue
        if fit.samples is None:
            lines.append(f"  {name:8}{estimate:10.4g}{'-':>10}   -")
            continue
        low, high = quantiles(fit.samples[name], level)
        lines.append(f"  {name:8}{estimate:10.4g}{np.std(fit.samples[name], ddof=1):10.4g}   [{low:.4g}, {high:.4g}]")
    lines.append(f"  residual scatter of the runs about the curve: s.d. {np.std(fit.residuals, ddof=1):.4f} "
                 f"(loss range of the runs {fit.loss.min():.3f} to {fit.loss.max():.3f})")
    return "\n".join(lines)
