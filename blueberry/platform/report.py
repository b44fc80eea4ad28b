"""A study's summary, written by the driver: each trial's final status in MLflow, the parent run's
trials.csv, best_config.json and plots (drawn by `blueberry.platform.study_plots`), and the study's view
in the MLflow UI. (MLflow's entities are imported where they are used, like `blueberry.platform.tracking`
does, to keep MLflow's import off the start-up path.)"""

from __future__ import annotations

import csv
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from blueberry.models.run import RunConfig
from blueberry.platform.search import apply_params, flat_overrides, is_config_key
from blueberry.platform.study_plots import curves_figure, joint_figure, params_figure, save_figure
from blueberry.platform.tracking import (KIND_TAG, PRIMARY_METRIC_TAG, RUN_COLOR_TAG, STATUS_TAG, STUDY_TAG,
                                         TRIAL_TAG, find_run, save_view)

# Distinct colours for the trials' lines in the UI's charts (matplotlib's tab10), where MLflow's own,
# hashed from run ids, often repeat one hue.
RUN_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
              "#17becf")
# Tune's outcome -> (our status tag, MLflow run status). ASHA stopping a trial is a normal outcome of a
# study, not an error: its run is FINISHED (MLflow's UI marks KILLED and FAILED runs alike with a red
# cross), and its status tag and name say it stopped early.
STATUSES = {"finished": "FINISHED", "diverged": "FINISHED", "stopped_early": "FINISHED", "failed": "FAILED"}


def trial_run_name(params: dict[str, Any], status: str = "finished") -> str:
    """A trial's MLflow run name: its searched values in the study's order, `muon_lr=0.024 adamw_lr=0.006`
    (each key's last part, unless two share it; three significant digits), then the outcome unless it
    finished: `... (stopped early)`, `(diverged)`, `(failed)`."""
    flat = flat_overrides(params)
    last = [key.rsplit(".", 1)[-1] for key in flat]
    names = [short if last.count(short) == 1 else key for key, short in zip(flat, last)]
    values = " ".join(f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}"
                      for name, value in zip(names, flat.values()))
    return values if status == "finished" else f"{values} ({status.replace('_', ' ')})".strip()


def trial_status(metrics: dict[str, Any], error: Exception | None) -> str:
    if error is not None:
        return "failed"
    if metrics.get("diverged"):
        return "diverged"
    return "finished" if metrics.get("completed") else "stopped_early"


def close_trial_runs(client: Any, experiment_id: str, study: str, results: Any, metric: str = "val_loss",
                     first_index: int = 0, mode: str = "min") -> list[dict[str, Any]]:
    """One row per trial; each trial's MLflow run gets its final status (trials ASHA stopped cannot
    close their own runs: Tune ends them mid-step), its outcome in its name, and the study's `metric`
    as Tune last saw it (the loss where ASHA stopped it, for a trial stopped early; none for a trial
    that diverged or failed). `first_index` numbers the trials after those of the study's earlier Tune
    experiments, for their colours. `mode` is the way `metric` improves ("min" or "max")."""
    from mlflow.entities import Metric

    rows = []
    for index, result in enumerate(results, start=first_index):
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name
        status = trial_status(metrics, result.error)
        run_id = find_run(client, experiment_id, {STUDY_TAG: study, TRIAL_TAG: trial_id})
        if run_id is not None:
            client.set_tag(run_id, STATUS_TAG, status)
            client.set_tag(run_id, "tune_trial_id", trial_id)
            client.set_tag(run_id, RUN_COLOR_TAG, RUN_COLORS[index % len(RUN_COLORS)])
            never_reached = metric == "target_tokens" and metrics.get("reached_target") != 1.0
            # An evaluation's val/<name> is in the run's history already, its latest value what the UI shows.
            logged = metric.startswith("val/")
            if status in ("finished", "stopped_early") and math.isfinite(metrics.get(metric, math.nan)) \
                    and not never_reached and not logged:
                # At step 0, like the final metrics: one bar per trial in the UI's charts.
                client.log_batch(run_id, metrics=[Metric(metric, float(metrics[metric]), int(time.time() * 1000), 0)])
            if result.config:
                client.update_run(run_id, name=trial_run_name(result.config, status))
            client.set_terminated(run_id, status=STATUSES[status])
        row = {"trial_id": trial_id, "mlflow_run_id": run_id, "status": status, **flat_overrides(result.config or {}),
               "val_loss": metrics.get("val_loss", math.nan), "tokens": metrics.get("tokens", 0)}
        if metric == "target_tokens":  # only studies of a target loss have it; inf: never reached
            reached = metrics.get("reached_target", 0.0) == 1.0
            row["target_tokens"] = metrics.get("target_tokens", math.inf) if reached else math.inf
        elif metric != "val_loss":  # an evaluation's val/<name>: a downstream task, for one
            row[metric] = metrics.get(metric, math.nan)
        rows.append(row)
    return rows


