"""The fitted law drawn: runs, loss-vs-compute curves at fixed N, the compute-optimal frontier and a
plan's target.

The image is rendered to bytes, so a caller checks the file name with `image_format` before any work
and writes the file only once everything else has succeeded.
"""

from __future__ import annotations

import io
import shutil
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.backend_bases import FigureCanvasBase  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from blueberry.errors import UserError  # noqa: E402
from blueberry.scaling.fit import ScalingPoints  # noqa: E402

if TYPE_CHECKING:  # the plan module imports torch (for the architecture): only its type is needed here
    from blueberry.scaling.plan import Plan


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


def render_law(points: ScalingPoints | None, law, fmt: str = "png", plan: Plan | None = None) -> bytes:
    """`law_figure` as the bytes of a `fmt` image (see `image_format`)."""
    fig = law_figure(points, law, plan)
    image = io.BytesIO()
    fig.savefig(image, format=fmt)
    plt.close(fig)
    return image.getvalue()


def law_figure(points: ScalingPoints | None, law, plan: Plan | None = None) -> Figure:
    """Loss against training compute, the
    runs coloured by their size N, the law's loss at fixed N for a few sizes in the same colours (their
    legend is the colour bar), the compute-optimal frontier, the irreducible loss E and, given `plan`, the
    planned model with its interval beside the compute-optimal model at the same compute. The axes
    cover the data and the plan, not the curves, which run off them."""
    fig, ax = plt.subplots(figsize=(9, 6), dpi=110, layout="constrained")
    sizes = [] if points is None else list(points.N)
    computes = [] if points is None else list(points.C)
    losses = [] if points is None else list(points.loss)
    if plan is not None:
        sizes += [plan.N, plan.optimal_N]
        computes.append(plan.C)
        losses += [plan.loss, plan.optimal_loss, *(plan.loss_ci or ()), *(plan.loss_interval or ())]
    c_low, c_high = min(computes), max(computes)
    if c_high / c_low < 1e3:  # a plan alone, or a narrow grid: show three decades around it
        middle = np.sqrt(c_low * c_high)
        c_low, c_high = min(c_low, middle / 10 ** 1.5), max(c_high, middle * 10 ** 1.5)
    C = np.logspace(np.log10(c_low) - 0.2, np.log10(c_high) + 0.2, 300)
    frontier = np.array([law.loss(*law.compute_optimal(c)) for c in C])
    if points is None:  # the frontier across the axes gives them their loss range
        losses += [float(frontier.min()), float(frontier.max())]
    norm = LogNorm(min(sizes + [law.compute_optimal(C[0])[0]]), max(sizes + [law.compute_optimal(C[-1])[0]]))
    cmap = plt.get_cmap("viridis")
    for N in np.geomspace(norm.vmin, norm.vmax, 6):
        ax.plot(C, law.loss(N, C / (6 * N)), color=cmap(norm(N)), lw=1, alpha=0.55)
    ax.plot(C, frontier, color="black", lw=2.2, label="compute-optimal frontier")
    if points is not None:
        ax.scatter(points.C, points.loss, c=points.N, cmap=cmap, norm=norm, s=22, edgecolor="white",
                   linewidth=0.4, zorder=3, label=f"runs ({len(points.N)})")
    floor = float(law.irreducible)
    if floor > 0:  # Kaplan's form has none
        ax.axhline(floor, color="gray", ls=":", lw=1.2, label=f"irreducible loss E = {floor:.3f}")
    if plan is not None:
        ax.plot(C, law.loss(plan.N, C / (6 * plan.N)), color="tab:red", ls="--", lw=1.2,
                label=f"the planned size N = {plan.N:.3g} at other token counts")
        # A bootstrap percentile interval need not hold the point estimate (far beyond the data it
        # may lie wholly above or below it): each side's length is at least 0.
        band = plan.loss_interval or plan.loss_ci
        ci = np.maximum([[plan.loss - band[0]], [band[1] - plan.loss]], 0) if band else None
        ax.errorbar([plan.C], [plan.loss], yerr=ci, fmt="*", ms=16, color="tab:red", mec="black", capsize=4, zorder=5,
                    label=f"plan: N = {plan.N:.3g}, D = {plan.D:.3g}, loss {plan.loss:.3f}")
        if plan.N / plan.optimal_N > 1.01 or plan.optimal_N / plan.N > 1.01:
            ax.plot([plan.C], [plan.optimal_loss], "o", ms=9, mfc="none", mec="tab:red", mew=1.8, zorder=5,
                    label=f"compute-optimal at the same C: N = {plan.optimal_N:.3g}, loss {plan.optimal_loss:.3f}")
    low, high = min(losses + ([floor] if floor > 0 else [])), max(losses)
    span = high - low
    ax.set_ylim(low - 0.08 * span, high + 0.12 * span)
    ax.set_xlim(C[0], C[-1])
    ax.set_xscale("log")
    ax.set_xlabel("training compute C = 6ND (FLOP)")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(law.describe().replace("L = ", "L(N, D) = "), fontsize=11)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax,
                 label="parameters N (runs, and the thin lines: the law at fixed N)")
    ax.legend(loc="upper right", fontsize=9)
    ax.grid(alpha=0.3)
    return fig


