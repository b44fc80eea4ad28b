"""Sweeps: Ray Tune + Optuna (TPE) + ASHA over Blueberry runs, every trial tracked in MLflow.

`run_sweep(cfg)` runs a study:
- the data goes into the object store once (`blueberry.platform.data`) and reaches every trial
  zero-copy through `tune.with_parameters`;
- each trial is `blueberry.core.loop.train` on the base config's task (any registered model kind)
  with two hooks: `TuneReport` (reports to Tune at every
  evaluation with a checkpoint, and restores from Tune's checkpoint when a trial is retried) and an
  MLflow tracker logging a child run under the study's parent run, from inside the trial, so it works
  on remote nodes against a tracking server;
- Optuna's TPE (seeded) proposes configurations, the record configuration first; ASHA stops weak
  trials early by **units seen** (the task's unit, reported as `tokens`), re-checking promotions made
  before a rung had company (`blueberry.platform.schedulers.ProvisionalASHA`); a diverged trial
  reports a large finite loss and `diverged = 1`;
- the study's name is its resume key: running it again restores the Tuner (with the searcher's
  state), keeps finished trials, retries errored ones, and finds each trial's MLflow run again
  instead of creating a second;
- the driver closes the runs of trials ASHA stopped, and writes the parent run's summary: trials.csv,
  best_config.json, loss-vs-parameter plots and all learning curves;
- each trial's MLflow run is named by its searched values (`muon_lr=0.024 adamw_lr=0.006`, with
  `(stopped early)`, `(diverged)` or `(failed)` once closed), and the study saves a view of the MLflow
  UI's runs table (`SweepResult.view`): its trials, their status, the metric and the searched
  parameters, and a parallel-coordinates chart of those against the metric.

Ray, Tune and Optuna are imported inside the functions that use them: importing them takes seconds,
and a study's flag errors and `--help` should answer at once.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from blueberry.core.config import TrainConfig, replace
from blueberry.core.events import EvalInfo, RunResult
from blueberry.core.hooks import Hook, Hooks
from blueberry.core.loop import train
from blueberry.core.state import TrainState
from blueberry.errors import UserError
from blueberry.models.run import RunConfig
from blueberry.platform.cluster import (connect, driver_lock, ray_checkpoint, restore_ray_checkpoint,
                                        storage_path)
from blueberry.platform.data import data_key, open_shared
from blueberry.platform.report import close_trial_runs, save_study_view, trial_run_name, write_summary
from blueberry.platform.search import apply_params, flat_overrides, is_config_key
from blueberry.platform.tracking import (CONFIG_TAG, KIND_TAG, STUDY_TAG, TRIAL_TAG, MlflowTracker, aborted_status,
                                         absolute_uri, client, close_open_runs, ensure_experiment, find_run,
                                         tracking_uri)

DIVERGED_LOSS = 100.0  # what a diverged trial reports: far worse than any real loss, but finite for TPE


@dataclass(frozen=True)
class SweepConfig:
    """A study: what to vary, around what, judged by what, with how much."""

    experiment: str  # one MLflow experiment per study (lr_sweep, batch_sweep, ...)
    name: str  # this execution's name: the resume key and the parent run's name
    preset: str  # the base model's name (a preset), recorded with every trial
    base: RunConfig
    # Optuna define-by-run on dotted field names: a module-level function or a partial of one (`Study`
    # passes a partial of its `space` method). Tune pickles it with the searcher's state.
    space: Callable[[Any], dict[str, Any] | None] | None
    baseline: dict[str, Any] = field(default_factory=dict)  # the record point, evaluated first
    grid: dict[str, list[Any]] | None = None  # instead of a search: every value of each key, no ASHA
    # What TPE and ASHA judge trials by: "val_loss", "target_tokens" (speedrun studies), or any metric
    # the trials report at their evaluations as `val/<name>`, such as a downstream task's `val/core`
    # (`metric_mode` says which way is better).
    metric: str = "val_loss"
    mode: str = "min"  # "max" for accuracies
    # Hooks each trial adds, built inside the trial from its run config, its opened data and the hook
    # they report evaluations to (the trial's MLflow run and its reports to Tune): downstream tasks
    # (`blueberry.evals.downstream.TrialDownstream`). Picklable, like `space`.
    trial_hooks: Callable[[RunConfig, Any, Hook], Sequence[Hook]] | None = None
    trials: int = 8
    # What `--data` names (`builtin` or a prepared directory), or a handle with `open()` that
    # trials call (`blueberry.platform.data.open_shared` makes one; a task with other data brings its own).
    data: Any = "builtin"
    storage: str | None = None  # Ray storage path or URI (shared on multi-node); default ~/ray_results
    tracking_uri: str | None = None
    gpus_per_trial: float | None = None  # None: 1 on a GPU cluster, 0 otherwise
    cpus_per_trial: float | None = None  # None: the cluster's CPUs per GPU, or 1 on a CPU-only cluster
    max_concurrent_trials: int | None = None  # None: what the cluster can hold
    grace_fraction: float = 0.25  # ASHA's first rung, as a fraction of the token budget
    reduction_factor: float = 2.0
    provisional_promotions: bool = True  # ProvisionalASHA (re-checks early promotions); False: Ray's plain ASHA
    evals_per_trial: int = 8
    max_failures: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.space is None) == (self.grid is None):
            raise UserError("a study needs exactly one of a search space or a grid")
        if self.trials < 1:
            raise UserError(f"--trials must be at least 1, got {self.trials}")
        if self.metric not in ("val_loss", "target_tokens") and not self.metric.startswith("val/"):
            raise UserError(f"metric must be val_loss, target_tokens or an evaluation's val/<name>, got "
                            f"{self.metric!r}")
        if self.mode not in ("min", "max"):
            raise UserError(f"mode must be min or max, got {self.mode!r}")
        if self.metric == "target_tokens" and self.base.train.target_train_loss is None:
            raise UserError("a tokens-to-target study needs --target-train-loss")


def metric_mode(base: RunConfig, metric: str, downstream: Mapping[str, str] | None = None) -> str:
    """Which way `metric` improves ("min" or "max") for trials of `base` scoring the `downstream` metrics
    (name -> the way it improves: `blueberry.evals.downstream.downstream_metrics`); a name no trial would
    report is refused."""
    downstream = downstream or {}
    if metric in ("val_loss", "target_tokens"):
        return "min"
    name = metric.removeprefix("val/")
    evaluated = base.task().eval_metrics
    if metric.startswith("val/") and name in evaluated:
        return evaluated[name]
    if metric.startswith("val/") and name in downstream:
        return downstream[name]
    known = ["val_loss", "target_tokens", *(f"val/{m}" for m in (*evaluated, *downstream))]
    hint = "" if downstream else " (downstream metrics need --eval-tasks)"
    raise UserError(f"--metric {metric}: the trials do not report it; choose one of {', '.join(known)}{hint}")


def trial_metrics(info: EvalInfo | None, result: RunResult | None, budget: int, target: bool = False,
                  extra: dict[str, float] | None = None, metric: str = "val_loss", mode: str = "min"
                  ) -> dict[str, float]:
    """What a trial reports to Tune: the loss, units seen, divergence, every metric of the evaluation
    as `val/<name>` with the `extra` ones of the same step (downstream tasks), and, in a study with a
    target loss, the units it took to reach it. TPE needs a number for a trial that never reached the
    target: twice the budget, with `reached_target` 0 saying what it stands for; and one for a trial
    that diverged: a far worse value than any real one of the study's `metric`, whichever way it runs."""
    if result is not None and result.diverged:
        out = {"val_loss": DIVERGED_LOSS, "tokens": result.tokens, "diverged": 1.0}
        if metric.startswith("val/"):
            out[metric] = DIVERGED_LOSS if mode == "min" else -DIVERGED_LOSS
        return out | ({"target_tokens": 2.0 * budget, "reached_target": 0.0} if target else {})
    evaluation = result.val if result is not None else info
    loss = evaluation.loss if evaluation is not None else math.nan
    tokens = result.tokens if result is not None else info.tokens if info else 0
    measured = {**(evaluation.metrics if evaluation is not None else {}), **(extra or {})}
    out = {"val_loss": loss, "tokens": float(tokens), "diverged": 0.0,
           **{f"val/{name}": float(value) for name, value in measured.items()}}
    if result is not None:
        if target:
            out["target_tokens"] = float(result.target_tokens) if result.target_tokens else 2.0 * budget
            out["reached_target"] = float(result.target_tokens is not None)
        out["completed"] = 1.0  # not "done": Tune sets that on every trial's last result, stopped or not
        out["tokens_per_s"] = result.tokens_per_s
    return out


