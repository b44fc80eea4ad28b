"""Each law form (Chinchilla's free exponents, one shared exponent, Kaplan et al. 2020) against references:
its exact Jacobian against finite differences; its fit against a float64 SciPy least-squares fit (Huber
loss, same delta, the formula written out here) of the same runs; fitted to runs drawn from it with 0.5%
scatter it recovers its parameters inside their bootstrap intervals and predicts the loss 10x beyond its
runs to 0.5%; its compute-optimal allocation against a numerical minimisation along C = 6ND; and a stack
of forms against its members and the same minimisation."""

import numpy as np
import pytest
from scipy.optimize import least_squares, minimize_scalar

from blueberry.scaling.fit import ScalingPoints, bootstrap_fit, fit_form
from blueberry.scaling.forms import FORMS
from blueberry.scaling.law import KaplanLaw, Law, SharedExponentLaw, StackedLaw

TRUTH = {
    "chinchilla": Law(E=1.69, A=406.4, B=1410.7, alpha=0.34, beta=0.28),
    "shared": SharedExponentLaw(E=1.8, A=500.0, B=2000.0, gamma=0.35),
    "kaplan": KaplanLaw(N_c=8.8e13, D_c=5.4e13, alpha_N=0.076, alpha_D=0.095),  # Kaplan et al.'s own values
}


def reference_log_loss(form: str, p: np.ndarray, N: np.ndarray, D: np.ndarray) -> np.ndarray:
    """Each form's log loss written out plainly, in log coefficients and plain exponents."""
    if form == "chinchilla":
        return np.log(np.exp(p[0]) + np.exp(p[1]) * N ** -p[3] + np.exp(p[2]) * D ** -p[4])
    if form == "shared":
        return np.log(np.exp(p[0]) + np.exp(p[1]) * N ** -p[3] + np.exp(p[2]) * D ** -p[3])
    return p[3] * np.log((np.exp(p[0]) / N) ** (p[2] / p[3]) + np.exp(p[1]) / D)


def reference_start(law) -> np.ndarray:
    if isinstance(law, Law):
        return np.array([np.log(law.E), np.log(law.A), np.log(law.B), law.alpha, law.beta])
    if isinstance(law, SharedExponentLaw):
        return np.array([np.log(law.E), np.log(law.A), np.log(law.B), law.gamma])
    return np.array([np.log(law.N_c), np.log(law.D_c), law.alpha_N, law.alpha_D])


def drawn(form: str, noise: float, seed: int = 0) -> ScalingPoints:
    """An 8 x 8 grid of runs from the form's true law, N 1e7 to 3e9, D 3e8 to 1e12, log-normal scatter."""
    rng = np.random.default_rng(seed)
    N, D = (a.ravel() for a in np.meshgrid(np.logspace(7, 9.5, 8), np.logspace(8.5, 12, 8)))
    return ScalingPoints(N, D, TRUTH[form].loss(N, D) * np.exp(rng.normal(0, noise, len(N))))


