"""Scaling laws: the fit reproduces Epoch AI's published Chinchilla refit, recovers known parameters from
noisy synthetic runs, matches the slow reference recipe's optimum (SciPy L-BFGS from the published grid),
and plans land on concrete models; `fit` reads runs from CSV files, the shipped Chinchilla runs and MLflow."""

import csv
import json

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from blueberry.cli import scale as scale_cli
from blueberry.errors import UserError
from blueberry.models.lm.config import ModelConfig
from blueberry.models.lm.model import Blueberry, count_params
from blueberry.scaling.datasets import NAMED
from blueberry.scaling.fit import (ScalingPoints, _lbfgs, bootstrap_fit, fit_isoflop, fit_law, huber_objective,
                                   reference_grid)
from blueberry.scaling.hparams import Trial, fit_hparam_laws
from blueberry.scaling.law import EPOCH_CHINCHILLA as CHINCHILLA
from blueberry.scaling.law import Law
from blueberry.scaling.plan import Target, architecture_for, make_plan

CHINCHILLA_CSV = NAMED["chinchilla"].path  # shipped with the package: this reference never goes missing


@pytest.fixture(scope="module")
def chinchilla_points():
    rows = list(csv.DictReader(open(CHINCHILLA_CSV)))
    return ScalingPoints.from_compute([float(r["Model Size"]) for r in rows], [float(r["Training FLOP"]) for r in rows],
                                      [float(r["loss"]) for r in rows]).exclude_top(5)


def test_reproduces_epoch_ai_chinchilla_refit_within_its_standard_errors(chinchilla_points):
    assert len(chinchilla_points) == 240
    law = fit_law(chinchilla_points).law
    for name, (published, se) in CHINCHILLA.items():
        assert abs(getattr(law, name) - published) < se, (name, getattr(law, name), published, se)


@pytest.mark.slow
def test_fast_fit_reaches_the_reference_recipes_optimum(chinchilla_points):
    fast = fit_law(chinchilla_points)
    # Every 15th start of the published 4,500-point grid, each run to convergence with exact gradients by
    # SciPy's L-BFGS-B (the fast path's batched Levenberg-Marquardt is not used here).
    reference = _lbfgs(chinchilla_points, reference_grid()[::15], delta=1e-3)
    assert fast.objective <= reference.objective * (1 + 1e-9)
    for name in ("E", "alpha", "beta"):
        assert getattr(fast.law, name) == pytest.approx(getattr(reference.law, name), rel=1e-3)


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    logN, logD = rng.uniform(16, 24, 50), rng.uniform(20, 27, 50)
    logL = np.log(1.7 + np.exp(6 - 0.34 * logN) + np.exp(7.5 - 0.28 * logD)) + rng.normal(0, 3e-3, 50)
    theta = np.array([0.5, 6.2, 7.3, 0.33, 0.29])
    _, grad = huber_objective(theta, logN, logD, logL)
    h = 1e-7
    numeric = [(huber_objective(theta + h * e, logN, logD, logL)[0]
                - huber_objective(theta - h * e, logN, logD, logL)[0]) / (2 * h) for e in np.eye(5)]
    assert np.allclose(grad, numeric, rtol=1e-5, atol=1e-10)


TRUE = Law(E=1.69, A=406.4, B=1410.7, alpha=0.34, beta=0.28)


def synthetic_points(noise: float, seed: int = 0) -> ScalingPoints:
    rng = np.random.default_rng(seed)
    N, D = np.meshgrid(np.logspace(7, 10, 8), np.logspace(8.5, 12, 8))
    N, D = N.ravel(), D.ravel()
    return ScalingPoints(N, D, TRUE.loss(N, D) * np.exp(rng.normal(0, noise, len(N))))


def test_recovers_known_parameters_from_noisy_runs():
    points = synthetic_points(noise=0.005)
    fit = fit_law(points)
    boot = bootstrap_fit(points, fit, n=100, seed=1)
    for name in ("E", "A", "B", "alpha", "beta"):
        estimate, truth = getattr(fit.law, name), getattr(TRUE, name)
        se = boot.summary(name, estimate)["se"]
        assert abs(estimate - truth) < 3 * se, (name, estimate, truth, se)
    assert fit.law.alpha == pytest.approx(TRUE.alpha, abs=0.03)
    assert fit.law.beta == pytest.approx(TRUE.beta, abs=0.03)
    assert fit.law.E == pytest.approx(TRUE.E, abs=0.05)