class LatestEvaluation(Hook):
    """The metrics of the last evaluation reported to it: where a trial's extra scorers (downstream
    tasks) leave theirs for `TuneReport` to send with the loop's evaluation of the same step."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}

    def on_eval(self, info: EvalInfo, state: TrainState) -> None:
        self.metrics = dict(info.metrics)


class TuneReport(Hook):
    """Reports each evaluation to Tune with a checkpoint; restores from Tune's checkpoint on a retry.
    Register it after the hooks that score at evaluations and leave their metrics in `extra`."""

    def __init__(self, budget: int, target: bool = False, extra: LatestEvaluation | None = None,
                 metric: str = "val_loss", mode: str = "min") -> None:
        self.budget, self.target = budget, target  # target: the study measures units to a target loss
        self.extra, self.metric, self.mode = extra, metric, mode
        self.resumed_step = 0

    def on_start(self, state: TrainState) -> None:
        from ray import tune

        self.resumed_step = restore_ray_checkpoint(tune.get_checkpoint(), state)

    def on_eval(self, info: EvalInfo, state: TrainState) -> None:
        from ray import tune

        if info.tokens >= self.budget:
            return  # the final evaluation is reported by on_end: at max_t Tune ends the trial inside report()
        with ray_checkpoint(state, tune.Checkpoint) as checkpoint:
            tune.report(self._metrics(info, None), checkpoint=checkpoint)

    def on_end(self, result: RunResult, state: TrainState) -> None:
        from ray import tune

        tune.report(self._metrics(None, result))

    def _metrics(self, info: EvalInfo | None, result: RunResult | None) -> dict[str, float]:
        extra = self.extra.metrics if self.extra is not None else None
        return {**trial_metrics(info, result, self.budget, self.target, extra, self.metric, self.mode),
                "resumed_from_step": float(self.resumed_step)}


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs besides its params; passed once with `tune.with_parameters`."""

    base: RunConfig
    preset: str
    experiment: str
    study: str
    parent_run_id: str
    tracking_uri: str
    threads: int
    data_key: str  # enters each trial's identity (`RunConfig.key`), as blueberry-train's runs do
    metric: str = "val_loss"
    mode: str = "min"
    trial_hooks: Callable[[RunConfig, Any, Hook], Sequence[Hook]] | None = None


