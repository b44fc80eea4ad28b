"""Fitting a law form to finished runs (approach 3, with bootstrap intervals), and Chinchilla's approach 2
(IsoFLOP).

Approach 3 follows Hoffmann et al. 2022 as redone by Besiroglu et al. 2024 (Epoch AI), for every form of
`blueberry.scaling.forms` alike: minimise

    sum_i Huber_delta( log L_hat(N_i, D_i; theta) - log L_i ),  delta = 1e-3,

with L-BFGS from several starting points, keeping the best end point that is a valid law.

What makes it fast (the published recipe with SciPy's numeric gradients over its 4,500-point grid
takes minutes on two cores):
- the objective and its exact gradient in one vectorised NumPy pass (`form_objective`: J^T clip(r));
- starting points from variable projection (`LawForm.starts`): for fixed exponents each form is linear
  in its coefficients, so a fine sweep of the exponents costs one batched least-squares solve, and
  L-BFGS runs from the best few cells only;
- bootstrap refits warm-start from the full-data optimum and the best projection start.
`fit_law_reference_grid` keeps the published grid (with exact gradients) to check against.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from blueberry.errors import UserError
from blueberry.scaling.forms import FORMS, HUBER_DELTA, LawForm

# Hoffmann et al.'s grid of starts, as used by Besiroglu et al.: 5 x 5 x 5 x 6 x 6 = 4,500 points.
REFERENCE_GRID = {
    "e": np.arange(-1.0, 1.5, 0.5), "a": np.arange(0.0, 30.0, 5.0), "b": np.arange(0.0, 30.0, 5.0),
    "alpha": np.arange(0.0, 2.5, 0.5), "beta": np.arange(0.0, 2.5, 0.5),
}
LBFGS_OPTIONS = {"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-12}
MAX_STEPS = 500  # Levenberg-Marquardt steps per problem; the Chinchilla fits take 20 to 200
CHINCHILLA = FORMS["chinchilla"]


@dataclass(frozen=True)
class ScalingPoints:
    """Finished runs: parameters N, training tokens D, final loss."""

    N: np.ndarray
    D: np.ndarray
    loss: np.ndarray

    def __post_init__(self) -> None:
        for name in ("N", "D", "loss"):
            values = np.asarray(getattr(self, name), dtype=np.float64)
            if values.ndim != 1 or len(values) != len(np.asarray(self.N)):
                raise UserError(f"{name} must be a list with one value per run")
            if not np.all(np.isfinite(values)) or np.any(values <= 0):
                bad = int(np.flatnonzero(~np.isfinite(values) | (values <= 0))[0])
                raise UserError(f"{name} must be positive and finite; row {bad + 1} has {values[bad]}")
            object.__setattr__(self, name, values)

    @classmethod
    def from_compute(cls, N: np.ndarray, C: np.ndarray, loss: np.ndarray) -> ScalingPoints:
        """From training FLOPs: D = C / (6 N)."""
        N, C = np.asarray(N, np.float64), np.asarray(C, np.float64)
        return cls(N=N, D=C / (6 * N), loss=np.asarray(loss, np.float64))

    def __len__(self) -> int:
        return len(self.N)

    @property
    def C(self) -> np.ndarray:
        return 6 * self.N * self.D

    def take(self, index: np.ndarray) -> ScalingPoints:
        return ScalingPoints(self.N[index], self.D[index], self.loss[index])

    def exclude_top(self, k: int) -> ScalingPoints:
        """Drop the k highest-loss points (Epoch's fit drops 5 outliers of the extracted data)."""
        if k < 0 or k >= len(self):
            raise UserError(f"--exclude-top must be in [0, {len(self) - 1}], got {k}")
        return self.take(np.sort(np.argsort(self.loss, kind="stable")[:len(self) - k]))


def form_objective(theta: np.ndarray, form: LawForm, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray,
                   delta: float = HUBER_DELTA) -> tuple[float, np.ndarray]:
    """Summed Huber loss of the form's log-space residuals at theta, and its exact gradient."""
    f, J = form.predict(theta, logN, logD)
    r = f - logL
    abs_r = np.abs(r)
    value = np.where(abs_r <= delta, 0.5 * r * r, delta * (abs_r - 0.5 * delta)).sum()
    return float(value), J @ np.clip(r, -delta, delta)


def huber_objective(theta: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray,
                    delta: float = HUBER_DELTA) -> tuple[float, np.ndarray]:
    """The Chinchilla form's objective in theta = (e, a, b, alpha, beta), as Besiroglu et al. write it."""
    return form_objective(theta, CHINCHILLA, logN, logD, logL, delta)


@dataclass(frozen=True)
class LawFit:
    """A form fitted to runs: the law, the objective at its end point, whether L-BFGS converged there."""

    form: str
    law: object
    objective: float
    converged: bool
    starts: int
    theta: np.ndarray = field(repr=False)


def _lbfgs(points: ScalingPoints, starts: np.ndarray, delta: float = HUBER_DELTA,
           form: LawForm = CHINCHILLA) -> LawFit:
    """The best valid SciPy L-BFGS-B end point over `starts`: the published recipe's optimiser, kept as the
    reference `fit_law_reference_grid` checks the fast path against."""
    logN, logD, logL = np.log(points.N), np.log(points.D), np.log(points.loss)
    best = None
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # far starts may overflow on the way
        for x0 in starts:
            res = minimize(form_objective, x0, args=(form, logN, logD, logL, delta), jac=True, method="L-BFGS-B",
                           options=LBFGS_OPTIONS)
            if form.valid(res.x) and np.isfinite(res.fun) and (best is None or res.fun < best.fun):
                best = res
    if best is None:
        raise _no_valid_law(form)
    return LawFit(form=form.name, law=form.law(best.x), objective=float(best.fun), converged=bool(best.success),
                  starts=len(starts), theta=best.x)


def _no_valid_law(form: LawForm) -> UserError:
    return UserError(f"the {form.name} law's fit ended in no valid law from any starting point (an exponent <= 0, "
                     "or a coefficient out of floating-point range): check the data's units, or that loss falls "
                     "with N and D")


def _huber_rows(r: np.ndarray, delta: float) -> np.ndarray:
    abs_r = np.abs(r)
    return np.where(abs_r <= delta, 0.5 * r * r, delta * (abs_r - 0.5 * delta)).sum(axis=-1)


def minimize_batched(form: LawForm, thetas: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray,
                     delta: float = HUBER_DELTA, max_steps: int = MAX_STEPS) -> tuple[np.ndarray, np.ndarray,
                                                                                           np.ndarray]:
    """Minimise the Huber objective of many problems at once: problem i starts at thetas[i] and fits the
    runs in row i of logN, logD, logL (1-D data is shared by all).

    Levenberg-Marquardt on iteratively reweighted least squares: with r the log residuals, J the form's
    exact Jacobian, psi = clip(r, -delta, delta) the Huber loss's derivative and w = psi / r its IRLS
    weights, each step solves (J W J^T + lambda diag(J W J^T)) step = -J psi; a step that lowers the
    objective is taken (lambda / 3), one that does not is refused (lambda x 4). A problem stops when a
    step gains less than 1e-13 of the objective or lambda passes 1e6 (no step helps). Per step this costs
    one vectorised pass over all problems' runs, where SciPy's L-BFGS costs a Python round trip per
    evaluation and some 60 evaluations per fit; on the Chinchilla runs both end at the same objective to
    1e-15 (tests/test_scaling.py). Returns (thetas, objectives, converged)."""
    thetas = np.array(thetas, np.float64)
    count, k = thetas.shape
    logN, logD, logL = (np.broadcast_to(x, (count, x.shape[-1])) for x in (logN, logD, logL))
    lam, done = np.full(count, 1e-3), np.zeros(count, bool)
    eye = np.eye(k)

    def evaluate(theta: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        f, J = form.predict(theta.T[..., None], logN[rows], logD[rows])  # (m, n), (k, m, n)
        r = f - logL[rows]
        value = _huber_rows(r, delta)
        return r, J, np.where(np.isfinite(value), value, np.inf)

    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        r, J, value = evaluate(thetas, np.arange(count))
        for _ in range(max_steps):
            active = np.flatnonzero(~done)
            if len(active) == 0:
                break
            ra, Ja = r[active], J[:, active]
            psi = np.clip(ra, -delta, delta)
            weight = np.where(np.abs(ra) <= delta, 1.0, delta / np.abs(ra))
            Jm = Ja.transpose(1, 0, 2)  # (m, k, n): batched matrix products go to BLAS
            gradient = (Jm @ psi[:, :, None])[..., 0]
            H = (Jm * weight[:, None, :]) @ Jm.transpose(0, 2, 1)
            damped = H + (lam[active, None, None] * np.diagonal(H, axis1=1, axis2=2)[:, :, None] + 1e-300) * eye
            ok = np.all(np.isfinite(damped), axis=(1, 2)) & (np.abs(np.linalg.det(damped)) > 0)
            step = np.zeros((len(active), k))
            step[ok] = np.linalg.solve(damped[ok], -gradient[ok][..., None])[..., 0]
            trial = thetas[active] + step
            r2, J2, value2 = evaluate(trial, active)
            better = ok & (value2 < value[active])
            gain = (value[active] - value2) / np.maximum(value[active], 1e-300)
            taken = active[better]
            thetas[taken], r[taken], value[taken] = trial[better], r2[better], value2[better]
            J[:, taken] = J2[:, better]
            lam[active] = np.where(better, lam[active] / 3, lam[active] * 4)
            done[active] = (better & (gain < 1e-13)) | (lam[active] > 1e6)
    return thetas, value, done


def _best_fit(form: LawForm, starts: np.ndarray, logN, logD, logL, delta: float) -> LawFit:
    thetas, values, converged = minimize_batched(form, starts, logN, logD, logL, delta)
    valid = np.array([form.valid(t) for t in thetas]) & np.isfinite(values)
    if not valid.any():
        raise _no_valid_law(form)
    best = int(np.flatnonzero(valid)[np.argmin(values[valid])])
    return LawFit(form=form.name, law=form.law(thetas[best]), objective=float(values[best]),
                  converged=bool(converged[best]), starts=len(starts), theta=thetas[best])


def check_enough(points: ScalingPoints, form: LawForm = CHINCHILLA) -> None:
    """Refuse runs that cannot determine the form's parameters."""
    k = len(form.theta_names)
    if len(points) <= k:
        raise UserError(f"{len(points)} runs cannot determine the {form.name} law's {k} parameters: "
                        f"need at least {k + 1}")
    if len(np.unique(points.N)) < 2 or len(np.unique(points.D)) < 2:
        raise UserError("the runs must vary both model size N and training tokens D to fit L(N, D)")


def fit_form(points: ScalingPoints, form: LawForm, delta: float = HUBER_DELTA,
             extra_starts: np.ndarray | None = None) -> LawFit:
    """Approach 3 for `form`: the best valid L-BFGS end point from variable-projection starts (and any
    `extra_starts`)."""
    check_enough(points, form)
    starts = form.starts(np.log(points.N), np.log(points.D), np.log(points.loss))
    if extra_starts is not None:
        starts = np.vstack((starts, extra_starts))
    if len(starts) == 0:
        raise UserError(f"no positive coefficients fit the data for any exponents of the {form.name} law: is loss "
                        "decreasing in N and D?")
    return _best_fit(form, starts, np.log(points.N), np.log(points.D), np.log(points.loss), delta)


def fit_law(points: ScalingPoints, delta: float = HUBER_DELTA, extra_starts: np.ndarray | None = None) -> LawFit:
    """Chinchilla's form, free exponents (`fit_form` with `FORMS["chinchilla"]`)."""
    return fit_form(points, CHINCHILLA, delta, extra_starts)


def reference_grid() -> np.ndarray:
    g = REFERENCE_GRID
    return np.array(list(itertools.product(g["e"], g["a"], g["b"], g["alpha"], g["beta"])))


def fit_law_reference_grid(points: ScalingPoints, delta: float = HUBER_DELTA) -> LawFit:
    """The published recipe's 4,500 starts (with exact gradients): slow, kept to check `fit_law` against."""
    check_enough(points)
    return _lbfgs(points, reference_grid(), delta)


@dataclass(frozen=True)
class Bootstrap:
    samples: dict[str, np.ndarray]  # each parameter and derived quantity, one value per refit
    resamples: np.ndarray | None = None  # which resamples the refits come from (a failed one is left out)

    def summary(self, name: str, estimate: float, level: float = 0.95) -> dict[str, object]:
        values = self.samples[name]
        tail = (1 - level) / 2 * 100
        with np.errstate(over="ignore"):  # a loosely determined coefficient's draws can square past float range
            se = float(np.std(values, ddof=1))
        return {"estimate": estimate, "se": se,
                "ci": [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]}

    def parameters(self, form: LawForm, resamples: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The draws of the form's own parameters (those of `resamples` only, when given): a law built from
        them evaluates every draw at once."""
        if resamples is None:
            return {name: self.samples[name] for name in form.parameters}
        rows = np.searchsorted(self.resamples, resamples)
        return {name: self.samples[name][rows] for name in form.parameters}


def resamples(runs: int, n: int, seed: int) -> np.ndarray:
    """(n, runs) indices of `n` resamples with replacement. Every form is refitted on the same resamples,
    so draw b of each form, and of their stack, comes from one resample of the runs."""
    return np.random.default_rng(seed).integers(0, runs, (n, runs))


def bootstrap_fit(points: ScalingPoints, fit: LawFit, n: int, seed: int = 0, delta: float = HUBER_DELTA,
                  indices: np.ndarray | None = None) -> Bootstrap:
    """Refit `fit`'s form on `n` resamples of the runs (or the rows of `indices`), all at once, each from
    two starts: the full-data optimum and the full data's best projection start. A resample no start
    turns into a valid law is left out (a `UserError` if that is half of them or more)."""
    form = FORMS[fit.form]
    indices = resamples(len(points), n, seed) if indices is None else indices
    logN, logD, logL = (np.log(x)[indices] for x in (points.N, points.D, points.loss))
    starts = np.vstack((fit.theta[None, :], form.starts(np.log(points.N), np.log(points.D),
                                                        np.log(points.loss), count=1)))
    count = len(indices)
    thetas, values, _ = minimize_batched(form, np.repeat(starts, count, axis=0), np.tile(logN, (len(starts), 1)),
                                         np.tile(logD, (len(starts), 1)), np.tile(logL, (len(starts), 1)), delta)
    valid = (np.array([form.valid(t) for t in thetas]) & np.isfinite(values)).reshape(len(starts), count)
    values = np.where(valid, values.reshape(len(starts), count), np.inf)
    # A resample can lack what the form needs (too few distinct sizes left): it is dropped, as long as
    # most refits stand.
    kept = np.isfinite(values.min(axis=0))
    if kept.mean() < 0.5:
        raise _no_valid_law(form)
    best = thetas.reshape(len(starts), count, -1)[values.argmin(axis=0), np.arange(count)][kept]
    samples: dict[str, list[float]] = {}
    for theta in best:
        refit = form.law(theta)
        for key, value in (refit.to_dict() | refit.derived()).items():
            samples.setdefault(key, []).append(value)
    return Bootstrap({k: np.array(v) for k, v in samples.items()}, np.flatnonzero(kept))


@dataclass(frozen=True)
class IsoFlopProfile:
    C: float
    N_opt: float
    loss_opt: float
    sizes: int


@dataclass(frozen=True)
class IsoFlopFit:
    profiles: list[IsoFlopProfile]
    N_coefficient: float  # N_opt = N_coefficient * C ^ N_exponent
    N_exponent: float
    D_coefficient: float
    D_exponent: float


def isoflop_groups(points: ScalingPoints, tolerance_dex: float = 0.05) -> list[np.ndarray]:
    """Indices of runs with (nearly) equal compute: sorted by log10 C, split where the gap exceeds the tolerance."""
    order = np.argsort(points.C)
    logC = np.log10(points.C[order])
    breaks = np.flatnonzero(np.diff(logC) > tolerance_dex) + 1
    return [group for group in np.split(order, breaks)]


def fit_isoflop(points: ScalingPoints, min_sizes: int = 3) -> IsoFlopFit:
    """Approach 2: per compute budget a parabola of loss in log N; power laws through the minima."""
    profiles = []
    for group in isoflop_groups(points):
        logN = np.log(points.N[group])
        if len(np.unique(logN)) < min_sizes:
            continue
        c2, c1, c0 = np.polyfit(logN, points.loss[group], 2)
        if c2 <= 0:
            continue  # no minimum: the budget's sizes all sit on one side of the optimum
        log_opt = -c1 / (2 * c2)
        if not logN.min() <= log_opt <= logN.max():
            continue  # a minimum outside the sizes tried is an extrapolation, not a measurement
        profiles.append(IsoFlopProfile(C=float(np.exp(np.log(points.C[group]).mean())), N_opt=float(np.exp(log_opt)),
                                       loss_opt=float(c0 + c1 * log_opt + c2 * log_opt ** 2), sizes=len(group)))
    if len(profiles) < 2:
        raise UserError(f"IsoFLOP fit needs at least two compute budgets with {min_sizes}+ sizes bracketing "
                        f"their optimum; found {len(profiles)}")
    logC = np.log([p.C for p in profiles])
    logN_opt = np.log([p.N_opt for p in profiles])
    n_exp, n_log_coef = np.polyfit(logC, logN_opt, 1)
    d_exp, d_log_coef = np.polyfit(logC, logC - np.log(6) - logN_opt, 1)
    return IsoFlopFit(profiles=profiles, N_coefficient=float(np.exp(n_log_coef)), N_exponent=float(n_exp),
                      D_coefficient=float(np.exp(d_log_coef)), D_exponent=float(d_exp))


def isoflop_payload(fit: IsoFlopFit) -> dict[str, object]:
    """Approach 2 as `fit --json` records it."""
    return {"N_opt": {"coefficient": fit.N_coefficient, "exponent": fit.N_exponent},
            "D_opt": {"coefficient": fit.D_coefficient, "exponent": fit.D_exponent},
            "profiles": [p.__dict__ for p in fit.profiles]}