def csv_value(key: str, value: Any) -> Any:
    """How trials.csv shows a value: a target never reached says so, instead of a stand-in number."""
    return "not reached" if key == "target_tokens" and value == math.inf else value


def best_row(rows: list[dict[str, Any]], metric: str, mode: str = "min") -> dict[str, Any] | None:
    """The best trial that ran its whole budget; failing that, the best that did not fail."""
    for allowed in (("finished",), ("finished", "stopped_early", "diverged")):
        candidates = [r for r in rows if r["status"] in allowed and math.isfinite(r[metric])]
        if candidates:
            return (max if mode == "max" else min)(candidates, key=lambda r: r[metric])
    return None


def worse_first(value: float, mode: str) -> float:
    """A sort key putting the best value of a metric first, and a missing one last."""
    if not math.isfinite(value):
        return math.inf
    return -value if mode == "max" else value


def _learning_curves(client: Any, rows: list[dict[str, Any]], metric: str, path: Path, unit: str,
                     mode: str = "min") -> Path:
    """Each trial's validation loss from its MLflow run, named as the run is (by its searched values) and
    in its colour in the UI's charts; the legend lists the trials that ran their whole budget first, best
    first."""
    curves = []
    for index, row in enumerate(rows):
        if row["mlflow_run_id"] is None:
            continue
        history = sorted(client.get_metric_history(row["mlflow_run_id"], "val/loss"), key=lambda m: m.step)
        tokens = {m.step: m.value for m in client.get_metric_history(row["mlflow_run_id"], "val/tokens")}
        points = [(tokens.get(m.step, math.nan), m.value) for m in history if m.value < 50]
        params = {k: v for k, v in row.items() if is_config_key(k)}
        name = trial_run_name(params, row["status"]) if params else row["trial_id"]
        status_order = ("finished", "stopped_early", "diverged", "failed").index(row["status"])
        order = (status_order, worse_first(row[metric], mode))
        curves.append((order, (name, row["status"], RUN_COLORS[index % len(RUN_COLORS)], points)))
    return save_figure(curves_figure([curve for _, curve in sorted(curves, key=lambda c: c[0])], unit), path)


