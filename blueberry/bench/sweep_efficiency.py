"""Sweep efficiency: an exhaustive LR grid against TPE + ASHA with the same number of trials, on `tiny`.

    python -m blueberry.bench.sweep_efficiency --train-tokens 102400 --grid-points 5 \
        --reduction-factors 3 --seeds 0 1 2 --promotions plain provisional --workdir bench-sweeps

Both search Muon's and AdamW's learning rates over the same ranges: the grid is K x K log-spaced
points, TPE + ASHA searches the ranges continuously with K^2 trials, the record point first, ASHA by
tokens (first rung at 1/9 of the budget). The grid runs once; TPE + ASHA runs once per reduction
factor, searcher seed and promotion rule (Ray's plain ASHA, or `ProvisionalASHA`), so one invocation
shows how much the outcome depends on each. Reported: total training tokens each spent, the best
validation loss each found and where.

Every study is a named, resumable study in `--workdir` (Ray storage and an MLflow store): run the
command again with more seeds and the grid, already finished, is restored rather than trained again.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from blueberry.core.config import TrainConfig
from blueberry.models.lm.config import preset
from blueberry.models.run import RunConfig
from blueberry.platform.sweep import SweepConfig, SweepResult, run_sweep

MUON_RANGE, ADAMW_RANGE = (0.006, 0.096), (0.0015, 0.024)
RECORD = {"train.muon_lr": 0.024, "train.adamw_lr": 0.006}
PROMOTIONS = ("plain", "provisional")


def lr_space(trial):
    trial.suggest_float("train.muon_lr", *MUON_RANGE, log=True)
    trial.suggest_float("train.adamw_lr", *ADAMW_RANGE, log=True)


def summary(label: str, result: SweepResult) -> tuple[int, float]:
    tokens = sum(r["tokens"] for r in result.trials)
    best = result.best
    statuses = {s: sum(r["status"] == s for r in result.trials) for s in {r["status"] for r in result.trials}}
    print(f"{label:24} trials {len(result.trials):3d} {statuses}  tokens {tokens:>12,.0f}  "
          f"best val_loss {best['val_loss']:.4f} at muon_lr {best['train.muon_lr']:.4g}, "
          f"adamw_lr {best['train.adamw_lr']:.4g}")
    return tokens, best["val_loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-tokens", type=int, default=102_400, help="tokens per full trial")
    parser.add_argument("--grid-points", type=int, default=5, help="K: the grid is K x K, both searches run K^2 trials")
    parser.add_argument("--reduction-factors", type=float, nargs="+", default=[3.0], help="ASHA's, one study each")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="TPE's, one study each")
    parser.add_argument("--promotions", nargs="+", choices=PROMOTIONS, default=["provisional"],
                        help="ASHA's promotion rule, one study each")
    parser.add_argument("--workdir", help="keep the studies here to resume or extend them (default: a temporary one)")
    args = parser.parse_args()
    k = args.grid_points
    base = RunConfig(preset("tiny"), TrainConfig(train_tokens=args.train_tokens, batch_size=8))
    grid = {"train.muon_lr": list(np.geomspace(*MUON_RANGE, k)), "train.adamw_lr": list(np.geomspace(*ADAMW_RANGE, k))}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        tokens_tag = f"{args.train_tokens}tok"
        common = dict(experiment="sweep_efficiency", preset="tiny", base=base, storage=str(workdir / "ray"),
                      tracking_uri=f"sqlite:///{workdir}/mlflow.db", evals_per_trial=9)
        grid_result = run_sweep(SweepConfig(name=f"grid-{k}x{k}-{tokens_tag}", space=None, grid=grid,
                                            trials=k * k, **common))
        searches = {(rf, seed, rule): run_sweep(SweepConfig(
                        name=f"tpe-asha-{rule}-rf{rf:g}-seed{seed}-{k * k}trials-{tokens_tag}", space=lr_space,
                        trials=k * k, reduction_factor=rf, grace_fraction=1 / 9, baseline=RECORD, seed=seed,
                        provisional_promotions=rule == "provisional", **common))
                    for rf in args.reduction_factors for seed in args.seeds for rule in args.promotions}
    grid_tokens, grid_loss = summary(f"grid ({k} x {k})", grid_result)
    for (rf, seed, rule), result in searches.items():
        tokens, loss = summary(f"{rule} rf {rf:g} seed {seed}", result)
        print(f"{'':16} tokens / grid tokens = {tokens / grid_tokens:.3f};  best loss difference "
              f"{(loss - grid_loss) / grid_loss:+.2%} of the grid's")


if __name__ == "__main__":
    main()
