"""What a trained VQ-VAE can do (`VQVAETask.capabilities`): show held-out images beside their reconstructions
through the codes, judged on request (`blueberry-generate`). Its evaluation is its Task's (`blueberry-eval`
runs `VQVAETask.evaluate`: MSE, PSNR, codebook perplexity and use); as a visual tokenizer it serves the
language model over image codes (`blueberry.models.lm.multimodal`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from blueberry.core.capabilities import Generate, OpenedRun, Services, option
from blueberry.core.config import TrainConfig, from_dict
from blueberry.core.parallel import SINGLE_PROCESS
from blueberry.errors import UserError
from blueberry.vision.grid import check_out, write_grid
from blueberry.vision.pixels import to_model_units, to_uint8
from blueberry.vision.scoring import ImageScorer

MAX_PER_CLASS = 1024


@dataclass(frozen=True)
class ReconstructionOptions:
    num_samples: int = option(1, "held-out images of each class", minimum=1, maximum=MAX_PER_CLASS)
    out: Path | None = option(None, "the PNG to write (required): a row per class, images then reconstructions")
    data: str = option("builtin", "the images the run trained on (their held-out split is drawn)")
    score: bool = option(False, "also reconstruct every held-out image: the run's evaluation (PSNR, codes used) "
                                "and what the judge of --data recognises in the reconstructions and the originals")


class Reconstructions(Generate):
    """Held-out images of each class beside their reconstructions through the code grid."""

    options = ReconstructionOptions
    summary = "held-out images beside their reconstructions (--out)"

    def __call__(self, run: OpenedRun, options: ReconstructionOptions, services: Services) -> None:
        out = check_out(options.out, f"{run.name} (a VQ-VAE: held-out images and their reconstructions)")
        data = services.open_for(run.task, options.data)
        recorded = run.saved.data.get("images") or {}
        if data.manifest.preparation_key != recorded.get("preparation_key"):
            raise UserError(f"--data {options.data} is not the data {run.name} trained on "
                            f"({recorded.get('source', '?')}): pass that data with --data")
        images, labels = data.split_arrays("val")
        names = list(data.manifest.classes)
        rows = [np.flatnonzero(labels == c)[:options.num_samples] for c in range(len(names))]
        if any(len(r) < options.num_samples for r in rows):
            raise UserError(f"--num-samples {options.num_samples}: some class has fewer held-out images; ask for fewer")
        chosen = np.concatenate(rows)
        with torch.no_grad():
            reconstructions = to_uint8(run.model(to_model_units(torch.from_numpy(images[chosen]).to(services.device)))
                                       .reconstruction).cpu()
        picture = torch.cat([torch.cat([torch.from_numpy(images[r]), reconstructions[i * len(r):(i + 1) * len(r)]])
                             for i, r in enumerate(rows)])
        write_grid(picture, names, f"{run.name}: held-out images | their reconstructions", out)
        print(f"wrote {out}: {options.num_samples} held-out images of each of {len(names)} classes and their "
              "reconstructions", file=services.out)
        if options.score:
            score(run, data, images, labels, services)


def score(run: OpenedRun, data: object, images: np.ndarray, labels: np.ndarray, services: Services) -> None:
    """The run's own evaluation over every held-out image, and the judge's view of the reconstructions."""
    device = torch.device(services.device)
    train = replace(from_dict(TrainConfig, run.saved.train_config), eval_tokens=len(images))
    metrics = run.task.evaluate(run.model, data, train, device, SINGLE_PROCESS)
    with torch.no_grad():
        reconstructions = torch.cat([to_uint8(run.model(to_model_units(torch.from_numpy(images[i:i + 512])
                                                                       .to(device))).reconstruction).cpu()
                                     for i in range(0, len(images), 512)])
    scorer = ImageScorer(data, device, "classifier")
    recon = scorer.judge_images(reconstructions, torch.from_numpy(labels))
    real = scorer.judge_images(torch.from_numpy(images), torch.from_numpy(labels))
    print(f"reconstructed {len(images)} held-out images: PSNR {metrics['psnr']:.2f} dB, "
          f"{metrics['codes_used']:.1%} of the codes used (perplexity {metrics['perplexity']:.1f})", file=services.out)
    print(f"judged       reconstructions {recon['class_accuracy']:.1%} recognised, FID {recon['fid']:.2f}; the "
          f"held-out images themselves {real['class_accuracy']:.1%}, FID {real['fid']:.2f}", file=services.out)
