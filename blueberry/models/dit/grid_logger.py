"""The hook that hands a grid of the DiT's samples to the tracker at every evaluation (`samples/step-00000500.png`,
an MLflow artifact for `blueberry-train`), drawn by the EMA weights from the same noise each time, so grids
compare step to step."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from blueberry.core.events import EvalInfo
from blueberry.core.hooks import Hook
from blueberry.core.state import TrainState
from blueberry.models.dit.sampling import generate
from blueberry.vision.grid import grid_image


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