def trial_tracker(context: TrialContext, params: dict[str, Any], trial_id: str, trial_name: str) -> MlflowTracker:
    """The MLflow child run of one trial (found again by its study and Tune trial id when the trial is
    retried), named by its searched values; Tune's name for the trial is kept as a tag."""
    run = apply_params(context.base, params)
    task = run.task()
    size = task.scale_params(run.train)
    budget = run.train.budget_tokens(task.units_per_sample)
    return MlflowTracker(
        context.experiment, trial_run_name(params) or trial_name, uri=context.tracking_uri,
        # C = 6 N D, the compute estimate scaling fits read from sweeps (blueberry-scale hparams).
        params={**run.flatten(), "preset": context.preset, **size, "C": 6 * size["N"] * budget,
                **{f"search.{k}": v for k, v in flat_overrides(params).items()}},
        tags={STUDY_TAG: context.study, KIND_TAG: "trial", CONFIG_TAG: run.key(data=context.data_key),
              "tune_trial_name": trial_name},
        parent_run_id=context.parent_run_id,
        identity={STUDY_TAG: context.study, TRIAL_TAG: trial_id}, log_every=run.train.log_every)


def run_trial(params: dict[str, Any], data: Any, context: TrialContext) -> None:
    """The Tune trainable: one run of the base config's task with Tune reporting and an MLflow child run."""
    from ray import tune

    torch.set_num_threads(context.threads)
    run = apply_params(context.base, params)
    task = run.task()
    tune_context = tune.get_context()
    tracker = trial_tracker(context, params, tune_context.get_trial_id(), tune_context.get_trial_name())
    opened = data.open()
    latest = LatestEvaluation()
    extra = list(context.trial_hooks(run, opened, Hooks([tracker, latest]))) if context.trial_hooks else []
    # The tracker first and Tune last: when ASHA stops a trial, Tune ends it inside TuneReport's
    # report(), and what the tracker had not logged (or the extra hooks not scored) by then would be lost.
    report = TuneReport(run.train.budget_tokens(task.units_per_sample), target=run.train.target_train_loss is not None,
                        extra=latest, metric=context.metric, mode=context.mode)
    train(task, run.train, opened, Hooks([tracker, *extra, report]))


