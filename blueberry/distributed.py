"""Long runs across GPUs: the same `train()` under a Ray Train (V2) `TorchTrainer`, data-parallel.

- Each worker opens the token data from the object store (one copy per node) and reads its own slice
  of every global batch; gradients are averaged by DDP (NCCL on GPUs, gloo on CPUs); tokens are
  counted globally and the effective batch is logged.
- Every `checkpoint_every` steps and at the end, every worker reports to Ray Train and rank 0 attaches
  the checkpoint, which Ray Train persists to the run's storage path.
- `FailureConfig(max_failures)` restarts the worker group from the latest checkpoint when a worker
  dies. The run's name is its resume key: starting the same name again after the whole job died
  continues from the last checkpoint (Ray Train V2 reloads the run's checkpoint list from storage).
- Rank 0 alone logs to MLflow, into one run per name that a restart finds again by its tags.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from blueberry.checkpoint import ray_checkpoint, restore_ray_checkpoint
from blueberry.config import RunConfig
from blueberry.errors import UserError
from blueberry.hooks import Hook, RunResult, StepInfo
from blueberry.model import scale_params

RUN_TAG = "blueberry.distributed_run"


@dataclass(frozen=True)
class DistributedConfig:
    name: str  # the resume key
    workers: int = 2
    use_gpu: bool | None = None  # None: when the cluster has GPUs
    cpus_per_worker: float = 1.0
    checkpoint_every: int = 50  # optimizer steps
    max_failures: int = 3
    storage: str | None = None  # a path or URI every node can reach; default ~/ray_results
    experiment: str = "marathon"
    tracking_uri: str | None = None
    preset: str = ""
    tags: tuple[tuple[str, str], ...] = ()  # extra MLflow tags (the scaling grid keys points by them)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise UserError(f"--workers must be at least 1, got {self.workers}")
        if self.checkpoint_every < 1:
            raise UserError(f"checkpoint_every must be at least 1, got {self.checkpoint_every}")


class TrainReport(Hook):
    """Ray Train reporting: restore from the latest checkpoint on start, report (and, on rank 0,
    checkpoint) every `every` steps and at the end. Every rank reports: Ray Train V2 expects it."""

    def __init__(self, every: int, rank: int) -> None:
        self.every, self.rank = every, rank
        self.resumed_step = 0

    def on_start(self, state: Any) -> None:
        import ray.train

        self.resumed_step = restore_ray_checkpoint(ray.train.get_checkpoint(), state)

    def _report(self, metrics: dict[str, float], state: Any) -> None:
        import ray.train

        metrics = {**metrics, "step": float(state.step), "resumed_from_step": float(self.resumed_step)}
        if self.rank != 0:
            ray.train.report(metrics)
            return
        with ray_checkpoint(state, ray.train.Checkpoint) as checkpoint:
            ray.train.report(metrics, checkpoint=checkpoint)

    def on_step(self, info: StepInfo, state: Any) -> None:
        if info.step % self.every == 0 and info.step < info.total_steps:
            self._report({"train_loss": info.smoothed_loss, "tokens": float(info.tokens)}, state)

    def on_end(self, result: RunResult, state: Any) -> None:
        self._report(result.metrics(), state)


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker loop: everything Ray-specific is here; the training is `train()`."""
    import ray.train
    import torch

    from blueberry.parallel import DataParallel
    from blueberry.tracking import MlflowTracker
    from blueberry.train import train

    run: RunConfig = config["run"]
    cfg: DistributedConfig = config["cfg"]
    context = ray.train.get_context()
    parallel = DataParallel(rank=context.get_world_rank(), world_size=context.get_world_size())
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    hooks: list[Hook] = []
    if parallel.is_main:  # before TrainReport: MLflow has each step before Ray Train can end the worker
        size = scale_params(run, parallel.world_size)
        hooks.append(MlflowTracker(
            cfg.experiment, cfg.name, uri=cfg.tracking_uri, log_every=run.train.log_every,
            params={**run.flatten(), "preset": cfg.preset, "workers": parallel.world_size, **size,
                    "effective_batch_sequences": size["batch_tokens"] // run.model.seq_len},
            tags={RUN_TAG: cfg.name, **dict(cfg.tags)}, identity={RUN_TAG: cfg.name},
            workers=parallel.world_size))
    hooks.append(TrainReport(cfg.checkpoint_every, parallel.rank))
    train(run.model, run.train, config["data"].open(), hooks, parallel)


def run_distributed(run: RunConfig, data: Any, cfg: DistributedConfig) -> Any:
    """Train `run` on `data` (a `pipelines.share.SharedShards` handle) with `cfg.workers` workers.
    Returns Ray Train's `Result` (its `metrics` are the final metrics)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig as TrainRunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from blueberry.sweep import storage_path
    from blueberry.tracking import absolute_uri, tracking_uri

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False, configure_logging=False)
    use_gpu = cfg.use_gpu if cfg.use_gpu is not None else ray.cluster_resources().get("GPU", 0) >= 1
    cfg = DistributedConfig(**{**cfg.__dict__, "tracking_uri": absolute_uri(tracking_uri(cfg.tracking_uri))})
    storage = storage_path(cfg.storage)
    trainer = TorchTrainer(
        train_worker, train_loop_config={"run": run, "cfg": cfg, "data": data},
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
        run_config=TrainRunConfig(name=cfg.name, storage_path=storage,
                                  failure_config=FailureConfig(max_failures=cfg.max_failures),
                                  checkpoint_config=CheckpointConfig(num_to_keep=2)))
    return trainer.fit()
