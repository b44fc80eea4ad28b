"""Downstream accuracy from loss: the sigmoid fit recovers a known curve exactly from noiseless runs and
within its bootstrap errors from binomially noisy ones, reaches SciPy's `curve_fit` optimum, inverts in
closed form, and carries from an MLflow store of evaluated runs through `downstream --json` into
`plan`, whose accuracy and goal compute are the law's and the curve's own numbers."""

import json
import math

import numpy as np
import pytest
from scipy.optimize import curve_fit

from blueberry.cli import scale as scale_cli
from blueberry.scaling.downstream import Sigmoid, fit_downstream, fit_sigmoid, predict_accuracy
from blueberry.scaling.law import Law
from blueberry.scaling.plan import frontier_compute_for_loss

TRUE = Sigmoid(floor=0.25, ceiling=0.85, k=3.0, L0=3.2)
LOSSES = np.linspace(2.4, 4.5, 16)


@pytest.mark.parametrize("floor", [0.25, None])
def test_noiseless_runs_give_back_the_curve(floor):
    fitted = fit_sigmoid(LOSSES, TRUE(LOSSES), floor=floor)
    for name in ("floor", "ceiling", "k", "L0"):
        assert getattr(fitted, name) == pytest.approx(getattr(TRUE, name), rel=1e-7), name


def noisy(seed: int = 0, questions: int = 2000) -> np.ndarray:
    """Each run's accuracy on `questions` questions: a binomial draw around the true curve."""
    return np.random.default_rng(seed).binomial(questions, TRUE(LOSSES)) / questions


def test_noisy_runs_recover_the_curve_within_bootstrap_errors():
    fit = fit_downstream(LOSSES, noisy(), floor=0.25, bootstrap=100, seed=1)
    for name in ("ceiling", "k", "L0"):
        estimate, se = getattr(fit.sigmoid, name), np.std(fit.samples[name], ddof=1)
        assert abs(estimate - getattr(TRUE, name)) < 3 * se, (name, estimate, se)
    assert np.all(fit.samples["floor"] == 0.25)


def test_the_fit_reaches_scipy_curve_fits_optimum():
    accuracy = noisy(seed=3)
    fitted = fit_sigmoid(LOSSES, accuracy, floor=0.25)

    def curve(L, ceiling, k, L0):
        return 0.25 + (ceiling - 0.25) / (1 + np.exp(k * (L - L0)))

    reference, _ = curve_fit(curve, LOSSES, accuracy, p0=[0.8, 2.0, 3.0])
    ours = np.sum((fitted(LOSSES) - accuracy) ** 2)
    theirs = np.sum((curve(LOSSES, *reference) - accuracy) ** 2)
    assert ours <= theirs * (1 + 1e-9)
    np.testing.assert_allclose([fitted.ceiling, fitted.k, fitted.L0], reference, rtol=1e-5)


def test_loss_for_inverts_the_curve_and_refuses_what_it_never_reaches():
    for accuracy in (0.26, 0.5, 0.84):
        assert TRUE(TRUE.loss_for(accuracy)) == pytest.approx(accuracy, abs=1e-12)
    assert TRUE.loss_for((TRUE.floor + TRUE.ceiling) / 2) == pytest.approx(TRUE.L0, abs=1e-12)  # the midpoint
    assert math.isnan(TRUE.loss_for(0.85)) and math.isnan(TRUE.loss_for(0.2))


def test_noiseless_prediction_has_no_spread():
    fit = fit_downstream(LOSSES, TRUE(LOSSES), floor=0.25, bootstrap=0)
    accuracy, (low, high) = predict_accuracy(fit, np.array([3.0]))
    assert accuracy == pytest.approx(TRUE(3.0), abs=1e-9)
    assert low == pytest.approx(accuracy, abs=1e-9) and high == pytest.approx(accuracy, abs=1e-9)


def test_frontier_compute_for_loss_lands_on_the_loss():
    law = Law(E=1.69, A=406.4, B=1410.7, alpha=0.34, beta=0.28)
    params = {k: np.full(3, getattr(law, k)) for k in ("E", "A", "B", "alpha", "beta")}
    C = frontier_compute_for_loss(Law(**params), np.array([3.0, 2.5, 1.6]))
    for c, target in zip(C[:2], (3.0, 2.5)):
        assert law.loss(*law.compute_optimal(c)) == pytest.approx(target, rel=1e-12)
    assert C[2] == np.inf  # below E: no model reaches it


LAB = Law(E=1.9, A=300.0, B=1500.0, alpha=0.33, beta=0.3)  # the "lab's" law in the store test


