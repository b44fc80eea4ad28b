"""How deep should Blueberry be at a fixed width?

The number of layers (1 to twice the preset's depth) is searched at the preset's width (d_model, heads, d_ff unchanged). Each trial
logs its parameter counts (`N`, `N_non_embedding`) to MLflow, so loss can be read against size;
the study prints the counts for every depth it tried.

    python studies/depth_sweep.py --smoke
"""

from __future__ import annotations

import functools
import sys

from blueberry.config import preset, replace
from blueberry.model import count_params
from blueberry.study_cli import run_study


def space(trial, max_layers: int):
    trial.suggest_int("model.n_layers", 1, max_layers)


def space_for(base):
    # A partial of a module-level function, not a closure: Tune pickles the space with the searcher.
    return functools.partial(space, max_layers=2 * base.model.n_layers)


def depths(cfg, result) -> str:
    lines = ["depth  parameters  non-embedding  val_loss  status"]
    for row in sorted(result.trials, key=lambda r: r["model.n_layers"]):
        counts = count_params(replace(preset(cfg.preset), n_layers=row["model.n_layers"]))
        lines.append(f"{row['model.n_layers']:5d}  {counts.total:10,}  {counts.non_embedding:13,}  "
                     f"{row['val_loss']:8.4f}  {row['status']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run_study("depth_sweep", __doc__.splitlines()[0], None, space_from_base=space_for, report=depths,
                       baseline_from_base=lambda base: {"model.n_layers": base.model.n_layers}))
