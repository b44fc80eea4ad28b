"""How deep should Blueberry be at a fixed width?

The number of layers (1 to twice the preset's depth) is searched at the preset's width (d_model,
heads, d_ff unchanged). Each trial logs its parameter counts (`N`, `N_non_embedding`) to MLflow, so
loss can be read against size; the study prints the counts for every depth it tried.

    python studies/depth_sweep.py --smoke
"""

from __future__ import annotations

import sys

from blueberry.cli.study import Study
from blueberry.core.config import replace
from blueberry.models.lm.model import count_params


class DepthSweep(Study):
    """How deep should Blueberry be at a fixed width?"""

    experiment = "depth_sweep"

    def space(self, trial, base):
        trial.suggest_int("model.n_layers", 1, 2 * base.model.n_layers)

    def baseline(self, base):
        return {"model.n_layers": base.model.n_layers}

    def report(self, cfg, result) -> str:
        lines = ["depth  parameters  non-embedding  val_loss  status"]
        for row in sorted(result.trials, key=lambda r: r["model.n_layers"]):
            counts = count_params(replace(cfg.base.model, n_layers=row["model.n_layers"]))
            lines.append(f"{row['model.n_layers']:5d}  {counts.total:10,}  {counts.non_embedding:13,}  "
                         f"{row['val_loss']:8.4f}  {row['status']}")
        return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(DepthSweep().main())
