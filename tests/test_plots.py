"""The figures people read: a study's loss_vs_params.png, joint.png and learning_curves.png, the scaling
law's law.png (fit and plan), and the loss curve's smoothed train loss. Each test draws the figure and
inspects its artists (markers, transforms, legend texts, tick label boxes, limits) for what the figure
promises a reader."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.lines import Line2D

from blueberry.core.state import TrainState, ema_lag
from blueberry.platform.report import best_row, trial_run_name
from blueberry.platform.study_plots import STRIP, curves_figure, joint_figure, nice_log_ticks, params_figure
from blueberry.scaling.fit import ScalingPoints
from blueberry.scaling.law import Law
from blueberry.scaling.plan import Target, make_plan
from blueberry.scaling.plots import law_figure

BASELINE = {"train.muon_lr": 0.024, "train.adamw_lr": 0.006}


def lr_study() -> list[dict]:
    """An lr_sweep's rows, as `close_trial_runs` returns them: the baseline first, full runs, trials ASHA
    stopped (higher loss, at a quarter of the budget), one diverged and one failed."""
    trials = [(0.024, 0.006, "finished", 4.21), (0.013, 0.0015, "finished", 4.39), (0.018, 0.0026, "finished", 4.26),
              (0.0089, 0.0099, "stopped_early", 5.05), (0.016, 0.0055, "stopped_early", 4.86),
              (0.047, 0.0017, "stopped_early", 4.89), (0.073, 0.028, "diverged", math.nan),
              (0.0075, 0.011, "failed", math.nan)]
    return [{"trial_id": f"t{i}", "status": status, "train.muon_lr": m, "train.adamw_lr": a, "val_loss": loss,
             "mlflow_run_id": None} for i, (m, a, status, loss) in enumerate(trials)]


def markers_at(ax, x: float, marker: str) -> list[Line2D]:
    return [line for line in ax.get_lines() if line.get_marker() == marker and np.isclose(line.get_xdata()[0], x)]


def display_y(line: Line2D) -> float:
    return line.get_transform().transform((line.get_xdata()[0], line.get_ydata()[0]))[1]


def tick_label_boxes(ax, axis: str):
    ax.figure.canvas.draw()
    labels = (ax.get_xticklabels() if axis == "x" else ax.get_yticklabels())
    return [label.get_window_extent() for label in labels if label.get_visible() and label.get_text()]


def test_log_ticks_are_round_and_few_over_any_span():
    for low, high in [(3e-3, 0.1), (5e-4, 3e-2), (0.02, 0.05), (1e-5, 1.0), (0.011, 0.013)]:
        ticks = nice_log_ticks(low, high)
        assert 2 <= len(ticks) <= 6, (low, high, ticks)
        if high / low > 2:  # round values (1, 2, 5 x 10^k) inside the range
            assert all(low <= t <= high for t in ticks), (low, high, ticks)
            assert all(float(f"{t:.1g}") == pytest.approx(t) for t in ticks), ticks
        else:  # a narrow range: its two ends, rounded to two figures
            assert ticks == [pytest.approx(low, rel=0.05), pytest.approx(high, rel=0.05)]


def test_loss_vs_params_marks_each_outcome_the_baseline_and_the_best():
    rows = lr_study()
    best = best_row(rows, "val_loss")
    fig = params_figure(rows, "val_loss", BASELINE, best)
    for ax, key in zip(fig.axes, ["train.muon_lr", "train.adamw_lr"]):
        assert ax.get_xscale() == "log" and ax.get_xlabel() == key
        boxes = tick_label_boxes(ax, "x")
        assert len(boxes) >= 2
        assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2)), key  # the labels never crowd
        for row in rows:
            x = row[key]
            if row["status"] == "finished":
                (point,) = markers_at(ax, x, "o")[:1]
                assert point.get_markerfacecolor() != "none" and point.get_ydata()[0] == row["val_loss"]
            elif row["status"] == "stopped_early":  # hollow: a loss at the stop, not at the budget's end
                assert markers_at(ax, x, "o")[0].get_markerfacecolor() == "none"
            else:  # no metric: a cross in the strip above every point that has one
                (cross,) = markers_at(ax, x, "x")
                assert cross.get_ydata()[0] == STRIP and cross.get_transform() == ax.get_xaxis_transform()
                highest = max(display_y(p) for p in ax.get_lines() if p.get_marker() == "o"
                              and p.get_transform() != ax.get_xaxis_transform())
                assert display_y(cross) > highest
        stars = [line for line in ax.get_lines() if line.get_marker() == "*"]
        assert len(stars) == 1 and stars[0].get_xdata()[0] == BASELINE[key]
        rings = [line for line in ax.get_lines() if line.get_marker() == "o" and line.get_markersize() > 15]
        assert len(rings) == 1 and rings[0].get_xdata()[0] == best[key] and rings[0].get_ydata()[0] == best["val_loss"]
        low, high = ax.get_ylim()
        assert low < 4.21 and 5.05 < high < 5.05 + 0.5  # the data fill the axes below the strip
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["ran its whole budget", "stopped early (metric at the stop)", "diverged", "failed", "baseline",
                      "best: validation loss 4.21"]


def test_joint_view_colours_two_parameters_by_the_metric():
    rows = lr_study()
    fig = joint_figure(rows, "val_loss", BASELINE, best_row(rows, "val_loss"))
    ax, colorbar = fig.axes
    assert ax.get_xlabel() == "train.muon_lr" and ax.get_ylabel() == "train.adamw_lr"
    assert "validation loss" in colorbar.get_ylabel()
    colours = {row["trial_id"]: markers_at(ax, row["train.muon_lr"], "o")[0].get_markeredgecolor()
               for row in rows if row["status"] == "finished"}
    assert len(set(map(tuple, colours.values()))) == 3  # three losses, three colours
    for y_key_row in rows:  # every trial at its two searched values
        placed = [line for line in ax.get_lines() if np.isclose(line.get_xdata()[0], y_key_row["train.muon_lr"])]
        assert any(np.isclose(line.get_ydata()[0], y_key_row["train.adamw_lr"]) for line in placed)
    one_parameter = [{k: v for k, v in row.items() if k != "train.adamw_lr"} for row in rows]
    assert joint_figure(one_parameter, "val_loss") is None


def test_a_categorical_search_marks_only_the_baselines_own_trial():
    rows = [{"trial_id": f"o{i}", "status": s, "train.optimizer": o, "val_loss": v, "mlflow_run_id": None}
            for i, (o, s, v) in enumerate([("muon", "finished", 4.3), ("adamw", "finished", 4.4),
                                           ("muon", "finished", 4.1)])]
    fig = params_figure(rows, "val_loss", {"train.optimizer": "muon"}, best_row(rows, "val_loss"))
    ax = fig.axes[0]
    ax.figure.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["muon", "adamw"]
    stars = [line for line in ax.get_lines() if line.get_marker() == "*"]
    assert len(stars) == 1 and stars[0].get_ydata()[0] == 4.3  # the first muon trial: the one evaluated first


def test_target_never_reached_sits_in_the_strip():
    rows = [{"trial_id": "a", "status": "finished", "model.n_layers": 4, "target_tokens": 2e5},
            {"trial_id": "b", "status": "finished", "model.n_layers": 6, "target_tokens": math.inf}]
    ax = params_figure(rows, "target_tokens").axes[0]
    (never,) = markers_at(ax, 6, "^")
    assert never.get_ydata()[0] == STRIP and never.get_transform() == ax.get_xaxis_transform()
    assert [t.get_text() for t in ax.figure.legends[0].get_texts()] == ["ran its whole budget", "target not reached"]
    assert ax.get_ylabel() == "tokens to the target loss"


def test_learning_curves_are_named_by_searched_values_and_zoomed_past_the_first_evaluation():
    rows = lr_study()
    curves = [(trial_run_name({k: v for k, v in r.items() if k.startswith("train.")}, r["status"]), r["status"], "C0",
               [(0, 10.8), (51200, 7.0), (102400, r["val_loss"] if math.isfinite(r["val_loss"]) else 6.0)])
              for r in rows]
    ax = curves_figure(curves, "tokens").axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0] == "muon_lr=0.024 adamw_lr=0.006"
    assert "muon_lr=0.0089 adamw_lr=0.0099 (stopped early)" in legend
    assert not any(r["trial_id"] in text.split() for r in rows for text in legend)
    styles = {line.get_label(): line.get_linestyle() for line in ax.get_lines()}
    assert styles["muon_lr=0.024 adamw_lr=0.006"] == "-" and styles["muon_lr=0.073 adamw_lr=0.028 (diverged)"] == "--"
    assert styles["muon_lr=0.0089 adamw_lr=0.0099 (stopped early)"] == ":"
    low, high = ax.get_ylim()
    assert low < 4.21 and 7.0 <= high < 8.0  # not stretched up to the first evaluation's 10.8


LAW = Law(E=1.82, A=482.0, alpha=0.348, B=2085.0, beta=0.366)


def scaling_points() -> ScalingPoints:
    N = np.repeat([1e7, 3e7, 1e8, 3e8], 4)
    D = np.tile([2e8, 6e8, 2e9, 6e9], 4)
    return ScalingPoints(N=N, D=D, loss=LAW.loss(N, D) * (1 + 0.01 * np.sin(np.arange(16))))


def test_law_plot_fits_its_axes_to_the_data_and_labels_sizes_by_colour():
    points = scaling_points()
    fig = law_figure(points, LAW)
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    span = points.loss.max() - min(points.loss.min(), LAW.E)
    assert low <= LAW.E and high <= points.loss.max() + 0.2 * span  # not up to where the fixed-N curves start
    assert ax.get_xscale() == "log" and "compute" in ax.get_xlabel() and "loss" in ax.get_ylabel()
    assert len(ax.texts) == 0  # no curve labels to collide: the colour bar names the sizes
    assert "parameters N" in fig.axes[1].get_ylabel()
    frontier = [line for line in ax.get_lines() if line.get_label() == "compute-optimal frontier"]
    assert len(frontier) == 1 and frontier[0].get_linewidth() >= 2
    fixed_n = [line for line in ax.get_lines() if line.get_label().startswith("_") and line.get_linewidth() < 2]
    assert len(fixed_n) >= 4 and all(frontier[0].get_color() != line.get_color() for line in fixed_n)


def test_plan_plot_marks_the_target_its_interval_and_the_optimal_model():
    samples = {"E": LAW.E * np.array([0.98, 1.0, 1.02]), "A": np.full(3, LAW.A), "alpha": np.full(3, LAW.alpha),
               "B": np.full(3, LAW.B), "beta": np.full(3, LAW.beta)}
    plan = make_plan(LAW, Target(params=8e9, tokens=15e12), samples)
    ax = law_figure(None, LAW, plan).axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(text.startswith("plan: N = 8e+09, D = 1.5e+13") for text in legend)
    assert any(text.startswith("compute-optimal at the same C") for text in legend)  # 8B on 15T is over-trained
    low, high = ax.get_ylim()
    assert low < plan.loss_ci[0] and plan.loss_ci[1] < high
    left, right = ax.get_xlim()
    assert left < plan.C < right
    stars = [line for line in ax.get_lines() if line.get_marker() == "*"]
    assert stars and stars[0].get_xdata()[0] == pytest.approx(plan.C) and stars[0].get_ydata()[0] == plan.loss


@pytest.mark.parametrize("smoothing", [0.9, 0.5, 0.99])
def test_smoothed_loss_drawn_at_its_lag_follows_a_linear_loss(smoothing):
    """Why the smoothed loss started above the raw one: an EMA of a falling loss trails it. Bias
    correction is right (the first value is the first loss); drawn `ema_lag` steps back, it lies on the line."""
    state = SimpleNamespace(first_loss=None, loss_ema=0.0, ema_weight=0.0)
    line = lambda step: 8.0 - 0.05 * step  # noqa: E731
    for step in range(1, 200):
        TrainState.record_loss(state, line(step), smoothing)
        smoothed = state.loss_ema / state.ema_weight
        assert smoothed == pytest.approx(line(step - ema_lag(step, smoothing)), abs=1e-9)
    assert ema_lag(1, smoothing) == 0.0
    assert ema_lag(10_000, smoothing) == pytest.approx(smoothing / (1 - smoothing))
    assert smoothed - line(199) > 0.04 * ema_lag(199, smoothing)  # drawn at its own step, it sits above


def test_the_run_loss_curve_draws_the_smoothed_loss_where_it_is_centred(monkeypatch, tmp_path):
    from blueberry.platform import plots, tracking

    drawn = {}
    monkeypatch.setattr(plots, "loss_curve", lambda train, smoothed, val, path, **kw: drawn.update(
        train=train, smoothed=smoothed) or path)
    history = {"train/loss": [(s, 8.0 - 0.05 * s) for s in (10, 20, 30)], "val/loss": []}
    history["train/smoothed_loss"] = [(s, 8.0 - 0.05 * (s - ema_lag(s, 0.9))) for s in (10, 20, 30)]
    client = SimpleNamespace(get_metric_history=lambda run_id, key: [SimpleNamespace(step=s, value=v)
                                                                      for s, v in history[key]])
    tracker = tracking.MlflowTracker.__new__(tracking.MlflowTracker)
    tracker.client, tracker.run_id, tracker.run_name, tracker.reference_loss = client, "r", "run", None
    state = SimpleNamespace(tokens_per_step=100, train=SimpleNamespace(loss_smoothing=0.9),
                            task=SimpleNamespace(unit="tokens", loss_name="loss"))
    tracker._draw_loss_curve(tmp_path / "curve.png", state)
    for (x, y) in drawn["smoothed"]:  # on the raw loss's line, in units seen
        assert y == pytest.approx(8.0 - 0.05 * x / 100)


def test_a_conditional_space_leaves_trials_out_of_the_panels_they_lack():
    """optimizer_sweep: AdamW trials have no Muon LR; each panel shows the trials that have its key."""
    rows = [{"trial_id": "m", "status": "finished", "val_loss": 3.0, "train.optimizer": "muon", "train.muon_lr": 0.02,
             "train.adamw_lr": 0.006},
            {"trial_id": "a", "status": "finished", "val_loss": 3.2, "train.optimizer": "adamw",
             "train.adamw_lr": 0.001}]
    fig = params_figure(rows, "val_loss", best=rows[0])
    by_key = {ax.get_xlabel(): ax for ax in fig.axes}
    assert len(markers_at(by_key["train.muon_lr"], 0.02, "o")) == 2  # the point and the best's ring
    assert all(line.get_ydata()[0] != 3.2 for line in by_key["train.muon_lr"].get_lines())
    assert [line.get_ydata()[0] for line in markers_at(by_key["train.adamw_lr"], 0.001, "o")] == [3.2]
    joint = joint_figure(rows, "val_loss", best=rows[0])
    assert joint is not None and len(joint.axes) == 4  # three pairs and the colour bar


def test_a_plan_outside_its_own_interval_is_still_drawn():
    """A bootstrap percentile interval far beyond the data need not hold the point estimate."""
    samples = {"E": LAW.E * np.array([1.05, 1.06, 1.07]), "A": np.full(3, LAW.A), "alpha": np.full(3, LAW.alpha),
               "B": np.full(3, LAW.B), "beta": np.full(3, LAW.beta)}
    plan = make_plan(LAW, Target(params=8e9, tokens=15e12), samples)
    assert plan.loss < plan.loss_ci[0]
    ax = law_figure(None, LAW, plan).axes[0]
    low, high = ax.get_ylim()
    assert low < plan.loss < high