@pytest.mark.parametrize("name", list(FORMS))
def test_the_jacobian_is_the_derivative_of_the_log_loss(name):
    form = FORMS[name]
    rng = np.random.default_rng(1)
    logN, logD = rng.uniform(16, 24, 40), rng.uniform(20, 27, 40)
    theta = form.theta(TRUTH[name]) * (1 + 0.05 * rng.standard_normal(len(form.theta_names)))
    _, J = form.predict(theta, logN, logD)
    h = 1e-6
    numeric = np.array([(form.predict(theta + h * e, logN, logD)[0] - form.predict(theta - h * e, logN, logD)[0])
                        / (2 * h) for e in np.eye(len(theta))])
    np.testing.assert_allclose(J, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", list(FORMS))
def test_the_fit_agrees_with_a_float64_scipy_least_squares_fit(name):
    points = drawn(name, noise=0.005, seed=2)
    ours = fit_form(points, FORMS[name])
    logL = np.log(points.loss)
    reference = least_squares(lambda p: reference_log_loss(name, p, points.N, points.D) - logL,
                              reference_start(TRUTH[name]), loss="huber", f_scale=1e-3, method="trf",
                              x_scale="jac", ftol=1e-15, xtol=1e-15, gtol=1e-15, max_nfev=20000)
    # SciPy's huber cost is 0.5 f_scale^2 rho((r/f_scale)^2), the same function of r as ours.
    assert ours.objective <= reference.cost * (1 + 1e-6)
    np.testing.assert_allclose(reference_start(ours.law), reference.x, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("name", list(FORMS))
def test_the_fit_recovers_its_law_and_predicts_ten_times_beyond_its_runs(name):
    points = drawn(name, noise=0.005, seed=3)
    fit = fit_form(points, FORMS[name])
    boot = bootstrap_fit(points, fit, n=100, seed=4)
    truth = TRUTH[name].to_dict()
    for parameter, value in truth.items():
        low, high = np.percentile(boot.samples[parameter], [0.5, 99.5])  # the bootstrap's 99% interval
        assert low <= value <= high, (parameter, value, low, high)
    N, D = 10 * points.N.max(), 10 * points.D.max()
    assert fit.law.loss(N, D) == pytest.approx(TRUTH[name].loss(N, D), rel=0.005)


@pytest.mark.parametrize("name", list(FORMS))
def test_noiseless_runs_give_the_law_back(name):
    fit = fit_form(drawn(name, noise=0.0), FORMS[name])
    for parameter, value in TRUTH[name].to_dict().items():
        assert getattr(fit.law, parameter) == pytest.approx(value, rel=1e-4), parameter


def optimal_size(law, C: float) -> float:
    """N minimising the law's loss at compute C, by a bounded scalar search in log N."""
    result = minimize_scalar(lambda logN: np.log(law.loss(np.exp(logN), C / (6 * np.exp(logN)))),
                             bounds=(np.log(1e3), np.log(C / 6 / 1e3)), method="bounded",
                             options={"xatol": 1e-10})
    return float(np.exp(result.x))


LAWS = [TRUTH["chinchilla"], TRUTH["shared"], TRUTH["kaplan"],
        StackedLaw((TRUTH["chinchilla"], TRUTH["kaplan"]), (0.6, 0.4)),
        StackedLaw((TRUTH["shared"], TRUTH["kaplan"], TRUTH["chinchilla"]), (0.2, 0.5, 0.3))]


@pytest.mark.parametrize("law", LAWS, ids=["chinchilla", "shared", "kaplan", "stack of 2", "stack of 3"])
@pytest.mark.parametrize("C", [1e19, 1e23])
def test_compute_optimal_allocation_minimises_the_loss_at_fixed_compute(law, C):
    N, D = law.compute_optimal(C)
    assert 6 * N * D == pytest.approx(C, rel=1e-12)
    assert N == pytest.approx(optimal_size(law, C), rel=1e-5)
    assert law.compute_optimal_tokens(N) == pytest.approx(D, rel=1e-6)  # the inverse: N is optimal at 6 N D


def test_a_stack_of_one_law_is_that_law():
    law = TRUTH["kaplan"]
    stack = StackedLaw((law,), (1.0,))
    N, D = np.logspace(7, 11, 5), np.logspace(9, 13, 5)
    np.testing.assert_array_equal(stack.loss(N, D), law.loss(N, D))
    assert stack.compute_optimal(1e22) == law.compute_optimal(1e22)
    mixed = StackedLaw((law, law), (0.3, 0.7))  # the same law twice: the same predictions and allocation
    np.testing.assert_allclose(mixed.loss(N, D), law.loss(N, D), rtol=1e-12)
    # An argmin of a smooth minimum is only determined to about the square root of machine precision.
    np.testing.assert_allclose(mixed.compute_optimal(1e22), law.compute_optimal(1e22), rtol=1e-7)


def test_a_law_of_arrays_evaluates_every_draw():
    draws = Law(E=np.array([[1.7], [1.8]]), A=np.full((2, 1), 400.0), B=np.full((2, 1), 1400.0),
                alpha=np.full((2, 1), 0.34), beta=np.full((2, 1), 0.28))
    N, D = np.array([1e8, 1e9, 1e10]), np.array([1e10, 1e11, 1e12])
    losses = draws.loss(N, D)
    assert losses.shape == (2, 3)
    np.testing.assert_allclose(losses[1] - losses[0], 0.1, rtol=1e-12)


def test_a_law_without_an_irreducible_loss_is_a_valid_fit():
    """Runs early in training (the CPU scaling grid's) fit best with E at 0: log E runs off to -inf, which
    must end in the law with E = 0, not in a refusal (before, both Chinchilla forms refused those runs)."""
    truth = Law(E=0.0, A=21.0, B=12.7, alpha=0.24, beta=0.076)
    N, D = (a.ravel() for a in np.meshgrid(np.logspace(5.5, 7, 6), np.logspace(4, 6, 5)))
    fit = fit_form(ScalingPoints(N, D, truth.loss(N, D)), FORMS["chinchilla"])
    assert fit.law.E < 1e-6
    for name in ("A", "B", "alpha", "beta"):
        assert getattr(fit.law, name) == pytest.approx(getattr(truth, name), rel=1e-4), name
