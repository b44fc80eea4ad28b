"""Study scripts' own logic, without running a sweep: the scaling grid recognises points finished by
earlier versions."""

import runpy
from pathlib import Path

from blueberry.core.config import TrainConfig, replace
from blueberry.models.lm.config import tiny
from blueberry.models.run import RunConfig

REPO = Path(__file__).resolve().parents[1]


def test_scaling_grid_recognises_points_tagged_before_run_keys_carried_the_data():
    legacy_key = runpy.run_path(str(REPO / "studies" / "scaling_grid.py"))["legacy_key"]
    # Computed by `blueberry.sweep.config_hash` at commit 9b404f2, which tagged those points.
    assert legacy_key(RunConfig(tiny(), TrainConfig())) == "b6d40fbc67516f83"
    point = RunConfig(replace(tiny(), n_layers=2, d_model=64, n_heads=2, n_kv_heads=1, d_ff=256),
                      TrainConfig(batch_size=4, train_tokens=20480, muon_lr=0.01))
    assert legacy_key(point) == "96d18cc2518d57a3"
    assert legacy_key(RunConfig(point.model, replace(point.train, eval_every=3, log_every=5))) == "96d18cc2518d57a3"