def _to_bytes(fig: Figure, fmt: str) -> bytes:
    image = io.BytesIO()
    fig.savefig(image, format=fmt)
    plt.close(fig)
    return image.getvalue()


def backtest_figure(result) -> Figure:
    """Each run's error against the hold-out quantity: fitted runs' residuals in grey, held-out runs'
    prediction errors with their calibrated intervals (the bootstrap's where none), blue where the interval
    holds the run and red where not."""
    by_compute = result.holdout.by == "compute"
    x_fit = result.fitted.C if by_compute else result.fitted.N
    x_held = result.held.C if by_compute else result.held.N
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110, layout="constrained")
    fitted_error = 100 * (result.fitted.loss / result.chosen.law.loss(result.fitted.N, result.fitted.D) - 1)
    ax.scatter(x_fit, fitted_error, s=14, color="0.6", label=f"fitted runs ({len(x_fit)}): residuals", zorder=2)
    error = 100 * (result.held.loss / result.predicted - 1)
    interval = result.interval if result.interval is not None else result.bootstrap_interval
    which = "calibrated" if result.interval is not None else "bootstrap"
    if interval is not None:
        low, high = 100 * (interval[:, 0] / result.predicted - 1), 100 * (interval[:, 1] / result.predicted - 1)
        inside = (interval[:, 0] <= result.held.loss) & (result.held.loss <= interval[:, 1])
        for side, color, what in ((True, "tab:blue", "inside"), (False, "tab:red", "outside")):
            k = inside == side
            if not k.any():
                continue
            # The bar is the interval, drawn about 0 (the prediction); the dot is where the run landed.
            ax.vlines(x_held[k], low[k], high[k], color=color, alpha=0.35, lw=2)
            ax.scatter(x_held[k], error[k], s=22, color=color, edgecolor="white", linewidth=0.4, zorder=3,
                       label=f"held-out runs {what} their {which} {result.level:.0%} interval ({int(k.sum())})")
    else:
        ax.scatter(x_held, error, s=22, color="tab:blue", zorder=3, label=f"held-out runs ({len(x_held)})")
    boundary = np.sqrt(x_fit.max() * x_held.min())
    ax.axvline(boundary, color="black", ls="--", lw=1)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("training compute C = 6ND (FLOP)" if by_compute else "parameters N")
    ax.set_ylabel("loss: observed / predicted - 1 (%)")
    ax.set_title(f"Chosen on {len(x_fit)} runs ({', '.join(f'{n} {w:.2f}' for n, w in result.chosen.weights.items())}), "
                 f"predicting {len(x_held)} held out ({result.holdout.describe})", fontsize=10)
    coverage = "" if result.coverage is None else f", calibrated {result.level:.0%} intervals cover {result.coverage:.0%}"
    ax.text(0.01, 0.02, f"bars: each held-out run's {which} {result.level:.0%} prediction interval, about its "
                        f"prediction (0)\nheld out: mean |log error| {result.mean_abs_log_error:.4f}{coverage}",
            transform=ax.transAxes, fontsize=9, va="bottom")
    ax.legend(loc="upper left", fontsize=9)
    ax.grid(alpha=0.3)
    return fig


def backtest_figure_bytes(result, fmt: str = "png") -> bytes:
    return _to_bytes(backtest_figure(result), fmt)


