"""Experiment tracking: an MLflow hook, and the null tracker that stands in when tracking is off.

The hook talks to MLflow through `MlflowClient` with explicit run ids, never the global "active
run", so it behaves the same in a CLI process, a Tune trial on a remote node, or nested under a
study's parent run. A run id file next to the checkpoints makes a resumed run log into its original
MLflow run instead of a second one.

MLflow is imported inside the functions that use it: importing it takes over a second, which a
command's flag error or `--no-track` run should not pay.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from blueberry.core.events import EvalInfo, RunResult, StepInfo
from blueberry.core.hardware import device_name, hardware_info
from blueberry.core.hooks import Hook
from blueberry.core.state import TrainState, ema_lag
from blueberry.errors import UserError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# What MLflow 3 calls an experiment of training runs. The 3.17 UI does not choose its view by it (it
# opens every experiment in the view its workflow switch or the link's `workflowType` names, see
# `ui_path`); it is kept for the API and other MLflow versions.
EXPERIMENT_KIND_TAG = {"mlflow.experimentKind": "custom_model_development"}
PRIMARY_METRIC_TAG = "mlflow.experiment.primaryMetric.name"  # the UI's charts view draws it first
# A saved view of the runs table (columns, filter, sort, charts): the experiment tag VIEW_TAG + id holds
# it, the UI lists it under "Views" and opens it from a link with `viewStateShareKey=id`.
VIEW_TAG = "mlflow.sharedViewState."
RUN_COLOR_TAG = "mlflow.runColor"  # a run's colour in the UI's charts, "#rrggbb"
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value

# Tags that name runs, so a restarted driver or trial finds its run again instead of making a second.
STUDY_TAG, TRIAL_TAG, KIND_TAG, STATUS_TAG = "blueberry.study", "blueberry.trial_id", "blueberry.kind", "status"
CONFIG_TAG = "blueberry.config_hash"  # the run's identity (`RunConfig.key`): the same work has the same value
HARDWARE_TAG = "hardware."  # + gpu, cpu, torch, cuda: the machine that trained (`core.hardware.hardware_info`)


def tracking_uri(explicit: str | None = None) -> str:
    """`--tracking-uri`, else `$MLFLOW_TRACKING_URI`, else a SQLite file in the working directory."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, in one line, when an HTTP tracking server does not answer (MLflow would retry for minutes)."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s)
    except urllib.error.HTTPError as err:
        if err.code not in (401, 403):  # an auth proxy in front still proves the server is there
            raise UserError(f"MLflow tracking server {uri} answered {err.code} on /health: check the URI") from None
    except (urllib.error.URLError, OSError) as err:
        raise UserError(f"MLflow tracking server {uri} is unreachable ({getattr(err, 'reason', err)}): start it "
                        "(cluster/mlflow-server.sh), fix --tracking-uri, or pass --no-track") from None


# The tracking stores MLflow can open (`mlflow.tracking._tracking_service.utils`); a bare path is a file store.
SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql", "databricks")


def check_uri(uri: str) -> None:
    """Refuse, in one line, a URI MLflow cannot open, or a SQLite file in a directory that does not
    exist (SQLAlchemy would create the directories: a typo would leave `/nonexistent/` behind)."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return
    if scheme.split("+")[0] not in SCHEMES:
        raise UserError(f"tracking URI {uri!r} has an unknown scheme {scheme!r}: use sqlite:///FILE.db, "
                        "http(s)://HOST:PORT or another store MLflow supports")
    if scheme == "sqlite":
        path = rest[1:] if rest.startswith("/") else rest  # sqlite:///rel.db and sqlite:////abs.db
        directory = Path(path).expanduser().parent if path and path != ":memory:" else Path(".")
        if not directory.is_dir():
            raise UserError(f"tracking URI {uri!r}: directory {directory} does not exist; create it or choose "
                            "another path")


def client(uri: str | None = None) -> Any:
    from mlflow import MlflowClient

    resolved = tracking_uri(uri)
    check_uri(resolved)
    check_reachable(resolved)
    return MlflowClient(tracking_uri=resolved)


def ensure_experiment(mlflow_client: Any, name: str) -> str:
    """The id of experiment `name`, created (tagged as model training) if it does not exist."""
    if not name.strip():
        raise UserError("the MLflow experiment name is empty: pass a name, e.g. --experiment blueberry-train")
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise UserError(f"MLflow experiment {name!r} is deleted: restore it in the UI or choose another name")
        if experiment.tags.get("mlflow.experimentKind") != EXPERIMENT_KIND_TAG["mlflow.experimentKind"]:
            for key, value in EXPERIMENT_KIND_TAG.items():
                mlflow_client.set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id
    return mlflow_client.create_experiment(name, tags=EXPERIMENT_KIND_TAG)


def ui_path(experiment_id: str, view: str | None = None) -> str:
    """The MLflow UI's address (after the server's) of the experiment's training-runs table, in saved
    view `view` if given. MLflow 3.17 opens an experiment in the GenAI view (traces, no runs) unless
    the address says `workflowType=machine_learning`, or the user flipped the switch at the top left
    (remembered per browser); the experiment's kind tag no longer decides it."""
    path = f"/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    return f"{path}&viewStateShareKey={urllib.parse.quote(view)}" if view else path


