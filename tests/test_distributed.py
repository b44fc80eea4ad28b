"""Ray Train: two CPU workers (gloo DDP) follow one process with the double batch; a worker killed mid-run
is replaced from the last checkpoint and the run ends exactly where an uninterrupted one does, in one
MLflow run, under DDP and under FSDP (whose resumed run ends where the uninterrupted DDP run does); a
whole job killed and started again with its name resumes."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from blueberry.core.config import TrainConfig
from blueberry.core.hooks import History
from blueberry.core.loop import train
from blueberry.errors import UserError
from blueberry.models.lm.config import tiny
from blueberry.models.run import RunConfig
from blueberry.platform.distributed import RUN_TAG, DistributedConfig, run_distributed
from pipelines.share import share

pytestmark = [pytest.mark.ray, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


def run_config(steps: int, per_worker_batch: int, workers: int) -> RunConfig:
    return RunConfig(tiny(), TrainConfig(train_tokens=steps * per_worker_batch * workers * 256,
                                         batch_size=per_worker_batch, log_every=1, eval_every=0, eval_tokens=4096))


def checkpoint_registered(run_dir: Path) -> bool:
    """True once Ray Train's controller has registered a checkpoint of the run and persisted its list: only
    then does a restarted worker group (or job) find it. A checkpoint directory alone is not enough, since
    the controller may still be waiting to collect that report from every worker."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    try:
        return json.loads(snapshot.read_text()).get("latest_checkpoint_result") is not None
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return False


def mlflow_run(uri, name):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("marathon")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{name}'")
    return client, runs


def test_two_workers_match_one_process_with_the_double_batch(ray_local, builtin_data, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = run_distributed(run_config(12, 2, 2), share(builtin_data),
                             DistributedConfig(name="ddp", workers=2, checkpoint_every=4,
                                               storage=str(tmp_path / "ray"), tracking_uri=uri))
    client, (logged,) = mlflow_run(uri, "ddp")
    ddp = [m.value for m in sorted(client.get_metric_history(logged.info.run_id, "train/loss"), key=lambda m: m.step)]
    history = History()
    single = run_config(12, 4, 1)
    reference = train(single.task(), single.train, builtin_data, [history])
    assert len(ddp) == 12
    # Same rows, same global mean: only the order of floating-point sums differs.
    assert ddp == pytest.approx([s.loss for s in history.steps], rel=1e-5)
    assert result.metrics["final/val_loss"] == pytest.approx(reference.val.loss, rel=1e-5)
    assert logged.data.params["workers"] == "2" and logged.data.params["batch_tokens"] == str(4 * 256)
    assert "train/tokens_per_s_per_worker" in logged.data.metrics


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_killed_worker_restarts_from_checkpoint_and_ends_like_an_uninterrupted_run(ray_local, builtin_data, tmp_path,
                                                                                   strategy):
    import psutil

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run = run_config(30, 2, 2)
    data = share(builtin_data)
    # The uninterrupted reference is a DDP run in both cases: FSDP's gradients, clipping and distributed
    # Muon give DDP's numbers bit for bit on gloo (tests/test_fsdp.py), so a resumed FSDP run must end there.
    clean = run_distributed(run, data, DistributedConfig(name="clean", workers=2, checkpoint_every=5,
                                                         storage=str(tmp_path / "ray"), tracking_uri=uri))
    outcome = {}
    cfg = DistributedConfig(name="faulty", workers=2, checkpoint_every=5, storage=str(tmp_path / "ray"),
                            tracking_uri=uri, strategy=strategy)
    job = threading.Thread(target=lambda: outcome.setdefault("result", run_distributed(run, data, cfg)))
    job.start()
    deadline = time.time() + 120
    while time.time() < deadline and not checkpoint_registered(tmp_path / "ray" / "faulty"):
        time.sleep(0.1)
    workers = [p for p in psutil.process_iter(["cmdline"]) if "RayTrainWorker" in " ".join(p.info["cmdline"] or [])]
    assert len(workers) == 2, "expected two training workers to be running"
    os.kill(workers[1].pid, signal.SIGKILL)
    job.join(timeout=300)
    result = outcome["result"]
    assert result.metrics["resumed_from_step"] > 0  # the new worker group started from a checkpoint
    # Restored state is exact and gloo's two-rank sums are order-independent, so the runs agree bit for bit.
    assert result.metrics["final/train_loss"] == clean.metrics["final/train_loss"]
    # Under FSDP every rank evaluates every validation row, batched differently than DDP's split: the
    # batches' float32 mean losses differ in the last bits.
    assert result.metrics["final/val_loss"] == pytest.approx(clean.metrics["final/val_loss"],
                                                             rel=0 if strategy == "ddp" else 1e-6)
    _, runs = mlflow_run(uri, "faulty")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"


def test_whole_job_restart_resumes_by_name(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    argv = [sys.executable, str(REPO / "studies" / "marathon.py"), "--smoke", "--name", "job", "--train-tokens",
            str(30 * 4 * 2 * 256), "--checkpoint-every", "5", "--storage", str(tmp_path / "ray"),
            "--tracking-uri", uri]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and not checkpoint_registered(tmp_path / "ray" / "job") and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the job ended before it could be stopped"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from step" in done.stdout
    _, runs = mlflow_run(uri, "job")
    assert len(runs) == 1 and runs[0].data.metrics["final/steps"] == 30


def test_more_workers_than_the_cluster_holds_is_refused_at_once(ray_local, builtin_data, tmp_path):
    # Before: Ray Train waited for workers it could never place, retrying forever.
    cfg = DistributedConfig(name="too-many", workers=5, storage=str(tmp_path / "ray"),
                            tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(UserError, match=r"^--workers 5 x 1 CPU needs 5 CPU and 0 GPU but the cluster has 2 CPU"):
        run_distributed(run_config(4, 2, 5), share(builtin_data), cfg)
