"""ProvisionalASHA against Ray's ASHA and against successive halving written out naively.

The scheduler is driven directly with stand-in trials: no Ray cluster is started."""

import dataclasses
import types

import numpy as np
import pytest
from ray.tune.schedulers import ASHAScheduler
from ray.tune.schedulers.trial_scheduler import TrialScheduler

from blueberry.platform.schedulers import ProvisionalASHA

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def scheduler(kind=ProvisionalASHA, max_t=27, grace_period=1, reduction_factor=3):
    return kind(time_attr="tokens", metric="val_loss", mode="min", max_t=max_t,
                grace_period=grace_period, reduction_factor=reduction_factor)


def add(sched, *names):
    trials = [types.SimpleNamespace(trial_id=name) for name in names]
    for trial in trials:
        sched.on_trial_add(None, trial)
    return trials


def report(sched, trial, tokens, loss):
    return sched.on_trial_result(None, trial, {"tokens": tokens, "val_loss": loss})


def test_an_early_promotion_is_withdrawn_once_the_rung_has_company():
    sched = scheduler()
    a, b, c, d = add(sched, "a", "b", "c", "d")
    # The rung at 1 token: a is alone there, b beats a, c beats both, d is worse than all three.
    assert report(sched, a, 1, 5.0) == CONTINUE
    assert report(sched, b, 1, 4.0) == CONTINUE
    assert report(sched, c, 1, 3.0) == CONTINUE
    assert report(sched, d, 1, 6.0) == STOP
    # Now a is the third of four at that rung: outside the best third of the others (3.0, 4.0, 6.0),
    # so its promotion made alone is withdrawn at its next report; b (second) stays, as does c.
    assert report(sched, a, 2, 4.5) == STOP
    assert report(sched, b, 2, 3.9) == CONTINUE
    assert report(sched, c, 2, 2.9) == CONTINUE
    # Ray's ASHA, given the same reports, keeps a running: it never looks back.
    plain = scheduler(ASHAScheduler)
    pa, pb, pc, pd = add(plain, "a", "b", "c", "d")
    for trial, loss in ((pa, 5.0), (pb, 4.0), (pc, 3.0), (pd, 6.0)):
        report(plain, trial, 1, loss)
    assert report(plain, pa, 2, 4.5) == CONTINUE


def test_after_a_full_rung_only_trials_halving_would_promote_run_on():
    # Every trial reports at the first rung before any goes on, as in synchronous successive halving,
    # in a random order. Halving by the same rule promotes a trial whose loss is at most the 1/3
    # quantile of the others' losses. At their next report, the trials ProvisionalASHA keeps running
    # are exactly those, less any stopped on arrival (ASHA's decision then, which no rule revises
    # upwards); Ray's ASHA keeps everything it promoted on arrival.
    rng = np.random.default_rng(0)
    promoted_early = 0
    for _ in range(20):
        losses = rng.uniform(3.0, 8.0, size=int(rng.integers(4, 30)))
        names = [f"t{i}" for i in range(len(losses))]
        halving = {name for i, (name, loss) in enumerate(zip(names, losses))
                   if loss <= np.percentile(np.delete(losses, i), 100 / 3)}
        on_arrival, kept = {}, {}
        for kind in (ProvisionalASHA, ASHAScheduler):
            sched = scheduler(kind)
            trials = add(sched, *names)
            running = [t for t, loss in zip(trials, losses) if report(sched, t, 1, loss) == CONTINUE]
            on_arrival[kind] = {t.trial_id for t in running}
            kept[kind] = {t.trial_id for t in running if report(sched, t, 2, 1.0) == CONTINUE}
        assert on_arrival[ProvisionalASHA] == on_arrival[ASHAScheduler]
        assert kept[ProvisionalASHA] == halving & on_arrival[ASHAScheduler]
        assert kept[ASHAScheduler] == on_arrival[ASHAScheduler]
        promoted_early += len(kept[ASHAScheduler] - halving)
    assert promoted_early > 0  # the cases do include promotions that halving would not make


def test_every_rung_passed_is_rechecked_and_the_budget_still_ends_a_trial():
    sched = scheduler()
    first, *others = add(sched, "first", *[f"o{i}" for i in range(5)])
    # Alone at rungs 1 and 3, so promoted at both; then five trials beat it at rung 1 only.
    assert report(sched, first, 1, 5.0) == CONTINUE
    assert report(sched, first, 3, 4.0) == CONTINUE
    for trial in others:
        report(sched, trial, 1, 4.9)
    assert report(sched, first, 4, 3.9) == STOP
    # A trial that stays best everywhere runs to max_t, where it is ended as Ray's ASHA ends it.
    best, weaker = add(sched, "best", "weaker")
    assert report(sched, weaker, 1, 4.95) == STOP  # not in the best third of the others: 4.9 (x5), 5.0
    for tokens in (1, 3, 9, 20):
        assert report(sched, best, tokens, 2.0) == CONTINUE
    assert report(sched, best, 27, 2.0) == STOP


def test_records_survive_save_and_restore(tmp_path):
    sched = scheduler()
    a, b, c = add(sched, "a", "b", "c")
    for trial, loss in ((a, 5.0), (b, 4.0), (c, 3.0)):
        report(sched, trial, 1, loss)
    sched.save(tmp_path / "scheduler.pkl")
    restored = scheduler()
    restored.restore(tmp_path / "scheduler.pkl")
    assert report(restored, a, 2, 4.0) == STOP  # judged against b and c, recorded before the save


def test_one_bracket_only():
    with pytest.raises(ValueError, match="brackets=1"):
        ProvisionalASHA(time_attr="tokens", metric="val_loss", mode="min", brackets=2)


def lr_space(trial):
    trial.suggest_float("train.muon_lr", 1e-3, 1e-1, log=True)


def test_studies_use_it_with_rungs_on_evaluations():
    from blueberry.core.config import TrainConfig
    from blueberry.models.lm.config import tiny
    from blueberry.models.run import RunConfig
    from blueberry.platform.sweep import SweepConfig, _study_base, _tune_config

    base = RunConfig(tiny(), TrainConfig(train_tokens=50 * 8 * 256, batch_size=8))
    cfg = SweepConfig(experiment="e", name="n", preset="tiny", base=base, space=lr_space, trials=9,
                      grace_fraction=1 / 9, reduction_factor=3, evals_per_trial=10)
    study_base = _study_base(cfg)
    provisional = _tune_config(cfg, study_base, concurrent=2).scheduler
    plain = _tune_config(dataclasses.replace(cfg, provisional_promotions=False), study_base, concurrent=2).scheduler
    assert type(provisional) is ProvisionalASHA and type(plain) is ASHAScheduler
    assert sorted(rung for rung, _ in provisional._brackets[0]._rungs) == [10_240, 30_720, 92_160]