def test_noiseless_data_is_recovered_exactly():
    fit = fit_law(synthetic_points(noise=0.0))
    for name in ("E", "A", "B", "alpha", "beta"):
        assert getattr(fit.law, name) == pytest.approx(getattr(TRUE, name), rel=1e-4)


def test_isoflop_recovers_the_compute_optimal_exponent():
    C = np.repeat(np.logspace(18, 22, 5), 9)
    N = np.concatenate([TRUE.compute_optimal(c)[0] * np.logspace(-1, 1, 9) for c in np.logspace(18, 22, 5)])
    points = ScalingPoints.from_compute(N, C, TRUE.loss(N, C / (6 * N)))
    iso = fit_isoflop(points)
    assert len(iso.profiles) == 5
    assert iso.N_exponent == pytest.approx(TRUE.a, abs=0.02)
    assert iso.N_exponent + iso.D_exponent == pytest.approx(1.0, abs=1e-9)  # N D = C / 6 at every budget


def test_law_algebra():
    law = Law(**{k: v[0] for k, v in CHINCHILLA.items()})
    N, D = law.compute_optimal(1e23)
    assert 6 * N * D == pytest.approx(1e23)
    # The optimum really is a minimum along the iso-compute line.
    for factor in (0.8, 1.25):
        assert law.loss(N * factor, D / factor) > law.loss(N, D)
    assert law.compute_optimal(6 * 8e9 * law.compute_optimal_tokens(8e9))[0] == pytest.approx(8e9)


def test_bad_points_are_user_errors():
    with pytest.raises(UserError, match="positive"):
        ScalingPoints(np.array([1e8, -1.0]), np.array([1e9, 1e9]), np.array([3.0, 3.0]))
    with pytest.raises(UserError, match="need at least 6"):
        fit_law(ScalingPoints(np.logspace(7, 9, 4), np.logspace(9, 11, 4), np.array([4.0, 3.5, 3.2, 3.0])))


def test_architecture_for_8b_instantiates_on_meta_with_the_stated_count():
    cfg = architecture_for(8e9)
    with torch.device("meta"):
        model = Blueberry(cfg)
    total = sum(p.numel() for p in model.parameters())
    assert total == count_params(cfg).total
    assert abs(total / 8e9 - 1) < 0.02
    assert cfg.mlp == "swiglu" and cfg.n_heads % cfg.n_kv_heads == 0


@pytest.mark.parametrize("N", [30e6, 88e6, 400e6, 3e9, 70e9])
def test_architecture_within_two_percent_across_sizes(N):
    cfg = architecture_for(N)
    assert isinstance(cfg, ModelConfig) and abs(count_params(cfg).total / N - 1) < 0.02


def test_plan_for_8b_with_chinchilla_is_about_20_tokens_per_parameter():
    law = Law(**{k: v[0] for k, v in CHINCHILLA.items()})
    plan = make_plan(law, Target(params=8e9, gpu="h100", mfu=0.4))
    assert 19 < plan.tokens_per_param < 22
    assert plan.gpu_hours == pytest.approx(6 * 8e9 * plan.D / (989e12 * 0.4) / 3600)
    assert plan.optimal_N == pytest.approx(8e9, rel=1e-9)  # a compute-optimal plan is its own optimum


def test_plan_for_the_seed_headline_8b_on_15t():
    law = Law(**{k: v[0] for k, v in CHINCHILLA.items()})
    plan = make_plan(law, Target(params=8e9, tokens=15e12, gpu="h100", mfu=0.4))
    assert plan.C == pytest.approx(7.2e23)
    assert plan.optimal_N > 8e9 * 5  # far larger models are optimal for that compute
    assert plan.optimal_loss < plan.loss
    assert plan.optimal_compute_for_same_loss < plan.C


