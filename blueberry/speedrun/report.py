"""What `studies/speedrun.py` prints after its runs: an A/B's arms, difference, test and verdict, or a
repeatability study's means and spreads."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

from blueberry.speedrun.board import Verdict, difference, repeatability
from blueberry.speedrun.runs import BASELINE, CANDIDATE, Run
from blueberry.speedrun.tracks import Track


def ab_lines(track: Track, verdict: Verdict, arms: dict[str, Sequence[Run]]) -> list[str]:
    """The A/B's report: each arm's runs, the difference with its interval, the test, the verdict."""
    def arm_line(arm: str) -> str:
        runs = arms[arm]
        counted = [r for r in runs if r.value(track.metric) is not None]
        shown = ", ".join("-" if r.value(track.metric) is None else f"{r.value(track.metric):.6g}" for r in runs)
        return f"{arm:12} {repeatability(track, counted)}: {shown}"

    lines = [f"A/B          {len(arms[BASELINE])} baseline and {len(arms[CANDIDATE])} candidate runs, interleaved "
             f"on one pool; metric {track.metric}", arm_line(BASELINE), arm_line(CANDIDATE)]
    test = verdict.test
    if test is not None and not math.isnan(test.p):
        lines.append(f"difference   candidate - baseline: {difference(track, test)}")
        lines.append(f"test         Welch t = {test.t:.3f}, df = {test.df:.1f}, H1: the candidate is "
                     f"{'lower' if track.direction == 'min' else 'higher'}")
    if verdict.invalid:
        lines.append(f"not counted  {'; '.join(verdict.invalid)}")
    lines.append(f"verdict      {'accepted' if verdict.accepted else 'refused'}: {verdict.reason}")
    return lines


def repeatability_lines(track: Track, runs: Sequence[Run], target: float | None) -> list[str]:
    """Mean and spread of the final numbers over the runs, and, with a target train loss, a one-sided
    t-test of H0: mean final train loss >= target."""
    lines = ["metric                 mean        std   (n)"]
    for key in ("train_loss", "val_loss", "active_time_s", "target_time_s", "target_tokens"):
        values = np.array([v for r in runs if (v := r.value(key)) is not None])
        if len(values):
            std = values.std(ddof=1) if len(values) > 1 else float("nan")
            lines.append(f"{'final/' + key:20} {values.mean():10.4f} {std:10.4f}   ({len(values)})")
    lines.append(f"repeatability {track.metric}: "
                 f"{repeatability(track, [r for r in runs if r.value(track.metric) is not None])}")
    losses = np.array([v for r in runs if (v := r.value("train_loss")) is not None])
    if target is not None and len(losses) > 1:
        test = stats.ttest_1samp(losses, target, alternative="less")
        verdict = "beats" if test.pvalue < 0.05 else "does not clearly beat"
        lines.append(f"H0: mean train loss >= {target}: t = {test.statistic:.3f}, one-sided p = "
                     f"{test.pvalue:.4f} -> the record {verdict} the target at the 5% level")
    return lines
