"""The language model as a `Task`: next-token prediction over token shards, progress in tokens."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
import torch.nn as nn

from blueberry.core.config import TrainConfig
from blueberry.core.hardware import autocast
from blueberry.core.parallel import DataParallel
from blueberry.core.task import Capabilities, Loss, Task
from blueberry.data.tokens import TokenShards
from blueberry.models.lm.capabilities import DownstreamEvaluation, DownstreamInTraining, HFExport, TextGeneration
from blueberry.models.lm.config import PRESETS, ModelConfig
from blueberry.models.lm.model import Blueberry, count_params, flops_per_token


class LMTask(Task[ModelConfig]):
    """Blueberry transformers trained on next-token cross-entropy (plus the MoE balancing loss).

    A batch is a (B, seq_len + 1) block of token rows: inputs row[:-1], targets row[1:]."""

    kind = "lm"
    unit = "tokens"
    loss_name = "cross-entropy (nats/token)"
    config_class = ModelConfig
    presets = PRESETS
    eval_metrics = {"loss": "min", "accuracy": "max", "perplexity": "min"}
    capabilities = Capabilities(generate=TextGeneration, evaluate=DownstreamEvaluation, downstream=DownstreamInTraining,
                                export=HFExport)

    def build_model(self) -> Blueberry:
        return Blueberry(self.config)

    def loss(self, model: nn.Module, batch: torch.Tensor) -> Loss:
        out = model(batch[:, :-1], batch[:, 1:])
        return Loss(out.loss, out.aux_loss)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: TokenShards, train: TrainConfig, device: torch.device,
                 parallel: DataParallel) -> dict[str, float]:
        """Mean next-token loss and accuracy over the fixed validation rows (split across ranks,
        summed), and the perplexity exp(loss)."""
        was_training = model.training
        model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        count = torch.zeros((), dtype=torch.int64, device=device)
        for batch in data.val_batches(train.batch_size, train.eval_tokens, parallel.rank, parallel.world_size):
            batch = batch.to(device, non_blocking=True)
            inputs, targets = batch[:, :-1], batch[:, 1:]
            with autocast(device, train.precision):
                out = model(inputs, targets)
            loss_sum += out.loss.double() * targets.numel()
            correct += (out.logits.argmax(dim=-1) == targets).sum()
            count += targets.numel()
        model.train(was_training)
        loss_sum, correct, count = parallel.sum(loss_sum), parallel.sum(correct), parallel.sum(count)
        if count.item() == 0:
            return {"loss": math.nan, "accuracy": math.nan, "perplexity": math.nan}
        loss = (loss_sum / count).item()
        # Capped so a diverged loss gives a large finite perplexity rather than an overflow.
        return {"loss": loss, "accuracy": correct.item() / count.item(), "perplexity": math.exp(min(loss, 700.0))}

    @property
    def units_per_sample(self) -> int:
        return self.config.seq_len

    def flops_per_unit(self) -> float:
        return flops_per_token(self.config)

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        return list(model.blocks)

    def hidden_matrices(self, model: nn.Module) -> list[nn.Parameter]:
        """Every 2-D weight of the blocks except an MoE router's (a tiny classifier head, left to AdamW)."""
        return [p for block in self.blocks(model) for name, p in block.named_parameters()
                if p.ndim == 2 and ".router." not in f".{name}"]

    def reference_loss(self, data: TokenShards) -> tuple[float, str]:
        return data.unigram_entropy(), "unigram entropy of the training data"

    def param_counts(self) -> dict[str, int]:
        counts = count_params(self.config)
        return {"total": counts.total, "non_embedding": counts.non_embedding, "active": counts.active}

    def scale_params(self, train: TrainConfig, world_size: int = 1) -> dict[str, int | float]:
        """N (total parameters, the Chinchilla convention that D = C / 6N uses), N_non_embedding,
        D (tokens trained) and the global batch in tokens."""
        counts = count_params(self.config)
        return {"N": counts.total, "N_non_embedding": counts.non_embedding,
                "D": train.budget_tokens(self.config.seq_len, world_size),
                "batch_tokens": train.tokens_per_step(self.config.seq_len, world_size)}

    def check_data(self, data: TokenShards) -> None:
        data.check_fits(self.config)

    def describe_data(self, data: TokenShards) -> dict[str, Any]:
        """The tokenizer: its name is what `blueberry.data.tokenizer.load_tokenizer` loads (builtin, a local
        file or directory, or a hub name), its sha256 tells whether what loads is the same one."""
        return {"tokenizer": asdict(data.manifest.tokenizer)}