def test_hparam_laws_recover_a_known_power_law():
    rng = np.random.default_rng(0)
    trials = []
    for C in np.logspace(17, 20, 4):
        best_lr, best_batch = 0.3 * C ** -0.125, 0.29 * C ** 0.33
        for f in (0.5, 0.7, 1.0, 1.4, 2.0):
            trials.append(Trial(C, best_lr * f, best_batch * f, 3.0 + np.log(f) ** 2 + rng.normal(0, 1e-4)))
    laws = fit_hparam_laws(trials, bootstrap=200)
    assert laws.lr.exponent == pytest.approx(-0.125, abs=1e-6)
    assert laws.batch_tokens.exponent == pytest.approx(0.33, abs=1e-6)
    assert len(laws.budgets) == 4


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_cli_fit_json_plot_and_plan_from_it(tmp_path, capsys):
    points = synthetic_points(noise=0.003)
    write_csv(tmp_path / "runs.csv", [{"N": n, "D": d, "loss": l} for n, d, l in zip(points.N, points.D, points.loss)])
    law_file, png, selection = tmp_path / "law.json", tmp_path / "law.png", tmp_path / "selection.png"
    assert scale_cli.main(["fit", "--csv", str(tmp_path / "runs.csv"), "--bootstrap", "10", "--json", str(law_file),
                           "--plot", str(png), "--plot-selection", str(selection)]) == 0
    assert "weights:" in capsys.readouterr().out
    payload = json.loads(law_file.read_text())
    for name, weight in payload["stack"]["weights"].items():  # every form with weight was bootstrapped
        parameters = payload["forms"][name]["parameters"]
        assert payload["forms"][name]["weight"] == weight and parameters
        assert all(p["ci"][0] <= p["ci"][1] for p in parameters.values())
    assert png.read_bytes()[:4] == b"\x89PNG" and selection.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["law.json", "law.png", "runs.csv", "selection.png"]
    plan_png = tmp_path / "plan.svg"
    assert scale_cli.main(["plan", "--law", str(law_file), "--params", "1e9", "--json", "-",
                           "--plot", str(plan_png)]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["loss_ci"][0] <= plan["loss"] <= plan["loss_ci"][1]
    assert plan["loss_interval"][0] <= plan["loss"] <= plan["loss_interval"][1] and plan["distance"] > 0
    assert scale_cli.main(["plan", "--law", str(law_file), "--params", "1e9"]) == 0
    text = capsys.readouterr().out
    assert "law form" in text and "80% interval" in text and "beyond the law's runs" in text
    assert "the backtests predicted up to" in text
    assert b"<svg" in plan_png.read_bytes()[:500]  # the format follows the extension


def test_cli_plan_chinchilla_headline(capsys):
    assert scale_cli.main(["plan", "--law", "chinchilla", "--params", "8e9", "--tokens", "15e12", "--gpu", "h100",
                           "--mfu", "0.4", "--price-per-gpu-hour", "2"]) == 0
    out = capsys.readouterr().out
    assert "505,561 H100-hours" in out and "of the compute" in out


def test_the_shipped_chinchilla_runs_are_named_on_the_command_line(tmp_path, capsys):
    # `--csv chinchilla` finds the packaged file and its columns without --params-col / --flops-col.
    law_file = tmp_path / "law.json"
    assert scale_cli.main(["fit", "--csv", "chinchilla", "--exclude-top", "5", "--bootstrap", "0",
                           "--json", str(law_file)]) == 0
    law = json.loads(law_file.read_text())["forms"]["chinchilla"]["parameters"]
    for name, (published, se) in CHINCHILLA.items():
        assert abs(law[name]["estimate"] - published) < se, name
    assert "chinchilla (Hoffmann et al. (2022) runs" in capsys.readouterr().out


def test_the_fit_json_records_the_choice_so_a_plan_can_be_rederived(tmp_path, capsys):
    """Every form's parameters and nested errors, the cuts, the weights, the calibration and the runs' range are in
    the JSON; the plan read back from it predicts the stack's loss and the interval the calibration gives."""
    from blueberry.scaling.calibrate import calibration_from_dict
    from blueberry.scaling.law import DataRange, StackedLaw, law_of

    points = synthetic_points(noise=0.005)
    write_csv(tmp_path / "runs.csv", [{"N": n, "D": d, "loss": l} for n, d, l in zip(points.N, points.D, points.loss)])
    assert scale_cli.main(["fit", "--csv", str(tmp_path / "runs.csv"), "--bootstrap", "0", "--json",
                           str(tmp_path / "law.json")]) == 0
    saved = json.loads((tmp_path / "law.json").read_text())
    assert set(saved["forms"]) == {"chinchilla", "shared", "kaplan"} and saved["selection"]["cuts"]
    assert all(len(f["nested"]["log_error"]) == len(f["nested"]["distance"]) > 0 for f in saved["forms"].values())
    weights = saved["stack"]["weights"]
    law = StackedLaw(tuple(law_of(n, {k: v["estimate"] for k, v in saved["forms"][n]["parameters"].items()
                                      if k in ("E", "A", "B", "alpha", "beta", "gamma", "N_c", "D_c", "alpha_N",
                                               "alpha_D")}) for n in weights), tuple(weights.values()))
    calibration = calibration_from_dict(saved["calibration"])
    distance = DataRange(**saved["data_range"]).distance(3e10, 3e12)
    capsys.readouterr()
    assert scale_cli.main(["plan", "--law", str(tmp_path / "law.json"), "--params", "3e10", "--tokens", "3e12",
                           "--json", "-"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["loss"] == pytest.approx(float(law.loss(3e10, 3e12)), rel=1e-12)
    assert plan["distance"] == pytest.approx(float(distance), rel=1e-12)
    low, high = calibration.interval(plan["loss"], distance, 0.8)
    assert plan["loss_interval"] == pytest.approx([float(low), float(high)], rel=1e-12)


@pytest.mark.parametrize("argv, message", [
    (["fit", "--csv", "/nonexistent.csv"], "does not exist"),
    (["fit"], "give the runs to fit: --csv FILE (or --csv chinchilla) or --experiment NAME"),
    # Before: "give --csv FILE or --experiment NAME", never naming --law, which every example uses.
    (["plan", "--params", "8e9", "--gpu", "h100", "--mfu", "0.4"], "plan needs a law: --law chinchilla"),
    (["plan", "--law", "chinchilla", "--params", "8e9", "--gpu", "tpu"], "unknown GPU"),
    (["plan", "--law", "chinchilla", "--params", "8e9", "--mfu", "1.5"], "--mfu must be in (0, 1]"),
    (["plan", "--law", "chinchilla", "--flops", "1e24", "--tokens", "1e12"], "--tokens needs --params"),
    (["plan", "--law", "missing.json", "--params", "8e9"], "does not exist"),
])
def test_cli_errors(argv, message, capsys):
    assert scale_cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_cli_missing_column_and_bad_values(tmp_path, capsys):
    write_csv(tmp_path / "a.csv", [{"N": 1e8, "tokens": 1e9, "loss": 3.0}])
    assert scale_cli.main(["fit", "--csv", str(tmp_path / "a.csv")]) == 2
    assert "no column 'D'" in capsys.readouterr().err
    write_csv(tmp_path / "b.csv", [{"N": 1e8, "D": 0, "loss": 3.0}] * 8)
    assert scale_cli.main(["fit", "--csv", str(tmp_path / "b.csv")]) == 2
    assert "D must be positive" in capsys.readouterr().err


def test_cli_experiment_without_finished_runs(tmp_path, capsys):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("grid")
    client.create_run(experiment)  # still RUNNING
    assert scale_cli.main(["fit", "--experiment", "grid", "--tracking-uri", uri]) == 2
    assert "no finished runs" in capsys.readouterr().err


def test_fit_from_an_mlflow_experiment_reads_only_training_runs(tmp_path, capsys):
    from mlflow.entities import Metric, Param, RunTag

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("scaling_grid")
    parent = client.create_run(experiment, tags={"blueberry.kind": "study"}).info.run_id
    client.set_terminated(parent)  # a finished summary run without N or D: must be skipped
    points = synthetic_points(noise=0.003)
    for n, d, loss in zip(points.N, points.D, points.loss):
        run = client.create_run(experiment, tags={"blueberry.kind": "trial", "status": "finished"}).info.run_id
        client.log_batch(run, metrics=[Metric("final/val_loss", float(loss), 0, 0),
                                       Metric("final/tokens", float(d), 0, 0)],
                         params=[Param("N", str(int(n))), Param("D", str(int(d)))])
        client.set_terminated(run)
    diverged = client.create_run(experiment, tags={"blueberry.kind": "trial", "status": "diverged"}).info.run_id
    client.log_batch(diverged, params=[Param("N", "1000000")], tags=[RunTag("outcome", "diverged")])
    client.set_terminated(diverged)
    assert scale_cli.main(["fit", "--experiment", "scaling_grid", "--tracking-uri", uri, "--bootstrap", "0",
                           "--json", "-"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["runs"] == len(points)
    assert payload["forms"]["chinchilla"]["parameters"]["alpha"]["estimate"] == pytest.approx(TRUE.alpha, abs=0.03)
