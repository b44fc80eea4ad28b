"""Sample grids: images drawn as a picture one reads at a glance, one row per class (or prompt), each row
labelled, small images enlarged with nearest-neighbour (an 8x8 digit stays sharp at 64x64)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blueberry.errors import UserError
from blueberry.files import atomic_file

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


def save_png(picture: np.ndarray, path: Any) -> None:
    """Write an (H, W, 3) uint8 picture as a PNG to a path or a binary file."""
    from PIL import Image

    Image.fromarray(picture).save(path, format="PNG")


def check_out(out: Path | None, what: str) -> Path:
    """`out`, a PNG to be written, checked before any work: given, and in a directory that exists."""
    if out is None:
        raise UserError(f"{what} writes a picture: pass --out FILE.png")
    if out.is_dir():
        raise UserError(f"--out {out} is a directory: pass a file name ending in .png")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: directory {out.parent} does not exist")
    return out


def write_grid(images: torch.Tensor | np.ndarray, rows: Sequence[str], title: str, out: Path) -> None:
    """`grid_image` written to `out` as a PNG, whole or not at all (a one-line error when it cannot be)."""
    picture = grid_image(images, rows, title)
    try:
        with atomic_file(out) as f:
            save_png(picture, f)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot write --out {out}: {str(err).splitlines()[0]}") from None

