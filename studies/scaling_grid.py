"""How does loss fall with model size N and data D? Collect the runs a scaling-law fit needs.

For each compute budget C, a family of model sizes N (the preset's shape scaled in width and depth)
each trained on D = C / (6 N) tokens, where N is the **total** parameter count (embeddings included,
the Chinchilla convention `blueberry-scale` uses; `N_non_embedding` is logged beside it). Every run
is a Tune trial in one MLflow experiment with params N, N_non_embedding, D, C and its final
validation loss, ready for `blueberry-scale fit --experiment scaling_grid`. A point already finished
in the experiment (the same run identity, `RunConfig.key`) is not trained again. Learning rates come from a sweep's
best trial for the nearest model size (`--lr-from EXPERIMENT`), else the preset's defaults.

A point whose estimated training memory (parameters, gradients, optimizer state and the batch's
activations; `point_layout`) fits one device (`--device-memory-gb`, an RTX 4090's 24 by default) is a
Tune trial on one GPU. A larger one runs on Ray Train after the trials, on the fewest workers that fit:
DDP when only the activations are too many (each worker takes a share of the batch), FSDP when the
model's state is too large too, with activation checkpointing as the last resort
(`blueberry.core.parallel.layout_for`). The global batch, and so the point, stays the same.

    python studies/scaling_grid.py --smoke          # a 3 x 3 grid of tiny models on CPU
    python studies/scaling_grid.py --budgets 1e16 3e16 1e17 --data data/speedrun-40m
    python studies/scaling_grid.py --budgets 1e19 --shapes 1536x24 2048x24 --data data/marathon-1b
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from functools import partial

import numpy as np

from blueberry.cli.common import positive_float, positive_int
from blueberry.cli.study import Scales, Study, StudyScale, summary
from blueberry.core.config import replace, to_dict
from blueberry.core.parallel import Layout, layout_for
from blueberry.errors import UserError
from blueberry.models.lm.config import ModelConfig
from blueberry.models.lm.model import count_params
from blueberry.models.run import RunConfig
from blueberry.platform.cluster import device_count
from blueberry.platform.data import spec_key
from blueberry.platform.search import apply_params
from blueberry.platform.sweep import run_sweep
from blueberry.platform.tracking import CONFIG_TAG, KIND_TAG, STATUS_TAG, client, find_run
from blueberry.scaling.runs import read_mlflow

# (d_model, n_layers) families: head_dim 32 for the small ones, 64 for the GPU ones; d_ff = 4 d_model.
SMOKE_SHAPES = ((64, 2), (96, 3), (128, 4))
GPU_SHAPES = ((256, 8), (384, 12), (512, 16), (512, 22), (640, 24))
SMOKE_BUDGETS = [2e11, 5e11, 1.2e12]
GPU_BUDGETS = [1e16, 3e16, 1e17]
# Each point's token budget comes from its compute budget C; a scale picks the preset, batch and shapes.
# The scale's own budget only spaces the base's evaluations: the record's, so a point evaluates at its end.
FULL_SCALE = StudyScale("gpu", "nano-88m", 8_011_776, 15, 8)
DEVICE_MEMORY_GB = 24.0  # GiB: one RTX 4090 (24,564 MiB), the lab's pool
GiB = 2**30


def muon_params(cfg: ModelConfig) -> int:
    """Parameters Muon updates: the blocks' matrices (not the norms, the MoE router or the embedding)."""
    norms = cfg.n_layers * (2 * cfg.d_model + 2 * cfg.head_dim) + cfg.d_model
    router = cfg.n_layers * cfg.d_model * cfg.n_experts if cfg.is_moe else 0
    return count_params(cfg).non_embedding - norms - router


