"""Which learning rate, label-dropout rate and depth give a flow-matching DiT the best samples?

AdamW's learning rate (log scale), the rate at which labels are dropped for classifier-free guidance, and
the number of transformer blocks are searched together with TPE, starting from the preset's values; trials
are judged by the FID of the samples their EMA weights draw at each evaluation (lower is better; ASHA stops
weak trials early by images seen). The report lists every trial's FID, class accuracy and validation loss.

    python studies/flow_sweep.py --smoke              # dit-tiny on the built-in digits, 4 short trials
    python studies/flow_sweep.py --scale cpu          # dit-tiny, 8 trials of 64,000 images
    ray job submit --working-dir . -- python studies/flow_sweep.py --data hf:uoft-cs/cifar10   # dit-cifar on GPUs
"""

from __future__ import annotations

import math
import sys

from blueberry.cli.study import Scales, Study, StudyScale
from blueberry.core.config import replace
from blueberry.models.registry import train_preset

FLOW_SCALES = Scales(
    smoke=StudyScale("smoke", "dit-tiny", 6_400, 4, 64),  # 100 steps a trial
    cpu=StudyScale("cpu", "dit-tiny", 64_000, 8, 128),  # 500 steps a trial: the digits' shapes, not yet clean
    gpu=StudyScale("gpu", "dit-cifar", 1_280_000, 16, 128),  # about 26 epochs of CIFAR-10 a trial
)


class FlowSweep(Study):
    """Which learning rate, label-dropout rate and depth give a flow-matching DiT the best samples?"""

    experiment = "flow_sweep"
    metric = "val/fid"
    scales = FLOW_SCALES
    evals_per_trial = 4  # each evaluation samples images for FID: fewer than the language model's 8

    def space(self, trial, base):
        trial.suggest_float("train.adamw_lr", base.train.adamw_lr / 5, base.train.adamw_lr * 5, log=True)
        trial.suggest_float("model.class_dropout", 0.0, 0.3)
        trial.suggest_int("model.n_layers", max(1, base.model.n_layers // 2), 2 * base.model.n_layers)

    def baseline(self, base):
        return {"train.adamw_lr": base.train.adamw_lr, "model.class_dropout": base.model.class_dropout,
                "model.n_layers": base.model.n_layers}

    def base(self, args, scale):
        """The preset at `scale`; a smoke test samples fewer images, in fewer steps, at each evaluation."""
        preset_name, run = super().base(args, scale)
        if scale.name == "smoke":
            run = replace(run, model=replace(run.model, eval_samples=100, eval_steps=10))
        return preset_name, run

    def train_overrides(self, args, scale):
        """The preset's own training recipe (AdamW, its learning rate and schedule), not the language model's."""
        recipe = train_preset(args.preset or scale.preset)
        return {"optimizer": recipe.optimizer, "adamw_lr": recipe.adamw_lr, "weight_decay": recipe.weight_decay,
                "schedule": recipe.schedule, "warmup_frac": recipe.warmup_frac, "eval_tokens": recipe.eval_tokens}

    def report(self, cfg, result) -> str:
        from blueberry.platform.tracking import client

        mlflow = client(result.tracking_uri)
        lines = ["   fid  class_acc  val_loss  adamw_lr  dropout  layers  status"]
        for row in sorted(result.trials, key=lambda r: r.get(cfg.metric, math.inf)):
            measured = mlflow.get_run(row["mlflow_run_id"]).data.metrics if row["mlflow_run_id"] else {}
            lines.append(f"{row.get(cfg.metric, math.nan):6.2f}  {measured.get('val/class_accuracy', math.nan):9.1%}  "
                         f"{measured.get('val/loss', math.nan):8.4f}  {row['train.adamw_lr']:8.2e}  "
                         f"{row['model.class_dropout']:7.3f}  {row['model.n_layers']:6d}  {row['status']}")
        return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(FlowSweep().main())
