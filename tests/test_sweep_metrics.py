"""Judging a study's trials by a metric other than the validation loss (a downstream task's accuracy,
maximised), without running a sweep: which way each metric runs, what trials report to Tune, and what
Optuna, ASHA, the best trial and the MLflow view are told."""

import runpy
from pathlib import Path

import optuna
import pytest

from blueberry.core.config import TrainConfig
from blueberry.core.events import EvalInfo, RunResult
from blueberry.errors import UserError
from blueberry.models.lm.config import tiny
from blueberry.models.run import RunConfig
from blueberry.evals.downstream import downstream_metrics
from blueberry.platform.report import best_row, study_view
from blueberry.platform.sweep import DIVERGED_LOSS, SweepConfig, _prior_study, _tune_config, metric_mode, trial_metrics

REPO = Path(__file__).resolve().parents[1]
BASE = RunConfig(tiny(), TrainConfig(train_tokens=16 * 4 * 256, batch_size=4, eval_every=4))


def test_each_metric_runs_its_own_way_and_an_unreported_one_is_refused():
    downstream = downstream_metrics(BASE.task(), "cloze,bpb")
    assert downstream == {"cloze/acc": "max", "cloze/acc_norm": "max", "bpb": "min", "core": "max"}
    assert metric_mode(BASE, "val_loss") == "min" and metric_mode(BASE, "target_tokens") == "min"
    assert metric_mode(BASE, "val/accuracy") == "max" and metric_mode(BASE, "val/perplexity") == "min"
    assert [metric_mode(BASE, f"val/{m}", downstream) for m in downstream] == ["max", "max", "min", "max"]
    with pytest.raises(UserError, match="downstream metrics need --eval-tasks"):
        metric_mode(BASE, "val/core")
    with pytest.raises(UserError, match="val/cloze/acc_norm"):
        metric_mode(BASE, "val/hellaswag/acc", downstream)


def run_result(diverged=False, metrics=None):
    val = None if diverged else EvalInfo(step=16, tokens=4096, metrics=metrics or {"loss": 4.5})
    return RunResult(steps=16, tokens=4096, train_loss=4.6, val=val, active_time_s=1.0, eval_time_s=0.1,
                     setup_time_s=0.1, tokens_per_s=4096.0, mfu=None, diverged=diverged, reached_target=False,
                     target_tokens=None, target_time_s=None, params={})


def test_trials_report_the_evaluation_with_the_downstream_scores_of_the_same_step():
    info = EvalInfo(step=8, tokens=2048, metrics={"loss": 5.0, "accuracy": 0.2})
    reported = trial_metrics(info, None, budget=4096, extra={"core": 0.1, "cloze/acc": 0.325})
    assert reported["val_loss"] == 5.0 and reported["val/loss"] == 5.0 and reported["val/accuracy"] == 0.2
    assert reported["val/core"] == 0.1 and reported["val/cloze/acc"] == 0.325 and reported["tokens"] == 2048
    final = trial_metrics(None, run_result(metrics={"loss": 4.5}), budget=4096, extra={"core": 0.2})
    assert final["val/loss"] == 4.5 and final["val/core"] == 0.2 and final["completed"] == 1.0
    # A diverged trial must rank below every real one, whichever way the study's metric runs.
    assert trial_metrics(None, run_result(diverged=True), 4096, metric="val/core", mode="max")["val/core"] \
        == -DIVERGED_LOSS
    assert trial_metrics(None, run_result(diverged=True), 4096, metric="val/bpb", mode="min")["val/bpb"] \
        == DIVERGED_LOSS


def maximised_config(**kw):
    def space(trial):
        trial.suggest_float("train.muon_lr", 1e-3, 1e-1, log=True)

    return SweepConfig(**{"experiment": "e", "name": "n", "preset": "tiny", "base": BASE, "space": space,
                          "metric": "val/core", "mode": "max", "trials": 4, **kw})


def test_a_maximised_metric_reaches_optuna_asha_the_best_trial_and_the_view():
    cfg = maximised_config()
    tune_config = _tune_config(cfg, BASE, concurrent=1)
    assert tune_config.search_alg.mode == "max" and tune_config.scheduler._mode == "max"
    rows = [{"trial_id": str(i), "status": "finished", "train.muon_lr": lr, "val/core": core}
            for i, (lr, core) in enumerate([(0.01, 0.05), (0.02, 0.30), (0.04, 0.12)])]
    study = optuna.load_study(study_name="optuna", storage=_prior_study(cfg, rows))
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE and study.best_trial.value == 0.30
    assert best_row(rows, "val/core", "max")["train.muon_lr"] == 0.02
    assert best_row(rows, "val/core")["train.muon_lr"] == 0.01  # the same rows, minimised
    assert study_view("n", "val/core", ["train.muon_lr"], "max")["orderByAsc"] is False
    assert study_view("n", "val_loss", ["train.muon_lr"])["orderByAsc"] is True
    with pytest.raises(UserError, match="mode must be min or max"):
        maximised_config(mode="up")
    with pytest.raises(UserError, match="metric must be"):
        maximised_config(metric="core")


def test_a_study_judged_by_a_downstream_task_is_configured_before_any_work(tmp_path, capsys):
    study = runpy.run_path(str(REPO / "studies" / "lr_sweep.py"))["LrSweep"]()
    common = ["--smoke", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]
    args = study.parser().parse_args([*common, "--eval-tasks", "cloze", "--eval-tasks-limit", "8",
                                      "--metric", "val/cloze/acc_norm"])
    cfg = study.sweep_config(args, study.scale(args))
    assert (cfg.metric, cfg.mode) == ("val/cloze/acc_norm", "max")
    assert cfg.trial_hooks.tasks == "cloze" and cfg.trial_hooks.limit == 8
    plain = study.sweep_config(study.parser().parse_args(common), study.scale(args))
    assert plain.trial_hooks is None and plain.metric == "val_loss" and plain.name != cfg.name
    for flags, message in ((["--metric", "val/core"], "downstream metrics need --eval-tasks"),
                           (["--eval-tasks", "cloze", "--metric", "val/hellaswag/acc"], "do not report it"),
                           (["--eval-tasks", "squad"], "unknown task 'squad'"),
                           (["--eval-tasks-limit", "5"], "--eval-tasks-limit needs --eval-tasks")):
        assert study.main([*common, *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m.db").exists()  # refused before the tracking store was touched
