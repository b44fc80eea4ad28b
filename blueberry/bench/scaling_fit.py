"""Scaling-law fit speed: Blueberry's fit and bootstrap against the plain SciPy recipe, in one run; and a
check of the backtest's intervals where the law is known to hold.

    python -m blueberry.bench.scaling_fit --csv blueberry/scaling/data/chinchilla.csv
    python -m blueberry.bench.scaling_fit --csv blueberry/scaling/data/chinchilla.csv --calibration 5

The baseline is the published recipe done the straightforward way: `scipy.optimize.minimize`
(L-BFGS-B, numeric gradients, default tolerances) from every point of the 4,500-point grid.

`--calibration K` runs the backtest of docs/scaling.md (fit N < 1e9, predict N >= 1e9, 80% intervals)
on K synthetic copies of the Chinchilla runs in which the law holds exactly: each run's loss is the
law fitted to all 240 runs at its (N, D), times the exponential of one of that fit's log residuals
drawn at random. Same sizes, same token counts, the same scatter; only a misfit of the law's form is
taken away. Coverage near 80% there and far below it on the real runs says the shortfall is the law's.
"""

from __future__ import annotations

import argparse
import csv
import time

import numpy as np
from scipy.optimize import minimize

from blueberry.scaling.backtest import Holdout, run_backtest
from blueberry.scaling.fit import ScalingPoints, bootstrap_law, fit_law, huber_objective, reference_grid


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


def calibration(points: ScalingPoints, copies: int, bootstrap: int) -> None:
    """Backtest coverage on `copies` synthetic runs sets where the law fitted to all `points` holds exactly."""
    law = fit_law(points).law
    residuals = np.log(points.loss) - np.log(law.loss(points.N, points.D))
    holdout = Holdout("N", threshold=1e9)
    inside = []
    real = run_backtest(points, holdout, level=0.8, bootstrap=bootstrap, seed=0)
    print(f"real runs            coverage {real.coverage:6.1%}   mean |log error| {real.mean_abs_log_error:.4f}   "
          f"({len(real.held)} held out)")
    for seed in range(copies):
        rng = np.random.default_rng(1000 + seed)
        loss = law.loss(points.N, points.D) * np.exp(rng.choice(residuals, len(points)))
        result = run_backtest(ScalingPoints(points.N, points.D, loss), holdout, level=0.8, bootstrap=bootstrap,
                              seed=seed)
        inside.extend(result.inside)
        print(f"synthetic copy {seed}     coverage {result.coverage:6.1%}   mean |log error| "
              f"{result.mean_abs_log_error:.4f}")
    sd = np.sqrt(0.8 * 0.2 / len(inside))
    print(f"synthetic, pooled    coverage {np.mean(inside):6.1%} of {len(inside)} held-out runs "
          f"(a calibrated 80% interval: {0.8 - 2 * sd:.1%} to {0.8 + 2 * sd:.1%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", required=True)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--calibration", type=int, default=0, metavar="K",
                        help="instead: the backtest's coverage on K synthetic copies where the law holds")
    args = parser.parse_args()
    rows = list(csv.DictReader(open(args.csv)))
    points = ScalingPoints.from_compute([float(r["Model Size"]) for r in rows],
                                        [float(r["Training FLOP"]) for r in rows],
                                        [float(r["loss"]) for r in rows]).exclude_top(5)
    if args.calibration:
        calibration(points, args.calibration, min(args.bootstrap, 200))
        return
    fit_law(points)  # warm NumPy/SciPy caches so the timing is of the fit, not of imports
    start = time.perf_counter()
    fit = fit_law(points)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    bootstrap_law(points, fit, args.bootstrap, seed=0)
    boot_s = time.perf_counter() - start
    print(f"blueberry fit        {fit_s:8.2f} s   objective {fit.objective:.10g}   {fit.law}")
    print(f"blueberry bootstrap  {boot_s:8.2f} s   ({args.bootstrap} refits)")
    if not args.skip_baseline:
        start = time.perf_counter()
        theta, value = plain_scipy_fit(points)
        base_s = time.perf_counter() - start
        E, A, B = np.exp(theta[:3])
        print(f"plain SciPy fit      {base_s:8.2f} s   objective {value:.10g}   E={E:.4f} A={A:.2f} B={B:.2f} "
              f"alpha={theta[3]:.4f} beta={theta[4]:.4f}")
        print(f"speed-up             {base_s / fit_s:8.1f} x")


if __name__ == "__main__":
    main()
