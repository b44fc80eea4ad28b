"""The classifier as a `Task`: cross-entropy on image shards, progress in images, accuracy as a metric."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from blueberry.core.config import TrainConfig
from blueberry.core.parallel import DataParallel
from blueberry.core.task import Loss, Task
from blueberry.data.images import ImageBatch, ImageShards, require_images
from blueberry.errors import DataError
from blueberry.models.registry import register_task
from blueberry.vision.pixels import to_model_units
from classifier.config import PRESETS, TRAIN_PRESETS, ClassifierConfig
from classifier.model import Classifier, count_params


@register_task
class ClassifierTask(Task[ClassifierConfig]):
    kind = "classifier"
    unit = "images"
    loss_name = "cross-entropy (nats/image)"
    config_class = ClassifierConfig
    presets = PRESETS
    train_presets = TRAIN_PRESETS
    data_format = "images"
    eval_metrics = {"loss": "min", "accuracy": "max"}

    def build_model(self) -> Classifier:
        return Classifier(self.config)

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        return list(model.mixers)

    def loss(self, model: nn.Module, batch: ImageBatch) -> Loss:
        logits = model(to_model_units(batch.images))
        value = F.cross_entropy(logits.float(), batch.labels)
        return Loss(value, value.new_zeros(()))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: ImageShards, train: TrainConfig, device: torch.device,
                 parallel: DataParallel) -> dict[str, float]:
        was_training = model.training
        model.eval()
        total = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.float64, device=device)
        count = torch.zeros((), dtype=torch.float64, device=device)
        for batch in data.val_batches(train.batch_size, train.eval_tokens, parallel.rank, parallel.world_size):
            batch = batch.to(device)
            logits = model(to_model_units(batch.images)).float()
            total += F.cross_entropy(logits, batch.labels, reduction="sum").double()
            correct += (logits.argmax(1) == batch.labels).sum()
            count += len(batch)
        model.train(was_training)
        total, correct, count = parallel.sum(total), parallel.sum(correct), parallel.sum(count)
        if count.item() == 0:
            return {"loss": math.nan, "accuracy": math.nan}
        return {"loss": (total / count).item(), "accuracy": (correct / count).item()}

    @property
    def units_per_sample(self) -> int:
        return 1

    def flops_per_unit(self) -> float:
        return 6.0 * count_params(self.config) * self.config.tokens

    def param_counts(self) -> dict[str, int]:
        return {"total": count_params(self.config)}

    def check_data(self, data: Any) -> None:
        manifest = require_images(data, self.kind)
        cfg = self.config
        if manifest.shape != (cfg.channels, cfg.image_size, cfg.image_size) or manifest.num_classes != cfg.num_classes:
            raise DataError(f"the data holds {manifest.num_classes} classes of {manifest.shape_text} images, the "
                            f"classifier takes {cfg.num_classes} of {cfg.channels}x{cfg.image_size}x{cfg.image_size}")

    def describe_data(self, data: ImageShards) -> dict[str, Any]:
        return {"images": data.manifest.description()}
