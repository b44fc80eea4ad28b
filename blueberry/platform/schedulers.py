"""ASHA whose promotions stay provisional until the rung they were made at has company.

Asynchronous successive halving decides at each rung against the trials that have reached it so
far. The first trial to reach a rung has nothing to be compared with and is always promoted; the
next few are judged against one or two others. With a couple of trials running at a time, a study's
first trials therefore tend to run the whole budget whatever their loss, and those full runs are
most of what ASHA spends above its minimum.

`ProvisionalASHA` makes the same decision as Ray's ASHA when a trial reaches a rung, and then makes
it again at every later report, at every rung the trial has passed, against everything recorded
there by then. A trial promoted for lack of company runs on only until company arrives and shows it
is not in the best 1 / reduction factor of its rung; synchronous successive halving would not have
promoted it either. No decision is taken on less evidence than ASHA's, none costs a worker idle
time, and a trial in the best fraction of every rung it passed runs exactly as under ASHA.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler
from ray.tune.schedulers.trial_scheduler import TrialScheduler


class ProvisionalASHA(ASHAScheduler):
    """Ray's `ASHAScheduler` (one bracket) that re-checks a trial's earlier promotions at each report."""

    def __init__(self, **kwargs: Any) -> None:
        if kwargs.get("brackets", 1) != 1:
            raise ValueError("ProvisionalASHA re-checks one bracket's rungs; use brackets=1")
        super().__init__(**kwargs)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if action != TrialScheduler.CONTINUE or trial.trial_id not in self._trial_info:
            return action
        # Ray's ASHA keeps, per rung, {trial id: signed metric} (larger is better) and a trial passes a
        # rung when its value is at least the rung's cutoff over the *other* trials recorded there.
        bracket = self._trial_info[trial.trial_id]
        for _, recorded in bracket._rungs:
            own = recorded.get(trial.trial_id)
            if own is None:
                continue
            cutoff = bracket.cutoff({other: value for other, value in recorded.items() if other != trial.trial_id})
            if cutoff is not None and own < cutoff:
                self._num_stopped += 1
                return TrialScheduler.STOP
        return action

    def debug_string(self) -> str:
        return super().debug_string().replace("AsyncHyperBand", "ProvisionalASHA", 1)
