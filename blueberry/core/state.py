"""`TrainState`: everything that changes during training, and so everything a checkpoint holds."""

from __future__ import annotations

import json
import math
from typing import Any

import torch
import torch.nn as nn

from blueberry.core.config import TrainConfig, determining, from_dict, to_dict
from blueberry.core.optim import OptimizerSet
from blueberry.core.parallel import SINGLE_PROCESS, DataParallel, gather_full, local_bytes, shard_like
from blueberry.core.task import Task
from blueberry.errors import DamagedFile, UserError


def run_record(task: Task, train: TrainConfig) -> dict[str, Any]:
    """A run's whole configuration as plain data: the task kind, its model config and the train config."""
    return {"task": task.kind, "model": to_dict(task.config), "train": to_dict(train)}


def run_identity(kind: str, model: Any, train: TrainConfig) -> dict[str, Any]:
    """`run_record` without the fields that only observe the run: what a resumed run must share."""
    return {"task": kind, "model": determining(model), "train": determining(train)}


def saved_identity(payload: dict[str, Any], task: Task) -> dict[str, Any] | None:
    """The identity a checkpoint was written with. Checkpoints from before run records hold the run's
    configuration as JSON under "config" (model and train only: there was one task kind, whose
    config the comparison then checks); None when neither is there or the JSON names unknown fields."""
    if "identity" in payload:
        return payload["identity"]
    if "config" not in payload:
        return None
    try:
        raw = json.loads(payload["config"])
        return run_identity(task.kind, from_dict(task.config_class, raw["model"]), from_dict(TrainConfig, raw["train"]))
    except (ValueError, KeyError, TypeError):  # ConfigError is a ValueError
        return None


def global_batch_identity(identity: dict[str, Any], world_size: int) -> dict[str, Any]:
    """`identity` with the per-rank batch size replaced by the global batch (times `world_size`): what
    two runs on different worker counts must share to continue one another."""
    train = dict(identity.get("train", {}))
    if "batch_size" in train:
        train["batch_size"] = train["batch_size"] * world_size
    return {**identity, "train": train}


class TrainState:
    """The model, optimizer, data position and the loop's counters; `state_dict()` is a complete
    checkpoint, which also records what loading the weights alone needs (task kind, model config,
    what the task says of its data, such as the tokenizer).

    A checkpoint is always whole, whatever the strategy: under FSDP, `state_dict()` gathers the shards
    (every rank calls it) and the main rank holds the result; `load_state_dict` cuts whole tensors to
    this rank's shards. So DDP and FSDP runs, and runs on different worker counts that keep the global
    batch (batch size x workers), resume each other's checkpoints."""

    COUNTERS = ("step", "tokens", "loss_ema", "ema_weight", "first_loss", "active_time_s", "eval_time_s",
                 "target_tokens", "target_time_s")

    def __init__(self, task: Task, train: TrainConfig, model: nn.Module, optimizer: OptimizerSet, stream: Any,
                 device: torch.device, parallel: DataParallel = SINGLE_PROCESS,
                 data_description: dict[str, Any] | None = None) -> None:
        self.task, self.train, self.model, self.optimizer, self.stream = task, train, model, optimizer, stream
        self.device, self.parallel = device, parallel
        self.record = run_record(task, train)
        self.identity = run_identity(task.kind, task.config, train)
        self.data_description = dict(data_description or {})
        self.tokens_per_step = train.tokens_per_step(task.units_per_sample, parallel.world_size)
        self.step = 0
        self.tokens = 0
        self.loss_ema = 0.0
        self.ema_weight = 0.0  # for the EMA's bias correction
        self.first_loss: float | None = None
        self.active_time_s = 0.0
        self.eval_time_s = 0.0
        self.target_tokens: int | None = None
        self.target_time_s: float | None = None

    @property
    def smoothed_loss(self) -> float:
        return self.loss_ema / self.ema_weight if self.ema_weight else math.nan

    def record_loss(self, loss: float, smoothing: float) -> None:
        """One step's loss into the smoothed loss: an EMA with factor `smoothing`, bias-corrected so the
        first step's value is that step's loss. It trails a falling loss (see `ema_lag`)."""
        self.first_loss = loss if self.first_loss is None else self.first_loss
        self.loss_ema = smoothing * self.loss_ema + (1 - smoothing) * loss
        self.ema_weight = smoothing * self.ema_weight + (1 - smoothing)

    def state_dict(self) -> dict[str, Any] | None:
        """The checkpoint's payload on the main rank; None on the others. Call it on every rank: under
        FSDP it gathers the sharded parameters and optimizer state whole (collectives), onto the CPU."""
        model, optimizer = self.model.state_dict(), self.optimizer.state_dict()
        if self.parallel.sharded:
            model, optimizer = gather_full(model, self.parallel.is_main), gather_full(optimizer, self.parallel.is_main)
        if not self.parallel.is_main:
            return None
        return {
            "run": self.record,
            "identity": self.identity,
            "data": self.data_description,
            "model": model,
            "optimizer": optimizer,
            "data_position": self.stream.position,
            "torch_rng": torch.get_rng_state(),
            "world_size": self.parallel.world_size,
            **{name: getattr(self, name) for name in self.COUNTERS},
        }

    def memory(self) -> dict[str, int]:
        """Bytes this rank holds of the parameters, their gradients and the optimizer state (a
        sharded tensor counts its local shard)."""
        params = list(self.model.parameters())
        return {"params": local_bytes(params), "grads": local_bytes(p.grad for p in params),
                "optimizer": local_bytes(self.optimizer.state_tensors())}

    def load_state_dict(self, payload: dict[str, Any]) -> None:
        """Continue from a checkpoint of the same run: the same configuration, except for fields that
        only observe it (evaluation, logging and checkpoint cadence may change between attempts)."""
        identity = saved_identity(payload, self.task)
        if identity is None:
            raise UserError("the checkpoint does not record a configuration this Blueberry can read: start the "
                            "run again in a new checkpoint directory (or with a new name)")
        # Checkpoints from before worker counts were recorded: written by as many workers as this run has.
        saved_world = payload.get("world_size", self.parallel.world_size)
        world = self.parallel.world_size
        if global_batch_identity(identity, saved_world) != global_batch_identity(self.identity, world):
            if saved_world != world and global_batch_identity(identity, 0) == global_batch_identity(self.identity, 0):
                raise UserError(
                    f"the checkpoint was written by {saved_world} worker(s) with batch size "
                    f"{identity['train']['batch_size']}; this run has {world} with {self.train.batch_size}: to "
                    "continue on another worker count, keep the global batch (batch size x workers)")
            raise UserError("the checkpoint was written by a run with a different configuration: "
                            "resume with the same settings or use a new checkpoint directory")
        try:
            current = self.model.state_dict()
            self.model.load_state_dict({k: shard_like(v, current[k]) if k in current else v
                                        for k, v in payload["model"].items()})
            self.optimizer.load_state_dict(payload["optimizer"])
            self.stream.position = payload["data_position"]
            torch.set_rng_state(payload["torch_rng"])
        except (KeyError, IndexError, ValueError, TypeError, RuntimeError, AttributeError) as err:
            # The configuration matched, so the shapes must: what does not fit is a damaged payload.
            raise DamagedFile(f"the checkpoint's state does not fit this run ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200] if str(err) else '-'}): it is damaged") from None
        for name in self.COUNTERS:
            setattr(self, name, payload[name])


def ema_lag(steps: int, smoothing: float) -> float:
    """How many steps the bias-corrected EMA of `steps` losses trails the latest: the mean age of the
    losses it averages, weights (1 - b) b^k / (1 - b^steps) for age k. On a loss that changes linearly
    the EMA equals the loss `ema_lag` steps ago exactly, so a plot draws it there; 0 after one step, b / (1 - b)
    (9 steps for the default 0.9) once warmed up."""
    b = smoothing
    if steps <= 1 or b == 0:
        return 0.0
    return b * (1 - steps * b ** (steps - 1) + (steps - 1) * b ** steps) / ((1 - b) * (1 - b ** steps))
