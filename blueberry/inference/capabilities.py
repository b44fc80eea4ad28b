"""What a kind can do with a trained model, looked up for the commands: the capability its Task declares
(`Task.capabilities`), or a one-line refusal naming what the kind lacks and which kinds have it."""

from __future__ import annotations

from typing import Any

from blueberry.core.task import Task
from blueberry.errors import UserError
from blueberry.models.registry import task_class, task_kinds

# What each capability is, for refusals: "a 'dit' model has no export (blueberry-export)".
WHAT = {"generate": "sampling (blueberry-generate)", "evaluate": "evaluation of its own (blueberry-eval)",
        "downstream": "downstream tasks during training (--eval-tasks)", "export": "export format (blueberry-export)"}


def kinds_with(name: str) -> list[str]:
    """The registered kinds that declare capability `name`."""
    return [kind for kind in task_kinds() if getattr(task_class(kind).capabilities, name) is not None]


def capability_class(task: Task | type[Task], name: str) -> type | None:
    """The class `task`'s kind declares for capability `name` (None: it declares none)."""
    if name not in WHAT:
        raise ValueError(f"unknown capability {name!r}; capabilities: {', '.join(WHAT)}")
    return getattr(task.capabilities, name)


def require(task: Task | type[Task], name: str, who: str | None = None) -> Any:
    """An instance of `task`'s capability `name`, or a one-line error: "<who> is a 'dit' model: it has no
    export format (blueberry-export); kinds that have one: lm"."""
    cls = capability_class(task, name)
    if cls is None:
        others = kinds_with(name)
        subject = f"{who} is a {task.kind!r} model" if who else f"a {task.kind!r} model"
        raise UserError(f"{subject}: its kind has no {WHAT[name]}"
                        + (f"; kinds that have one: {', '.join(others)}" if others else ""))
    return cls()
