"""Speedrun statistics, tracks and A/B runs.

Welch's test as the board computes it equals `scipy.stats.ttest_ind(equal_var=False, alternative=...)`
(statistic, degrees of freedom, p-value, confidence interval). Over many simulated claims with the
lab's run-to-run noise (0.3% in time), a config against itself (A/A) is accepted at most 1% of the
time, and a real 2% improvement is accepted with five runs. The lab's tracks are the data the issue
names. Arm files and their interleaving, and the study's A/B grid, are checked without Ray; then on
CPU with `tiny`, an A/B run as Tune trials on one pool accepts a candidate that truly trains to a
lower loss and refuses the same config against itself.
"""

import json
import runpy
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from blueberry.core.config import TrainConfig
from blueberry.errors import UserError
from blueberry.models.lm.config import tiny
from blueberry.models.run import RunConfig
from blueberry.speedrun.ab import interleave, read_arm
from blueberry.speedrun.runs import BASELINE, CANDIDATE
from blueberry.speedrun.stats import ALPHA, acceptance_rate, accepted, welch_arrays, welch_test
from blueberry.speedrun.tracks import LAB_TRACKS, TRACKS, Track, track, track_for_target

REPO = Path(__file__).resolve().parents[1]
ALTERNATIVE = {"min": "less", "max": "greater"}


@pytest.mark.parametrize("direction", ["min", "max"])
def test_welch_equals_scipy(direction):
    rng = np.random.default_rng(7)
    for _ in range(100):
        a = rng.normal(0.0, rng.uniform(0.1, 3), rng.integers(2, 12))
        b = rng.normal(rng.normal(0, 1), rng.uniform(0.1, 3), rng.integers(2, 12))
        ours = welch_test(a, b, direction)
        ref = stats.ttest_ind(a, b, equal_var=False, alternative=ALTERNATIVE[direction])
        assert ours.t == pytest.approx(ref.statistic, rel=1e-12, abs=1e-12)
        assert ours.df == pytest.approx(ref.df, rel=1e-12)
        assert ours.p == pytest.approx(ref.pvalue, rel=1e-10, abs=1e-15)
        ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
        assert ours.ci == pytest.approx((ci.low, ci.high), rel=1e-10)
        assert ours.difference == pytest.approx(a.mean() - b.mean())


def test_many_comparisons_at_once_equal_scipy_one_by_one():
    rng = np.random.default_rng(3)
    a, b = rng.normal(1.0, 0.003, (500, 5)), rng.normal(1.0, 0.003, (500, 4))
    t, df, p = welch_arrays(a, b, "min")
    ref = stats.ttest_ind(a, b, axis=-1, equal_var=False, alternative="less")
    np.testing.assert_allclose(t, ref.statistic, rtol=1e-12)
    np.testing.assert_allclose(df, ref.df, rtol=1e-12)
    np.testing.assert_allclose(p, ref.pvalue, rtol=1e-10)


def test_samples_without_spread_behave_as_in_scipy():
    with np.errstate(all="ignore"):
        for a, b in (([1.0, 1.0, 1.0], [2.0, 2.0, 2.0]), ([2.0, 2.0], [1.0, 1.0]), ([1.0, 1.0], [1.0, 1.0])):
            ours = welch_test(a, b, "min")
            ref = stats.ttest_ind(a, b, equal_var=False, alternative="less")
            assert np.isnan(ours.p) == np.isnan(ref.pvalue) and (np.isnan(ours.p) or ours.p == ref.pvalue)
    assert accepted(welch_test([1.0, 1.0, 1.0], [1.0, 1.0, 1.0]), 3) == (
        False, "both samples are identical and without spread: nothing to test")


