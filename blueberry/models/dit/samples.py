"""Sample grids: images drawn as a picture one reads at a glance, one row per class, each row labelled with
its class name, small images enlarged with nearest-neighbour (an 8x8 digit stays sharp at 64x64); and the
hook that hands one to the tracker at every evaluation (`samples/step-00000500.png`, an MLflow artifact for
`blueberry-train`), drawn by the EMA weights from the same noise each time, so grids compare step to step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from blueberry.core.events import EvalInfo
from blueberry.core.hooks import Hook
from blueberry.core.state import TrainState
from blueberry.models.dit.sample import generate

PAD = 8  # pixels between images: enough that cells with black backgrounds read as separate images
BACKGROUND = 255
LABEL_HEIGHT_MIN = 12  # pixels of text height at least


def grid_image(images: torch.Tensor | np.ndarray, rows: Sequence[str], title: str | None = None,
               target_cell: int = 64) -> np.ndarray:
    """(H, W, 3) uint8 picture of `images` (len(rows) * k, C, h, w) laid out k to a row, row i labelled rows[i].
    Each image is enlarged by an integer factor (nearest neighbour) to about `target_cell` pixels."""
    from PIL import Image, ImageDraw, ImageFont

    images = torch.as_tensor(images)
    n, channels, h, w = images.shape
    per_row = n // max(1, len(rows))
    if per_row * len(rows) != n:
        raise ValueError(f"{n} images do not fill {len(rows)} rows evenly")
    scale = max(1, target_cell // max(h, w))
    cell_h, cell_w = h * scale, w * scale
    pixels = images.numpy().astype(np.uint8)
    pixels = np.repeat(pixels, 3, axis=1) if channels == 1 else pixels
    pixels = pixels.transpose(0, 2, 3, 1).repeat(scale, axis=1).repeat(scale, axis=2)  # (n, cell_h, cell_w, 3)

    font_size = max(LABEL_HEIGHT_MIN, min(cell_h // 3, 28))
    try:
        font = ImageFont.load_default(size=font_size)
    except TypeError:  # Pillow < 10.1 has only the small bitmap font
        font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(probe.textbbox((0, 0), str(r), font=font)[2] for r in rows) + 3 * PAD
    title_h = font_size + 3 * PAD if title else 0
    width = label_w + per_row * (cell_w + PAD) + PAD
    height = title_h + len(rows) * (cell_h + PAD) + PAD
    canvas = Image.new("RGB", (width, height), (BACKGROUND,) * 3)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((PAD, PAD), title, fill=(0, 0, 0), font=font)
    for r, name in enumerate(rows):
        top = title_h + PAD + r * (cell_h + PAD)
        box = draw.textbbox((0, 0), str(name), font=font)
        draw.text((label_w - 2 * PAD - box[2], top + (cell_h - box[3]) // 2), str(name), fill=(0, 0, 0), font=font)
        for c in range(per_row):
            left = label_w + c * (cell_w + PAD)
            canvas.paste(Image.fromarray(pixels[r * per_row + c]), (left, top))
    return np.asarray(canvas)


def save_png(picture: np.ndarray, path: str) -> None:
    from PIL import Image

    Image.fromarray(picture).save(path)


class GridLogger(Hook):
    """At each evaluation: a grid of `per_class` samples of every class from the EMA weights (fixed noise,
    `steps` Euler steps, guidance `cfg_scale`), handed to `log_image(picture, artifact_file)`."""

    def __init__(self, log_image: Callable[[np.ndarray, str], Any], classes: Sequence[str], per_class: int = 8,
                 steps: int = 50, cfg_scale: float = 2.0, seed: int = 0) -> None:
        self.log_image, self.classes, self.per_class = log_image, list(classes), per_class
        self.steps, self.cfg_scale, self.seed = steps, cfg_scale, seed

    def picture(self, model: Any, title: str | None = None) -> np.ndarray:
        ema = model.ema_model()
        cfg = ema.cfg
        labels = torch.arange(len(self.classes)).repeat_interleave(self.per_class)
        noise = torch.randn((len(labels), cfg.channels, cfg.image_size, cfg.image_size),
                            generator=torch.Generator().manual_seed(self.seed))
        images = generate(ema, labels, noise, self.steps, self.cfg_scale, "euler")
        return grid_image(images, self.classes, title)

    def on_eval(self, info: EvalInfo, state: TrainState) -> None:
        title = f"step {info.step}, {info.tokens:,} {state.task.unit}, Euler {self.steps}, cfg {self.cfg_scale:g}"
        self.log_image(self.picture(state.model, title), f"samples/step-{info.step:08d}.png")
