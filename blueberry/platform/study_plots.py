"""A study's figures, drawn headless (Agg) from the rows `report.close_trial_runs` returns: the metric
against each searched parameter, the searched parameters two at a time coloured by the metric, and the
trials' learning curves.

One visual language throughout: a filled marker ran its whole budget, a hollow one was stopped early
by ASHA (its metric is where it stopped, not comparable with a full run's), a red cross diverged and a
black one failed, both in a strip above the data since they have no metric; a star is the baseline
(the record point every study evaluates first) and a ring the best trial.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import EngFormatter, FixedLocator, FuncFormatter, NullFormatter, NullLocator  # noqa: E402

FULL_RUN = "tab:blue"
NO_METRIC = {"diverged": ("x", "tab:red"), "failed": ("x", "black")}
STRIP = 0.94  # where trials without a metric sit, as a fraction of the axes' height
LINE_STYLES = {"finished": dict(ls="-", lw=1.8), "stopped_early": dict(ls=":", lw=1.5),
               "diverged": dict(ls="--", lw=1.2)}
METRIC_NAMES = {"val_loss": "validation loss", "target_tokens": "tokens to the target loss"}


def metric_label(metric: str) -> str:
    """A metric as people read it: "validation loss"; an evaluation's `val/cloze/acc_norm` as "cloze/acc_norm"."""
    if metric.startswith("val/"):
        return metric.removeprefix("val/")
    return METRIC_NAMES.get(metric, metric.replace("_", " "))


def value_label(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def has_metric(row: dict[str, Any], metric: str) -> bool:
    value = row.get(metric, math.nan)
    return row["status"] in ("finished", "stopped_early") and isinstance(value, (int, float)) and math.isfinite(value)


def is_numeric(rows: Sequence[dict[str, Any]], key: str) -> bool:
    return all(isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool) for r in rows if key in r)


def nice_log_ticks(low: float, high: float, most: int = 6) -> list[float]:
    """Round values (1, 2, 5 times a power of ten, or fewer) spanning [low, high] on a log axis, at most
    `most` of them, so the labels never crowd; matplotlib's own labels minor ticks on a short log axis
    and they overlap."""
    for mantissas in ((1, 2, 5), (1, 3), (1,)):
        ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
                 for m in mantissas if low <= m * 10.0 ** e <= high]
        if len(ticks) <= most:
            break
    if len(ticks) < 2:  # less than a factor of two: the ends, rounded
        ticks = sorted({float(f"{low:.2g}"), float(f"{high:.2g}")})
    return ticks


def set_parameter_axis(ax: Axes, rows: Sequence[dict[str, Any]], key: str, axis: str = "x") -> None:
    """A searched parameter's axis: log with a few round ticks when its values span a factor of four or
    more (learning rates), linear otherwise; categories (optimizer names) in the order first tried."""
    values = [r[key] for r in rows if key in r]
    scale, limits = (ax.set_xscale, ax.set_xlim) if axis == "x" else (ax.set_yscale, ax.set_ylim)
    target = ax.xaxis if axis == "x" else ax.yaxis
    if not values or not is_numeric(rows, key):
        return
    low, high = min(values), max(values)
    distinct = sorted(set(values))
    log = low > 0 and high / low >= 4
    if log:
        scale("log")
        pad = (high / low) ** 0.06
        limits(low / pad, high * pad)
        target.set_minor_formatter(NullFormatter())
        target.set_minor_locator(NullLocator())
        target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    if all(isinstance(v, int) for v in values) and len(distinct) <= 8:  # batch sizes, depths: their own values
        target.set_major_locator(FixedLocator(distinct))
        target.set_minor_locator(NullLocator())
    elif log:
        target.set_major_locator(FixedLocator(nice_log_ticks(low / pad, high * pad)))


def category_positions(rows: Sequence[dict[str, Any]], key: str) -> dict[Any, int]:
    return {value: i for i, value in enumerate(dict.fromkeys(r[key] for r in rows if key in r))}


def positions(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[float], dict[Any, int] | None]:
    """Each row's coordinate for `key`: its value, or its category's index for text values."""
    if is_numeric(rows, key):
        return [float(r[key]) for r in rows], None
    categories = category_positions(rows, key)
    return [float(categories[r[key]]) for r in rows], categories


def label_categories(ax: Axes, categories: dict[Any, int] | None, axis: str = "x") -> None:
    if categories is not None:
        target = ax.xaxis if axis == "x" else ax.yaxis
        target.set_major_locator(FixedLocator(list(categories.values())))
        names = {i: str(c) for c, i in categories.items()}
        target.set_major_formatter(FuncFormatter(lambda v, _: names.get(int(round(v)), "")))
        (ax.set_xlim if axis == "x" else ax.set_ylim)(-0.5, len(categories) - 0.5)


def metric_limits(values: Sequence[float], strip: bool) -> tuple[float, float]:
    """y-limits around the metric's values, with room at the top for the strip of trials without one
    when there are any."""
    low, high = min(values), max(values)
    span = (high - low) or abs(high) * 0.1 or 1.0
    bottom, top = low - span * 0.08, high + span * 0.08
    return bottom, bottom + (top - bottom) / (STRIP - 0.06) if strip else top  # `top` sits below the strip


