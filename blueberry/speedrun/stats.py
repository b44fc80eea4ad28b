"""Is a speedrun claim real? Welch's t-test, one-sided in the track's direction, and the rule that
accepts a record.

A claim is accepted when at least the track's minimum number of runs beat the reference (the current
record, or the claim's own baseline measured on the same pool) with a one-sided Welch t-test at
p < `ALPHA` on the track's metric: modded-nanogpt's rule (its records must show p < 0.01 over enough
runs). Welch's test, not Student's, because a change can move the spread as well as the mean (a
faster kernel can be noisier). The statistic, its Welch-Satterthwaite degrees of freedom and the
p-value equal `scipy.stats.ttest_ind(candidate, baseline, equal_var=False, alternative=...)`
(tests/test_speedrun.py checks them against it); written out here so that thousands of simulated
claims are one vectorised call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.01  # a record must be this unlikely to be noise


def welch_arrays(candidate: np.ndarray, baseline: np.ndarray, direction: str = "min"
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t, df, one-sided p) of Welch's test over the last axis, for many comparisons at once.

    `direction` min: H1 is that the candidate's mean is lower (scipy's alternative "less"); max:
    higher ("greater"). With no spread in either sample the statistic is +-inf (p 0 or 1) or, with
    equal means too, undefined (nan), as in SciPy."""
    a, b = np.asarray(candidate, dtype=float), np.asarray(baseline, dtype=float)
    na, nb = a.shape[-1], b.shape[-1]
    va, vb = a.var(axis=-1, ddof=1) / na, b.var(axis=-1, ddof=1) / nb
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (a.mean(axis=-1) - b.mean(axis=-1)) / np.sqrt(va + vb)
        df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    df = np.where(np.isnan(df), 1.0, df)  # no spread: df is 0/0; SciPy reports 1, and t is +-inf or nan
    p = stats.t.cdf(t, df) if direction == "min" else stats.t.sf(t, df)
    return t, df, p


@dataclass(frozen=True)
class Welch:
    """A candidate's runs against a reference's, on one metric."""

    direction: str  # min | max: which way is better
    candidate: tuple[float, ...]
    baseline: tuple[float, ...]
    t: float
    df: float
    p: float  # one-sided, H1: the candidate is better; nan when a sample has fewer than two runs
    ci: tuple[float, float]  # two-sided confidence interval of the difference of means
    confidence: float

    @property
    def mean_candidate(self) -> float:
        return float(np.mean(self.candidate))

    @property
    def mean_baseline(self) -> float:
        return float(np.mean(self.baseline))

    @property
    def difference(self) -> float:
        """Candidate minus baseline: negative is better on a `min` track."""
        return self.mean_candidate - self.mean_baseline

    @property
    def relative(self) -> float:
        return self.difference / self.mean_baseline if self.mean_baseline else float("nan")


def welch_test(candidate: Sequence[float], baseline: Sequence[float], direction: str = "min",
               confidence: float = 0.95) -> Welch:
    """Welch's test of `candidate` against `baseline`, one-sided in `direction`, with a two-sided
    `confidence` interval of the difference (candidate - baseline) on the Welch-Satterthwaite df."""
    if direction not in ("min", "max"):
        raise ValueError(f"direction must be min or max, got {direction!r}")
    a, b = tuple(float(x) for x in candidate), tuple(float(x) for x in baseline)
    if len(a) < 2 or len(b) < 2:
        nan = float("nan")
        return Welch(direction, a, b, nan, nan, nan, (nan, nan), confidence)
    t, df, p = (float(x) for x in welch_arrays(np.array(a), np.array(b), direction))
    se = float(np.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b)))
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    difference = float(np.mean(a) - np.mean(b))
    return Welch(direction, a, b, t, df, p, (difference - half, difference + half), confidence)


def accepted(test: Welch, min_runs: int, alpha: float = ALPHA) -> tuple[bool, str]:
    """The acceptance rule: at least `min_runs` candidate runs, and p < `alpha`. With the reason, in
    words, either way."""
    n = len(test.candidate)
    if n < min_runs:
        return False, f"{n} valid run{'s' if n != 1 else ''}; the track needs {min_runs}"
    if len(test.baseline) < 2:
        return False, f"the reference has {len(test.baseline)} valid run(s); a t-test needs at least 2"
    if np.isnan(test.p):
        return False, "both samples are identical and without spread: nothing to test"
    side = "lower" if test.direction == "min" else "higher"
    if test.p < alpha:
        return True, f"{side} with p = {test.p:.2g} < {alpha:g} ({n} runs)"
    return False, f"not clearly {side}: p = {test.p:.2g} >= {alpha:g}"


def acceptance_rate(improvement: float, noise: float, runs: int, draws: int, seed: int = 0,
                    baseline_runs: int | None = None, alpha: float = ALPHA) -> float:
    """How often a claim is accepted when the candidate's true mean is `improvement` (a fraction)
    below the baseline's, both with relative run-to-run noise `noise` (a standard deviation, as a
    fraction of the mean), `runs` runs each (the baseline `baseline_runs`), over `draws` simulated
    claims. With `improvement` 0 this is the false-acceptance rate."""
    rng = np.random.default_rng(seed)
    baseline = rng.normal(1.0, noise, size=(draws, baseline_runs or runs))
    candidate = rng.normal(1.0 - improvement, noise, size=(draws, runs))
    return float(np.mean(welch_arrays(candidate, baseline, "min")[2] < alpha))