def cluster_resources(cfg: SweepConfig) -> tuple[dict[str, float], int]:
    """Per-trial resources and how many trials run at once, from the cluster unless given."""
    import ray

    total = ray.cluster_resources()
    gpus_available, cpus_available = total.get("GPU", 0.0), total.get("CPU", 1.0)
    gpus = cfg.gpus_per_trial if cfg.gpus_per_trial is not None else (1.0 if gpus_available >= 1 else 0.0)
    if cfg.cpus_per_trial is not None:
        cpus = cfg.cpus_per_trial
    else:
        cpus = max(1.0, math.floor(cpus_available / gpus_available)) if gpus else 1.0
    if gpus > gpus_available or cpus > cpus_available:
        raise UserError(f"a trial asks for {gpus:g} GPU and {cpus:g} CPU but the cluster has {gpus_available:g} GPU "
                        f"and {cpus_available:g} CPU: lower --gpus-per-trial / --cpus-per-trial")
    fits = [int(cpus_available // cpus)] + ([int(gpus_available // gpus)] if gpus else [])
    concurrent = cfg.max_concurrent_trials or max(1, min(fits))
    return ({"CPU": cpus, "GPU": gpus} if gpus else {"CPU": cpus}), concurrent


def asha_grace_tokens(train: TrainConfig, units_per_sample: int, fraction: float) -> int:
    """ASHA's first rung: `fraction` of the budget, snapped to the nearest evaluation (at least the
    first). Trials report only when they evaluate, and ASHA decides at the first report at or past a
    rung, so a rung between two evaluations would let every trial run on to the next one. With the
    first rung on an evaluation, every later rung (first x reduction factor^k) is on one too."""
    budget = train.budget_tokens(units_per_sample)
    every = train.eval_every * train.tokens_per_step(units_per_sample) if train.eval_every > 0 else budget
    return min(budget, max(1, round(fraction * budget / every)) * every)


def _study_base(cfg: SweepConfig) -> RunConfig:
    """The base config with evaluations spread over the budget, so ASHA has rungs to compare at."""
    steps = cfg.base.train.total_steps(cfg.base.task().units_per_sample)
    return RunConfig(cfg.base.model, replace(cfg.base.train, eval_every=max(1, steps // cfg.evals_per_trial),
                                             checkpoint_every=0))


def _parent_run(client: Any, experiment_id: str, cfg: SweepConfig, must_exist: bool, storage: str, uri: str) -> str:
    """The study's parent run: found again on resume, created on a first run. Ray storage and the
    tracking store must agree: a study Ray can restore must find it here, or its finished trials
    would be kept by Tune but never recorded in this store; and one with recorded trials must be
    restorable, or they would be trained and recorded again. (A parent run alone, from a driver that
    stopped before Tune saved anything, is simply continued.)"""
    existing = find_run(client, experiment_id, {STUDY_TAG: cfg.name, KIND_TAG: "study"})
    if existing is not None:
        if not must_exist and find_run(client, experiment_id, {STUDY_TAG: cfg.name, KIND_TAG: "trial"}):
            # Recorded trials but nothing for Ray to restore: the study ran against other Ray storage,
            # and starting it afresh here would train its trials again and record them a second time.
            raise UserError(f"study {cfg.name!r} has trials in the tracking store {uri} but nothing in Ray "
                            f"storage {storage}: pass the --storage it ran with, or another --name")
        client.set_terminated(existing, status="RUNNING")
        return existing
    if must_exist:
        raise UserError(f"study {cfg.name!r} exists in Ray storage {storage} but not in the tracking store {uri}: "
                        "pass the --tracking-uri it was recorded in, or another --name")
    run = client.create_run(experiment_id, run_name=cfg.name,
                            tags={STUDY_TAG: cfg.name, KIND_TAG: "study", "preset": cfg.preset})
    return run.info.run_id


def _trial_data(cfg: SweepConfig) -> Any:
    """The handle trials open their data from: shared once here, or the one the config brings."""
    return open_shared(cfg.base.task(), cfg.data) if isinstance(cfg.data, str) else cfg.data


@dataclass(frozen=True)
class SweepResult:
    experiment_id: str
    parent_run_id: str
    trials: list[dict[str, Any]]  # one row per trial: id, params, metrics, status, MLflow run id
    best: dict[str, Any] | None
    storage_path: str
    tracking_uri: str
    view: str | None = None  # the study's view in the MLflow UI (`blueberry.platform.tracking.ui_link`)


def run_sweep(cfg: SweepConfig) -> SweepResult:
    """Run (or continue) the study `cfg` names. One driver at a time: a second is refused in one
    line. Everything a mistake can break (the tracking store, storage, the cluster's resources, the
    data) is checked before the parent run exists; once it does, the driver closes it whatever
    happens: FINISHED, KILLED (interrupted) or FAILED, with the trial runs it left open."""
    storage = storage_path(cfg.storage)
    with driver_lock(storage, cfg.name, f"study {cfg.name!r}"):
        uri = absolute_uri(tracking_uri(cfg.tracking_uri))
        mlflow_client = client(uri)
        experiment_id = ensure_experiment(mlflow_client, cfg.experiment)
        # Trials checkpoint at every evaluation by design (that is what lets them resume); the warning
        # Tune prints when experiment snapshots follow each other closely is noise for short trials.
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        # Ctrl-C raises in the driver instead of Tune's handler returning partial results as if the
        # study had ended; Tune's saved state (written after every trial event) is what a rerun resumes.
        os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
        connect()
        resources, concurrent = cluster_resources(cfg)
        data = _trial_data(cfg)
        path = f"{storage.rstrip('/')}/{cfg.name}"
        restoring = _can_restore(path)
        parent_run_id = _parent_run(mlflow_client, experiment_id, cfg, must_exist=restoring, storage=path, uri=uri)
        try:
            rows, best, view = _run_trials(cfg, data, resources, concurrent, storage, path, restoring,
                                           parent_run_id, uri, mlflow_client, experiment_id)
        except BaseException as error:
            status = aborted_status(error)
            close_open_runs(mlflow_client, experiment_id, {STUDY_TAG: cfg.name, KIND_TAG: "trial"}, status)
            mlflow_client.set_terminated(parent_run_id, status=status)
            raise
        mlflow_client.set_terminated(parent_run_id, status="FINISHED")
    return SweepResult(experiment_id, parent_run_id, rows, best, path, uri, view)


def _can_restore(path: str) -> bool:
    from ray import tune

    try:
        return tune.Tuner.can_restore(path)
    except OSError as err:  # an unreachable or unreadable storage URI
        raise UserError(f"cannot read Ray storage {path}: {err}") from None


def _run_trials(cfg: SweepConfig, data: Any, resources: dict[str, float], concurrent: int, storage: str, path: str,
                restoring: bool, parent_run_id: str, uri: str, mlflow_client: Any, experiment_id: str
                ) -> tuple[list[dict[str, Any]], dict[str, Any] | None, str]:
    """Tune's part of a study, then its summary: (one row per trial, the best, the study's UI view)."""
    from ray import tune

    base = _study_base(cfg)
    context = TrialContext(base=base, preset=cfg.preset, experiment=cfg.experiment, study=cfg.name,
                           parent_run_id=parent_run_id, tracking_uri=uri, threads=max(1, int(resources["CPU"])),
                           data_key=data_key(data), metric=cfg.metric, mode=cfg.mode,
                           trial_hooks=cfg.trial_hooks)
    trainable = tune.with_resources(tune.with_parameters(run_trial, data=data, context=context), resources)
    rows: list[dict[str, Any]] = []
    # One Tune experiment per request for trials: the first run's, then one more each time the study
    # is run again asking for more (`--trials 12` after 8 trains 4 more, searching on from the 8).
    for index, size in enumerate(_trial_segments(mlflow_client, parent_run_id, cfg)):
        name = cfg.name if index == 0 else f"{cfg.name}+{index}"
        segment = f"{storage.rstrip('/')}/{name}"
        if (restoring if index == 0 else _can_restore(segment)):
            tuner = tune.Tuner.restore(segment, trainable, resume_unfinished=True, resume_errored=True)
        else:
            tuner = tune.Tuner(trainable, param_space=_param_space(cfg),
                               tune_config=_tune_config(cfg, base, concurrent, size, rows),
                               run_config=tune.RunConfig(
                                   name=name, storage_path=storage, verbose=1,
                                   failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
                                   checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
        rows += close_trial_runs(mlflow_client, experiment_id, cfg.name, tuner.fit(), cfg.metric, len(rows), cfg.mode)

    data_label = cfg.data if isinstance(cfg.data, str) else type(cfg.data).__name__
    best = write_summary(mlflow_client, parent_run_id, rows, cfg.metric, base,
                         params={"preset": cfg.preset, "metric": cfg.metric, "mode": cfg.mode, "data": data_label},
                         baseline=cfg.baseline, mode=cfg.mode)
    return rows, best, save_study_view(mlflow_client, experiment_id, cfg.name, cfg.metric, rows, cfg.mode)


SEGMENTS_TAG = "blueberry.trial_segments"  # on the parent run: the trials of each of the study's Tune experiments


def _trial_segments(mlflow_client: Any, parent_run_id: str, cfg: SweepConfig) -> list[int]:
    """How many trials each Tune experiment of the study holds, with one more experiment when `cfg`
    asks for more trials than they add up to (asking for fewer runs none and drops none). Recorded
    before any experiment starts, so a driver killed in a new one finds it again."""
    recorded = mlflow_client.get_run(parent_run_id).data.tags.get(SEGMENTS_TAG)
    segments = json.loads(recorded) if recorded else [cfg.trials]
    if cfg.grid is None and cfg.trials > sum(segments):
        segments.append(cfg.trials - sum(segments))
    mlflow_client.set_tag(parent_run_id, SEGMENTS_TAG, json.dumps(segments))
    return segments


def _prior_study(cfg: SweepConfig, rows: Sequence[dict[str, Any]]) -> Any:
    """An Optuna storage holding the trials already run, so TPE searches on from them: each row's
    searched values replayed through the search space (which gives their distributions), with its
    metric. Trials without a finite metric (failed) or outside the space are left out."""
    import optuna

    storage = optuna.storages.InMemoryStorage()
    direction = "maximize" if cfg.mode == "max" else "minimize"
    study = optuna.create_study(storage=storage, study_name=OPTUNA_STUDY, direction=direction)
    for row in rows:
        point = {key: value for key, value in row.items() if is_config_key(key)}
        if not math.isfinite(row.get(cfg.metric, math.nan)):
            continue
        fixed = optuna.trial.FixedTrial(point)
        try:
            cfg.space(fixed)
            study.add_trial(optuna.trial.create_trial(params=fixed.params, distributions=fixed.distributions,
                                                      value=float(row[cfg.metric])))
        except ValueError:  # outside the space (a baseline beyond its range, a space changed since): Optuna
            continue  # cannot hold it as evidence about the space
    return storage


def _param_space(cfg: SweepConfig) -> dict[str, Any]:
    from ray import tune

    return {key: tune.grid_search(values) for key, values in cfg.grid.items()} if cfg.grid else {}


OPTUNA_STUDY = "optuna"  # the name Ray's OptunaSearch gives its in-memory study


def _tune_config(cfg: SweepConfig, base: RunConfig, concurrent: int, trials: int | None = None,
                 prior: Sequence[dict[str, Any]] = ()) -> Any:
    """Tune's settings for an experiment of `trials` trials (default: the study's), searching on from
    the `prior` rows."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from blueberry.platform.schedulers import ProvisionalASHA

    if cfg.grid is not None:
        return tune.TuneConfig(num_samples=1, max_concurrent_trials=concurrent)
    units_per_sample = base.task().units_per_sample
    budget = base.train.budget_tokens(units_per_sample)
    # Optuna's default is 10 random trials before TPE models anything, which would make any study of
    # 10 trials or fewer a random search; a third of the budget (at least 2) leaves room to exploit.
    startup = max(2, min(10, cfg.trials // 3))
    search = OptunaSearch(space=cfg.space, metric=cfg.metric, mode=cfg.mode, seed=cfg.seed + len(prior),
                          sampler=optuna.samplers.TPESampler(seed=cfg.seed + len(prior), n_startup_trials=startup),
                          points_to_evaluate=[cfg.baseline] if cfg.baseline and not prior else None,
                          storage=_prior_study(cfg, prior) if prior else None,
                          study_name=OPTUNA_STUDY if prior else None)
    asha = ProvisionalASHA if cfg.provisional_promotions else ASHAScheduler
    scheduler = asha(time_attr="tokens", metric=cfg.metric, mode=cfg.mode, max_t=budget,
                     grace_period=asha_grace_tokens(base.train, units_per_sample, cfg.grace_fraction),
                     reduction_factor=cfg.reduction_factor)
    return tune.TuneConfig(search_alg=search, scheduler=scheduler, num_samples=trials or cfg.trials,
                           max_concurrent_trials=concurrent)