def baseline_row(rows: Sequence[dict[str, Any]], baseline: dict[str, Any] | None) -> dict[str, Any] | None:
    """The baseline's trial: the first that ran its values (a study evaluates the baseline first; later
    trials of a categorical search may repeat its values)."""
    return next((row for row in rows if matches(row, baseline or {})), None)


def matches(row: dict[str, Any], params: dict[str, Any]) -> bool:
    """Whether the trial ran `params` (the baseline); floats compared to rounding, as they went through Optuna."""
    def same(a: Any, b: Any) -> bool:
        both_numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
        return math.isclose(a, b, rel_tol=1e-9) if both_numbers else a == b
    return bool(params) and all(k in row and same(row[k], v) for k, v in params.items())


def legend_handles(rows: Sequence[dict[str, Any]], metric: str, baseline: dict[str, Any] | None,
                   best: dict[str, Any] | None, color: str = FULL_RUN) -> list[Line2D]:
    """Legend entries for the markers actually drawn, in one order for every figure."""
    statuses = {r["status"] for r in rows}
    handles = []
    if any(r["status"] == "finished" and has_metric(r, metric) for r in rows):
        handles.append(Line2D([], [], ls="", marker="o", color=color, label="ran its whole budget"))
    if any(r["status"] == "stopped_early" and has_metric(r, metric) for r in rows):
        handles.append(Line2D([], [], ls="", marker="o", mfc="none", color=color,
                              label="stopped early (metric at the stop)"))
    if any(r["status"] in ("finished", "stopped_early") and not has_metric(r, metric) for r in rows):
        handles.append(Line2D([], [], ls="", marker="^", mfc="none", color="tab:gray", label="target not reached"))
    for status, (marker, c) in NO_METRIC.items():
        if status in statuses:
            handles.append(Line2D([], [], ls="", marker=marker, color=c, label=status))
    if baseline is not None:
        handles.append(Line2D([], [], ls="", marker="*", ms=14, mfc="none", mec="darkorange", mew=1.5,
                              label="baseline"))
    if best is not None:
        handles.append(Line2D([], [], ls="", marker="o", ms=15, mfc="none", mec="black", mew=1.5,
                              label=f"best: {metric_label(metric)} {value_label(best[metric])}"))
    return handles


def draw_trial(ax: Axes, row: dict[str, Any], x: float, y: float, color: Any, known: bool,
               baseline: dict[str, Any] | None, best: dict[str, Any] | None, size: float, **place: Any) -> None:
    """One trial's marker at (x, y): a cross if it diverged or failed, a hollow grey triangle if it has
    no metric (a target never reached), else a circle in `color`, filled if it ran its whole budget;
    a star over the baseline's and a ring over the best's (`baseline` and `best` are rows). `place`
    passes a transform for the strip of trials without a metric."""
    if row["status"] in NO_METRIC:
        marker, cross = NO_METRIC[row["status"]]
        ax.plot(x, y, ls="", marker=marker, color=cross, ms=8, mew=2, zorder=3, **place)
    elif not known:
        ax.plot(x, y, ls="", marker="^", mfc="none", color="tab:gray", ms=8, zorder=3, **place)
    else:
        ax.plot(x, y, ls="", marker="o", ms=size, mew=1.5, color=color,
                mfc=color if row["status"] == "finished" else "none", zorder=3, **place)
    if row is baseline:
        ax.plot(x, y, ls="", marker="*", ms=size + 13, mfc="none", mec="darkorange", mew=1.5, zorder=4, **place)
    if row is best:
        ax.plot(x, y, ls="", marker="o", ms=size + 10, mfc="none", mec="black", mew=1.5, zorder=4, **place)


def draw_trials(ax: Axes, rows: Sequence[dict[str, Any]], x: Sequence[float], y: Sequence[float | None],
                baseline: dict[str, Any] | None, best: dict[str, Any] | None) -> None:
    """Every trial at (x, y); a y of None puts it in the strip at the top of the axes."""
    strip = ax.get_xaxis_transform()  # x in data, y as a fraction of the axes
    for row, xx, yy in zip(rows, x, y):
        if yy is None:
            draw_trial(ax, row, xx, STRIP, FULL_RUN, False, baseline, best, size=7, transform=strip)
        else:
            draw_trial(ax, row, xx, yy, FULL_RUN, True, baseline, best, size=7)


def searched_keys(rows: Sequence[dict[str, Any]]) -> list[str]:
    from blueberry.platform.search import is_config_key

    return list(dict.fromkeys(k for r in rows for k in r if is_config_key(k)))


def save_figure(fig: Figure, path: Path) -> Path:
    fig.savefig(path)
    plt.close(fig)
    return path


