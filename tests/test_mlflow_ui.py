"""A study reads at a glance in the MLflow UI (issue #13, item 5). Opened from `ui_path`, the experiment
shows its training runs (not MLflow 3's GenAI overview) in the study's saved view: one row per trial,
named by its searched values, with its outcome (finished, stopped early, diverged, failed) in its name,
its MLflow status and its `status` tag, the study's metric and the searched parameters as columns, and
in the charts view a parallel-coordinates chart of the searched parameters against the metric. A
trial's learning rates are named by optimizer, and its final numbers are bars, not lone points.

The tracking store is written by the code a study runs (each trial's tracker from `trial_tracker`,
then `close_trial_runs`, `write_summary` and `save_study_view`), for four short trials that end the
four ways Tune's trials do. The data is checked through MLflow's API; then a real `mlflow server`
serves it and Debian's headless Chromium renders the pages, whose text is checked (skipped, saying
why, where Chromium is not installed). The screenshots in docs/img, taken the same way from a smoke
study, are checked to be there and shown in docs/studies.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from blueberry.core.config import TrainConfig
from blueberry.core.events import EvalInfo
from blueberry.core.hooks import Hook
from blueberry.core.loop import train
from blueberry.models.lm.config import tiny
from blueberry.models.run import RunConfig
from blueberry.platform.report import close_trial_runs, save_study_view, write_summary
from blueberry.platform.search import apply_params
from blueberry.platform.sweep import TrialContext, trial_metrics, trial_tracker
from blueberry.platform.tracking import (KIND_TAG, PRIMARY_METRIC_TAG, STATUS_TAG, STUDY_TAG, TRIAL_TAG,
                                         VIEW_TAG, ensure_experiment, ui_path)

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
STUDY = "lr_sweep-tiny-ui"
METRIC = "val_loss"
SEQ_LEN = 256
# One trial per outcome, as (searched values, how it ends, its run name once closed).
TRIALS = {
    "t_finished": ({"train.muon_lr": 0.024, "train.adamw_lr": 0.006}, "finished",
                   "muon_lr=0.024 adamw_lr=0.006"),
    "t_stopped": ({"train.muon_lr": 0.00312, "train.adamw_lr": 0.000514}, "stopped_early",
                  "muon_lr=0.00312 adamw_lr=0.000514 (stopped early)"),
    "t_diverged": ({"train.muon_lr": 50.0, "train.adamw_lr": 50.0}, "diverged",
                   "muon_lr=50 adamw_lr=50 (diverged)"),
    "t_failed": ({"train.muon_lr": 0.0123, "train.adamw_lr": 0.00456}, "failed",
                 "muon_lr=0.0123 adamw_lr=0.00456 (failed)"),
}


@dataclass
class TuneResult:
    """What `close_trial_runs` reads of a `ray.tune.Result`."""

    metrics: dict[str, Any]
    error: Exception | None
    path: str
    config: dict[str, Any]


class Stopped(Exception):
    pass


class StopAfterFirstEval(Hook):
    """Ends a trial the way ASHA does: after an evaluation, with no `on_end` (Tune stops it mid-report)."""

    def __init__(self) -> None:
        self.last: EvalInfo | None = None

    def on_eval(self, info: EvalInfo, state: Any) -> None:
        self.last = info
        raise Stopped


class FailAtStep(Hook):
    def on_step(self, info: Any, state: Any) -> None:
        if info.step == 3:
            raise RuntimeError("a worker died")


@pytest.fixture(scope="module")
def store(tmp_path_factory, builtin_data) -> dict[str, Any]:
    """A tracking store holding one study of four trials, written as `run_sweep` writes it."""
    tmp = tmp_path_factory.mktemp("mlflow-ui")
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, "lr_sweep")
    parent = client.create_run(experiment_id, run_name=STUDY, tags={STUDY_TAG: STUDY, KIND_TAG: "study"}).info.run_id
    # No warmup or clipping, so that the trial with LR 50 diverges; the others train normally.
    base = RunConfig(tiny(), TrainConfig(train_tokens=8 * 4 * SEQ_LEN, batch_size=4, eval_every=4,
                                         eval_tokens=4 * SEQ_LEN, warmup_frac=0.0, grad_clip=0.0, device="cpu",
                                         log_every=1))
    context = TrialContext(base=base, preset="tiny", experiment="lr_sweep", study=STUDY, parent_run_id=parent,
                           tracking_uri=uri, threads=1, data_key="builtin")
    budget = base.train.budget_tokens(SEQ_LEN)
    results = []
    for trial_id, (params, outcome, _) in TRIALS.items():
        tracker = trial_tracker(context, params, trial_id, f"run_trial_{trial_id}")
        run = apply_params(base, params)
        error, metrics = None, {}
        if outcome == "stopped_early":
            stop = StopAfterFirstEval()
            with pytest.raises(Stopped):
                train(run.task(), run.train, builtin_data, [tracker, stop])
            metrics = trial_metrics(stop.last, None, budget)
        elif outcome == "failed":
            with pytest.raises(RuntimeError) as caught:
                train(run.task(), run.train, builtin_data, [tracker, FailAtStep()])
            error = caught.value
        else:
            result = train(run.task(), run.train, builtin_data, [tracker])
            assert result.diverged == (outcome == "diverged")
            metrics = trial_metrics(None, result, budget)
        results.append(TuneResult({**metrics, "trial_id": trial_id}, error, f"{tmp}/ray/{trial_id}", params))
    rows = close_trial_runs(client, experiment_id, STUDY, results, METRIC)
    write_summary(client, parent, rows, METRIC, base, params={"preset": "tiny", "metric": METRIC})
    view = save_study_view(client, experiment_id, STUDY, METRIC, rows)
    client.set_terminated(parent)
    trials = {r.data.tags[TRIAL_TAG]: r for r in
              client.search_runs([experiment_id], filter_string=f"tags.`{KIND_TAG}` = 'trial'")}
    return {"uri": uri, "client": client, "experiment_id": experiment_id, "view": view, "trials": trials,
            "rows": {r["trial_id"]: r for r in rows}, "tmp": tmp}


# What MLflow records (no browser needed).


def test_trials_are_named_by_their_searched_values_and_outcome(store):
    names = {trial_id: run.info.run_name for trial_id, run in store["trials"].items()}
    assert names == {trial_id: name for trial_id, (_, _, name) in TRIALS.items()}
    assert {run.data.tags["tune_trial_name"] for run in store["trials"].values()} == {f"run_trial_{t}" for t in TRIALS}


def test_status_tells_the_four_outcomes_apart_and_only_a_failure_is_failed(store):
    statuses = {t: (run.info.status, run.data.tags[STATUS_TAG]) for t, run in store["trials"].items()}
    assert statuses == {"t_finished": ("FINISHED", "finished"), "t_stopped": ("FINISHED", "stopped_early"),
                        "t_diverged": ("FINISHED", "diverged"), "t_failed": ("FAILED", "failed")}


def test_each_trial_carries_the_study_metric_as_tune_saw_it(store):
    metrics = {t: run.data.metrics.get(METRIC) for t, run in store["trials"].items()}
    assert metrics["t_finished"] == pytest.approx(store["rows"]["t_finished"][METRIC])
    assert metrics["t_finished"] == pytest.approx(store["trials"]["t_finished"].data.metrics["final/val_loss"])
    # Stopped early: the loss at the evaluation where it was stopped, which Tune ranked it by.
    assert metrics["t_stopped"] == pytest.approx(store["trials"]["t_stopped"].data.metrics["val/loss"])
    assert metrics["t_diverged"] is None and metrics["t_failed"] is None  # no loss to show
    # The searched values, under the names the view shows, equal to the config the trial ran.
    for trial_id, (params, _, _) in TRIALS.items():
        logged = store["trials"][trial_id].data.params
        assert {k: float(logged[f"search.{k}"]) for k in params} == params
        assert {k: float(logged[k]) for k in params} == params


def test_learning_rates_are_named_by_optimizer(store):
    client, run_id = store["client"], store["trials"]["t_finished"].info.run_id
    lrs = {k for k in store["trials"]["t_finished"].data.metrics if k.startswith("train/lr_")}
    assert lrs == {"train/lr_muon", "train/lr_adamw", "train/lr_adamw_no_decay", "train/lr_multiplier"}
    peak = {k: max(m.value for m in client.get_metric_history(run_id, k)) for k in lrs - {"train/lr_multiplier"}}
    assert peak == pytest.approx({"train/lr_muon": 0.024, "train/lr_adamw": 0.006, "train/lr_adamw_no_decay": 0.006})


def test_final_numbers_have_no_step_axis(store):
    client, run_id = store["client"], store["trials"]["t_finished"].info.run_id
    finals = [k for k in store["trials"]["t_finished"].data.metrics if k.startswith("final/")]
    assert "final/val_loss" in finals
    assert {m.step for k in finals for m in client.get_metric_history(run_id, k)} == {0}


def test_the_study_view_shows_its_trials_metric_status_and_searched_parameters(store):
    experiment = store["client"].get_experiment(store["experiment_id"])
    assert experiment.tags[PRIMARY_METRIC_TAG] == METRIC
    envelope = json.loads(experiment.tags[VIEW_TAG + store["view"]])
    assert envelope["name"] == STUDY
    state = json.loads(envelope["state"])
    searched = ["params.`search.train.muon_lr`", "params.`search.train.adamw_lr`"]
    assert state["selectedColumns"] == [f"tags.`{STATUS_TAG}`", f"metrics.`{METRIC}`", *searched]
    assert state["orderByKey"] == f"metrics.`{METRIC}`" and state["orderByAsc"] is True
    matching = store["client"].search_runs([store["experiment_id"]], filter_string=state["searchFilter"])
    assert {r.info.run_id for r in matching} == {r.info.run_id for r in store["trials"].values()}
    parallel = state["compareRunCharts"][0]
    assert parallel["type"] == "PARALLEL" and parallel["selectedMetrics"] == [METRIC]
    assert parallel["selectedParams"] == ["search.train.muon_lr", "search.train.adamw_lr"]
    assert ui_path(store["experiment_id"], store["view"]) == (
        f"/#/experiments/{store['experiment_id']}/runs?workflowType=machine_learning&viewStateShareKey={STUDY}")


# The pages, rendered by headless Chromium from a real MLflow server.


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if path is None:
        pytest.skip("no Chromium to render the MLflow UI with (.ci/run installs Debian's chromium)")
    return path


@pytest.fixture(scope="module")
def server(store):
    """`mlflow server` on a free loopback port over the study's store; stopped with its workers after."""
    chromium()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(store["tmp"] / "server.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store["uri"],
                             "--default-artifact-root", str(store["tmp"] / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            # No background job runners (GenAI evaluation jobs): less to start and stop.
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"mlflow server exited: {(store['tmp'] / 'server.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group: it and its workers
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def render(url: str, name: str, expect: str, height: int = 1000) -> str:
    """The page's text once it contains `expect` (three tries: the UI fetches its data after loading);
    its DOM is kept in test-artifacts/. The UI draws only the charts in the window: `height` sets how many."""
    ARTIFACTS.mkdir(exist_ok=True)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={ARTIFACTS / ('.chromium-' + name)}",
             "--virtual-time-budget=20000", f"--window-size=1600,{height}"]
    text = ""
    for _ in range(3):
        dom = subprocess.run([chromium(), *flags, "--dump-dom", url], capture_output=True, text=True,
                             timeout=120).stdout
        (ARTIFACTS / f"mlflow-ui-{name}.html").write_text(dom)
        text = " ".join(re.sub(r"<style.*?</style>|<!--.*?-->|<[^>]+>", " ", dom, flags=re.DOTALL).split())
        if expect in text:
            break
    return text


def test_the_experiment_opens_on_its_training_runs(store, server):
    page = render(server + ui_path(store["experiment_id"]), "experiment", expect="matching runs")
    assert "5 matching runs" in page  # the study's run with its four trials under it
    assert "Columns" in page and "Token Usage" not in page  # the runs table, not the GenAI overview


def test_the_study_view_lists_each_trial_with_status_metric_and_searched_values(store, server):
    page = render(server + ui_path(store["experiment_id"], store["view"]), "study-view", expect="matching runs")
    assert "4 matching runs" in page  # the trials alone, not nested under the study's run
    for _, _, name in TRIALS.values():
        assert name in page
    for header in (METRIC, "search.train.muon_lr", "search.train.adamw_lr", STATUS_TAG):
        assert header in page
    for status in ("finished", "stopped_early", "diverged", "failed"):
        assert status in page
    assert repr(store["trials"]["t_finished"].data.metrics[METRIC]) in page


def test_the_charts_view_opens_on_the_searched_parameters_against_the_metric(store, server):
    url = server + ui_path(store["experiment_id"], store["view"]) + "&compareRunsMode=CHART"
    page = render(url, "study-charts", expect="Parallel Coordinates")
    assert f"study {STUDY}" in page and "Parallel Coordinates" in page
    # The parallel-coordinates chart comes first, before MLflow's charts of every metric.
    assert page.index("Parallel Coordinates") < page.index("train/loss")


def test_a_trials_metrics_name_the_optimizer_of_each_learning_rate(store, server):
    run_id = store["trials"]["t_finished"].info.run_id
    url = f"{server}/#/experiments/{store['experiment_id']}/runs/{run_id}/model-metrics?workflowType=machine_learning"
    page = render(url, "trial-metrics", expect="lr_muon", height=4000)
    assert "lr_muon" in page and "lr_adamw" in page and "lr_group" not in page


# The screenshots in docs/img.

SCREENSHOTS = ["mlflow-study-runs.png", "mlflow-study-charts.png", "mlflow-compare-runs.png", "mlflow-trial-metrics.png"]


@pytest.mark.parametrize("name", SCREENSHOTS)
def test_screenshots_are_in_docs_img_and_shown_in_the_studies_doc(name):
    path = REPO / "docs" / "img" / name
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and 20_000 < path.stat().st_size < 300_000
    assert f"img/{name}" in (REPO / "docs" / "studies.md").read_text()
