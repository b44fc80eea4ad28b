"""`RunConfig`: a model config and how to train it, the unit sweeps vary and runs are keyed by."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from blueberry.core.config import TrainConfig, flatten, from_dict
from blueberry.core.identity import run_key
from blueberry.core.state import run_record
from blueberry.core.task import Task
from blueberry.errors import ConfigError
from blueberry.models.lm.config import ModelConfig
from blueberry.models.registry import task_class, task_class_for


@dataclass(frozen=True)
class RunConfig:
    """A model (of any registered kind; the language model by default) and how to train it:
    everything that determines a run's result."""

    model: Any = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        task_class_for(self.model)  # an unregistered model config fails here, not deep inside a trial

    @property
    def kind(self) -> str:
        return task_class_for(self.model).kind

    def task(self) -> Task:
        return task_class_for(self.model)(self.model)

    def flatten(self) -> dict[str, Any]:
        """Flat `model.x` / `train.y` params: the form MLflow and Tune record."""
        return flatten(self)

    def to_json(self) -> str:
        return json.dumps(run_record(self.task(), self.train), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        raw = json.loads(text)
        try:
            model_class = task_class(raw["task"]).config_class
            return cls(model=from_dict(model_class, raw["model"]), train=from_dict(TrainConfig, raw["train"]))
        except KeyError as err:
            raise ConfigError(f"a run configuration needs task, model and train; {err} is missing") from None

    def key(self, **context: Any) -> str:
        """This run's identity (`blueberry.core.identity.run_key`) with the task kind and `context`
        (the data's preparation key, a study's settings)."""
        return run_key(self, task=self.kind, **context)
