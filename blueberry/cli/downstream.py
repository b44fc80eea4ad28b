"""Downstream tasks scored while a language model trains: the hook `blueberry-train --eval-tasks` adds,
and the one every trial of a study run with `--eval-tasks` adds (`TrialDownstream`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from blueberry.core.hooks import Hook
from blueberry.errors import UserError
from blueberry.models.run import RunConfig


def downstream_hook(run: RunConfig, data: Any, tasks: str, report: Hook, every: int, limit: int | None) -> Hook:
    """A hook scoring `tasks` (blueberry-eval's `--tasks` syntax) on the model `run` trains on `data`,
    every `every` steps (0: at each of the loop's evaluations), reporting to `report`."""
    from blueberry.models.lm.eval import DownstreamEval
    from blueberry.platform.data import prepared_tokenizer
    from blueberry.platform.evaluation import load_tasks, parse_tasks

    if run.task().kind != "lm":
        raise UserError("--eval-tasks scores language models; this run trains another kind")
    tokenizer = prepared_tokenizer(data)
    loaded = load_tasks(parse_tasks(tasks), tokenizer, seq_len=run.model.seq_len, data=data)
    return DownstreamEval(loaded, tokenizer, report=report, every=every, limit=limit)


@dataclass(frozen=True)
class TrialDownstream:
    """What a study with `--eval-tasks` adds to each trial (`SweepConfig.trial_hooks`): the tasks scored
    at every one of the trial's evaluations, so each report to Tune carries them beside the loss.
    Picklable, as Tune ships it to the trials."""

    tasks: str
    limit: int | None = None

    def __call__(self, run: RunConfig, data: Any, report: Hook) -> list[Hook]:
        return [downstream_hook(run, data, self.tasks, report, every=0, limit=self.limit)]
