"""Long runs across GPUs: the same `train()` under a Ray Train (V2) `TorchTrainer`, data-parallel.

- The run's task may be any registered model kind; workers build it from the run config.
- Each worker opens the data from the object store (one copy per node) and reads its own slice
  of every global batch; tokens are counted globally and the effective batch is logged.
- `strategy`: `ddp` replicates the model and averages gradients (DistributedDataParallel); `fsdp`
  shards parameters, gradients and optimizer state across the workers (FSDP2, one unit per block
  plus the root). NCCL on GPUs, gloo on CPUs. `activation_checkpointing` recomputes each block's
  activations in backward, under either. Muon splits its orthogonalisation across the workers in
  both (`blueberry.core.optim.Muon`).
- Every `checkpoint_every` steps and at the end, every worker reports to Ray Train and rank 0 attaches
  the checkpoint, which Ray Train persists to the run's storage path. A checkpoint is the whole
  state whatever the strategy (FSDP gathers its shards to rank 0), so a run resumes under the other
  strategy, or on another worker count that keeps the global batch.
- `FailureConfig(max_failures)` restarts the worker group from the latest checkpoint when a worker
  dies. The run's name is its resume key: starting the same name again after the whole job died
  continues from the last checkpoint (Ray Train V2 reloads the run's checkpoint list from storage).
- Rank 0 alone logs to MLflow, into one run per name that a restart finds again by its tags.

Ray is imported inside the functions that use it: importing it takes seconds, and a command's flag
errors should answer at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from blueberry.core.events import RunResult, StepInfo
from blueberry.core.hooks import Hook, Hooks
from blueberry.core.loop import train
from blueberry.core.parallel import STRATEGIES, DataParallel
from blueberry.core.state import TrainState
from blueberry.errors import UserError
from blueberry.models.run import RunConfig
from blueberry.platform.cluster import (check_resources, connect, driver_lock, ray_checkpoint,
                                        restore_ray_checkpoint, storage_path)
from blueberry.platform.tracking import MlflowTracker, absolute_uri, tracking_uri

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
    tags: tuple[tuple[str, str], ...] = ()  # extra MLflow tags on the run
    params: tuple[tuple[str, Any], ...] = ()  # extra MLflow params on the run
    strategy: str = "ddp"  # ddp | fsdp
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise UserError(f"--workers must be at least 1, got {self.workers}")
        if self.checkpoint_every < 1:
            raise UserError(f"checkpoint_every must be at least 1, got {self.checkpoint_every}")
        check_strategy(self.strategy, self.workers)


def check_strategy(strategy: str, workers: int) -> None:
    """Refuse a strategy that does not exist, or FSDP with nothing to shard across."""
    if strategy not in STRATEGIES:
        raise UserError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if strategy == "fsdp" and workers < 2:
        raise UserError(f"--strategy fsdp shards the model across workers and needs at least 2, got --workers "
                        f"{workers}: add workers, or use --strategy ddp")


class TrainReport(Hook):
    """Ray Train reporting: restore from the latest checkpoint on start, report (and, on rank 0,
    checkpoint) every `every` steps (the cadence `Hooks` enforces) and at the end. Every rank
    reports: Ray Train V2 expects it, and FSDP's checkpoint is gathered from every rank."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.resumed_step = 0

    def on_start(self, state: TrainState) -> None:
        import ray.train

        self.resumed_step = restore_ray_checkpoint(ray.train.get_checkpoint(), state)

    def _report(self, metrics: dict[str, float], state: TrainState) -> None:
        import ray.train

        metrics = {**metrics, "step": float(state.step), "resumed_from_step": float(self.resumed_step)}
        # Every rank builds the checkpoint (FSDP gathers the shards); rank 0's carries it, the others' is None.
        with ray_checkpoint(state, ray.train.Checkpoint) as checkpoint:
            ray.train.report(metrics, checkpoint=checkpoint)

    def on_step(self, info: StepInfo, state: TrainState) -> None:
        if info.step < info.total_steps:  # the last step is reported by on_end, with the final metrics
            self._report({"train_loss": info.smoothed_loss, "tokens": float(info.tokens)}, state)

    def on_end(self, result: RunResult, state: TrainState) -> None:
        self._report(result.metrics(), state)


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker loop: everything Ray-specific is here; the training is `train()`."""
    import ray.train

    run: RunConfig = config["run"]
    cfg: DistributedConfig = config["cfg"]
    task = run.task()
    context = ray.train.get_context()
    parallel = DataParallel(rank=context.get_world_rank(), world_size=context.get_world_size(),
                            strategy=cfg.strategy, activation_checkpointing=cfg.activation_checkpointing)
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    hooks = Hooks()
    if parallel.is_main:  # before TrainReport: MLflow has each step before Ray Train can end the worker
        size = task.scale_params(run.train, parallel.world_size)
        hooks.add(MlflowTracker(
            cfg.experiment, cfg.name, uri=cfg.tracking_uri, log_every=run.train.log_every,
            params={**run.flatten(), "preset": cfg.preset, "workers": parallel.world_size, **size,
                    "effective_batch_sequences": run.train.batch_size * run.train.grad_accum_steps
                    * parallel.world_size, "strategy": cfg.strategy,
                    "activation_checkpointing": cfg.activation_checkpointing, **dict(cfg.params)},
            tags={RUN_TAG: cfg.name, **dict(cfg.tags)}, identity={RUN_TAG: cfg.name},
            workers=parallel.world_size))
    hooks.add(TrainReport(parallel.rank), every=cfg.checkpoint_every)
    train(task, run.train, config["data"].open(), hooks, parallel)


def run_distributed(run: RunConfig, data: Any, cfg: DistributedConfig) -> Any:
    """Train `run` on `data` (a handle whose `open()` gives the data in a worker, such as
    `blueberry.platform.data.open_shared`'s) with `cfg.workers` workers. Returns Ray Train's `Result`
    (its `metrics` are the final metrics)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
    from ray.train import RunConfig as TrainRunConfig
    from ray.train.torch import TorchTrainer

    storage = storage_path(cfg.storage)
    with driver_lock(storage, cfg.name, f"distributed run {cfg.name!r}"):
        connect()
        use_gpu = cfg.use_gpu if cfg.use_gpu is not None else ray.cluster_resources().get("GPU", 0) >= 1
        # Ray Train would wait for workers it can never place, retrying forever.
        check_resources(cfg.workers * cfg.cpus_per_worker, cfg.workers if use_gpu else 0,
                        f"--workers {cfg.workers} x {cfg.cpus_per_worker:g} CPU" + (" + 1 GPU" if use_gpu else ""))
        cfg = dataclasses.replace(cfg, tracking_uri=absolute_uri(tracking_uri(cfg.tracking_uri)))
        trainer = TorchTrainer(
            train_worker, train_loop_config={"run": run, "cfg": cfg, "data": data},
            scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu, resources_per_worker={
                "CPU": cfg.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
            run_config=TrainRunConfig(name=cfg.name, storage_path=storage,
                                      failure_config=FailureConfig(max_failures=cfg.max_failures),
                                      checkpoint_config=CheckpointConfig(num_to_keep=2)))
        return trainer.fit()
