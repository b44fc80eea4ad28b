"""The Diffusion Transformer as a `Task`: flow matching on image shards, progress in images.

Training (rectified flow / flow matching, Lipman et al. 2022, Liu et al. 2022): for data x1, noise
x0 ~ N(0, I) and t ~ U(0, 1), the model sees x_t = (1 - t) x0 + t x1 and regresses the path's velocity
x1 - x0 (mean squared error over every pixel). Labels are replaced by the null class with probability
`class_dropout`, so one model is both conditional and unconditional (classifier-free guidance); with
`hflip`, half the images of a batch are mirrored. Every random draw of a step (noise, t, dropout, flips) comes
from the CPU's global generator, which checkpoints record, so a resumed run draws what it would have.

The EMA of the weights is updated by a hook the task adds to every run (`hooks()`), after each optimizer
step; it lives in the model's buffers and so in every checkpoint.

Evaluation: "loss" is the same objective on the first `eval_tokens` held-out images with fixed noise and
times; with `eval_samples`, the EMA weights also sample that many images (classes in turn, fixed noise) and
the judge (`blueberry.vision`) scores them: "class_accuracy" (the share it recognises as the class asked for) and
"fid" (Fréchet distance of its features, or InceptionV3's, to those of the training images).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from blueberry.core.config import TrainConfig
from blueberry.core.events import StepInfo
from blueberry.core.hardware import autocast
from blueberry.core.hooks import Hook
from blueberry.core.parallel import SINGLE_PROCESS, DataParallel
from blueberry.core.state import TrainState
from blueberry.core.task import Capabilities, Loss, Task
from blueberry.data.images import ImageBatch, ImageShards, check_images_fit
from blueberry.models.dit.capabilities import ImageGrid
from blueberry.models.dit.config import PRESETS, TRAIN_PRESETS, DiTConfig
from blueberry.models.dit.model import DiT, count_params, ema_decay_at, flops_per_image
from blueberry.models.dit.sampling import generate
from blueberry.vision.fid import check_inception
from blueberry.vision.pixels import to_model_units
from blueberry.vision.scoring import ImageScorer

EVAL_SEED = 0  # the fixed noise and times of every evaluation


def interpolate(noise: torch.Tensor, data: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) noise + t data, with t (B,) broadcast over each image."""
    t = t.view(-1, *([1] * (data.ndim - 1)))
    return (1 - t) * noise + t * data


