"""Which learning rates train Blueberry best under Muon + AdamW?

Muon's LR (hidden matrices) and AdamW's LR (embeddings, norms) are searched together on a log scale
with TPE, starting from the record (0.024, 0.006); ASHA stops weak trials early by tokens seen.

    python studies/lr_sweep.py                     # sized to the machine
    python studies/lr_sweep.py --smoke             # a quick check: about a minute on 2 CPU cores
    ray job submit --working-dir . -- python studies/lr_sweep.py --data data/speedrun-40m
"""

from __future__ import annotations

import sys

from blueberry.cli.study import Study


class LrSweep(Study):
    """Which learning rates train Blueberry best under Muon + AdamW?"""

    experiment = "lr_sweep"

    def space(self, trial, base):
        trial.suggest_float("train.muon_lr", 3e-3, 1e-1, log=True)
        trial.suggest_float("train.adamw_lr", 5e-4, 3e-2, log=True)

    def baseline(self, base):
        return {"train.muon_lr": 0.024, "train.adamw_lr": 0.006}


if __name__ == "__main__":
    sys.exit(LrSweep().main())