def downstream_figure(fit, labels: dict[str, str]) -> Figure:
    """Accuracy against loss: the runs, the fitted sigmoid, the central 95% of the bootstrap curves, and
    the floor and ceiling it tends to."""
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110, layout="constrained")
    s = fit.sigmoid
    span = np.ptp(fit.loss)
    L = np.linspace(fit.loss.min() - 0.5 * span, fit.loss.max() + 0.5 * span, 300)
    if fit.samples is not None:
        curves = np.array([d(L) for d in fit.draws()])
        low, high = np.percentile(curves, [2.5, 97.5], axis=0)
        ax.fill_between(L, low, high, color="tab:blue", alpha=0.15, label="95% of bootstrap curves")
    ax.plot(L, s(L), color="tab:blue", lw=2, label=f"fit: floor {s.floor:.3f}, ceiling {s.ceiling:.3f}, "
                                                   f"k {s.k:.3g}, L0 {s.L0:.3f}")
    ax.axhline(s.floor, color="gray", ls=":", lw=1.2, label="floor" + (" (chance, fixed)" if fit.floor_fixed else ""))
    ax.scatter(fit.loss, fit.accuracy, s=24, color="black", zorder=3, label=f"runs ({len(fit.loss)})")
    ax.invert_xaxis()  # lower loss (bigger models, more data) to the right
    ax.set_xlabel(f"{labels['loss_col']} (lower to the right)")
    ax.set_ylabel(labels["metric"])
    ax.legend(loc="upper left", fontsize=9)
    ax.grid(alpha=0.3)
    return fig


def downstream_figure_bytes(fit, labels: dict[str, str], fmt: str = "png") -> bytes:
    return _to_bytes(downstream_figure(fit, labels), fmt)


FORM_COLORS = {"chinchilla": "tab:blue", "shared": "tab:orange", "kaplan": "tab:green"}


def selection_figure(chosen, level: float, title: str) -> Figure:
    """Each form's nested errors against distance beyond its cut's fitted runs (one colour per form, its
    weight in the legend), the stack's, and the calibrated interval at `level` as a band about 0."""
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110, layout="constrained")
    distances = []
    for name, result in chosen.results.items():
        if result.nested is None:
            continue
        n = result.nested
        factor = 10 ** n.distance
        distances.append(factor)
        ax.scatter(factor, 100 * (np.exp(n.log_error) - 1), s=16, alpha=0.55, color=FORM_COLORS.get(name, "gray"),
                   edgecolor="none", label=f"{name}: weight {chosen.weights.get(name, 0.0):.2f}, "
                                           f"nested mean |log error| {n.score:.4f}")
    if chosen.stack_nested is not None:
        first = next(r.nested for r in chosen.results.values() if r.nested is not None)
        if len(chosen.weights) > 1:
            ax.scatter(10 ** first.distance, 100 * (np.exp(chosen.stack_nested) - 1), s=18, marker="x",
                       color="black", linewidth=0.8, label="the stack")
    if chosen.calibration is not None and not chosen.calibration.bounded(level):
        ax.plot([], [], " ", label=f"no calibrated {level:.0%} interval: {len(chosen.calibration.scores)} nested errors "
                                   "are too few")
    elif chosen.calibration is not None:
        c = chosen.calibration
        reach = max(c.max_distance, 0.05)
        d = np.linspace(0, reach * 1.5, 200)
        q_low, q_high = c.quantiles(level)
        low, high = 100 * (np.exp(c.scale(d) * q_low) - 1), 100 * (np.exp(c.scale(d) * q_high) - 1)
        inside = d <= c.max_distance
        ax.fill_between(10 ** d[inside], low[inside], high[inside], color="tab:purple", alpha=0.15,
                        label=f"calibrated {level:.0%} interval of the chosen law")
        ax.plot(10 ** d[~inside], low[~inside], color="tab:purple", ls=":", lw=1.2)
        ax.plot(10 ** d[~inside], high[~inside], color="tab:purple", ls=":", lw=1.2,
                label="the same, past the backtests' reach (extrapolated)")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("distance beyond the cut's fitted runs (x the largest N, D or C)")
    ax.set_ylabel("nested error: observed / predicted - 1 (%)")
    ax.set_title(textwrap.fill(title, 110), fontsize=10)
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return fig


def selection_figure_bytes(chosen, level: float, title: str, fmt: str = "png") -> bytes:
    return _to_bytes(selection_figure(chosen, level, title), fmt)

