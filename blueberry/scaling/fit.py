"""Fitting the Chinchilla law: approach 3 (parametric, with bootstrap intervals) and approach 2 (IsoFLOP).

Approach 3 follows Hoffmann et al. 2022 as redone by Besiroglu et al. 2024 (Epoch AI): with
theta = (e, a, b, alpha, beta), E = exp(e), A = exp(a), B = exp(b), minimise

    sum_i Huber_delta( LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i ),  delta = 1e-3,

with L-BFGS from a grid of starting points, keeping the best end point.

What makes it fast (the published recipe with SciPy's numeric gradients over its 4,500-point grid
takes minutes on two cores):
- the objective and its exact gradient in one vectorised NumPy pass (`huber_objective`);
- starting points from variable projection: for fixed (alpha, beta) the law is linear in (E, A, B),
  so a fine (alpha, beta) grid is swept with one batched weighted least-squares solve, which puts
  starting points in every basin a coarse 5-D grid would find; L-BFGS then runs from the best few.
- bootstrap refits warm-start from the full-data optimum and the same few starts.
`fit_law_reference_grid` keeps the published grid (with exact gradients) to check against.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from blueberry.errors import UserError
from blueberry.scaling.law import PARAMETER_NAMES, Law

HUBER_DELTA = 1e-3
# Hoffmann et al.'s grid of starts, as used by Besiroglu et al.: 5 x 5 x 5 x 6 x 6 = 4,500 points.
REFERENCE_GRID = {
    "e": np.arange(-1.0, 1.5, 0.5), "a": np.arange(0.0, 30.0, 5.0), "b": np.arange(0.0, 30.0, 5.0),
    "alpha": np.arange(0.0, 2.5, 0.5), "beta": np.arange(0.0, 2.5, 0.5),
}
EXPONENT_GRID = np.linspace(0.02, 2.5, 125)  # (alpha, beta) sweep for variable projection
LBFGS_OPTIONS = {"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-12}


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


def huber_objective(theta: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray,
                    delta: float = HUBER_DELTA) -> tuple[float, np.ndarray]:
    """Summed Huber loss of log-space residuals and its exact gradient in theta = (e, a, b, alpha, beta)."""
    e, a, b, alpha, beta = theta
    u = np.stack((a - alpha * logN, b - beta * logD, np.full_like(logN, e)))  # (3, n)
    top = u.max(axis=0)
    w = np.exp(u - top)
    total = w.sum(axis=0)
    r = top + np.log(total) - logL
    w /= total  # softmax weights: d LSE / d u
    abs_r = np.abs(r)
    value = np.where(abs_r <= delta, 0.5 * r * r, delta * (abs_r - 0.5 * delta)).sum()
    g = np.clip(r, -delta, delta)  # d Huber / d r
    gw0, gw1 = g * w[0], g * w[1]
    grad = np.array([(g * w[2]).sum(), gw0.sum(), gw1.sum(), -(gw0 * logN).sum(), -(gw1 * logD).sum()])
    return float(value), grad


def _objective_values(thetas: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray,
                      delta: float = HUBER_DELTA) -> np.ndarray:
    """The objective at many thetas (k, 5) at once."""
    e, a, b, alpha, beta = (thetas[:, i:i + 1] for i in range(5))
    lse = np.logaddexp(np.logaddexp(a - alpha * logN, b - beta * logD), e)
    abs_r = np.abs(lse - logL)
    return np.where(abs_r <= delta, 0.5 * abs_r ** 2, delta * (abs_r - 0.5 * delta)).sum(axis=1)


def projection_starts(points: ScalingPoints, count: int = 8) -> np.ndarray:
    """The `count` best starting thetas from an (alpha, beta) sweep with (E, A, B) solved linearly.

    For fixed exponents, E + A x + B y (x = N^-alpha, y = D^-beta) is linear; weighting rows by 1/L
    makes its least squares the first-order version of the log-space residual. One batched 3 x 3
    normal-equation solve per (alpha, beta) cell; cells with a non-positive coefficient are dropped.
    """
    logN, logD, L = np.log(points.N), np.log(points.D), points.loss
    alphas, betas = np.meshgrid(EXPONENT_GRID, EXPONENT_GRID, indexing="ij")
    alphas, betas = alphas.ravel(), betas.ravel()
    X = np.stack((np.ones((len(alphas), len(L))), np.exp(-alphas[:, None] * logN),
                  np.exp(-betas[:, None] * logD)), axis=-1) / L[None, :, None]  # (cells, n, 3)
    gram = np.einsum("cni,cnj->cij", X, X)
    rhs = np.einsum("cni,n->ci", X, np.ones_like(L))
    ok = np.linalg.cond(gram) < 1e14
    coef = np.full((len(alphas), 3), -1.0)
    coef[ok] = np.linalg.solve(gram[ok], rhs[ok][..., None])[..., 0]
    ok &= np.all(coef > 0, axis=1)
    if not ok.any():
        return np.empty((0, 5))
    thetas = np.column_stack((np.log(coef[ok]), alphas[ok], betas[ok]))
    values = _objective_values(thetas, logN, logD, np.log(L))
    return thetas[np.argsort(values)[:count]]


@dataclass(frozen=True)
class LawFit:
    law: Law
    objective: float
    converged: bool
    starts: int
    theta: np.ndarray = field(repr=False)


def _lbfgs(points: ScalingPoints, starts: np.ndarray, delta: float) -> LawFit:
    logN, logD, logL = np.log(points.N), np.log(points.D), np.log(points.loss)
    best = None
    for x0 in starts:
        res = minimize(huber_objective, x0, args=(logN, logD, logL, delta), jac=True, method="L-BFGS-B",
                       options=LBFGS_OPTIONS)
        if np.all(np.isfinite(res.x)) and (best is None or res.fun < best.fun):
            best = res
    if best is None:
        raise UserError("the scaling-law fit did not converge from any starting point: check the data's units")
    e, a, b, alpha, beta = best.x
    law = Law(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=float(alpha), beta=float(beta))
    return LawFit(law=law, objective=float(best.fun), converged=bool(best.success), starts=len(starts),
                  theta=best.x)


def _check_enough(points: ScalingPoints) -> None:
    if len(points) <= len(PARAMETER_NAMES):
        raise UserError(f"{len(points)} runs cannot determine the law's {len(PARAMETER_NAMES)} parameters: "
                        f"need at least {len(PARAMETER_NAMES) + 1}")
    if len(np.unique(points.N)) < 2 or len(np.unique(points.D)) < 2:
        raise UserError("the runs must vary both model size N and training tokens D to fit L(N, D)")


def fit_law(points: ScalingPoints, delta: float = HUBER_DELTA, extra_starts: np.ndarray | None = None) -> LawFit:
    """Approach 3: the best L-BFGS end point from variable-projection starts (plus any `extra_starts`)."""
    _check_enough(points)
    starts = projection_starts(points)
    if extra_starts is not None:
        starts = np.vstack((starts, extra_starts))
    if len(starts) == 0:
        raise UserError("no positive (E, A, B) fits the data for any exponents: is loss decreasing in N and D?")
    return _lbfgs(points, starts, delta)


def reference_grid() -> np.ndarray:
    g = REFERENCE_GRID
    return np.array(list(itertools.product(g["e"], g["a"], g["b"], g["alpha"], g["beta"])))


def fit_law_reference_grid(points: ScalingPoints, delta: float = HUBER_DELTA) -> LawFit:
    """The published recipe's 4,500 starts (with exact gradients): slow, kept to check `fit_law` against."""
    _check_enough(points)
    return _lbfgs(points, reference_grid(), delta)


@dataclass(frozen=True)
class Bootstrap:
    samples: dict[str, np.ndarray]  # each parameter and derived quantity, one value per refit

    def summary(self, name: str, estimate: float, level: float = 0.95) -> dict[str, object]:
        values = self.samples[name]
        tail = (1 - level) / 2 * 100
        return {"estimate": estimate, "se": float(np.std(values, ddof=1)),
                "ci": [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]}


def bootstrap_law(points: ScalingPoints, fit: LawFit, n: int, seed: int = 0,
                  delta: float = HUBER_DELTA) -> Bootstrap:
    """Refit on `n` resamples of the runs (with replacement), each warm-started from the full-data
    optimum and the full data's best projection starts."""
    rng = np.random.default_rng(seed)
    starts = np.vstack((fit.theta[None, :], projection_starts(points, count=3)))
    samples: dict[str, list[float]] = {k: [] for k in (*PARAMETER_NAMES, "a", "b", "G")}
    for _ in range(n):
        refit = _lbfgs(points.take(rng.integers(0, len(points), len(points))), starts, delta).law
        for key, value in (refit.to_dict() | refit.derived()).items():
            samples[key].append(value)
    return Bootstrap({k: np.array(v) for k, v in samples.items()})


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
