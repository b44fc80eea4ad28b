"""PNG figures for trackers: drawn headless (Agg), returned as files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def loss_curve(train: Sequence[tuple[float, float]], smoothed: Sequence[tuple[float, float]],
               val: Sequence[tuple[float, float]], path: Path, title: str = "",
               reference: tuple[float, str] | None = None, *, unit: str, loss_name: str) -> Path:
    """Train loss (raw and smoothed) and validation loss, each a list of (units seen, loss), and an
    optional horizontal reference (value, label) such as the data's unigram entropy. `unit` and
    `loss_name` label the axes (the task's `unit` and `loss_name`)."""
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    for points, style in ((train, dict(color="tab:blue", alpha=0.3, lw=1, label="train loss")),
                          (smoothed, dict(color="tab:blue", lw=2, label="train loss (smoothed)")),
                          (val, dict(color="tab:orange", marker="o", label="validation loss"))):
        if points:
            ax.plot(*zip(*points), **style)
    if reference is not None:
        ax.axhline(reference[0], color="gray", ls="--", lw=1, label=f"{reference[1]} ({reference[0]:.2f})")
    ax.set_xlabel(f"{unit} seen")
    ax.set_ylabel(loss_name)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
