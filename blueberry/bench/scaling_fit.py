"""Scaling-law fits: their speed against the plain SciPy recipe, the selection's own backtests inside the
Chinchilla runs below 1B, and the calibration where one law holds exactly.

    python -m blueberry.bench.scaling_fit
    python -m blueberry.bench.scaling_fit --inner
    python -m blueberry.bench.scaling_fit --calibration 5

Default: the Chinchilla form's fit and 1,000 bootstrap refits against the published recipe done the
straightforward way (`scipy.optimize.minimize`, L-BFGS-B, numeric gradients, default tolerances, from
every point of the 4,500-point grid), and `choose_law` (every form, rolling origins, weights,
calibration, 200 bootstrap refits) as `blueberry-scale fit --csv chinchilla` runs it.

`--inner` compares the ways of weighting the forms (`blueberry.scaling.select.WEIGHTINGS`) on backtests
inside the Chinchilla runs below 1B only: five hold-outs (N >= 2e8, 3e8, 5e8; the largest 20% and 35%
by compute), each choosing and calibrating on the rest as `backtest` does. This is how the default was
chosen without looking at the runs of 1B and more, which docs/scaling.md reports.

`--calibration K` runs docs/scaling.md's backtest (choose below N = 1e9, predict N >= 1e9, 80% intervals)
on K synthetic copies of the Chinchilla runs in which one law holds exactly: each run's loss is the
Chinchilla law fitted to all 240 runs at its (N, D), times the exponential of one of that fit's log
residuals drawn at random. Same sizes, same token counts, the same scatter; only the misfit of a form is
taken away.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.optimize import minimize

from blueberry.scaling.backtest import Holdout, run_backtest
from blueberry.scaling.choice import choose_law
from blueberry.scaling.fit import ScalingPoints, bootstrap_fit, fit_law, huber_objective, reference_grid
from blueberry.scaling.runs import chinchilla_points
from blueberry.scaling.select import WEIGHTINGS

INNER_HOLDOUTS = {"N >= 2e8": Holdout("N", threshold=2e8), "N >= 3e8": Holdout("N", threshold=3e8),
                  "N >= 5e8": Holdout("N", threshold=5e8), "top 20% of C": Holdout("compute", fraction=0.2),
                  "top 35% of C": Holdout("compute", fraction=0.35)}


def plain_scipy_fit(points: ScalingPoints) -> tuple[np.ndarray, float]:
    logN, logD, logL = np.log(points.N), np.log(points.D), np.log(points.loss)

    def objective(theta: np.ndarray) -> float:
        return huber_objective(theta, logN, logD, logL)[0]

    best = None
    for x0 in reference_grid():
        res = minimize(objective, x0, method="L-BFGS-B")
        if best is None or res.fun < best.fun:
            best = res
    return best.x, float(best.fun)


def inner(points: ScalingPoints, bootstrap: int) -> None:
    """Each weighting's held-out error and coverage (calibrated, and each part of the calibrated interval
    alone) on hold-outs inside the runs below 1B."""
    below = points.take(np.flatnonzero(points.N < 1e9))
    print(f"{len(below)} runs below 1B; five hold-outs inside them; mean |log error| and 80% coverage")
    print(f"{'weighting':14}" + "".join(f"{label:>16}" for label in INNER_HOLDOUTS)
          + f"{'mean':>16}   parts alone (mean coverage): backtest errors, bootstrap + residuals")
    for weighting in WEIGHTINGS:
        rows = [run_backtest(below, holdout, bootstrap=bootstrap, weighting=weighting)
                for holdout in INNER_HOLDOUTS.values()]
        errors = [r.mean_abs_log_error for r in rows]
        coverage = [r.coverage for r in rows]
        print(f"{weighting:14}" + "".join(f"{e:>9.4f} {c:>6.1%}" for e, c in zip(errors, coverage))
              + f"{np.mean(errors):>9.4f} {np.mean(coverage):>6.1%}   "
              f"{np.mean([r.conformal_coverage for r in rows]):.1%}, {np.mean([r.bootstrap_coverage for r in rows]):.1%}")


def calibration(points: ScalingPoints, copies: int, bootstrap: int) -> None:
    """Backtest coverage on `copies` synthetic runs sets where the Chinchilla law fitted to all `points`
    holds exactly."""
    law = fit_law(points).law
    residuals = np.log(points.loss) - np.log(law.loss(points.N, points.D))
    holdout = Holdout("N", threshold=1e9)
    inside = {"calibrated": [], "backtest errors": [], "bootstrap + residuals": []}
    for seed in range(copies):
        rng = np.random.default_rng(1000 + seed)
        loss = law.loss(points.N, points.D) * np.exp(rng.choice(residuals, len(points)))
        result = run_backtest(ScalingPoints(points.N, points.D, loss), holdout, level=0.8, bootstrap=bootstrap,
                              seed=seed)
        for key, interval in (("calibrated", result.interval), ("backtest errors", result.conformal_interval),
                              ("bootstrap + residuals", result.bootstrap_interval)):
            inside[key].extend((interval[:, 0] <= result.held.loss) & (result.held.loss <= interval[:, 1]))
        print(f"synthetic copy {seed}     coverage {result.coverage:6.1%}   mean |log error| "
              f"{result.mean_abs_log_error:.4f}   weights "
              + ", ".join(f"{k} {v:.2f}" for k, v in result.chosen.weights.items()))
    n = len(inside["calibrated"])
    sd = np.sqrt(0.8 * 0.2 / n)
    print(f"pooled over {n} held-out runs (a calibrated 80% interval: {0.8 - 2 * sd:.1%} to {0.8 + 2 * sd:.1%}): "
          + ", ".join(f"{key} {np.mean(values):.1%}" for key, values in inside.items()))


def timed(work):
    """(result, wall seconds, CPU seconds of this process): on a shared machine the CPU time is the
    figure to compare, the wall time what a user waited."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def speed(points: ScalingPoints, bootstrap: int, baseline: bool) -> None:
    fit_law(points)  # warm NumPy/SciPy caches so the timing is of the fit, not of imports
    fit, fit_wall, fit_cpu = timed(lambda: fit_law(points))
    _, boot_wall, boot_cpu = timed(lambda: bootstrap_fit(points, fit, bootstrap, seed=0))
    chosen, choose_wall, choose_cpu = timed(lambda: choose_law(points, bootstrap=200))
    print(f"{'':20} {'wall':>8} {'CPU':>8}")
    print(f"blueberry fit        {fit_wall:7.2f}s {fit_cpu:7.2f}s   objective {fit.objective:.10g}   {fit.law}")
    print(f"blueberry bootstrap  {boot_wall:7.2f}s {boot_cpu:7.2f}s   ({bootstrap} refits)")
    print(f"choose_law           {choose_wall:7.2f}s {choose_cpu:7.2f}s   (3 forms, {len(chosen.cuts)} rolling origins, "
          f"calibration, 200 bootstrap refits of each form with weight: {', '.join(chosen.weights)})")
    if baseline:
        (theta, value), base_wall, base_cpu = timed(lambda: plain_scipy_fit(points))
        E, A, B = np.exp(theta[:3])
        print(f"plain SciPy fit      {base_wall:7.2f}s {base_cpu:7.2f}s   objective {value:.10g}   E={E:.4f} A={A:.2f} "
              f"B={B:.2f} alpha={theta[3]:.4f} beta={theta[4]:.4f}")
        print(f"speed-up (CPU)       {base_cpu / fit_cpu:8.1f} x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--skip-baseline", action="store_true")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--inner", action="store_true", help="instead: the weightings' backtests inside the runs below 1B")
    mode.add_argument("--calibration", type=int, default=0, metavar="K",
                      help="instead: the backtest's coverage on K synthetic copies where the law holds")
    args = parser.parse_args()
    points = chinchilla_points()
    if args.inner:
        inner(points, min(args.bootstrap, 200))
    elif args.calibration:
        calibration(points, args.calibration, min(args.bootstrap, 200))
    else:
        speed(points, args.bootstrap, not args.skip_baseline)


if __name__ == "__main__":
    main()
