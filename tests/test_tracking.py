"""The MLflow hook records a whole run (params, step metrics, final metrics, artifacts, tags), resumes into
the same MLflow run instead of a second one, and fails fast on an unreachable server."""

import pytest
from mlflow import MlflowClient

from blueberry.core.checkpoint import Checkpointer
from blueberry.core.config import replace
from blueberry.core.hooks import Hook
from blueberry.core.loop import train
from blueberry.errors import UserError
from blueberry.models.lm.task import LMTask
from blueberry.models.run import RunConfig
from blueberry.platform.tracking import EXPERIMENT_KIND_TAG, MlflowTracker, check_reachable


@pytest.fixture
def uri(tmp_path):
    return f"sqlite:///{tmp_path}/mlflow.db"


def test_tracker_logs_a_complete_run(tiny_model, builtin_data, quick_train, uri, tmp_path):
    run = RunConfig(tiny_model, quick_train)
    tracker = MlflowTracker("unit", "run-a", params=run.flatten(), tags={"preset": "tiny"}, uri=uri, log_every=2)
    result = train(LMTask(tiny_model), quick_train, builtin_data, [tracker])

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("unit")
    assert experiment.tags["mlflow.experimentKind"] == EXPERIMENT_KIND_TAG["mlflow.experimentKind"]
    logged = client.get_run(tracker.run_id)
    assert logged.info.status == "FINISHED"
    assert logged.data.params["model.d_model"] == "128" and logged.data.params["train.optimizer"] == "muon"
    assert logged.data.tags["preset"] == "tiny" and logged.data.tags["device"] == "cpu"
    assert logged.data.tags["outcome"] == "finished"
    assert logged.data.metrics["final/val_loss"] == pytest.approx(result.val.loss)
    train_loss = client.get_metric_history(tracker.run_id, "train/loss")
    assert [m.step for m in sorted(train_loss, key=lambda m: m.step)] == [2, 4, 6, 8, 10, 12]
    assert len(client.get_metric_history(tracker.run_id, "val/loss")) == 2
    artifacts = {a.path for a in client.list_artifacts(tracker.run_id)}
    assert artifacts == {"config.json", "loss_curve.png"}
    png = client.download_artifacts(tracker.run_id, "loss_curve.png", str(tmp_path))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


class Interrupt(Exception):
    pass


class InterruptAt(Hook):
    def on_step(self, info, state):
        if info.step == 6:
            raise Interrupt


def test_resumed_run_logs_into_the_same_mlflow_run_and_no_step_twice(tiny_model, builtin_data, quick_train, uri,
                                                                      tmp_path):
    cfg = replace(quick_train, checkpoint_every=4)
    params = RunConfig(tiny_model, cfg).flatten()

    def tracker():
        return MlflowTracker("resume", "run-b", params=params, uri=uri, log_every=1,
                             run_id_file=tmp_path / "mlflow_run_id")

    first = tracker()
    with pytest.raises(Interrupt):
        train(LMTask(tiny_model), cfg, builtin_data, [Checkpointer(tmp_path / "ckpt", every=4), first, InterruptAt()])
    client = MlflowClient(uri)
    assert client.get_run(first.run_id).info.status == "FAILED"  # closed by on_abort; before: left RUNNING
    second = tracker()
    train(LMTask(tiny_model), cfg, builtin_data, [Checkpointer(tmp_path / "ckpt", every=4), second])

    runs = client.search_runs([client.get_experiment_by_name("resume").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == second.run_id and runs[0].info.status == "FINISHED"
    # Steps 1-6 from the first attempt; the second resumes from the step-4 checkpoint and trains 5 and 6
    # again, which are not logged a second time.
    assert [m.step for m in client.get_metric_history(second.run_id, "train/loss")] == list(range(1, 13))
    assert [m.step for m in client.get_metric_history(second.run_id, "val/loss")] == [6, 12]


def test_unreachable_tracking_server_fails_fast_in_one_line():
    with pytest.raises(UserError, match="unreachable") as err:
        check_reachable("http://127.0.0.1:9", timeout_s=2)
    assert "\n" not in str(err.value)


def test_a_study_recorded_elsewhere_is_not_started_again(tmp_path):
    # The tracking store holds the study's trials but Ray storage has nothing to restore (it ran with
    # another --storage): starting afresh would train and record every trial twice, so it is refused.
    # A parent run with no trials (a driver stopped before Tune saved anything) is continued.
    from blueberry.core.config import TrainConfig
    from blueberry.models.lm.config import tiny
    from blueberry.platform.sweep import SweepConfig, _parent_run
    from blueberry.platform.tracking import KIND_TAG, STUDY_TAG, client, ensure_experiment

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow_client = client(uri)
    experiment_id = ensure_experiment(mlflow_client, "lr_sweep")
    cfg = SweepConfig(experiment="lr_sweep", name="s", preset="tiny", base=RunConfig(tiny(), TrainConfig()),
                      space=None, grid={"train.muon_lr": [0.01]})
    parent = _parent_run(mlflow_client, experiment_id, cfg, must_exist=False, storage="ray/s", uri=uri)
    assert _parent_run(mlflow_client, experiment_id, cfg, must_exist=False, storage="ray/s", uri=uri) == parent
    mlflow_client.create_run(experiment_id, tags={STUDY_TAG: "s", KIND_TAG: "trial"})
    with pytest.raises(UserError, match="pass the --storage it ran with"):
        _parent_run(mlflow_client, experiment_id, cfg, must_exist=False, storage="ray/s", uri=uri)
    assert _parent_run(mlflow_client, experiment_id, cfg, must_exist=True, storage="ray/s", uri=uri) == parent
