"""Sweep efficiency: an exhaustive LR grid against TPE + ASHA with the same number of trials, on `tiny`.

    python -m blueberry.bench.sweep_efficiency --train-tokens 204800

Both search Muon's and AdamW's learning rates over the same ranges (the grid: 3 x 3 log-spaced
points; TPE: continuous, record point first, ASHA by tokens with reduction factor 3). Reported:
total training tokens each spent and the best validation loss each found.
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np

from blueberry.config import RunConfig, TrainConfig, preset
from blueberry.sweep import SweepConfig, run_sweep

MUON_RANGE, ADAMW_RANGE = (0.006, 0.096), (0.0015, 0.024)


def lr_space(trial):
    trial.suggest_float("train.muon_lr", *MUON_RANGE, log=True)
    trial.suggest_float("train.adamw_lr", *ADAMW_RANGE, log=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-tokens", type=int, default=204_800)
    args = parser.parse_args()
    base = RunConfig(preset("tiny"), TrainConfig(train_tokens=args.train_tokens, batch_size=8))
    grid = {"train.muon_lr": list(np.geomspace(*MUON_RANGE, 3)), "train.adamw_lr": list(np.geomspace(*ADAMW_RANGE, 3))}
    with tempfile.TemporaryDirectory() as tmp:
        common = dict(experiment="sweep_efficiency", preset="tiny", base=base, storage=f"{tmp}/ray",
                      tracking_uri=f"sqlite:///{tmp}/mlflow.db", evals_per_trial=9)
        grid_result = run_sweep(SweepConfig(name="grid", space=None, grid=grid, trials=9, **common))
        tpe_result = run_sweep(SweepConfig(name="tpe-asha", space=lr_space, trials=9, reduction_factor=3,
                                           grace_fraction=1 / 9,
                                           baseline={"train.muon_lr": 0.024, "train.adamw_lr": 0.006}, **common))
    rows = []
    for label, result in (("grid (3 x 3)", grid_result), ("TPE + ASHA", tpe_result)):
        tokens = sum(r["tokens"] for r in result.trials)
        rows.append((label, tokens, result.best["val_loss"]))
        print(f"{label:14} trials {len(result.trials)}  tokens {tokens:>12,.0f}  best val_loss {result.best['val_loss']:.4f}")
    (_, grid_tokens, grid_loss), (_, tpe_tokens, tpe_loss) = rows
    print(f"TPE+ASHA tokens / grid tokens = {tpe_tokens / grid_tokens:.3f};  best loss difference "
          f"{(tpe_loss - grid_loss) / grid_loss:+.2%} of the grid's")


if __name__ == "__main__":
    main()
