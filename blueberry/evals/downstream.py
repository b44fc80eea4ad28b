"""Downstream tasks scored while a model trains: the hook `blueberry-train --eval-tasks` adds, and the one every
trial of a study run with `--eval-tasks` adds (`TrialDownstream`). The kind says which tasks exist and how
to score them (its `Downstream` capability); a kind without one is refused in one line."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from blueberry.core.hooks import Hook
from blueberry.core.task import Task
from blueberry.inference.capabilities import require
from blueberry.models.run import RunConfig


def downstream_metrics(task: Task, tasks: str) -> Mapping[str, str]:
    """The metric names scoring `tasks` reports during training, each with the way it improves; a task that does
    not exist, or a kind without downstream tasks, is refused here, before anything trains."""
    return require(task, "downstream", "this run").metrics(tasks)


def downstream_hook(run: RunConfig, data: Any, tasks: str, report: Hook, every: int, limit: int | None) -> Hook:
    """A hook scoring `tasks` (blueberry-eval's `--tasks` syntax) on the model `run` trains on `data`,
    every `every` steps (0: at each of the loop's evaluations), reporting to `report`."""
    task = run.task()
    return require(task, "downstream", "this run").hook(task, data, tasks, report, every, limit)


@dataclass(frozen=True)
class TrialDownstream:
    """What a study with `--eval-tasks` adds to each trial (`SweepConfig.trial_hooks`): the tasks scored
    at every one of the trial's evaluations, so each report to Tune carries them beside the loss.
    Picklable, as Tune ships it to the trials."""

    tasks: str
    limit: int | None = None

    def __call__(self, run: RunConfig, data: Any, report: Hook) -> list[Hook]:
        return [downstream_hook(run, data, self.tasks, report, every=0, limit=self.limit)]
