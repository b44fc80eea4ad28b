"""Does Muon + AdamW beat AdamW alone, each at its own best learning rate?

The optimizer is a categorical choice and each branch searches its own learning rates (a conditional
space: Muon's LR exists only on the Muon branch, and AdamW alone gets a wider LR range), so the
comparison is between two tuned optimizers, not one tuned and one default.

    python studies/optimizer_sweep.py --smoke
"""

from __future__ import annotations

import sys

from blueberry.cli.study import Study


class OptimizerSweep(Study):
    """Does Muon + AdamW beat AdamW alone, each at its own best learning rate?"""

    experiment = "optimizer_sweep"

    def space(self, trial, base):
        optimizer = trial.suggest_categorical("train.optimizer", ["muon", "adamw"])
        if optimizer == "muon":
            trial.suggest_float("train.muon_lr", 3e-3, 1e-1, log=True)
            trial.suggest_float("train.adamw_lr", 5e-4, 3e-2, log=True)
        else:
            trial.suggest_float("train.adamw_lr", 1e-4, 3e-2, log=True)

    def baseline(self, base):
        return {"train.optimizer": "muon", "train.muon_lr": 0.024, "train.adamw_lr": 0.006}

    def report(self, cfg, result) -> str:
        lines = []
        for optimizer in ("muon", "adamw"):
            rows = [r for r in result.trials if r.get("train.optimizer") == optimizer and r["status"] == "finished"]
            if rows:
                best = min(rows, key=lambda r: r["val_loss"])
                lines.append(f"{optimizer:6} best val_loss {best['val_loss']:.4f} over {len(rows)} finished trials")
        return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(OptimizerSweep().main())
