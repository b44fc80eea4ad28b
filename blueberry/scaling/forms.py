"""Law forms as data: what the fitter, the bootstrap, the selection and the plans need to know of a form.

Every form is fitted the same way (`blueberry.scaling.fit`): the Huber loss (delta 1e-3) of log-space
residuals, summed over runs, minimised by L-BFGS in an unconstrained parameter vector theta, from starting
points found by variable projection. A form supplies:

- `predict(theta, logN, logD)`: log L at every run and its exact Jacobian in theta (the fit's gradient is
  J^T clip(r, -delta, delta));
- `starts(logN, logD, logL)`: the best thetas of a sweep over the form's exponents, for each of which the
  form is linear in its coefficients (solved in closed form, many cells at once);
- `law(theta)` / `theta(law)`: between theta and the law's named parameters (`blueberry.scaling.law`);
- `valid(theta)`: whether an end point is a law whose loss falls with N and D.

A new form (a data-repetition term after Muennighoff et al. 2023, say) is one more `LawForm` in `FORMS`;
the selection, calibration and plans take every form from here and name none.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from blueberry.errors import UserError
from blueberry.scaling.law import KaplanLaw, Law, SharedExponentLaw

EXPONENT_GRID = np.linspace(0.02, 2.5, 125)  # Chinchilla's (alpha, beta) sweep for variable projection
SHARED_GRID = np.linspace(0.01, 2.5, 500)
KAPLAN_R_GRID = np.geomspace(0.05, 8.0, 60)  # alpha_N / alpha_D
KAPLAN_ALPHA_D_GRID = np.geomspace(0.01, 2.0, 60)
CANDIDATES = 64  # cells ranked by their linear fit whose Huber objective is then computed exactly


class LawForm(ABC):
    """One law form: its name, its law type and the pieces the generic fitter needs."""

    name: str
    title: str
    reference: str
    law_type: type
    theta_names: tuple[str, ...]

    @property
    def parameters(self) -> tuple[str, ...]:
        return self.law_type.parameter_names()

    @property
    def min_runs(self) -> int:
        return len(self.theta_names) + 1

    @abstractmethod
    def predict(self, theta: np.ndarray, logN: np.ndarray, logD: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(log L at each run, its Jacobian transposed: (len(theta), runs))."""

    @abstractmethod
    def law(self, theta: np.ndarray):
        """The law of parameters theta."""

    @abstractmethod
    def theta(self, law) -> np.ndarray:
        """theta of a law of this form."""

    @abstractmethod
    def _cells(self, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(thetas of the sweep's cells with positive coefficients, their weighted linear misfit)."""

    @abstractmethod
    def valid(self, theta: np.ndarray) -> bool:
        """An end point whose exponents are positive and whose coefficients are finite and positive."""

    def starts(self, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray, count: int = 8) -> np.ndarray:
        """The `count` best starting thetas: the sweep's cells ranked by their linear misfit, the best
        `CANDIDATES` of them ranked again by the Huber objective itself."""
        thetas, misfit = self._cells(logN, logD, logL)
        if len(thetas) == 0:
            return np.empty((0, len(self.theta_names)))
        thetas = thetas[np.argsort(misfit)[:CANDIDATES]]
        values = np.array([huber(self.predict(t, logN, logD)[0] - logL) for t in thetas])
        return thetas[np.argsort(values)[:count]]


HUBER_DELTA = 1e-3


def huber(r: np.ndarray, delta: float = HUBER_DELTA) -> float:
    """Summed Huber loss of residuals `r`."""
    abs_r = np.abs(r)
    return float(np.where(abs_r <= delta, 0.5 * r * r, delta * (abs_r - 0.5 * delta)).sum())


def _lse3(u0: np.ndarray, u1: np.ndarray, e: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """log(exp(u0) + exp(u1) + exp(e)) and its three softmax weights (the derivatives), elementwise."""
    top = np.maximum(np.maximum(u0, u1), e)
    w0, w1, w2 = np.exp(u0 - top), np.exp(u1 - top), np.exp(e - top)
    total = w0 + w1 + w2
    return top + np.log(total), w0 / total, w1 / total, w2 / total


def _log_floor(E: float) -> float:
    """log E, with E = 0 (a law without an irreducible loss) as a finite stand-in far below any loss."""
    return float(np.log(E)) if E > 0 else -745.0


def _positive_solutions(gram: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve many small normal equations at once: (solutions, ok) where ok marks the well-conditioned cells
    whose coefficients are all positive."""
    ok = np.linalg.cond(gram) < 1e14
    coef = np.full(rhs.shape, -1.0)
    if ok.any():
        coef[ok] = np.linalg.solve(gram[ok], rhs[ok][..., None])[..., 0]
    return coef, ok & np.all(coef > 0, axis=1)


class ChinchillaForm(LawForm):
    """L = E + A/N^alpha + B/D^beta, theta = (log E, log A, log B, alpha, beta) as Besiroglu et al. fit it."""

    name = "chinchilla"
    title = "Chinchilla, free exponents"
    reference = "Hoffmann et al. (2022), approach 3; refit by Besiroglu et al. (2024)"
    law_type = Law
    theta_names = ("log E", "log A", "log B", "alpha", "beta")

    def predict(self, theta, logN, logD):
        e, a, b, alpha, beta = theta
        lse, w0, w1, w2 = _lse3(a - alpha * logN, b - beta * logD, e)
        return lse, np.array((w2, w0, w1, -w0 * logN, -w1 * logD))

    def law(self, theta):
        e, a, b, alpha, beta = theta
        return Law(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=float(alpha), beta=float(beta))

    def theta(self, law):
        return np.array([_log_floor(law.E), np.log(law.A), np.log(law.B), law.alpha, law.beta])

    def valid(self, theta):
        # log E may run off to -inf: an irreducible loss of 0 is a law (Kaplan's has none), A and B must stay.
        return bool(np.all(np.isfinite(theta)) and theta[0] < 700 and np.all(np.abs(theta[1:3]) < 700)
                    and theta[3] > 0 and theta[4] > 0)

    def _cells(self, logN, logD, logL):
        """For fixed (alpha, beta), E + A x + B y (x = N^-alpha, y = D^-beta) is linear; rows weighted by
        1/L make its least squares the first-order form of the log residual. The 3 x 3 normal equations
        of all 125 x 125 cells come from per-exponent sums and one matrix product for the x y terms."""
        v = np.exp(-logL)
        x = np.exp(-EXPONENT_GRID[:, None] * logN[None, :])  # (alphas, n)
        y = np.exp(-EXPONENT_GRID[:, None] * logD[None, :])  # (betas, n)
        v2 = v * v
        sx, sy = x @ v2, y @ v2
        sxx, syy = (x * x) @ v2, (y * y) @ v2
        sxy = (x * v2) @ y.T  # (alphas, betas)
        k = len(EXPONENT_GRID)
        gram = np.empty((k, k, 3, 3))
        gram[..., 0, 0] = v2.sum()
        gram[..., 0, 1] = gram[..., 1, 0] = sx[:, None]
        gram[..., 0, 2] = gram[..., 2, 0] = sy[None, :]
        gram[..., 1, 1] = sxx[:, None]
        gram[..., 2, 2] = syy[None, :]
        gram[..., 1, 2] = gram[..., 2, 1] = sxy
        rhs = np.stack(np.broadcast_arrays(v.sum(), (x @ v)[:, None], (y @ v)[None, :]), axis=-1)
        coef, ok = _positive_solutions(gram.reshape(-1, 3, 3), rhs.reshape(-1, 3))
        alphas, betas = (g.ravel() for g in np.meshgrid(EXPONENT_GRID, EXPONENT_GRID, indexing="ij"))
        misfit = len(logL) - np.einsum("ci,ci->c", coef, rhs.reshape(-1, 3))  # RSS at the solution
        thetas = np.column_stack((np.log(coef[ok]), alphas[ok], betas[ok]))
        return thetas, misfit[ok]


class SharedExponentForm(LawForm):
    """L = E + A/N^gamma + B/D^gamma, theta = (log E, log A, log B, gamma)."""

    name = "shared"
    title = "Chinchilla, one shared exponent"
    reference = "alpha = beta, the form over-training studies fit"
    law_type = SharedExponentLaw
    theta_names = ("log E", "log A", "log B", "gamma")

    def predict(self, theta, logN, logD):
        e, a, b, gamma = theta
        lse, w0, w1, w2 = _lse3(a - gamma * logN, b - gamma * logD, e)
        return lse, np.array((w2, w0, w1, -w0 * logN - w1 * logD))

    def law(self, theta):
        e, a, b, gamma = theta
        return SharedExponentLaw(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), gamma=float(gamma))

    def theta(self, law):
        return np.array([_log_floor(law.E), np.log(law.A), np.log(law.B), law.gamma])

    def valid(self, theta):
        return bool(np.all(np.isfinite(theta)) and theta[0] < 700 and np.all(np.abs(theta[1:3]) < 700)
                    and theta[3] > 0)

    def _cells(self, logN, logD, logL):
        v = np.exp(-logL)
        X = np.stack((np.broadcast_to(v, (len(SHARED_GRID), len(v))), np.exp(-SHARED_GRID[:, None] * logN) * v,
                      np.exp(-SHARED_GRID[:, None] * logD) * v), axis=-1)  # (gammas, n, 3)
        gram = np.einsum("cni,cnj->cij", X, X)
        rhs = X.sum(axis=1)
        coef, ok = _positive_solutions(gram, rhs)
        misfit = len(logL) - np.einsum("ci,ci->c", coef, rhs)
        return np.column_stack((np.log(coef[ok]), SHARED_GRID[ok])), misfit[ok]


class KaplanForm(LawForm):
    """L = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D, theta = (r log N_c, log D_c, r, alpha_D) with
    r = alpha_N / alpha_D, so that log L = alpha_D LSE(r log N_c - r log N, log D_c - log D)."""

    name = "kaplan"
    title = "Kaplan et al. (2020)"
    reference = "Kaplan et al. (2020), eq. 1.5"
    law_type = KaplanLaw
    theta_names = ("r log N_c", "log D_c", "r", "alpha_D")

    def predict(self, theta, logN, logD):
        u, v, r, alpha_D = theta
        lse = np.logaddexp(u - r * logN, v - logD)
        w0 = np.exp(u - r * logN - lse)  # the softmax weight of the N term; the D term's is 1 - w0
        return alpha_D * lse, np.array((alpha_D * w0, alpha_D * (1 - w0), -alpha_D * w0 * logN, lse))

    def law(self, theta):
        u, v, r, alpha_D = theta
        return KaplanLaw(N_c=float(np.exp(u / r)), D_c=float(np.exp(v)), alpha_N=float(r * alpha_D),
                         alpha_D=float(alpha_D))

    def theta(self, law):
        r = law.alpha_N / law.alpha_D
        return np.array([r * np.log(law.N_c), np.log(law.D_c), r, law.alpha_D])

    def valid(self, theta):
        u, v, r, alpha_D = theta
        return bool(np.all(np.isfinite(theta)) and r > 0 and alpha_D > 0 and abs(u / r) < 700 and abs(v) < 700)

    def _cells(self, logN, logD, logL):
        """For fixed (r, alpha_D), L^(1/alpha_D) = P N^-r + Q / D is linear in (P, Q) = (N_c^r, D_c); rows
        weighted by L^(-1/alpha_D). Each column is scaled by its largest entry in log space first, since
        L^(1/alpha_D) spans hundreds of decades over the sweep."""
        R, AD = (g.ravel() for g in np.meshgrid(KAPLAN_R_GRID, KAPLAN_ALPHA_D_GRID, indexing="ij"))
        t1 = -R[:, None] * logN[None, :] - logL[None, :] / AD[:, None]  # log of the weighted N column
        t2 = -logD[None, :] - logL[None, :] / AD[:, None]
        m1, m2 = t1.max(axis=1, keepdims=True), t2.max(axis=1, keepdims=True)
        x1, x2 = np.exp(t1 - m1), np.exp(t2 - m2)
        g11, g12, g22 = (x1 * x1).sum(1), (x1 * x2).sum(1), (x2 * x2).sum(1)
        b1, b2 = x1.sum(1), x2.sum(1)
        det = g11 * g22 - g12 * g12
        ok = det > 1e-12 * g11 * g22
        with np.errstate(divide="ignore", invalid="ignore"):
            p, q = (g22 * b1 - g12 * b2) / det, (g11 * b2 - g12 * b1) / det
        ok &= (p > 0) & (q > 0)
        misfit = AD ** 2 * (len(logL) - p * b1 - q * b2)  # RSS in y = L^(1/alpha_D), in relative L: x alpha_D^2
        u, v = np.log(np.where(ok, p, 1.0)) - m1[:, 0], np.log(np.where(ok, q, 1.0)) - m2[:, 0]
        return np.column_stack((u, v, R, AD))[ok], misfit[ok]


FORMS: dict[str, LawForm] = {form.name: form for form in (ChinchillaForm(), SharedExponentForm(), KaplanForm())}


def form_named(name: str) -> LawForm:
    """The form called `name`; an unknown name is a one-line `UserError` listing the forms."""
    if name not in FORMS:
        raise UserError(f"unknown law form {name!r}: use one of {', '.join(FORMS)}")
    return FORMS[name]
