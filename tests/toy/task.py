"""Linear regression y = x . w* + noise as a model kind: a config, a model, data and a `Task`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from blueberry.core.config import TrainConfig, require_positive
from blueberry.core.parallel import DataParallel
from blueberry.core.task import Loss, Task
from blueberry.errors import DataError
from blueberry.models.registry import register_task

NOISE_STD = 0.1  # the best achievable validation loss is NOISE_STD ** 2


@dataclass(frozen=True)
class RegressionConfig:
    features: int = 8
    hidden: int = 16  # a hidden layer, so Muon has a matrix to orthogonalise

    def __post_init__(self) -> None:
        require_positive(features=self.features, hidden=self.hidden)


class RegressionModel(nn.Module):
    def __init__(self, cfg: RegressionConfig) -> None:
        super().__init__()
        self.inp = nn.Linear(cfg.features, cfg.hidden)
        self.hidden = nn.Linear(cfg.hidden, cfg.hidden, bias=False)
        self.out = nn.Linear(cfg.hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(self.inp(x))).squeeze(-1)  # linear all the way: it can fit w* exactly


class RegressionStream:
    """Rows of one split in a seeded order; `position` is the whole state, like the token stream's."""

    def __init__(self, rows: torch.Tensor, batch_size: int, seed: int, rank: int, world_size: int) -> None:
        self.rows, self.batch_size, self.seed, self.rank, self.world_size = rows, batch_size, seed, rank, world_size
        self.position = 0

    def _indices(self) -> np.ndarray:
        start = self.position + self.rank * self.batch_size
        order = np.random.default_rng(self.seed).permutation(len(self.rows))
        return order[np.arange(start, start + self.batch_size) % len(self.rows)]

    def peek(self) -> torch.Tensor:
        return self.rows[self._indices()]

    def next(self) -> torch.Tensor:
        batch = self.peek()
        self.position += self.batch_size * self.world_size
        return batch


@dataclass(frozen=True)
class RegressionData:
    """Rows of [x, y]: features and target. Small and picklable: its own sharing handle (`open()`)."""

    train: torch.Tensor
    val: torch.Tensor

    @classmethod
    def make(cls, features: int = 8, rows: int = 4096, seed: int = 0) -> RegressionData:
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(features, generator=g)
        x = torch.randn(rows, features, generator=g)
        y = x @ w + NOISE_STD * torch.randn(rows, generator=g)
        table = torch.cat([x, y[:, None]], dim=1)
        split = rows * 7 // 8
        return cls(table[:split], table[split:])

    def open(self) -> RegressionData:
        return self

    def train_stream(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> RegressionStream:
        return RegressionStream(self.train, batch_size, seed, rank, world_size)


@register_task
class RegressionTask(Task[RegressionConfig]):
    kind = "toy-regression"
    unit = "samples"
    loss_name = "mean squared error"
    config_class = RegressionConfig

    def build_model(self) -> nn.Module:
        return RegressionModel(self.config)

    def hidden_matrices(self, model: nn.Module) -> list[nn.Parameter]:
        return [model.hidden.weight]

    def loss(self, model: nn.Module, batch: torch.Tensor) -> Loss:
        prediction = model(batch[:, :-1])
        return Loss(nn.functional.mse_loss(prediction.float(), batch[:, -1]), prediction.new_zeros((), dtype=torch.float32))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: RegressionData, train: TrainConfig, device: torch.device,
                 parallel: DataParallel) -> dict[str, float]:
        rows = data.val[parallel.rank::parallel.world_size].to(device)
        squared = parallel.sum(((model(rows[:, :-1]) - rows[:, -1]) ** 2).sum().double())
        count = parallel.sum(torch.tensor(len(rows), device=device))
        mse = (squared / count).item()
        return {"loss": mse, "rmse": math.sqrt(mse)}

    @property
    def units_per_sample(self) -> int:
        return 1

    def flops_per_unit(self) -> float:
        return 6.0 * sum(p.numel() for p in self.build_model().parameters())

    def param_counts(self) -> dict[str, int]:
        return {"total": sum(p.numel() for p in self.build_model().parameters())}

    def check_data(self, data: Any) -> None:
        if data.train.shape[1] != self.config.features + 1:
            raise DataError(f"data has {data.train.shape[1] - 1} features, the model {self.config.features}")
