"""Sweeps on a local Ray: a study runs end to end with every trial in MLflow and ASHA stopping weak trials;
a trial whose worker is killed resumes from its checkpoint; a driver killed mid-study resumes and
finishes with exactly one MLflow run per trial."""

import dataclasses
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from blueberry.core.config import TrainConfig, replace
from blueberry.errors import UserError
from blueberry.models.lm.config import tiny
from blueberry.models.run import RunConfig
from blueberry.platform.search import apply_params
from blueberry.platform.sweep import SweepConfig, run_sweep
from blueberry.platform.tracking import KIND_TAG, STATUS_TAG, STUDY_TAG

pytestmark = [pytest.mark.ray, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:Fixed parameter:UserWarning")]
REPO = Path(__file__).resolve().parents[1]


def bad_or_good_lr(trial):
    # Far too small a learning rate: such trials fall behind the record at the first rung, so ASHA
    # has something to stop whatever TPE proposes.
    trial.suggest_float("train.muon_lr", 1e-6, 1e-5, log=True)


def smoke_config(tmp_path, name, trials=4, steps=16, concurrent=1, evals_per_trial=4, **kw):
    base = RunConfig(tiny(), TrainConfig(train_tokens=steps * 4 * 256, batch_size=4, log_every=2))
    return SweepConfig(experiment="unit_sweep", name=name, preset="tiny", base=base, space=bad_or_good_lr,
                       baseline={"train.muon_lr": 0.024}, trials=trials, storage=str(tmp_path / "ray"),
                       tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", max_concurrent_trials=concurrent,
                       evals_per_trial=evals_per_trial, **kw)


def study_runs(uri, study):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("unit_sweep")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{STUDY_TAG}` = '{study}'")
    return client, [r for r in runs if r.data.tags[KIND_TAG] == "trial"], [r for r in runs
                                                                            if r.data.tags[KIND_TAG] == "study"]


def test_apply_params_and_bad_keys():
    run = apply_params(RunConfig(tiny(), TrainConfig()), {"train.muon_lr": 0.01, "model.n_layers": 2})
    assert run.train.muon_lr == 0.01 and run.model.n_layers == 2
    with pytest.raises(UserError, match="model.<field> or train.<field>"):
        apply_params(RunConfig(), {"lr": 0.1})


def test_smoke_study_end_to_end_and_resume(ray_local, tmp_path):
    cfg = smoke_config(tmp_path, "smoke")
    result = run_sweep(cfg)
    client, trials, parents = study_runs(result.tracking_uri, "smoke")
    assert len(result.trials) == 4 and len(trials) == 4 and len(parents) == 1
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == result.parent_run_id
        assert "train.muon_lr" in run.data.params and run.data.params["N"] == "1770880"
        assert "val/loss" in run.data.metrics and run.data.tags[STATUS_TAG] in ("finished", "stopped_early")
    statuses = [r["status"] for r in result.trials]
    assert "stopped_early" in statuses  # ASHA cut at least one trial short
    stopped = [r for r in result.trials if r["status"] == "stopped_early"]
    assert all(r["tokens"] in (4 * 4 * 256, 8 * 4 * 256) for r in stopped)  # at a rung, which is an evaluation
    assert result.best["train.muon_lr"] == 0.024  # the record beats learning rates 1000x too small
    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id)}
    assert artifacts == {"trials.csv", "best_config.json", "loss_vs_params.png", "learning_curves.png"}

    again = run_sweep(cfg)  # the same name: nothing is re-run or recorded twice
    _, trials_after, parents_after = study_runs(result.tracking_uri, "smoke")
    assert again.parent_run_id == result.parent_run_id
    assert sorted(r.info.run_id for r in trials_after) == sorted(r.info.run_id for r in trials)
    assert len(parents_after) == 1

    # Asking the study for more trials continues it: only the new ones train, searching on from the first.
    more = run_sweep(dataclasses.replace(cfg, trials=6))
    _, trials_more, _ = study_runs(result.tracking_uri, "smoke")
    assert more.parent_run_id == result.parent_run_id and len(more.trials) == 6 and len(trials_more) == 6
    assert {r.info.run_id for r in trials} < {r.info.run_id for r in trials_more}  # the first four untouched
    assert {r["trial_id"] for r in result.trials} < {r["trial_id"] for r in more.trials}

    # The same study against another tracking store would keep Tune's trials but record none of them.
    elsewhere = dataclasses.replace(cfg, tracking_uri=f"sqlite:///{tmp_path}/elsewhere.db")
    with pytest.raises(UserError, match="not in the tracking store"):
        run_sweep(elsewhere)
    assert study_runs(elsewhere.tracking_uri, "smoke")[2] == []  # and nothing half-made is left there


def test_a_study_judged_by_a_downstream_task_maximises_it(ray_local, tmp_path):
    from blueberry.evals.downstream import TrialDownstream

    cfg = smoke_config(tmp_path, "downstream", trials=2, steps=8, evals_per_trial=2, metric="val/cloze/acc_norm",
                       mode="max", trial_hooks=TrialDownstream("cloze", limit=8))
    result = run_sweep(cfg)
    client, trials, parents = study_runs(result.tracking_uri, "downstream")
    assert len(trials) == 2 and parents[0].data.params["mode"] == "max"
    for row in result.trials:
        # Scored at every evaluation of the trial, the same steps as its validation loss; what Tune judged
        # the trial by is the last of them.
        history = sorted(client.get_metric_history(row["mlflow_run_id"], "val/cloze/acc_norm"), key=lambda m: m.step)
        loss_steps = sorted(m.step for m in client.get_metric_history(row["mlflow_run_id"], "val/loss"))
        assert [m.step for m in history] == loss_steps and len(loss_steps) >= 2
        assert row["val/cloze/acc_norm"] == history[-1].value
    finished = [r for r in result.trials if r["status"] == "finished"]
    assert result.best["val/cloze/acc_norm"] == max(r["val/cloze/acc_norm"] for r in finished)


def explosive(trial):
    trial.suggest_float("train.adamw_lr", 50.0, 100.0)


def test_diverged_trial_is_reported_and_the_study_goes_on(ray_local, tmp_path):
    base = RunConfig(tiny(), TrainConfig(train_tokens=12 * 4 * 256, batch_size=4, muon_lr=50.0, grad_clip=0.0,
                                         warmup_frac=0.0))
    cfg = SweepConfig(experiment="unit_sweep", name="diverge", preset="tiny", base=base, space=explosive, trials=2,
                      storage=str(tmp_path / "ray"), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                      max_concurrent_trials=1, evals_per_trial=3)
    result = run_sweep(cfg)
    assert [r["status"] for r in result.trials] == ["diverged", "diverged"]
    assert all(r["val_loss"] == 100.0 and math.isfinite(r["val_loss"]) for r in result.trials)


def test_killed_trial_worker_resumes_from_its_checkpoint(ray_local, tmp_path):
    import psutil

    cfg = smoke_config(tmp_path, "killed-worker", trials=1, steps=48)
    outcome = {}
    driver = threading.Thread(target=lambda: outcome.setdefault("result", run_sweep(cfg)))
    driver.start()
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "ray").glob("killed-worker/*/checkpoint_000001")):
        time.sleep(0.2)
    # Tune's function trainables run in actors whose process title names the class.
    workers = [p for p in psutil.process_iter(["cmdline"]) if "ImplicitFunc" in " ".join(p.info["cmdline"] or [])]
    assert workers, "no trial worker to kill"
    os.kill(workers[0].pid, signal.SIGKILL)
    driver.join(timeout=300)
    result = outcome["result"]
    (row,) = result.trials
    assert row["status"] == "finished" and row["tokens"] == 48 * 4 * 256
    _, trials, _ = study_runs(result.tracking_uri, "killed-worker")
    assert len(trials) == 1  # the retried trial logged into its original MLflow run
    client = MlflowClient(result.tracking_uri)
    assert client.get_run(trials[0].info.run_id).data.metrics["final/steps"] == 48
    tune_metrics = [m for m in client.get_metric_history(trials[0].info.run_id, "train/loss")]
    assert len({m.step for m in tune_metrics}) == 24  # every logged step is there, from both attempts
    assert row_resumed(result) > 0


def row_resumed(result):
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(result.storage_path)
    (trial,) = analysis.trials
    return trial.last_result["resumed_from_step"]


def test_a_study_that_fails_before_its_trials_leaves_no_run_open(ray_local, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        run_sweep(smoke_config(tmp_path, "bad-data", data=str(tmp_path / "missing")))
    (tmp_path / "a-file").write_text("")
    with pytest.raises(UserError, match="is a file"):
        run_sweep(dataclasses.replace(smoke_config(tmp_path, "bad-storage"), storage=str(tmp_path / "a-file")))
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("unit_sweep")
    assert client.search_runs([experiment.experiment_id]) == []  # before: a parent run left RUNNING


def count_runs(uri, query):
    """How many lr_sweep runs match `query` (0 while the driver is still creating the database)."""
    try:
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("lr_sweep")
        return len(client.search_runs([experiment.experiment_id], filter_string=query)) if experiment else 0
    except Exception:  # the database is being created by the driver
        return 0


def wait_while_running(proc, condition, timeout_s=240):
    deadline = time.time() + timeout_s
    while not condition():
        assert proc.poll() is None, "the study ended before the test could act on it"
        assert time.time() < deadline, "timed out"
        time.sleep(0.5)


def test_one_driver_per_study_and_a_killed_driver_resumes_with_one_mlflow_run_per_trial(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    argv = [sys.executable, str(REPO / "studies" / "lr_sweep.py"), "--smoke", "--name", "driver-kill",
            "--storage", str(tmp_path / "ray"), "--tracking-uri", uri, "--trials", "2", "--max-concurrent", "1",
            "--train-tokens", "24576"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    # A second driver of the same study is refused at once, naming the first (before: both ran every
    # trial and recorded it twice).
    wait_while_running(proc, lambda: count_runs(uri, f"tags.`{KIND_TAG}` = 'study'") == 1)
    second = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
    assert f"study 'driver-kill' is in use by process {proc.pid} " in second.stderr

    wait_while_running(proc, lambda: count_runs(uri, "attributes.status = 'FINISHED'") >= 1)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait()
    subprocess.run(argv, cwd=tmp_path, env=env, check=True, capture_output=True, timeout=400)

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("lr_sweep")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`blueberry.study` = 'driver-kill'")
    trials = [r for r in runs if r.data.tags[KIND_TAG] == "trial"]
    (parent,) = [r for r in runs if r.data.tags[KIND_TAG] == "study"]
    assert parent.info.status == "FINISHED"  # left RUNNING by the kill, closed by the rerun
    assert len(trials) == 2 and len({r.data.tags["blueberry.trial_id"] for r in trials}) == 2
    assert all(r.info.status in ("FINISHED", "KILLED") for r in trials)


def test_config_hash_ignores_how_a_run_is_observed():
    config_hash = RunConfig.key  # the run identity every run, trial and study uses

    run = RunConfig(tiny(), TrainConfig())
    watched = RunConfig(run.model, replace(run.train, eval_every=7, log_every=3, checkpoint_every=5,
                                           eval_at_tokens=(1000,)))
    assert config_hash(watched) == config_hash(run)
    assert config_hash(RunConfig(run.model, replace(run.train, muon_lr=0.01))) != config_hash(run)


def test_asha_rungs_sit_on_evaluations():
    from blueberry.platform.sweep import asha_grace_tokens

    # 50 steps of 8 x 256 tokens evaluated every 5 steps (10,240 tokens): a ninth of the budget
    # (11,378 tokens) falls between evaluations, so the first rung moves to the nearest one.
    train = TrainConfig(train_tokens=50 * 8 * 256, batch_size=8, eval_every=5)
    assert asha_grace_tokens(train, 256, 1 / 9) == 10_240
    assert asha_grace_tokens(train, 256, 0.3) == 30_720
    assert asha_grace_tokens(train, 256, 0.01) == 10_240  # never before the first evaluation
    assert asha_grace_tokens(replace(train, eval_every=0), 256, 0.25) == 50 * 8 * 256
