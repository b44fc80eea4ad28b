"""How does the best batch size trade against steps at a fixed token budget, and where does the LR move?

Batch size is searched jointly with both learning rates, since the best LR moves with the batch;
the token budget is fixed, so a larger batch means fewer optimizer steps.

    python studies/batch_sweep.py --smoke
"""

from __future__ import annotations

import sys

from blueberry.cli.study import Study


class BatchSweep(Study):
    """How does the best batch size trade against steps at a fixed token budget, and where does the LR move?"""

    experiment = "batch_sweep"

    def space(self, trial, base):
        trial.suggest_categorical("train.batch_size", [4, 8, 16, 32])
        trial.suggest_float("train.muon_lr", 3e-3, 1e-1, log=True)
        trial.suggest_float("train.adamw_lr", 5e-4, 3e-2, log=True)

    def baseline(self, base):
        return {"train.batch_size": 8, "train.muon_lr": 0.024, "train.adamw_lr": 0.006}


if __name__ == "__main__":
    sys.exit(BatchSweep().main())