def activation_bytes(cfg: ModelConfig, samples: int, checkpointing: bool, value_bytes: int = 2) -> float:
    """Activations `samples` sequences keep for backward, in bytes (an estimate, bf16 autocast by default).

    A layer keeps about 34 d_model bytes a token in 16-bit values (Korthikanti et al. 2022,
    arXiv:2205.05198, eq. 1 without the attention-score term, which scaled_dot_product_attention does
    not store): 15 d_model for attention and norms, 19 d_model for an MLP of 4 d_model, scaled here by
    d_ff (x1.5 for SwiGLU's third matrix). The logits add vocab x (value_bytes + 8): the logits, their
    fp32 copy for the loss and its gradient. With activation checkpointing a layer keeps its fp32
    input alone (4 d_model) and one layer's activations exist at a time, during its recomputation."""
    mlp = 19 * cfg.d_ff / 4 * (1.5 if cfg.mlp == "swiglu" else 1.0)
    layer = (15 * cfg.d_model + mlp) * value_bytes / 2
    logits = cfg.vocab_size * (value_bytes + 8)
    kept = cfg.n_layers * 4 * cfg.d_model + layer if checkpointing else cfg.n_layers * layer
    return float(samples * cfg.seq_len * (kept + logits))


def point_layout(run: RunConfig, device_bytes: float, max_workers: int | None) -> Layout:
    """Where a grid point trains, from its memory estimate: one device, or DDP / FSDP over workers
    (`layout_for`). The largest FSDP unit is the root's tied embedding or a block, whichever is larger.
    `max_workers` None: one device is all there is (a point that needs more is a `UserError`)."""
    cfg = run.model
    counts = count_params(cfg)
    block = (counts.non_embedding - cfg.d_model) // cfg.n_layers
    return layout_for(counts.total, muon_params(cfg), max(block, cfg.vocab_size * cfg.d_model),
                      partial(activation_bytes, cfg), run.train.batch_size, device_bytes, max_workers or 1)