def ui_link(uri: str, experiment_id: str, view: str | None = None) -> str | None:
    """`ui_path` on an HTTP tracking server (None for a local store: `mlflow ui` serves it)."""
    if not uri.startswith(("http://", "https://")):
        return None
    return uri.rstrip("/") + ui_path(experiment_id, view)


def save_view(mlflow_client: Any, experiment_id: str, view: str, name: str, state: dict[str, Any]) -> None:
    """Save (or replace) the experiment's runs-table view `view`, shown as `name` in the UI's Views list.
    `state` is what the UI keeps for the runs page: `searchFilter`, `orderByKey`, `orderByAsc`,
    `selectedColumns` ("metrics.`val_loss`", "params.`x`", "tags.`y`"), `columnOrder` and `columnWidths`,
    `compareRunCharts` and `compareRunSections` (the charts view), `isAccordionReordered`."""
    now = int(time.time() * 1000)
    envelope = {"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    mlflow_client.set_experiment_tag(experiment_id, VIEW_TAG + view, json.dumps(envelope))


def git_commit(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def find_run(mlflow_client: Any, experiment_id: str, tags: dict[str, str]) -> str | None:
    """The id of the run carrying all of `tags`, if there is one."""
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = mlflow_client.search_runs([experiment_id], filter_string=query, max_results=2)
    return runs[0].info.run_id if runs else None


def aborted_status(error: BaseException) -> str:
    """The MLflow status of a run stopped by `error`: KILLED when interrupted (it resumes), else FAILED."""
    return "KILLED" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "FAILED"


def close_open_runs(mlflow_client: Any, experiment_id: str, tags: dict[str, str], status: str) -> None:
    """Give every RUNNING run carrying `tags` the final `status` (a driver closing what its trials left open)."""
    query = " and ".join([f"tags.`{k}` = '{v}'" for k, v in tags.items()] + ["attributes.status = 'RUNNING'"])
    for run in mlflow_client.search_runs([experiment_id], filter_string=query, max_results=10_000):
        mlflow_client.set_terminated(run.info.run_id, status=status)


def absolute_uri(uri: str) -> str:
    """A relative `sqlite:///file.db` made absolute, so processes in other directories find the same file."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def flat_params(params: dict[str, Any]) -> dict[str, str]:
    return {k: (json.dumps(v) if isinstance(v, (list, dict)) else str(v))[:MAX_PARAM_CHARS] for k, v in params.items()}


class NullTracker(Hook):
    """Tracking turned off: a hook that records nothing."""

    def log_text(self, text: str, artifact_file: str) -> None:
        """Nothing to keep it in."""

    def log_image(self, image: Any, artifact_file: str) -> None:
        """Nothing to keep it in."""


class MlflowTracker(Hook):
    """Logs one training run to MLflow: params, step metrics, evaluations, final metrics, artifacts."""

    def __init__(self, experiment: str, run_name: str, params: dict[str, Any], tags: dict[str, str] | None = None,
                 uri: str | None = None, log_every: int = 10, parent_run_id: str | None = None,
                 run_id_file: Path | None = None, reference_loss: tuple[float, str] | None = None,
                 identity: dict[str, str] | None = None, workers: int = 1) -> None:
        self.client = client(uri)
        self.experiment_id = ensure_experiment(self.client, experiment)
        self.run_name, self.params, self.tags = run_name, params, dict(tags or {})
        self.every = log_every  # on_step cadence, enforced where the hook is registered
        self.parent_run_id, self.run_id_file = parent_run_id, run_id_file
        self.reference_loss = reference_loss  # (value, label): a horizontal line on the loss curve
        self.identity = dict(identity or {})  # tags that name this run uniquely, so a restart finds it
        self.workers = workers  # data-parallel processes: throughput is also logged per worker
        self.run_id: str | None = None
        self.logged_through = {"train": 0, "val": 0}  # the last step an earlier attempt logged, by kind

    def _existing_run(self) -> str | None:
        """The run this tracker resumes: named by the run id file, or found by `identity` tags."""
        if self.run_id_file is not None and self.run_id_file.is_file():
            return self.run_id_file.read_text().strip()
        if self.identity:
            return find_run(self.client, self.experiment_id, self.identity)
        return None

    def _create_run(self) -> str:
        tags = {**self.tags, **self.identity}
        if self.parent_run_id:
            tags["mlflow.parentRunId"] = self.parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=self.run_name, tags=tags)
        if self.run_id_file is not None:
            self.run_id_file.parent.mkdir(parents=True, exist_ok=True)
            self.run_id_file.write_text(run.info.run_id)
        return run.info.run_id

    def on_start(self, state: TrainState) -> None:
        from mlflow.entities import Param, RunTag

        existing = self._existing_run()  # one lookup: with identity tags it is an MLflow search
        resuming = existing is not None
        self.run_id = existing if resuming else self._create_run()
        tags = {"device": device_name(state.device), "task": state.task.kind,
                **({"git_commit": c} if (c := git_commit()) else {}),
                **{HARDWARE_TAG + key: value for key, value in hardware_info(state.device).items()}}
        if resuming:
            # A resumed run repeats the steps between its checkpoint and the interruption; they are
            # in the run already, and a step logged twice would draw a second line over the first.
            # (Each kind is logged in one batch, so one key tells how far it got.)
            self.logged_through = {kind: max((m.step for m in self.client.get_metric_history(self.run_id, key)),
                                             default=0) for kind, key in (("train", "train/loss"),
                                                                           ("val", "val/tokens"))}
        params = [] if resuming else [Param(k, v) for k, v in flat_params(self.params).items()]
        self.client.log_batch(self.run_id, params=params, tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.set_terminated(self.run_id, status="RUNNING")

    def _log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def on_step(self, info: StepInfo, state: TrainState) -> None:
        if info.step <= self.logged_through["train"]:
            return
        metrics = {"train/loss": info.loss, "train/smoothed_loss": info.smoothed_loss, "train/tokens": info.tokens,
                   "train/lr_multiplier": info.lr_multiplier, "train/tokens_per_s": info.tokens_per_s}
        metrics |= {f"train/lr_{name}": lr for name, lr in state.optimizer.learning_rates().items()}
        if info.mfu is not None:
            metrics["train/mfu"] = info.mfu
        if self.workers > 1:
            metrics["train/tokens_per_s_per_worker"] = info.tokens_per_s / self.workers
        self._log(metrics, info.step)

    def log_text(self, text: str, artifact_file: str) -> None:
        """A text artifact on the run (samples of what the model writes, for one)."""
        if self.run_id is not None:
            self.client.log_text(self.run_id, text, artifact_file)

    def log_image(self, image: Any, artifact_file: str) -> None:
        """A picture artifact on the run (an (H, W, 3) uint8 array, written as the PNG `artifact_file`):
        a diffusion model's sample grid, for one."""
        if self.run_id is not None:
            self.client.log_image(self.run_id, image, artifact_file=artifact_file)

    def on_eval(self, info: EvalInfo, state: TrainState) -> None:
        if info.step <= self.logged_through["val"]:
            return
        self._log({**{f"val/{name}": value for name, value in info.metrics.items()}, "val/tokens": info.tokens},
                  info.step)

    def on_end(self, result: RunResult, state: TrainState) -> None:
        # At step 0: MLflow's charts draw a metric with no steps as a bar showing its value (one bar per
        # run), where one logged at the last step would be a lone point on a step axis.
        self._log(result.metrics(), 0)
        self.client.set_tag(self.run_id, "outcome", "diverged" if result.diverged else "finished")
        with tempfile.TemporaryDirectory() as tmp:
            config_path = Path(tmp) / "config.json"
            config_path.write_text(json.dumps(state.record, indent=2, sort_keys=True))
            self.client.log_artifact(self.run_id, str(config_path))
            self.client.log_artifact(self.run_id, str(self._draw_loss_curve(Path(tmp) / "loss_curve.png", state)))
        self.client.set_terminated(self.run_id, status="FINISHED")

    def on_abort(self, error: BaseException, state: TrainState) -> None:
        # Interrupted (Ctrl-C, SIGTERM) runs are KILLED and resume into the same run; anything else FAILED.
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=aborted_status(error))

    def _draw_loss_curve(self, path: Path, state: TrainState) -> Path:
        """From the run's logged history, so a resumed run's curve includes what came before the resume."""
        from blueberry.platform.plots import loss_curve  # matplotlib: only when a run ends, not at start-up
        tokens_per_step = state.tokens_per_step

        def points(key: str, lag=lambda step: 0.0) -> list[tuple[float, float]]:
            history = sorted(self.client.get_metric_history(self.run_id, key), key=lambda m: m.step)
            return [((m.step - lag(m.step)) * tokens_per_step, m.value) for m in history]

        # The smoothed loss at step s averages the losses before it: drawn at s, it sits above a falling
        # raw loss by the slope times its lag; drawn where it is centred, it follows the raw loss's trend.
        smoothed = points("train/smoothed_loss", lambda step: ema_lag(step, state.train.loss_smoothing))
        return loss_curve(points("train/loss"), smoothed, points("val/loss"), path,
                          title=self.run_name, reference=self.reference_loss, unit=state.task.unit,
                          loss_name=state.task.loss_name)