def flow_matching_loss(model: nn.Module, data: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor,
                       t: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the model's velocity at x_t and the path's, data - noise."""
    prediction = model(interpolate(noise, data, t), t, labels)
    dtype = torch.promote_types(prediction.dtype, torch.float32)  # bf16 under autocast: the loss in fp32
    return F.mse_loss(prediction.to(dtype), (data - noise).to(dtype))


def training_draws(batch: ImageBatch, cfg: DiTConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noise, t, labels after dropout, images after flips) for one batch, drawn on the CPU in this order
    from the global generator: noise, t, the dropout coin, the flip coin."""
    images = to_model_units(batch.images)
    n = len(images)
    noise = torch.randn(images.shape)
    t = torch.rand(n)
    drop = torch.rand(n) < cfg.class_dropout
    flip = torch.rand(n) < 0.5
    labels = torch.where(drop.to(batch.labels.device), torch.full_like(batch.labels, cfg.num_classes), batch.labels)
    if cfg.hflip:
        images = torch.where(flip.to(images.device).view(-1, 1, 1, 1), images.flip(-1), images)
    device = images.device
    return noise.to(device), t.to(device), labels, images


class EmaUpdate(Hook):
    """After every optimizer step: the model's EMA moves toward its parameters (`DiT.update_ema`)."""

    every = 1

    def __init__(self, decay: float) -> None:
        self.decay = decay

    def on_step(self, info: StepInfo, state: TrainState) -> None:
        state.model.update_ema(ema_decay_at(info.step, self.decay))


class DiTTask(Task[DiTConfig]):
    """Class-conditional flow-matching DiTs on image shards; a batch is an `ImageBatch`."""

    kind = "dit"
    unit = "images"
    loss_name = "flow-matching MSE (velocity)"
    config_class = DiTConfig
    presets = PRESETS
    train_presets = TRAIN_PRESETS
    data_format = "images"
    eval_metrics = {"loss": "min", "fid": "min", "class_accuracy": "max"}
    capabilities = Capabilities(generate=ImageGrid)

    def __init__(self, config: DiTConfig) -> None:
        super().__init__(config)
        self._scorers: dict[tuple[str, str], ImageScorer] = {}

    def build_model(self) -> DiT:
        return DiT(self.config)

    def hooks(self) -> list[Hook]:
        return [EmaUpdate(self.config.ema_decay)]

    def loss(self, model: nn.Module, batch: ImageBatch) -> Loss:
        noise, t, labels, images = training_draws(batch, self.config)
        value = flow_matching_loss(model, images, labels, noise, t)
        return Loss(value, value.new_zeros(()))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: ImageShards, train: TrainConfig, device: torch.device,
                 parallel: DataParallel) -> dict[str, float]:
        was_training = model.training
        model.eval()
        # Whatever evaluation draws (building or training the judge) comes from a fork of the RNG: the run's
        # own stream, which checkpoints record, continues as if no evaluation had happened.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            try:
                metrics = {"loss": self._val_loss(model, data, train, device, parallel)}
                if self.config.eval_samples:
                    cfg = self.config
                    metrics |= self.sample_metrics(model.ema_model(), data, device, cfg.eval_samples,
                                                   cfg.eval_steps, cfg.eval_cfg_scale, cfg.eval_sampler, parallel,
                                                   train.precision)
            finally:
                model.train(was_training)
        return metrics

    def _val_loss(self, model: nn.Module, data: ImageShards, train: TrainConfig, device: torch.device,
                  parallel: DataParallel) -> float:
        """The flow-matching loss of the first `eval_tokens` held-out images, conditional, with noise and
        times fixed per image (the same whatever the number of ranks)."""
        n = min(train.eval_tokens, len(data.images.get("val", ())))
        if n == 0:
            return math.nan
        generator = torch.Generator().manual_seed(EVAL_SEED)
        noise = torch.randn((n, *data.shape), generator=generator)
        t = torch.rand(n, generator=generator)
        total = torch.zeros((), dtype=torch.float64, device=device)
        start = 0
        for batch in data.val_batches(train.batch_size, n, parallel.rank, parallel.world_size):
            rows = torch.arange(start, start + len(batch)) * parallel.world_size + parallel.rank
            start += len(batch)
            batch = batch.to(device)
            images = to_model_units(batch.images)
            with autocast(device, train.precision):
                prediction = model(interpolate(noise[rows].to(device), images, t[rows].to(device)), t[rows].to(device),
                                   batch.labels)
            target = images - noise[rows].to(device)
            total += ((prediction.float() - target) ** 2).double().sum()
        return (parallel.sum(total) / (n * math.prod(data.shape))).item()

    def scorer(self, data: ImageShards, device: torch.device) -> ImageScorer:
        """The judge (and reference statistics) for `data`, made once per process."""
        key = (data.manifest.preparation_key, str(device))
        if key not in self._scorers:
            self._scorers[key] = ImageScorer(data, device, self.config.fid_features)
        return self._scorers[key]

    def sample_metrics(self, ema_model: nn.Module, data: ImageShards, device: torch.device, samples: int, steps: int,
                       cfg_scale: float, sampler: str, parallel: DataParallel = SINGLE_PROCESS,
                       precision: str = "fp32") -> dict[str, float]:
        """"fid" and "class_accuracy" of `samples` images (classes in turn, fixed noise) that `ema_model`
        generates (in `precision`), each rank generating its share."""
        scorer = self.scorer(data, device)
        generator = torch.Generator().manual_seed(EVAL_SEED + 1)
        noise = torch.randn((samples, *data.shape), generator=generator)
        labels = torch.arange(samples) % self.config.num_classes
        mine = torch.arange(parallel.rank, samples, parallel.world_size)
        with autocast(device, precision):
            images = generate(ema_model, labels[mine], noise[mine], steps, cfg_scale, sampler)
        stats, correct = scorer.score(images, labels[mine])
        for name in ("count", "total", "outer"):
            setattr(stats, name, parallel.sum(getattr(stats, name)))
        correct = parallel.sum(correct)
        return {"fid": scorer.fid(stats), "class_accuracy": (correct / stats.count).item()}

    @property
    def units_per_sample(self) -> int:
        return 1

    def flops_per_unit(self) -> float:
        return flops_per_image(self.config)

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        return list(model.blocks)

    def param_counts(self) -> dict[str, int]:
        return {"total": count_params(self.config)}

    def check_data(self, data: Any) -> None:
        cfg = self.config
        check_images_fit(data, self.kind, cfg.channels, cfg.image_size, num_classes=cfg.num_classes)
        if cfg.eval_samples and cfg.fid_features == "inception":
            check_inception()

    def describe_data(self, data: ImageShards) -> dict[str, Any]:
        """What sampling needs without the data: the class names, the image shape, and which data it was."""
        return {"images": data.manifest.description()}
