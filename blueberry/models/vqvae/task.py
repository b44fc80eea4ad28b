"""The VQ-VAE as a `Task`: reconstruction of image shards through a discrete code grid, progress in images.

The loss the run reports is the reconstruction's mean squared error in model units ([-1, 1]); the
commitment term, beta |z_e - sg(z_q)|^2, is added for the gradient only (`Loss.aux`). The codebook is
not trained by the optimizer: it follows moving averages inside the model's training-mode forward.

Evaluation, on the first `eval_tokens` held-out images:
- "loss": the reconstruction MSE in model units, as in training;
- "mse" and "psnr": the MSE of the reconstruction in pixel units scaled to [0, 1] (clamped to that range,
  as an image would be), and 10 log10(1 / mse) from it (the dataset's mean MSE, not a mean of per-image PSNRs);
- "perplexity": exp of the entropy of the codes' frequencies over every position of every image (the
  codebook size when all codes are equally used, 1 when one code does everything);
- "codes_used": the fraction of the codebook that at least one position chose.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from blueberry.core.config import TrainConfig
from blueberry.core.hardware import autocast
from blueberry.core.parallel import DataParallel
from blueberry.core.task import Capabilities, Loss, Task
from blueberry.data.images import ImageBatch, ImageShards, check_images_fit
from blueberry.models.vqvae.capabilities import Reconstructions
from blueberry.models.vqvae.config import PRESETS, TRAIN_PRESETS, VQVAEConfig
from blueberry.models.vqvae.model import VQVAE, count_params, flops_per_image, to_model_units


class VQVAETask(Task[VQVAEConfig]):
    """VQ-VAEs trained to reconstruct image shards; a batch is an `ImageBatch` (labels unused)."""

    kind = "vqvae"
    unit = "images"
    loss_name = "reconstruction MSE (pixels in [-1, 1])"
    config_class = VQVAEConfig
    presets = PRESETS
    train_presets = TRAIN_PRESETS
    data_format = "images"
    eval_metrics = {"loss": "min", "mse": "min", "psnr": "max", "perplexity": "max", "codes_used": "max"}
    capabilities = Capabilities(generate=Reconstructions)

    def build_model(self) -> VQVAE:
        return VQVAE(self.config)

    def loss(self, model: nn.Module, batch: ImageBatch) -> Loss:
        images = to_model_units(batch.images)
        out = model(images)
        reconstruction = F.mse_loss(out.reconstruction.float(), images)
        return Loss(reconstruction, self.config.commitment * out.commitment)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: ImageShards, train: TrainConfig, device: torch.device,
                 parallel: DataParallel) -> dict[str, float]:
        was_training = model.training
        model.eval()  # the codebook stays as it is
        K = self.config.codebook_size
        squared = torch.zeros((), dtype=torch.float64, device=device)  # model units
        squared01 = torch.zeros((), dtype=torch.float64, device=device)  # [0, 1] units, clamped
        pixels = torch.zeros((), dtype=torch.float64, device=device)
        usage = torch.zeros(K, dtype=torch.float64, device=device)
        try:
            for batch in data.val_batches(train.batch_size, train.eval_tokens, parallel.rank, parallel.world_size):
                images = to_model_units(batch.images.to(device))
                with autocast(device, train.precision):
                    out = model(images)
                reconstruction = out.reconstruction.float()
                squared += ((reconstruction - images) ** 2).double().sum()
                squared01 += (((reconstruction.clamp(-1, 1) - images) / 2) ** 2).double().sum()
                pixels += images.numel()
                usage += torch.bincount(out.codes.flatten(), minlength=K).double()
        finally:
            model.train(was_training)
        squared, squared01, pixels, usage = (parallel.sum(t) for t in (squared, squared01, pixels, usage))
        if pixels.item() == 0:
            return {name: math.nan for name in self.eval_metrics}
        mse = (squared01 / pixels).item()
        p = usage / usage.sum()
        entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
        return {"loss": (squared / pixels).item(), "mse": mse, "psnr": 10 * math.log10(1 / max(mse, 1e-12)),
                "perplexity": math.exp(entropy), "codes_used": (usage > 0).double().mean().item()}

    @property
    def units_per_sample(self) -> int:
        return 1

    def flops_per_unit(self) -> float:
        return flops_per_image(self.config)

    def param_counts(self) -> dict[str, int]:
        return {"total": count_params(self.config)}

    def check_data(self, data: Any) -> None:
        check_images_fit(data, self.kind, self.config.channels, self.config.image_size)  # the codes ignore classes

    def describe_data(self, data: ImageShards) -> dict[str, Any]:
        """What encoding and decoding need without the data: the image shape, the class names, which data."""
        return {"images": data.manifest.description()}
