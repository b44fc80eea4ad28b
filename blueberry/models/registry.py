"""Which model kinds exist: each registers its `Task` here, and everything above looks them up here.

A new kind adds a folder under `blueberry/models/` (config, model, task) and one line below. Tasks
defined elsewhere (a test's toy task, a lab's experiment) join with `register_task`.
"""

from __future__ import annotations

from typing import Any

from blueberry.core.checkpoint import SavedWeights, load_weights
from blueberry.core.config import TrainConfig, from_dict
from blueberry.core.task import Task
from blueberry.errors import ConfigError
from blueberry.models.dit.task import DiTTask
from blueberry.models.lm.task import LMTask
from blueberry.models.vqvae.task import VQVAETask

_TASKS: dict[str, type[Task]] = {LMTask.kind: LMTask, DiTTask.kind: DiTTask, VQVAETask.kind: VQVAETask}


def register_task(task_class: type[Task]) -> type[Task]:
    """Add a task kind (usable as a class decorator); a kind name is taken once."""
    existing = _TASKS.get(task_class.kind)
    if existing is not None and existing is not task_class:
        raise ConfigError(f"task kind {task_class.kind!r} is already registered by {existing.__name__}")
    _TASKS[task_class.kind] = task_class
    return task_class


def task_kinds() -> list[str]:
    return sorted(_TASKS)


def task_class(kind: str) -> type[Task]:
    if kind not in _TASKS:
        raise ConfigError(f"unknown task kind {kind!r}; known kinds: {', '.join(task_kinds())}")
    return _TASKS[kind]


def preset_names() -> list[str]:
    """Every registered kind's named model configs."""
    return [name for cls in _TASKS.values() for name in cls.presets]


def preset(name: str) -> Any:
    """The model config a preset names, whichever kind it belongs to."""
    for cls in _TASKS.values():
        if name in cls.presets:
            return cls.presets[name]()
    raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(preset_names())}")


def train_preset(name: str) -> TrainConfig:
    """The TrainConfig a preset trains with by default: its kind's own (`Task.train_presets`), else
    TrainConfig's defaults."""
    for cls in _TASKS.values():
        if name in cls.presets:
            return cls.train_presets[name]() if name in cls.train_presets else TrainConfig()
    raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(preset_names())}")


def task_class_for(model_config: Any) -> type[Task]:
    """The task whose model config `model_config` is."""
    for cls in _TASKS.values():
        if type(model_config) is cls.config_class:
            return cls
    raise ConfigError(f"no registered task takes a {type(model_config).__name__}; known kinds: "
                      f"{', '.join(task_kinds())}")


def load_model(path: str, device: str = "cpu") -> tuple[Task, Any, SavedWeights]:
    """A checkpoint's task and model, weights loaded, in eval mode: for inference, from the file alone."""
    saved = load_weights(path, device)
    cls = task_class(saved.task or LMTask.kind)  # checkpoints that name no kind predate every kind but this one
    task = cls(from_dict(cls.config_class, saved.model_config))
    model = task.build_model()
    model.load_state_dict(saved.weights)
    return task, model.to(device).eval(), saved
