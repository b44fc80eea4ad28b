"""uint8 pixels and the models' units: every image kind trains on [-1, 1]."""

from __future__ import annotations

import numpy as np
import torch


def to_model_units(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 pixels to the models' [-1, 1]."""
    return torch.as_tensor(images).float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] to uint8 pixels, clamped and rounded."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
