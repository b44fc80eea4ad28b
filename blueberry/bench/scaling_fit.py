"""Scaling-law fit speed: Blueberry's fit and bootstrap against the plain SciPy recipe, in one run.

    python -m blueberry.bench.scaling_fit --csv blueberry/scaling/data/chinchilla.csv

The baseline is the published recipe done the straightforward way: `scipy.optimize.minimize`
(L-BFGS-B, numeric gradients, default tolerances) from every point of the 4,500-point grid.
"""

from __future__ import annotations

import argparse
import csv
import time

import numpy as np
from scipy.optimize import minimize

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", required=True)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()
    rows = list(csv.DictReader(open(args.csv)))
    points = ScalingPoints.from_compute([float(r["Model Size"]) for r in rows],
                                        [float(r["Training FLOP"]) for r in rows],
                                        [float(r["loss"]) for r in rows]).exclude_top(5)
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