def evaluated_store(tmp_path):
    """An MLflow store as a scaling grid with downstream evaluation leaves it: a study's parent run, evaluated
    trials (final/val_loss, val/hellaswag/acc_norm at the last step), and two older trials never evaluated."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("scaling_grid")
    client.set_terminated(client.create_run(experiment, tags={"blueberry.kind": "study"}).info.run_id)
    N = np.repeat(np.logspace(7, 8.5, 4), 2)
    D = np.tile([2e9, 8e9], 4)
    losses = LAB.loss(N, D)
    for i, (n, d, loss) in enumerate(zip(N, D, losses)):
        run = client.create_run(experiment, tags={"blueberry.kind": "trial"}).info.run_id
        metrics = [Metric("final/val_loss", float(loss), 0, 0), Metric("final/tokens", float(d), 0, 0)]
        if i >= 2:  # evaluated: an early evaluation at step 10, the final one at step 100
            metrics += [Metric("val/hellaswag/acc_norm", 0.25, 0, 10),
                        Metric("val/hellaswag/acc_norm", float(CURVE(loss)), 0, 100)]
        client.log_batch(run, metrics=metrics, params=[Param("N", str(int(n))), Param("D", str(int(d)))])
        client.set_terminated(run)
    return uri, losses[2:]


CURVE = Sigmoid(floor=0.25, ceiling=0.7, k=4.0, L0=2.9)


@pytest.mark.slow  # MLflow's store set-up: about 10 s on two cores
def test_from_an_mlflow_store_to_a_plans_accuracy(tmp_path, capsys):
    uri, losses = evaluated_store(tmp_path)
    ds = tmp_path / "ds.json"
    assert scale_cli.main(["downstream", "--experiment", "scaling_grid", "--tracking-uri", uri, "--metric",
                           "val/hellaswag/acc_norm", "--chance", "0.25", "--bootstrap", "0", "--json", str(ds)]) == 0
    assert "6 runs from experiment 'scaling_grid' (2 runs without the metric left out)" in capsys.readouterr().out
    saved = json.loads(ds.read_text())
    assert sorted(saved["runs"]["loss"]) == pytest.approx(sorted(losses))
    for name in ("ceiling", "k", "L0"):  # the last-step values, not the early ones, were read
        assert saved[name]["estimate"] == pytest.approx(getattr(CURVE, name), rel=1e-6)
    law = tmp_path / "law.json"
    law.write_text(json.dumps({k: {"estimate": getattr(LAB, k)} for k in ("E", "A", "B", "alpha", "beta")}))
    assert scale_cli.main(["plan", "--law", str(law), "--params", "1e9", "--downstream", str(ds),
                           "--accuracy-goal", "0.5", "--json", "-"]) == 0
    plan = json.loads(capsys.readouterr().out)["downstream"]
    assert plan["accuracy"] == pytest.approx(CURVE(LAB.loss(1e9, LAB.compute_optimal_tokens(1e9))), rel=1e-6)
    goal_loss = CURVE.loss_for(0.5)
    assert plan["goal_loss"] == pytest.approx(goal_loss, rel=1e-6)
    assert LAB.loss(*LAB.compute_optimal(plan["goal_compute"])) == pytest.approx(goal_loss, rel=1e-6)
    assert plan["goal_reachable"] == 1.0


def test_a_plans_accuracy_comes_from_the_calibrated_loss(tmp_path, capsys):
    """With a law fitted by `fit --json` (selection, calibration, bootstrap), `plan --downstream` predicts the
    accuracy from the calibrated predictive distribution of the loss: its interval is `predict_accuracy` of
    the predictor's own loss draws, and wider than the curve's spread at the point prediction alone."""
    from blueberry.scaling.lawsource import read_law_file

    rng = np.random.default_rng(0)
    N, D = (a.ravel() for a in np.meshgrid(np.logspace(7, 9, 7), np.logspace(9, 11, 5)))
    runs = tmp_path / "runs.csv"
    runs.write_text("N,D,loss\n" + "".join(f"{n},{d},{x}\n" for n, d, x in
                                            zip(N, D, LAB.loss(N, D) * np.exp(rng.normal(0, 0.005, len(N))))))
    law, ds = tmp_path / "law.json", tmp_path / "ds.json"
    assert scale_cli.main(["fit", "--csv", str(runs), "--bootstrap", "20", "--json", str(law)]) == 0
    losses = np.linspace(2.6, 3.6, 10)
    evaluated = tmp_path / "evaluated.csv"
    evaluated.write_text("loss,acc\n" + "".join(f"{x},{CURVE(x)}\n" for x in losses))
    assert scale_cli.main(["downstream", "--csv", str(evaluated), "--metric", "acc", "--chance", "0.25",
                           "--bootstrap", "0", "--json", str(ds)]) == 0
    capsys.readouterr()
    assert scale_cli.main(["plan", "--law", str(law), "--params", "3e9", "--tokens", "3e11", "--downstream", str(ds),
                           "--json", "-"]) == 0
    plan = json.loads(capsys.readouterr().out)
    predictor = read_law_file(law)
    draws = predictor.loss_draws(3e9, 3e11)
    from blueberry.scaling.downstream import read_downstream_json

    fit, _ = read_downstream_json(ds)
    accuracy, interval = predict_accuracy(fit, draws)
    assert plan["downstream"]["accuracy_ci"] == pytest.approx(list(interval), rel=1e-12)
    assert interval[1] - interval[0] > 0 and plan["loss_interval"][0] < plan["loss"] < plan["loss_interval"][1]
