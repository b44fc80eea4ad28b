"""How `blueberry-eval` scores a run: with its kind's own evaluation (`Task.capabilities.evaluate`), or, for a
kind that declares none, with its Task's `evaluate` on the held-out split of the data `--data` names, the
same metrics its training logged (`val/<name>`), over as much of the split as asked."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from blueberry.core.capabilities import Evaluate, Evaluation, OpenedRun, Services, option
from blueberry.core.config import TrainConfig, from_dict
from blueberry.core.parallel import SINGLE_PROCESS
from blueberry.core.task import Task


@dataclass(frozen=True)
class ValidationOptions:
    data: str = option("builtin", "the data whose held-out split is scored: builtin, a prepared directory, or what "
                                  "the kind's --data takes (the one the run trained on)")
    limit: int | None = option(None, "score at most this many held-out units (tokens, images, samples; default: "
                                     "as many as the run's evaluations used)", minimum=1)
    batch_size: int | None = option(None, "samples per forward pass (default: the run's)", minimum=1)


class ValidationEvaluation(Evaluate):
    """The Task's own evaluation on held-out data: for any kind, with nothing of its own to declare."""

    options = ValidationOptions
    summary = "the metrics the run's evaluations log (val/<name>), on --data's held-out split"

    def __call__(self, run: OpenedRun, options: ValidationOptions, services: Services) -> Evaluation:
        data = services.open_for(run.task, options.data)
        train = from_dict(TrainConfig, run.saved.train_config)
        train = replace(train, eval_tokens=options.limit or train.eval_tokens,
                        batch_size=options.batch_size or train.batch_size)
        metrics = run.task.evaluate(run.model, data, train, torch.device(services.device), SINGLE_PROCESS)
        note = f"held-out {run.task.unit} of --data {options.data} (at most {train.eval_tokens:,})"
        rows = [("val", name, value, note) for name, value in metrics.items()]
        return Evaluation(rows, {f"val/{name}": value for name, value in metrics.items()},
                          {"data": options.data, "limit": options.limit})


def evaluation_for(task: Task) -> Any:
    """The evaluation `blueberry-eval` runs on a run of `task`'s kind."""
    declared = task.capabilities.evaluate
    return declared() if declared is not None else ValidationEvaluation()
