"""The seam between the platform and a model kind.

A `Task` is everything a model kind (the language model, a diffusion transformer, a VQ-VAE...) gives
the platform: how to build its model from its config, the loss of a batch, its evaluation as named
metrics, the unit its progress is counted in and how many units a sample holds, FLOPs per unit (for MFU
and the compute sweeps record), the numbers a scaling fit reads, and its repeated layers (`blocks`: what
FSDP shards, activation checkpointing recomputes and Muon updates). The training loop, sweeps, ASHA, Ray
Train, tracking and checkpoints take a Task and never name a model class; a new kind adds a folder under
`blueberry/models/` and registers its Task there. What a kind can do with a trained model (sample,
evaluate, export) it declares in `capabilities` (`blueberry.core.capabilities`).

What a Task needs of its data is small: `train_stream(batch_size, seed, rank=, world_size=)` for
the loop (a stream with `next()`, `peek()` and an integer `position`), plus whatever its own
`evaluate` and `check_data` read.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar

import torch
import torch.nn as nn

from blueberry.core.config import TrainConfig
from blueberry.core.parallel import DataParallel

ModelConfigT = TypeVar("ModelConfigT")


class Loss(NamedTuple):
    value: torch.Tensor  # the loss the run reports and judges (divergence, target, ASHA)
    aux: torch.Tensor  # added to `value` for the gradient only (an MoE balancing loss, a KL term); may be 0


@dataclass(frozen=True)
class Capabilities:
    """What a kind can do with a trained model, one class each from its own folder (None: it cannot). Each is
    built on an interface of `blueberry.core.capabilities`: `generate` on `Generate` (blueberry-generate),
    `evaluate` on `Evaluate` (blueberry-eval; without one, the Task's own `evaluate` on `--data`),
    `downstream` on `Downstream` (tasks scored during training, `--eval-tasks`), `export` on `Export`
    (blueberry-export)."""

    generate: type | None = None
    evaluate: type | None = None
    downstream: type | None = None
    export: type | None = None


class Task(ABC, Generic[ModelConfigT]):
    """A model kind, bound to one model config."""

    kind: ClassVar[str]  # the registry name, recorded in runs and checkpoints
    unit: ClassVar[str]  # what progress counts: "tokens", "images", "samples"
    loss_name: ClassVar[str] = "loss"  # what the loss is, for plots: "cross-entropy (nats/token)"
    config_class: ClassVar[type]  # the model config dataclass
    presets: ClassVar[Mapping[str, Callable[[], Any]]] = {}  # named model configs, e.g. "tiny"
    # The TrainConfig a preset trains with by default, where TrainConfig's own defaults (the language
    # model's speedrun) do not fit it: a diffusion model counts images and wants other learning rates.
    train_presets: ClassVar[Mapping[str, Callable[[], TrainConfig]]] = {}
    data_format: ClassVar[str] = "tokens"  # what `--data` opens for it: "tokens" or "images"
    # What `evaluate` reports, each with the way it improves ("min" or "max"): a sweep may judge trials
    # by any of them (`--metric val/<name>`).
    eval_metrics: ClassVar[Mapping[str, str]] = {"loss": "min"}
    # What it can do with a trained model: sample, be evaluated, score downstream tasks, be exported.
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, config: ModelConfigT) -> None:
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialised model (on the CPU; the loop moves it)."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: torch.Tensor) -> Loss:
        """The training loss of one batch from the data's train stream, already on the device."""

    @abstractmethod
    def evaluate(self, model: nn.Module, data: Any, train: TrainConfig, device: torch.device,
                 parallel: DataParallel) -> dict[str, float]:
        """Validation metrics by name, summed over data-parallel ranks; always includes "loss"."""

    @property
    @abstractmethod
    def units_per_sample(self) -> int:
        """Units in one sample of a batch (for the language model: seq_len tokens per row)."""

    @abstractmethod
    def flops_per_unit(self) -> float:
        """Training FLOPs (forward and backward) per unit, for MFU."""

    @abstractmethod
    def param_counts(self) -> dict[str, int]:
        """Parameter counts by name; "total" at least."""

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        """The model's repeated layers, in order: the units FSDP shards one at a time and activation
        checkpointing recomputes, whose weight matrices Muon updates (`hidden_matrices`). None by default:
        a kind that declares none trains on one device or under DDP with AdamW, and asking it for FSDP,
        activation checkpointing or Muon is refused in one line."""
        return []

    def hidden_matrices(self, model: nn.Module) -> list[nn.Parameter]:
        """The parameters Muon (rather than AdamW) updates: by default every 2-D weight inside `blocks`.
        Embeddings, output heads and norms stay with AdamW."""
        return [p for block in self.blocks(model) for p in block.parameters() if p.ndim == 2]

    def reference_loss(self, data: Any) -> tuple[float, str] | None:
        """A loss worth drawing beside the run's curves, with what it is (the language model: the unigram
        entropy of its training data, what a model that ignores context reaches); None: none."""
        return None

    def scale_params(self, train: TrainConfig, world_size: int = 1) -> dict[str, int | float]:
        """What scaling fits read from every tracked run. By default: N (total parameters), D (units
        trained) and the global batch in units."""
        return {"N": self.param_counts()["total"], "D": train.budget_tokens(self.units_per_sample, world_size),
                "batch_tokens": train.tokens_per_step(self.units_per_sample, world_size)}

    def check_data(self, data: Any) -> None:
        """Raise a `DataError` saying how to fix it when `data` cannot train this model."""

    def hooks(self) -> list[Any]:
        """Hooks every run of this kind needs (a diffusion model's EMA of its weights, updated after each
        optimizer step): `train()` calls them before any other hook, so a checkpoint sees their work."""
        return []

    def describe_data(self, data: Any) -> dict[str, Any]:
        """What a checkpoint records about the data for use without it (the language model: its
        tokenizer's name, hash and where to find it)."""
        return {}