@pytest.mark.parametrize("runs", [3, 5, 10])
def test_a_config_against_itself_is_accepted_at_most_one_time_in_a_hundred(runs):
    # 200,000 simulated A/A claims with the lab's noise (0.3% run to run in time). With equal spreads
    # Welch's test is slightly conservative (its df is at most Student's), so the rate sits under 1%.
    rate = acceptance_rate(0.0, 0.003, runs, 200_000, seed=runs)
    assert 0.004 < rate <= ALPHA  # at most 1%, and not a test that never accepts anything
    # The same draws through SciPy give the same decisions.
    rng = np.random.default_rng(runs)
    baseline, candidate = rng.normal(1.0, 0.003, (200_000, runs)), rng.normal(1.0, 0.003, (200_000, runs))
    ref = stats.ttest_ind(candidate, baseline, axis=-1, equal_var=False, alternative="less").pvalue
    assert np.mean(ref < ALPHA) == rate


def test_a_real_two_percent_improvement_is_accepted_with_five_runs():
    assert acceptance_rate(0.02, 0.003, 5, 40_000, seed=1) >= 0.999
    # What five runs can see: half a percent is usually missed, one percent usually found.
    assert acceptance_rate(0.005, 0.003, 5, 40_000, seed=2) < 0.6 < acceptance_rate(0.01, 0.003, 5, 40_000, seed=3)


def test_the_rule_says_why_it_refuses():
    rng = np.random.default_rng(0)
    base = rng.normal(88.4, 0.25, 5)
    better = accepted(welch_test(base - 2.0, base), 5)
    assert better[0] and better[1].startswith("lower with p = ")
    assert accepted(welch_test((base - 2.0)[:4], base), 5) == (False, "4 valid runs; the track needs 5")
    assert accepted(welch_test(base - 2.0, base[:1]), 5) == (
        False, "the reference has 1 valid run(s); a t-test needs at least 2")
    same = welch_test(base + 0.01, base)
    assert accepted(same, 5) == (False, f"not clearly lower: p = {same.p:.2g} >= 0.01")
    higher = welch_test(base + 2.0, base, "max")
    assert accepted(higher, 5)[1].startswith("higher with p")


def test_the_lab_tracks_are_data():
    assert LAB_TRACKS == ("8m", "20m", "100m", "loss-4.5", "loss-3.5", "1b")
    # The lab's token counts: whole steps of 8 x 2048 tokens.
    assert [TRACKS[n].budget_tokens for n in ("8m", "20m", "100m")] == [8_011_776, 20_004_864, 100_007_936]
    assert all(TRACKS[n].metric == "active_time_s" and TRACKS[n].hardware_bound for n in ("8m", "20m", "100m"))
    assert [(TRACKS[n].target_train_loss, TRACKS[n].metric) for n in ("loss-4.5", "loss-3.5")] == [
        (4.5, "target_time_s"), (3.5, "target_time_s")]
    marathon = TRACKS["1b"]
    assert (marathon.metric, marathon.budget_tokens, marathon.min_runs) == ("val_loss", 1_000_000_000, 3)
    assert all(t.direction == "min" for t in TRACKS.values()) and TRACKS["8m"].min_runs == 5
    assert track_for_target(4.5, 1000) is TRACKS["loss-4.5"] and track_for_target(6.0, 40_960).train_tokens == 40_960
    with pytest.raises(UserError, match="unknown track 'fastest': use one of 8m, 20m"):
        track("fastest")
    with pytest.raises(UserError, match="exactly one of a token budget or a target"):
        Track("x", "?", "val_loss", 5)
    with pytest.raises(UserError, match="min_runs must be at least 2"):
        Track("x", "?", "val_loss", 1, budget_tokens=10)