def parse_shape(text: str) -> tuple[int, int]:
    """`D_MODELxLAYERS`, such as 1536x24."""
    try:
        d_model, n_layers = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected D_MODELxLAYERS such as 1536x24, got {text!r}") from None
    if d_model < 32 or d_model % 32 or n_layers < 1:
        raise argparse.ArgumentTypeError(f"expected a d_model that is a positive multiple of 32 and at least one "
                                         f"layer, got {text!r}")
    return d_model, n_layers


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
        parser.add_argument("--shapes", type=parse_shape, nargs="+", metavar="D_MODELxLAYERS",
                            help="model shapes (default: the scale's family)")
        parser.add_argument("--lr-from", metavar="EXPERIMENT", help="take LRs from this sweep experiment")
        parser.add_argument("--device-memory-gb", type=positive_float, default=DEVICE_MEMORY_GB,
                            help="memory of one device in GiB; points whose estimate exceeds it run on Ray Train "
                                 "with DDP or FSDP over several")
        parser.add_argument("--max-workers", type=positive_int,
                            help="most devices one point may use (default: the cluster's GPUs, else its CPUs)")

    def budgets_and_shapes(self, args, scale) -> tuple[list[float], tuple[tuple[int, int], ...]]:
        smoke = scale.name == "smoke"
        shapes = tuple(args.shapes) if args.shapes else SMOKE_SHAPES if smoke else GPU_SHAPES
        return args.budgets or (SMOKE_BUDGETS if smoke else GPU_BUDGETS), shapes

    def grid(self, args, base, scale):
        """The points not yet finished in this experiment on this data that fit one device: a finished
        point is never trained twice. The larger ones are kept in `self.spread` for Ray Train. (The
        built-in corpus is prepared here on first use.)"""
        # --lr-from first: a sweep that cannot be read is refused before the store or the data is touched.
        lrs = best_lrs(args.lr_from, args.tracking_uri) if args.lr_from else {}
        data = spec_key(base.task(), args.data)
        done = finished_keys(self.experiment, args.tracking_uri)
        device_bytes = args.device_memory_gb * GiB
        workers = None  # asked of the cluster once a point needs more than one device
        todo, self.spread = [], []
        for point in grid_points(base, *self.budgets_and_shapes(args, scale), lrs):
            run = apply_params(base, {"point": point})
            if run.key(data=data) in done or legacy_key(run) in done:
                continue
            try:
                layout = point_layout(run, device_bytes, 1)
            except UserError:  # more than one device: how many the cluster offers
                workers = workers or args.max_workers or device_count()
                layout = point_layout(run, device_bytes, workers)
            if layout.distributed:
                self.spread.append((point, layout))
            else:
                todo.append(point)
        return {"point": todo}

    def run(self, args, scale) -> str:
        cfg = self.sweep_config(args, scale)
        budgets, shapes = self.budgets_and_shapes(args, scale)
        total, todo = len(budgets) * len(shapes), cfg.grid["point"]
        lines = [f"scaling grid: {total} points, {total - len(todo) - len(self.spread)} already finished, "
                 f"{len(todo)} to run on one device each, {len(self.spread)} on Ray Train"]
        if todo:
            lines.append(summary(cfg, run_sweep(cfg)))
        if self.spread:
            lines += self.run_spread(args, cfg)
        if todo or self.spread:
            lines.append("fit it:       blueberry-scale fit --experiment scaling_grid"
                         + (f" --tracking-uri {args.tracking_uri}" if args.tracking_uri else ""))
        return "\n".join(lines)

    def run_spread(self, args, cfg) -> list[str]:
        """Train the points too large for one device on Ray Train, one after another, into the same
        experiment, tagged with the point's identity (so a finished one is skipped next time) and C."""
        from blueberry.platform.data import open_shared
        from blueberry.platform.distributed import RUN_TAG, DistributedConfig, run_distributed

        data = open_shared(cfg.base.task(), args.data)
        data_id = spec_key(cfg.base.task(), args.data)
        lines = []
        for point, layout in self.spread:
            run = apply_params(cfg.base, {"point": point})
            key = run.key(data=data_id)
            size = run.task().scale_params(run.train)
            # Each worker takes its share of the point's batch: the global batch, and so D, are the point's.
            per_worker = RunConfig(run.model, replace(run.train, batch_size=run.train.batch_size // layout.workers))
            name = f"{self.experiment}-{key}"
            result = run_distributed(per_worker, data, DistributedConfig(
                name=name, workers=layout.workers, strategy=layout.strategy,
                activation_checkpointing=layout.activation_checkpointing, experiment=self.experiment,
                tracking_uri=args.tracking_uri, storage=cfg.storage, preset=cfg.preset,
                cpus_per_worker=args.cpus_per_trial or 1.0,
                use_gpu=None if args.gpus_per_trial is None else args.gpus_per_trial > 0,
                tags=((CONFIG_TAG, key), (KIND_TAG, "distributed")), params=(("C", 6 * size["N"] * size["D"]),)))
            diverged = bool(result.metrics.get("final/diverged"))
            mark_status(args.tracking_uri, self.experiment, {RUN_TAG: name}, "diverged" if diverged else "finished")
            recompute = " with activation checkpointing" if layout.activation_checkpointing else ""
            lines.append(f"{'':14}N {size['N'] / 1e6:,.4g}M, D {size['D'] / 1e6:,.4g}M tokens: {layout.strategy} on "
                         f"{layout.workers} workers{recompute} (estimate {layout.bytes_per_device / GiB:.3g} GiB a "
                         f"device), val loss {result.metrics.get('final/val_loss', float('nan')):.4f}")
        return lines


def mark_status(uri: str | None, experiment: str, tags: dict[str, str], status: str) -> None:
    """Tag the run carrying `tags` with its outcome, as the sweep's driver tags its trials."""
    mlflow_client = client(uri)
    found = mlflow_client.get_experiment_by_name(experiment)
    run_id = find_run(mlflow_client, found.experiment_id, tags) if found is not None else None
    if run_id is not None:
        mlflow_client.set_tag(run_id, STATUS_TAG, status)


if __name__ == "__main__":
    sys.exit(ScalingGrid().main())
