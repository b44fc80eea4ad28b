"""A plan a lab can fund: GPU-hours, cost, wall-clock days and the GPUs for a deadline at 30/40/50% MFU
(closed forms from C = 6ND and the datasheet peak), epochs of the named corpus, the MFU an outside
estimate needs, extrapolation beyond the law's runs with its factors, and where every number comes from."""

import json
import math

import pytest

from blueberry.cli import scale as scale_cli
from blueberry.scaling.datasets import CORPORA
from blueberry.scaling.law import EPOCH_CHINCHILLA as CHINCHILLA
from blueberry.scaling.law import DataRange, Law
from blueberry.scaling.plan import Target, make_plan, plan_text

LAW = Law(**{k: v[0] for k, v in CHINCHILLA.items()})
H100 = 989e12


def test_costing_wall_clock_and_deadline_are_the_closed_forms():
    plan = make_plan(LAW, Target(params=8e9, tokens=15e12, gpu="h100", mfu=0.4, price_per_gpu_hour=2.0, gpus=512,
                                 deadline_days=60))
    C = 6 * 8e9 * 15e12
    assert [c.mfu for c in plan.costing] == [0.3, 0.4, 0.5]
    for c in plan.costing:
        hours = C / (H100 * c.mfu) / 3600
        assert c.gpu_hours == pytest.approx(hours, rel=1e-12) and c.cost == pytest.approx(2.0 * hours, rel=1e-12)
        assert c.days == pytest.approx(hours / 512 / 24, rel=1e-12)
        assert c.gpus_for_deadline == math.ceil(hours / (60 * 24))
    assert plan.days == pytest.approx(plan.costing[1].days)
    assert plan.gpus_for_deadline == plan.costing[1].gpus_for_deadline


def test_an_mfu_outside_the_table_is_added_to_it():
    plan = make_plan(LAW, Target(params=1e9, mfu=0.35))
    assert [c.mfu for c in plan.costing] == [0.3, 0.35, 0.4, 0.5]
    assert "<- --mfu" in plan_text(plan)


def test_the_labs_estimate_of_300k_h100_hours_needs_two_thirds_mfu():
    plan = make_plan(LAW, Target(params=8e9, tokens=15e12, estimate_gpu_hours=3e5))
    assert plan.estimate_mfu == pytest.approx(6 * 8e9 * 15e12 / (H100 * 3e5 * 3600), rel=1e-12)
    assert "holds at MFU 67.4%" in plan_text(plan)


@pytest.mark.parametrize("dataset, epochs, warning", [("fineweb", 1.0, None),
                                                      ("fineweb-edu", 15e12 / 1.3e12, "WARNING"),
                                                      ("blueberry-1b", 15e3, "WARNING")])
def test_epochs_of_the_named_corpus(dataset, epochs, warning):
    plan = make_plan(LAW, Target(params=8e9, tokens=15e12, dataset=dataset))
    assert plan.epochs == pytest.approx(epochs, rel=1e-12)
    text = plan_text(plan)
    assert f"{CORPORA[dataset].hub}" in text and CORPORA[dataset].source in text
    assert ("WARNING" in text) == (warning is not None)


def test_extrapolation_names_each_quantity_beyond_the_runs_and_by_how_much():
    runs = DataRange(runs=240, N_max=1.6e10, D_max=3.2e11, C_max=1.3e22, tokens_per_param_max=341.0)
    plan = make_plan(LAW, Target(params=8e9, tokens=15e12), data_range=runs)
    assert plan.extrapolation == (
        f"tokens D 1.5e+13 is {15e12 / 3.2e11:.3g}x the largest of the fit's runs (3.2e+11)",
        f"compute C 7.2e+23 is {7.2e23 / 1.3e22:.3g}x the largest of the fit's runs (1.3e+22)",
        f"tokens per parameter 1.88e+03 is {1875 / 341:.3g}x the largest of the fit's runs (341)")
    inside = make_plan(LAW, Target(params=1e9, tokens=2e10), data_range=runs)
    assert inside.extrapolation == () and "extrapolation    none" in plan_text(inside)
    assert "extrapolation    unknown" in plan_text(make_plan(LAW, Target(params=1e9)))


def test_the_cli_plan_names_every_source(tmp_path, capsys):
    assert scale_cli.main(["plan", "--law", "chinchilla", "--params", "8e9", "--tokens", "15e12", "--dataset",
                           "fineweb"]) == 0
    text = capsys.readouterr().out
    assert "Chinchilla's law (Hoffmann et al. 2022 runs, Epoch AI 2024 refit)" in text
    assert "DeepSeek LLM (2024) AdamW laws, not fitted for Muon" in text
    assert "dense bf16 datasheet peak" in text and "dataset card: 15 trillion tokens" in text
    # The Chinchilla runs Epoch's refit used: 16.2B parameters and 1.3e22 FLOP at most.
    assert "EXTRAPOLATION" in text and "compute C 7.2e+23 is 55.6x the largest of the fit's runs (1.3e+22)" in text
    hparams = tmp_path / "hparams.json"
    hparams.write_text(json.dumps({"lr": {"coefficient": 0.3, "exponent": -0.1},
                                   "batch_tokens": {"coefficient": 0.3, "exponent": 0.3}, "budgets": [],
                                   "source": "experiment 'lr_sweep', LR column train.muon_lr"}))
    assert scale_cli.main(["plan", "--law", "chinchilla", "--params", "1e9", "--hparams", str(hparams)]) == 0
    assert "the lab's own fit (experiment 'lr_sweep', LR column train.muon_lr)" in capsys.readouterr().out


def test_a_fit_json_records_its_runs_for_the_plan(tmp_path, capsys):
    law_file = tmp_path / "law.json"
    assert scale_cli.main(["fit", "--csv", "chinchilla", "--exclude-top", "5", "--bootstrap", "0",
                           "--json", str(law_file)]) == 0
    saved = json.loads(law_file.read_text())
    assert saved["data_range"]["runs"] == 240 and saved["data_range"]["C_max"] == pytest.approx(1.2956e22, rel=1e-4)
    assert saved["source"].startswith("chinchilla")
    capsys.readouterr()
    assert scale_cli.main(["plan", "--law", str(law_file), "--params", "8e9", "--tokens", "15e12"]) == 0
    text = capsys.readouterr().out
    assert f"the fit in {law_file} (of chinchilla" in text and "beyond the 240 runs" in text
