"""How does loss fall with model size N and data D? Collect the runs a scaling-law fit needs.

For each compute budget C, a family of model sizes N (the preset's shape scaled in width and depth)
each trained on D = C / (6 N) tokens, where N is the **total** parameter count (embeddings included,
the Chinchilla convention `blueberry-scale` uses; `N_non_embedding` is logged beside it). Every run
is a Tune trial in one MLflow experiment with params N, N_non_embedding, D, C and its final
validation loss, ready for `blueberry-scale fit --experiment scaling_grid`. A point already finished
in the experiment (same configuration hash) is not trained again. Learning rates come from a sweep's
best trial for the nearest model size (`--lr-from EXPERIMENT`), else the preset's defaults.

    python studies/scaling_grid.py --smoke          # a 3 x 3 grid of tiny models on CPU
    python studies/scaling_grid.py --budgets 1e16 3e16 1e17 --data data/speedrun-40m
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np

from blueberry.cli.common import run_command
from blueberry.config import ModelConfig, RunConfig, TrainConfig, preset, replace
from blueberry.model import count_params
from blueberry.study_cli import default_name, study_parser

# (d_model, n_layers) families: head_dim 32 for the small ones, 64 for the GPU ones; d_ff = 4 d_model.
SMOKE_SHAPES = ((64, 2), (96, 3), (128, 4))
GPU_SHAPES = ((256, 8), (384, 12), (512, 16), (512, 22), (640, 24))


def shaped(base: ModelConfig, d_model: int, n_layers: int) -> ModelConfig:
    head_dim = 32 if d_model < 256 else 64
    heads = d_model // head_dim
    return replace(base, d_model=d_model, n_layers=n_layers, n_heads=heads, n_kv_heads=max(1, heads // 2),
                   d_ff=4 * d_model)


def grid_points(base: RunConfig, budgets: list[float], shapes, lrs: dict[int, dict[str, float]]) -> list[dict]:
    """One `point` per (C, shape): model fields, the token budget D = C / 6N, and LRs for that size."""
    points = []
    tokens_per_step = base.train.tokens_per_step(base.model.seq_len)
    for C in budgets:
        for d_model, n_layers in shapes:
            model = shaped(base.model, d_model, n_layers)
            N = count_params(model).total
            steps = max(1, round(C / (6 * N) / tokens_per_step))
            point = {"model.d_model": d_model, "model.n_layers": n_layers, "model.n_heads": model.n_heads,
                     "model.n_kv_heads": model.n_kv_heads, "model.d_ff": model.d_ff,
                     "train.train_tokens": steps * tokens_per_step}
            if lrs:
                nearest = min(lrs, key=lambda n: abs(np.log(n / N)))
                point |= lrs[nearest]
            points.append(point)
    return points


def best_lrs(experiment: str, uri: str | None) -> dict[int, dict[str, float]]:
    """Per model size N, the learning rates of a sweep's best finished trial."""
    from blueberry.scaling.runs import read_mlflow

    best: dict[int, tuple[float, dict[str, float]]] = {}
    for row in read_mlflow(experiment, uri):
        if "final/val_loss" not in row:
            continue
        N, loss = int(float(row["N"])), float(row.get("final/val_loss", np.inf))
        lrs = {f"train.{k}": float(row[f"train.{k}"]) for k in ("muon_lr", "adamw_lr") if f"train.{k}" in row}
        if N not in best or loss < best[N][0]:
            best[N] = (loss, lrs)
    return {n: lrs for n, (_, lrs) in best.items()}


def finished_hashes(experiment: str, uri: str | None) -> set[str]:
    from blueberry.sweep import CONFIG_TAG, STATUS_TAG
    from blueberry.tracking import client

    mlflow_client = client(uri)
    found = mlflow_client.get_experiment_by_name(experiment)
    if found is None:
        return set()
    runs = mlflow_client.search_runs([found.experiment_id], filter_string=f"tags.`{STATUS_TAG}` = 'finished'",
                                     max_results=50000)
    return {r.data.tags[CONFIG_TAG] for r in runs if CONFIG_TAG in r.data.tags}


def main(argv: Sequence[str] | None = None) -> int:
    def body(argv):
        from blueberry.study_cli import summary
        from blueberry.sweep import SweepConfig, apply_params, config_hash, run_sweep

        parser = study_parser(__doc__.splitlines()[0])
        parser.add_argument("--budgets", type=float, nargs="+", help="compute budgets C in FLOPs")
        parser.add_argument("--lr-from", metavar="EXPERIMENT", help="take LRs from this sweep experiment")
        args = parser.parse_args(argv)
        smoke = args.smoke
        preset_name = args.preset or ("tiny" if smoke else "nano-88m")
        base = RunConfig(preset(preset_name), TrainConfig(batch_size=args.batch_size or (4 if smoke else 8)))
        budgets = args.budgets or ([2e11, 5e11, 1.2e12] if smoke else [1e16, 3e16, 1e17])
        lrs = best_lrs(args.lr_from, args.tracking_uri) if args.lr_from else {}
        points = grid_points(base, budgets, SMOKE_SHAPES if smoke else GPU_SHAPES, lrs)
        done = finished_hashes("scaling_grid", args.tracking_uri)
        todo = [p for p in points if config_hash(apply_params(base, {"point": p})) not in done]
        print(f"scaling grid: {len(points)} points, {len(points) - len(todo)} already finished, {len(todo)} to run")
        if not todo:
            return 0
        cfg = SweepConfig(experiment="scaling_grid", name=args.name or default_name(
            "scaling_grid", preset_name, base, {"points": todo}), preset=preset_name, base=base, space=None,
            grid={"point": todo}, trials=len(todo), data=args.data, storage=args.storage,
            tracking_uri=args.tracking_uri, gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial,
            max_concurrent_trials=args.max_concurrent, evals_per_trial=2)
        print(summary(cfg, run_sweep(cfg)))
        print("fit it:       blueberry-scale fit --experiment scaling_grid"
              + (f" --tracking-uri {args.tracking_uri}" if args.tracking_uri else ""))
        return 0

    return run_command("scaling_grid", body, argv)


if __name__ == "__main__":
    sys.exit(main())
