"""The fitted law drawn: runs, loss-vs-compute curves at fixed N, and the compute-optimal frontier.

The image is rendered to bytes, so a caller checks the file name with `image_format` before any work
and writes the file only once everything else has succeeded.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.backend_bases import FigureCanvasBase  # noqa: E402

from blueberry.errors import UserError  # noqa: E402
from blueberry.scaling.fit import ScalingPoints  # noqa: E402
from blueberry.scaling.law import Law  # noqa: E402


def image_format(path: Path) -> str:
    """The format matplotlib writes for `path`'s extension; a `UserError` names the ones it can write."""
    formats = FigureCanvasBase.get_supported_filetypes()
    fmt = Path(path).suffix.lstrip(".").lower()
    if fmt not in formats:
        got = f"extension .{fmt}" if fmt else "no extension"
        raise UserError(f"--plot {path} has {got}: end the name with one of "
                        f"{', '.join(f'.{f}' for f in sorted(formats))}")
    texsystem = matplotlib.rcParams["pgf.texsystem"]
    if fmt == "pgf" and shutil.which(texsystem) is None:  # the pgf backend measures text with LaTeX
        raise UserError(f"--plot {path}: writing .pgf needs {texsystem}, which is not installed; use .pdf or .svg")
    return fmt


def render_law(points: ScalingPoints, law: Law, fmt: str = "png") -> bytes:
    """The plot as the bytes of a `fmt` image (see `image_format`)."""
    fig, ax = plt.subplots(figsize=(9, 6), dpi=100)
    sc = ax.scatter(points.C, points.loss, c=np.log10(points.N), cmap="viridis", s=18, label="runs")
    fig.colorbar(sc, ax=ax, label="log10 N (parameters)")
    C = np.logspace(np.log10(points.C.min()) - 0.5, np.log10(points.C.max()) + 1.0, 200)
    for N in np.logspace(np.log10(points.N.min()), np.log10(points.N.max()), 5):
        ax.plot(C, law.loss(N, C / (6 * N)), color="gray", lw=0.8, alpha=0.7)
        ax.annotate(f"N={N:.2g}", (C[-1], law.loss(N, C[-1] / (6 * N))), fontsize=7, color="gray")
    optimal = [law.compute_optimal(c) for c in C]
    ax.plot(C, [law.loss(n, d) for n, d in optimal], color="tab:red", lw=2, label="compute-optimal frontier")
    ax.axhline(law.E, color="tab:red", ls=":", lw=1, label=f"E = {law.E:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("training compute C = 6ND (FLOP)")
    ax.set_ylabel("loss")
    ax.set_title(f"L = {law.E:.3f} + {law.A:.4g}/N^{law.alpha:.3f} + {law.B:.4g}/D^{law.beta:.3f}"
                 "   (gray: fixed N, more tokens)")
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format=fmt)
    plt.close(fig)
    return image.getvalue()