def write(path, content):
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_arm_files_are_overrides_sections_or_whole_configs(tmp_path):
    assert read_arm(write(tmp_path / "a.json", {"train.muon_lr": 0.03})) == {"train.muon_lr": 0.03}
    assert read_arm(write(tmp_path / "b.json", {"train": {"muon_lr": 0.03}, "model": {"n_layers": 2}})) == {
        "train.muon_lr": 0.03, "model.n_layers": 2}
    whole = RunConfig(tiny(), TrainConfig(muon_lr=0.03))
    overrides = read_arm(write(tmp_path / "c.json", whole.to_json()))
    assert overrides["train.muon_lr"] == 0.03 and overrides["model.d_model"] == 128
    assert "train.seed" not in overrides and "train.train_tokens" not in overrides  # the study's and track's
    for content, message in ((None, "no such file"), ("{nope", "is not JSON"), ([1, 2], "must hold a JSON object"),
                             ({"lr": 0.1}, "'lr' is not a config field"), ({"train.seed": 3}, "sets train.seed"),
                             ({"train": {"target_train_loss": 4}}, "sets train.target_train_loss")):
        path = tmp_path / "bad.json"
        path.unlink(missing_ok=True)
        if content is not None:
            write(path, content)
        with pytest.raises(UserError, match=message):
            read_arm(path)


def test_arms_alternate_with_their_own_seeds_and_name_the_same_fields():
    points = interleave({"train.muon_lr": 0.015}, {"train.adamw_lr": 0.006}, 3, first_seed=10,
                        defaults={"train.muon_lr": 0.024, "train.adamw_lr": 0.001})
    assert [arm for arm, _ in points] == [BASELINE, CANDIDATE] * 3
    assert [p["train.seed"] for _, p in points] == [10, 11, 12, 13, 14, 15]
    assert points[0][1] == {"train.muon_lr": 0.015, "train.adamw_lr": 0.001, "train.seed": 10}
    assert points[1][1] == {"train.muon_lr": 0.024, "train.adamw_lr": 0.006, "train.seed": 11}


@pytest.fixture(scope="module")
def study():
    return runpy.run_path(str(REPO / "studies" / "speedrun.py"))


