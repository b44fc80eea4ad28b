"""What a trained DiT can do (`DiTTask.capabilities`): draw a labelled grid of class-conditional samples from
its EMA weights, judged on request (`blueberry-generate`), and log one at each evaluation while it trains."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from blueberry.core.capabilities import ArtifactLogger, Generate, OpenedRun, SampleSettings, Services, option
from blueberry.core.hooks import Hook
from blueberry.errors import UserError
from blueberry.models.dit.sampling import SAMPLERS, generate
from blueberry.vision.grid import check_out, write_grid
from blueberry.vision.scoring import judged_line

MAX_IMAGES = 4096  # one grid: more would not fit in memory as a picture, nor be read
MAX_STEPS = 1000  # ODE steps: past a few hundred, Euler and Heun change nothing a judge can see


@dataclass(frozen=True)
class GridOptions:
    classes: tuple[str, ...] = option((), "a class to draw, by name or index (repeatable; default: every class)",
                                      flag="class", metavar="C")
    num_samples: int = option(1, "images per class", minimum=1, maximum=MAX_IMAGES)
    steps: int = option(50, "ODE steps from noise to image", minimum=1, maximum=MAX_STEPS)
    cfg_scale: float = option(2.0, "classifier-free guidance (1: the conditional model alone, 0: unconditional)",
                              minimum=0)
    sampler: str = option("euler", "euler (one model call a step) or heun (two, second order)",
                          choices=tuple(SAMPLERS))
    out: Path | None = option(None, "the PNG to write (required)")
    score: bool = option(False, "also print the share of images the judge of --data recognises as their class, "
                                "and their FID against its training images")
    data: str = option("builtin", "with --score: the data the run trained on")


def class_index(text: str, names: list[str]) -> int:
    """A --class value: a class name, else an index."""
    if text in names:
        return names.index(text)
    if text.isdigit() and int(text) < len(names):
        return int(text)
    raise UserError(f"--class {text!r} names no class of this run; its classes: {', '.join(names)}")


class ImageGrid(Generate):
    """A row per class (every class without --class), --num-samples images each, sampled with the EMA weights
    from seeded noise; with --score, what the judge of the run's data makes of them."""

    options = GridOptions
    summary = "a grid of class-conditional samples (--class, --out)"

    def __call__(self, run: OpenedRun, options: GridOptions, services: Services) -> None:
        out = check_out(options.out, f"{run.name} (a diffusion model)")
        recorded = run.saved.data.get("images")
        if recorded is None:
            raise UserError(f"{run.checkpoint} does not record its classes: it is not a Blueberry image checkpoint")
        names = list(recorded["classes"])
        wanted = [class_index(c, names) for c in options.classes] if options.classes else list(range(len(names)))
        if len(wanted) * options.num_samples > MAX_IMAGES:
            raise UserError(f"{len(wanted)} classes x {options.num_samples} samples is more than the {MAX_IMAGES} "
                            "images one grid holds: ask for fewer")
        data = None
        if options.score:  # before sampling: a wrong --data is refused before any work, and nothing is written
            data = services.open_for(run.task, options.data)
            if data.manifest.preparation_key != recorded["preparation_key"]:
                raise UserError(f"--data {options.data} is not the data {run.name} trained on ({recorded['source']}): "
                                "pass that data with --data")
        labels = torch.tensor(wanted).repeat_interleave(options.num_samples)
        noise = torch.randn((len(labels), *recorded["shape"]), generator=torch.Generator().manual_seed(services.seed))
        started = time.perf_counter()
        images = generate(run.model.ema_model(), labels, noise, options.steps, options.cfg_scale, options.sampler)
        elapsed = time.perf_counter() - started
        title = f"{run.name}: {options.sampler} {options.steps} steps, cfg {options.cfg_scale:g}"
        write_grid(images, [names[i] for i in wanted], title, out)
        print(f"wrote {out}: {len(labels)} images ({len(wanted)} classes x {options.num_samples}) in {elapsed:.2f} s, "
              f"{len(labels) / elapsed:.1f} images/s ({options.sampler}, {options.steps} steps, "
              f"cfg {options.cfg_scale:g})", file=services.out)
        if data is not None:
            scorer = run.task.scorer(data, torch.device(services.device))
            print(judged_line(scorer.judge_images(images, labels), len(labels)), file=services.out)

    def evaluation_samples(self, task: Any, data: Any, logger: ArtifactLogger, settings: SampleSettings) -> Hook:
        """A grid of every class from the EMA weights at each evaluation (the evaluation's steps and guidance)."""
        from blueberry.models.dit.grid_logger import GridLogger

        return GridLogger(logger.log_image, data.manifest.classes, steps=task.config.eval_steps,
                          cfg_scale=task.config.eval_cfg_scale)