def write_summary(client: Any, parent_run_id: str, rows: list[dict[str, Any]], metric: str, base: RunConfig,
                  params: dict[str, Any], baseline: dict[str, Any] | None = None, mode: str = "min"
                  ) -> dict[str, Any] | None:
    """trials.csv, best_config.json and the plots (`study_plots`) on the parent run; best metrics as its
    metrics and `params` (what the study was run with) as its params. `baseline` is the point the study
    evaluated first, marked in the plots."""
    from mlflow.entities import Metric, Param

    best = best_row(rows, metric, mode)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        fields = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("trial_id", "status"), k))
        with open(tmp_path / "trials.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows({k: csv_value(k, v) for k, v in row.items()} for row in rows)
        artifacts = [tmp_path / "trials.csv",
                     save_figure(params_figure(rows, metric, baseline, best), tmp_path / "loss_vs_params.png"),
                     _learning_curves(client, rows, metric, tmp_path / "learning_curves.png", base.task().unit, mode)]
        if joint := joint_figure(rows, metric, baseline, best):
            artifacts.append(save_figure(joint, tmp_path / "joint.png"))
        if best is not None:
            best_params = {k: v for k, v in best.items() if is_config_key(k)}
            run = apply_params(base, best_params)
            (tmp_path / "best_config.json").write_text(json.dumps(
                {"trial_id": best["trial_id"], metric: best[metric], "params": best_params,
                 "config": json.loads(run.to_json())}, indent=2))
            artifacts.append(tmp_path / "best_config.json")
        for artifact in artifacts:
            client.log_artifact(parent_run_id, str(artifact))
    counts = {status: sum(r["status"] == status for r in rows) for status in STATUSES}
    metrics = {f"trials_{k}": float(v) for k, v in counts.items()}
    if best is not None:
        metrics[f"best_{metric}"] = float(best[metric])
    client.log_batch(parent_run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
                     params=[Param(k, str(v)) for k, v in params.items()])
    return best


def study_view(study: str, metric: str, searched: list[str], mode: str = "min") -> dict[str, Any]:
    """The runs-table view of one study: its trials alone (not nested under the study's run), best
    first, with their status, the study's metric and the searched parameters as columns; in the charts
    view, the searched parameters against the metric (parallel coordinates, then one scatter plot each)
    before MLflow's charts of every metric."""
    params = [f"search.{key}" for key in searched]
    section = f"{study}-section"

    def chart(kind: str, name: str, **fields: Any) -> dict[str, Any]:
        return {"uuid": f"{study}-{name}", "type": kind, "metricSectionId": section, "runsCountToCompare": 100,
                "deleted": False, "isGenerated": False, **fields}

    charts = [chart("PARALLEL", "parallel", selectedParams=params, selectedMetrics=[metric], showAllRuns=True)]
    charts += [chart("SCATTER", f"scatter-{key}", xaxis={"key": key, "type": "PARAM"},
                     yaxis={"key": metric, "type": "METRIC"}) for key in params]
    return {
        "searchFilter": f"tags.`{STUDY_TAG}` = '{study}' and tags.`{KIND_TAG}` = 'trial'",
        "orderByKey": f"metrics.`{metric}`", "orderByAsc": mode == "min",
        "selectedColumns": [f"tags.`{STATUS_TAG}`", f"metrics.`{metric}`", *(f"params.`{key}`" for key in params)],
        # The UI sizes only the columns `columnOrder` lists: wide enough for a trial's name and values.
        "columnOrder": ["attributes.`Run Name`", "runDateAndNestInfo", "duration", f"metrics.`{metric}`",
                        *(f"params.`{key}`" for key in params), f"tags.`{STATUS_TAG}`"],
        "columnWidths": {"attributes.`Run Name`": 380, f"metrics.`{metric}`": 110,
                         **{f"params.`{key}`": 170 for key in params}, f"tags.`{STATUS_TAG}`": 120},
        "compareRunCharts": charts,
        "compareRunSections": [{"uuid": section, "name": f"study {study}", "display": True, "isReordered": False,
                                "deleted": False, "isGenerated": False}],
        "isAccordionReordered": True,  # keeps the study's section first
    }


def save_study_view(client: Any, experiment_id: str, study: str, metric: str, rows: list[dict[str, Any]],
                    mode: str = "min") -> str:
    """Save `study_view` as the experiment's view named after the study, and make `metric` the
    experiment's primary metric; returns the view's id (`blueberry.platform.tracking.ui_path` opens it)."""
    searched = list(dict.fromkeys(k for row in rows for k in row if is_config_key(k)))
    client.set_experiment_tag(experiment_id, PRIMARY_METRIC_TAG, metric)
    save_view(client, experiment_id, study, study, study_view(study, metric, searched, mode))
    return study