def test_the_study_builds_an_interleaved_ab_on_its_track_without_starting_ray(study, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    speedrun = study["Speedrun"]()
    old, new = write(tmp_path / "old.json", {"train.muon_lr": 0.015}), write(tmp_path / "new.json", {})
    args = speedrun.parser().parse_args(["--scale", "smoke", "--ab", str(old), str(new), "--runs", "4"])
    scale = speedrun.scale(args)
    cfg = speedrun.sweep_config(args, scale)
    assert cfg.base.train.train_tokens == TRACKS["smoke-loss"].budget_tokens
    assert cfg.base.train.target_train_loss is None
    lrs = [(p["train.muon_lr"], p["train.seed"]) for p in cfg.grid["point"]]
    assert lrs == [(0.015, 0), (0.024, 1), (0.015, 2), (0.024, 3), (0.015, 4), (0.024, 5), (0.015, 6), (0.024, 7)]
    # A target track sets the target; the default number of runs is the track's minimum.
    args = speedrun.parser().parse_args(["--scale", "gpu", "--target-train-loss", "4.5"])
    cfg = speedrun.sweep_config(args, speedrun.scale(args))
    assert cfg.base.train.target_train_loss == 4.5 and cfg.base.train.train_tokens == 20_004_864
    assert cfg.grid == {"train.seed": [0, 1, 2, 3, 4]}
    with pytest.raises(UserError, match="contradicts track 8m's budget"):
        speedrun.base(Namespace(**{**vars(args), "target_train_loss": None, "track": "8m", "train_tokens": 1000}),
                      speedrun.scale(args))


def test_the_study_refuses_bad_arms_in_one_line_before_anything_runs(study, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ok = write(tmp_path / "ok.json", {})
    cases = [([str(tmp_path / "missing.json"), str(ok)], "no such file"),
             ([str(write(tmp_path / "seed.json", {"train.seed": 1})), str(ok)], "sets train.seed"),
             ([str(write(tmp_path / "field.json", {"train.nope": 1})), str(ok)], "'train.nope' names no field"),
             ([str(write(tmp_path / "value.json", {"train.muon_lr": -1})), str(ok)], "muon_lr must be a positive"),
             ([str(ok), str(write(tmp_path / "budget.json", {"train.train_tokens": 999}))], "fixes the budget")]
    for arms, message in cases:
        code = study["Speedrun"]().main(["--scale", "smoke", "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
                                         "--ab", *arms])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "ray_results").exists()  # refused before the sweep began


@pytest.mark.slow
@pytest.mark.ray
def test_on_cpu_an_ab_accepts_a_real_improvement_and_refuses_a_config_against_itself(ray_local, tmp_path):
    """Tiny runs of `tiny` as Tune trials on one pool, nine in one sweep: the record learning rates
    against ten times smaller ones, interleaved (lower loss at a fixed budget: accepted), then three
    more runs of the record judged against the record's three (the same config against itself: refused)."""
    from mlflow import MlflowClient

    from blueberry.platform.leaderboard import read_runs, record_claim
    from blueberry.platform.sweep import SweepConfig, run_sweep
    from blueberry.speedrun.board import Claim, judge

    steps, batch = 8, 2
    base = RunConfig(tiny(), TrainConfig(train_tokens=steps * batch * 256, batch_size=batch, eval_tokens=8 * 256,
                                         log_every=4, device="cpu"))
    chosen = Track("test-loss", "lowest validation loss after 4,096 tokens", "val_loss", 3,
                   budget_tokens=steps * batch * 256)
    record = {"train.muon_lr": 0.024, "train.adamw_lr": 0.006}
    slow = {"train.muon_lr": 0.0024, "train.adamw_lr": 0.0006}
    ab = interleave(slow, record, 3, defaults=base.flatten())
    more = [{**record, "train.seed": seed} for seed in (100, 101, 102)]
    cfg = SweepConfig(experiment="speedrun", name="ab-test", preset="tiny", base=base, space=None,
                      grid={"point": [p for _, p in ab] + more}, storage=str(tmp_path / "ray"),
                      tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", evals_per_trial=1)
    result = run_sweep(cfg)
    client = MlflowClient(result.tracking_uri)

    better = record_claim(client, result.experiment_id, result.trials, base, chosen, ab, "ab", "ada", {}, submit=True)
    losses = {arm: [r.value("val_loss") for r in runs] for arm, runs in better.arms.items()}
    assert len(losses[BASELINE]) == len(losses[CANDIDATE]) == 3
    assert better.verdict.accepted, better.verdict.reason
    assert better.verdict.test.p == pytest.approx(
        stats.ttest_ind(losses[CANDIDATE], losses[BASELINE], equal_var=False, alternative="less").pvalue, rel=1e-12)
    assert max(losses[CANDIDATE]) < min(losses[BASELINE])
    # Every run of the claim carries its claim, arm and hardware; the arms alternated on the pool.
    runs = client.search_runs([result.experiment_id], filter_string="tags.`speedrun.claim` = 'ab'",
                              order_by=["attributes.start_time ASC"])
    assert len(runs) == 6 and all(r.data.tags["hardware.gpu"] == "none" and r.data.tags["hardware.cpu"] for r in runs)
    arms = [r.data.tags["speedrun.arm"] for r in runs]
    assert all(abs(arms[:k].count(BASELINE) - arms[:k].count(CANDIDATE)) <= 2 for k in range(1, 7)), arms

    extra = read_runs(client, result.experiment_id, [row["mlflow_run_id"] for row in result.trials
                                                     if row["train.seed"] >= 100])
    itself = judge(chosen, [Claim("aa", chosen.name, "", tuple(extra), tuple(better.arms[CANDIDATE]))]).verdicts[0]
    assert len(itself.valid) == 3 and not itself.accepted, itself.reason
    assert itself.reason.startswith("not clearly lower") and itself.test.p > ALPHA
