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


def test_target_tokens_appear_only_in_studies_of_a_target_and_say_not_reached():
    import math
    from types import SimpleNamespace

    from blueberry.core.events import RunResult
    from blueberry.platform.report import close_trial_runs, csv_value
    from blueberry.platform.sweep import trial_metrics

    def result(target_tokens):
        return RunResult(steps=10, tokens=1000, train_loss=4.0, val=None, active_time_s=1.0, eval_time_s=0.0,
                         setup_time_s=0.0, tokens_per_s=1000.0, mfu=None, diverged=False,
                         reached_target=target_tokens is not None, target_tokens=target_tokens, target_time_s=None,
                         params={})

    # A loss study: no stand-in for a target that was never set (before: 2 x budget in Tune's tables).
    assert "target_tokens" not in trial_metrics(None, result(None), budget=1000)
    missed = trial_metrics(None, result(None), budget=1000, target=True)
    assert missed["target_tokens"] == 2000 and missed["reached_target"] == 0  # TPE still gets a number
    reached = trial_metrics(None, result(600), budget=1000, target=True)
    assert reached["target_tokens"] == 600 and reached["reached_target"] == 1

    trials = [SimpleNamespace(metrics={**m, "trial_id": tid}, error=None, config={}, path=tid)
              for tid, m in (("a", missed), ("b", reached))]
    client = SimpleNamespace(search_runs=lambda *a, **k: [])  # no MLflow runs to close
    rows = close_trial_runs(client, "0", "s", trials, metric="target_tokens")
    assert [r["target_tokens"] for r in rows] == [math.inf, 600]
    assert [csv_value("target_tokens", r["target_tokens"]) for r in rows] == ["not reached", 600]
    assert "target_tokens" not in close_trial_runs(client, "0", "s", trials, metric="val_loss")[0]
