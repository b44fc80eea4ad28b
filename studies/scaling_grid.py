"""How does loss fall with model size N and data D? Collect the runs a scaling-law fit needs.

For each compute budget C, a family of model sizes N (the preset's shape scaled in width and depth)
each trained on D = C / (6 N) tokens, where N is the **total** parameter count (embeddings included,
the Chinchilla convention `blueberry-scale` uses; `N_non_embedding` is logged beside it). Every run
is a Tune trial in one MLflow experiment with params N, N_non_embedding, D, C and its final
validation loss, ready for `blueberry-scale fit --experiment scaling_grid`. A point already finished
in the experiment (the same run identity, `RunConfig.key`) is not trained again. Learning rates come from a sweep's
best trial for the nearest model size (`--lr-from EXPERIMENT`), else the preset's defaults.

    python studies/scaling_grid.py --smoke          # a 3 x 3 grid of tiny models on CPU
    python studies/scaling_grid.py --budgets 1e16 3e16 1e17 --data data/speedrun-40m
"""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np

from blueberry.cli.study import Scales, Study, StudyScale, summary
from blueberry.core.config import replace, to_dict
from blueberry.models.lm.config import ModelConfig
from blueberry.models.lm.model import count_params
from blueberry.models.run import RunConfig
from blueberry.platform.data import spec_key
from blueberry.platform.search import apply_params
from blueberry.platform.sweep import run_sweep
from blueberry.platform.tracking import CONFIG_TAG, STATUS_TAG, client
from blueberry.scaling.runs import read_mlflow

# (d_model, n_layers) families: head_dim 32 for the small ones, 64 for the GPU ones; d_ff = 4 d_model.
SMOKE_SHAPES = ((64, 2), (96, 3), (128, 4))
GPU_SHAPES = ((256, 8), (384, 12), (512, 16), (512, 22), (640, 24))
SMOKE_BUDGETS = [2e11, 5e11, 1.2e12]
GPU_BUDGETS = [1e16, 3e16, 1e17]
# Each point's token budget comes from its compute budget C; a scale picks the preset, batch and shapes.
# The scale's own budget only spaces the base's evaluations: the record's, so a point evaluates at its end.
FULL_SCALE = StudyScale("gpu", "nano-88m", 8_011_776, 15, 8)


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
    best: dict[int, tuple[float, dict[str, float]]] = {}
    for row in read_mlflow(experiment, uri):
        if "final/val_loss" not in row:
            continue
        N, loss = int(float(row["N"])), float(row.get("final/val_loss", np.inf))
        lrs = {f"train.{k}": float(row[f"train.{k}"]) for k in ("muon_lr", "adamw_lr") if f"train.{k}" in row}
        if N not in best or loss < best[N][0]:
            best[N] = (loss, lrs)
    return {n: lrs for n, (_, lrs) in best.items()}


def legacy_key(run: RunConfig) -> str:
    """The key points finished before run identities included the data were tagged with: a SHA-256
    of the model and train config with the observing fields reset. Such a point stays finished."""
    train = replace(run.train, eval_every=0, eval_at_tokens=(), log_every=1, checkpoint_every=0)
    text = json.dumps({"model": to_dict(run.model), "train": to_dict(train)}, indent=2, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def finished_keys(experiment: str, uri: str | None) -> set[str]:
    """The identities (`RunConfig.key`) of the points this experiment has already finished."""
    mlflow_client = client(uri)
    found = mlflow_client.get_experiment_by_name(experiment)
    if found is None:
        return set()
    runs = mlflow_client.search_runs([found.experiment_id], filter_string=f"tags.`{STATUS_TAG}` = 'finished'",
                                     max_results=50000)
    return {r.data.tags[CONFIG_TAG] for r in runs if CONFIG_TAG in r.data.tags}


class ScalingGrid(Study):
    """How does loss fall with model size N and data D? Collect the runs a scaling-law fit needs."""

    experiment = "scaling_grid"
    evals_per_trial = 2
    scales = Scales(smoke=StudyScale("smoke", "tiny", 8_011_776, 9, 4), cpu=FULL_SCALE, gpu=FULL_SCALE)

    def add_flags(self, parser):
        parser.add_argument("--budgets", type=float, nargs="+", help="compute budgets C in FLOPs")
        parser.add_argument("--lr-from", metavar="EXPERIMENT", help="take LRs from this sweep experiment")

    def budgets_and_shapes(self, args, scale) -> tuple[list[float], tuple[tuple[int, int], ...]]:
        smoke = scale.name == "smoke"
        return args.budgets or (SMOKE_BUDGETS if smoke else GPU_BUDGETS), SMOKE_SHAPES if smoke else GPU_SHAPES

    def grid(self, args, base, scale):
        """The points not yet finished in this experiment on this data: a finished point is never
        trained twice. (The built-in corpus is prepared here on first use.)"""
        data = spec_key(base.task(), args.data)
        done = finished_keys(self.experiment, args.tracking_uri)
        lrs = best_lrs(args.lr_from, args.tracking_uri) if args.lr_from else {}
        todo = []
        for point in grid_points(base, *self.budgets_and_shapes(args, scale), lrs):
            run = apply_params(base, {"point": point})
            if run.key(data=data) not in done and legacy_key(run) not in done:
                todo.append(point)
        return {"point": todo}

    def run(self, args, scale) -> str:
        cfg = self.sweep_config(args, scale)
        budgets, shapes = self.budgets_and_shapes(args, scale)
        total, todo = len(budgets) * len(shapes), cfg.grid["point"]
        lines = [f"scaling grid: {total} points, {total - len(todo)} already finished, {len(todo)} to run"]
        if todo:
            lines.append(summary(cfg, run_sweep(cfg)))
            lines.append("fit it:       blueberry-scale fit --experiment scaling_grid"
                         + (f" --tracking-uri {args.tracking_uri}" if args.tracking_uri else ""))
        return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(ScalingGrid().main())