def params_figure(rows: list[dict[str, Any]], metric: str, baseline: dict[str, Any] | None = None,
                  best: dict[str, Any] | None = None) -> Figure:
    """loss_vs_params.png: the study's metric against each searched parameter, one panel each."""
    keys, baseline = searched_keys(rows), baseline_row(rows, baseline)
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(5.2 * max(1, len(keys)) + 2.6, 4.4), dpi=110,
                             squeeze=False, sharey=True)
    values = [r[metric] for r in rows if has_metric(r, metric)]
    y = [r[metric] if has_metric(r, metric) else None for r in rows]
    strip = None in y
    for ax, key in zip(axes[0], keys):
        # A conditional space (optimizer_sweep: AdamW trials have no Muon LR) leaves some trials out of
        # some panels.
        panel = [(row, value) for row, value in zip(rows, y) if key in row]
        x, categories = positions([row for row, _ in panel], key)
        draw_trials(ax, [row for row, _ in panel], x, [value for _, value in panel], baseline, best)
        set_parameter_axis(ax, rows, key)
        label_categories(ax, categories)
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
        if values:
            ax.set_ylim(*metric_limits(values, strip))
        if strip:
            ax.axhspan(ax.get_ylim()[0] + (STRIP - 0.04) * np.ptp(ax.get_ylim()), ax.get_ylim()[1], color="0.95",
                       zorder=0)
    axes[0][0].set_ylabel(metric_label(metric))
    fig.legend(handles=legend_handles(rows, metric, baseline, best), loc="center right", fontsize=9, frameon=False)
    note = "; grey strip: no metric" if strip else ""
    fig.suptitle(f"{metric_label(metric)} by searched value ({len(rows)} trials{note})", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1 - 2.6 / fig.get_figwidth(), 1))
    return fig


def joint_figure(rows: list[dict[str, Any]], metric: str, baseline: dict[str, Any] | None = None,
                 best: dict[str, Any] | None = None) -> Figure | None:
    """joint.png, for studies of two or more parameters: each pair of them (the first three pairs) as a
    scatter coloured by the metric, where the interactions a one-parameter panel hides show up (the best
    Muon LR moving with the AdamW LR). None for a study of one parameter."""
    keys, baseline = searched_keys(rows), baseline_row(rows, baseline)
    pairs = list(itertools.combinations(keys, 2))[:3]
    if not pairs:
        return None
    values = [r[metric] for r in rows if has_metric(r, metric)]
    norm = Normalize(min(values), max(values)) if values else Normalize(0, 1)
    cmap = plt.get_cmap("viridis")
    colors = [cmap(norm(r[metric])) if has_metric(r, metric) else None for r in rows]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.6 * len(pairs) + 1.6, 5.4), dpi=110, squeeze=False,
                             layout="constrained")
    for ax, (kx, ky) in zip(axes[0], pairs):
        panel = [(row, color) for row, color in zip(rows, colors) if kx in row and ky in row]
        x, xcat = positions([row for row, _ in panel], kx)
        yy, ycat = positions([row for row, _ in panel], ky)
        # Trials without a metric keep their place: their searched values are what the figure shows.
        for (row, color), xx, yy_ in zip(panel, x, yy):
            draw_trial(ax, row, xx, yy_, color, has_metric(row, metric), baseline, best, size=9)
        set_parameter_axis(ax, rows, kx, "x")
        set_parameter_axis(ax, rows, ky, "y")
        label_categories(ax, xcat, "x")
        label_categories(ax, ycat, "y")
        ax.set_xlabel(kx)
        ax.set_ylabel(ky)
        ax.grid(alpha=0.3)
    mappable = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(mappable, ax=axes[0].tolist(), label=f"{metric_label(metric)} (lower is better)", fraction=0.05)
    handles = legend_handles(rows, metric, baseline, best, color=cmap(0.5))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 3), fontsize=9, frameon=False)
    fig.suptitle(f"searched values, coloured by {metric_label(metric)}", fontsize=11)
    return fig


def curves_figure(curves: Sequence[tuple[str, str, Any, Sequence[tuple[float, float]]]], unit: str) -> Figure:
    """learning_curves.png: validation loss against progress, one line per trial named by its searched
    values, `curves` as (name, status, colour, [(units seen, loss)]) in the legend's order. Solid: ran its
    whole budget; dotted: stopped early; dashed: diverged. The y-axis stops at the highest loss after
    the first evaluation, so the trials' differences are not flattened under the loss they all start from."""
    fig, ax = plt.subplots(figsize=(10, 5.2), dpi=110)
    drawn = [curve for curve in curves if curve[3]]
    for name, status, color, points in drawn:
        style = LINE_STYLES.get(status, LINE_STYLES["diverged"])
        ax.plot(*zip(*points), marker=".", color=color, label=name, **style)
    losses = [loss for *_, points in drawn for _, loss in points]
    later = [loss for *_, points in drawn for _, loss in points[1:]]
    if losses:
        low, high = min(losses), max(later or losses)
        span = (high - low) or 1.0
        ax.set_ylim(low - 0.05 * span, high + 0.1 * span)
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.set_xlabel(f"{unit} seen")
    ax.set_ylabel("validation loss")
    ax.set_title("learning curves (solid: whole budget, dotted: stopped early, dashed: diverged)", fontsize=11)
    ax.grid(alpha=0.3)
    if drawn and len(drawn) <= 20:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig
