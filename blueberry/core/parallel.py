"""Data parallelism for the training loop, in plain `torch.distributed` terms.

`train()` takes a `DataParallel` describing this process's place (rank, world size). With one
process it is a no-op; with several (set up by Ray Train, torchrun or anything that initialises the
default process group) the model is wrapped in DDP, each rank reads its own slice of every global
batch, and the numbers that drive decisions (the step's loss, validation sums) are all-reduced, so
every rank stops, evaluates and checkpoints at the same step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DataParallel:
    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_process_group(cls) -> DataParallel:
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size())

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """DDP when there is more than one process: gradients are averaged across ranks in backward."""
        if self.world_size == 1:
            return model
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value /= self.world_size
        return value

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value


SINGLE_PROCESS = DataParallel()
