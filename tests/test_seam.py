"""The task seam holds: a second model kind (tests/toy: linear regression, progress in samples) trains
through `train()`, resumes bit for bit, loads for inference from its checkpoint alone, runs as a
two-trial Tune sweep with ASHA and as a two-worker Ray Train run, tracked in MLflow, with no change
to the platform."""

from __future__ import annotations

import math

import pytest
import torch
from interrupts import Interrupt, InterruptAt
from mlflow import MlflowClient
from toy.task import NOISE_STD, RegressionConfig, RegressionData, RegressionTask

from blueberry.core.checkpoint import Checkpointer
from blueberry.core.config import TrainConfig, replace
from blueberry.core.hooks import History
from blueberry.core.loop import train
from blueberry.models.registry import load_model
from blueberry.models.run import RunConfig
from blueberry.platform.tracking import KIND_TAG, STUDY_TAG

BATCH = 32


def toy_train(steps: int, batch: int = BATCH, workers: int = 1, **kw) -> TrainConfig:
    """`steps` optimizer steps of `batch` samples on each of `workers` data-parallel ranks."""
    return TrainConfig(train_tokens=steps * batch * workers, batch_size=batch, adamw_lr=0.01, muon_lr=0.02, weight_decay=0.0,
                       device="cpu", log_every=1, **{"eval_every": 20, **kw})


@pytest.fixture(scope="module")
def toy_data() -> RegressionData:
    return RegressionData.make()


def test_a_second_kind_learns_through_train(toy_data):
    history = History()
    result = train(RegressionTask(RegressionConfig()), toy_train(150), toy_data, [history])
    first = history.evals[0].loss
    assert result.tokens == 150 * BATCH  # progress counted in the task's unit: samples
    # The noise floor is NOISE_STD^2; an untrained model is off by |w*|^2 (about 8).
    assert result.val.loss < 1.2 * NOISE_STD ** 2 < first
    assert result.val.rmse == pytest.approx(math.sqrt(result.val.loss))  # the task's own metric names
    assert result.params == {"total": 417} and result.metrics()["final/val_rmse"] == result.val.rmse


def test_a_second_kind_resumes_bit_for_bit_and_loads_for_inference(toy_data, tmp_path):
    task, cfg = RegressionTask(RegressionConfig()), toy_train(40)
    reference = train(task, cfg, toy_data)
    with pytest.raises(Interrupt):
        train(task, cfg, toy_data, [Checkpointer(tmp_path, every=15), InterruptAt(25)])
    resumed = train(task, cfg, toy_data, [Checkpointer(tmp_path, every=15)])
    assert resumed.val.loss == reference.val.loss and resumed.steps == reference.steps

    loaded_task, model, saved = load_model(str(tmp_path))  # the checkpoint alone: no optimizer, no data
    assert isinstance(loaded_task, RegressionTask) and saved.task == "toy-regression" and saved.step == 40
    rows = toy_data.val[:, :-1]
    mse = ((model(rows) - toy_data.val[:, -1]) ** 2).mean().item()
    assert mse == pytest.approx(resumed.val.loss, rel=1e-6)


def test_run_configs_of_any_kind_round_trip_and_key():
    run = RunConfig(RegressionConfig(features=4), toy_train(10))
    assert run.kind == "toy-regression" and RunConfig.from_json(run.to_json()) == run
    assert run.key() != RunConfig(RegressionConfig(features=5), run.train).key()
    assert run.key() == RunConfig(run.model, replace(run.train, eval_every=3, log_every=7)).key()


def adamw_lr(trial):  # module-level: Tune pickles the search space
    trial.suggest_float("train.adamw_lr", 1e-3, 3e-2, log=True)


@pytest.mark.ray
@pytest.mark.slow
def test_a_second_kind_sweeps_with_asha_and_is_tracked(ray_local, toy_data, tmp_path):
    from blueberry.platform.schedulers import ProvisionalASHA
    from blueberry.platform.sweep import SweepConfig, _study_base, _tune_config, run_sweep

    cfg = SweepConfig(experiment="toy_sweep", name="toy", preset="toy", base=RunConfig(RegressionConfig(),
                      toy_train(60)), space=adamw_lr, baseline={"train.adamw_lr": 0.01}, trials=2, data=toy_data,
                      storage=str(tmp_path / "ray"), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", evals_per_trial=4)
    scheduler = _tune_config(cfg, _study_base(cfg), concurrent=2).scheduler
    assert isinstance(scheduler, ProvisionalASHA) and scheduler._max_t == 60 * BATCH  # ASHA's time axis: samples

    result = run_sweep(cfg)
    client = MlflowClient(result.tracking_uri)
    trials = client.search_runs([result.experiment_id], filter_string=f"tags.`{STUDY_TAG}` = 'toy' and "
                                                                      f"tags.`{KIND_TAG}` = 'trial'")
    assert len(result.trials) == 2 and len(trials) == 2
    for run in trials:
        assert run.data.tags["task"] == "toy-regression" and run.data.params["N"] == "417"
        assert "val/rmse" in run.data.metrics and run.data.tags["mlflow.parentRunId"] == result.parent_run_id
    assert result.best is not None and result.best["val_loss"] < 0.1  # untrained: about 9


@pytest.mark.ray
@pytest.mark.slow
def test_a_second_kind_trains_on_two_ray_train_workers(ray_local, toy_data, tmp_path):
    from blueberry.platform.distributed import RUN_TAG, DistributedConfig, run_distributed

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = run_distributed(RunConfig(RegressionConfig(), toy_train(30, batch=BATCH // 2, workers=2, eval_every=0)), toy_data,
                             DistributedConfig(name="toy-ddp", workers=2, checkpoint_every=10, experiment="toy_train",
                                               storage=str(tmp_path / "ray"), tracking_uri=uri))
    torch.set_num_threads(2)
    single = train(RegressionTask(RegressionConfig()), toy_train(30, eval_every=0), toy_data)
    # Two workers with half the batch each are one process with the whole batch.
    assert result.metrics["final/val_loss"] == pytest.approx(single.val.loss, rel=1e-4)
    assert result.metrics["final/tokens"] == single.tokens == 30 * BATCH
    client = MlflowClient(uri)
    (logged,) = client.search_runs([client.get_experiment_by_name("toy_train").experiment_id],
                                   filter_string=f"tags.`{RUN_TAG}` = 'toy-ddp'")
    assert logged.data.metrics["final/val_rmse"] == pytest.approx(math.sqrt(single.val.loss), rel=1e-4)
