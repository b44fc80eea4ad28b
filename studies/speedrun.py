"""Is the record repeatable: over seeds, how fast and how low does the record config train, and does it
beat the target loss?

The record configuration runs once per seed (a grid, no early stopping). The report gives the mean
and standard deviation of the final train and validation loss and of active time (and of time and
tokens to the target when it was reached), and a one-sided t-test of H0: mean final train loss >=
target, like a speedrun leaderboard's repeatability section.

    python studies/speedrun.py --smoke
    python studies/speedrun.py --seeds 5 --target-train-loss 4.5 --data data/speedrun-40m
"""

from __future__ import annotations

import sys

import numpy as np
from scipy import stats

from blueberry.cli.study import Study


class Speedrun(Study):
    """Is the record repeatable: over seeds, how fast and how low does the record config train, and does
    it beat the target loss?"""

    experiment = "speedrun"

    def add_flags(self, parser):
        parser.add_argument("--seeds", type=int, default=3, help="repetitions (default 3)")
        parser.add_argument("--target-train-loss", type=float, help="the loss to beat (default: none)")

    def grid(self, args, base, scale):
        return {"train.seed": list(range(args.seeds))}

    def train_overrides(self, args, scale):
        return {"target_train_loss": args.target_train_loss} if args.target_train_loss else {}

    def report(self, cfg, result) -> str:
        from mlflow import MlflowClient

        client = MlflowClient(result.tracking_uri)
        runs = [client.get_run(r["mlflow_run_id"]).data.metrics for r in result.trials if r["mlflow_run_id"]]
        lines = ["metric                 mean        std   (n)"]
        for key in ("final/train_loss", "final/val_loss", "final/active_time_s", "final/target_time_s",
                    "final/target_tokens"):
            values = np.array([m[key] for m in runs if key in m])
            if len(values):
                std = values.std(ddof=1) if len(values) > 1 else float("nan")
                lines.append(f"{key:20} {values.mean():10.4f} {std:10.4f}   ({len(values)})")
        target = cfg.base.train.target_train_loss
        losses = np.array([m["final/train_loss"] for m in runs if "final/train_loss" in m])
        if target is not None and len(losses) > 1:
            test = stats.ttest_1samp(losses, target, alternative="less")
            verdict = "beats" if test.pvalue < 0.05 else "does not clearly beat"
            lines.append(f"H0: mean train loss >= {target}: t = {test.statistic:.3f}, one-sided p = "
                         f"{test.pvalue:.4f} -> the record {verdict} the target at the 5% level")
        return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(Speedrun().main())
