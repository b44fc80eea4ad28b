"""What a model kind can do with a trained model, declared beside its Task.

Training asks nothing of a kind beyond its `Task`. Everything after it does: `blueberry-generate` draws
samples, `blueberry-eval` scores a run, `--eval-tasks` scores downstream tasks while a model trains, and
`blueberry-export` hands a run to another library. A kind says which of these it can do in
`Task.capabilities`, a `Capabilities` (`blueberry.core.task`) naming one class per capability, each kept in the
kind's own folder and built on the interfaces here:

    class LMTask(Task[ModelConfig]):
        capabilities = Capabilities(generate=TextGeneration, evaluate=DownstreamEvaluation,
                                    downstream=DownstreamInTraining, export=HFExport)

The commands find a capability here and never by the kind's name; a kind without one is refused in one
line that names what it lacks (`blueberry.inference.capabilities`). A kind that declares no evaluation is
still evaluated: `blueberry-eval` runs its `Task.evaluate` on the data it names.

A capability's flags are a frozen dataclass, its `options`: each field is a flag (`max_new_tokens: int =
128` is `--max-new-tokens`), with its help and limits in the field's metadata (`option(...)`), so the
kind's flags appear in `blueberry-generate --run NAME --help` without the command knowing them. Checks that
need the run (a flag that does not apply to this model) are the capability's own, in one-line `UserError`s.

What a capability needs from above the model kinds (opening `--data`, another checkpoint) comes in
`Services`, lent by the command: the kinds stay below the inference layer and the platform.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, TextIO

import torch.nn as nn

from blueberry.core.checkpoint import SavedWeights
from blueberry.core.hooks import Hook
from blueberry.core.task import Task


def option(default: Any, help: str, *, minimum: float | None = None, maximum: float | None = None,
           flag: str | None = None, choices: Sequence[str] | None = None, metavar: str | None = None,
           positive: bool = False) -> Any:
    """A field of a capability's options: its default, its help, and the limits the command checks
    (`minimum`/`maximum` inclusive; `positive`: above 0). `flag` overrides the flag's name (`classes` is
    `--class`); a `tuple[str, ...]` field is a repeatable flag."""
    return field(default=default, metadata={"help": help, "minimum": minimum, "maximum": maximum, "flag": flag,
                                            "choices": tuple(choices) if choices else None, "metavar": metavar,
                                            "positive": positive})


@dataclass(frozen=True)
class NoOptions:
    """A capability that takes no flags of its own."""


class OpenedRun(Protocol):
    """A trained run opened for inference (`blueberry.inference.run.TrainedRun` is one)."""

    name: str  # the run's name, or the checkpoint's path when opened by path
    checkpoint: Path
    task: Task
    model: nn.Module  # weights loaded, in eval mode
    saved: SavedWeights
    tokenizer: Any | None  # the tokenizer the checkpoint records (`blueberry.data.tokenizer.Tokenizer`), if any


@dataclass(frozen=True)
class Services:
    """What a command lends a capability: what lives above the model kinds, and where to print."""

    open_for: Callable[[Task, str], Any]  # (task, --data spec) -> its data, checked against the task
    open_images: Callable[[str], Any]  # --data spec -> image shards, for any task
    open_run: Callable[[Path], OpenedRun]  # another checkpoint (the VQ-VAE that decodes image codes)
    device: str = "cpu"
    seed: int = 0
    out: TextIO = field(default_factory=lambda: sys.stdout)
    notes: TextIO = field(default_factory=lambda: sys.stderr)  # remarks that are not the command's output


class Capability(ABC):
    """One thing a kind can do with a trained model; `options` is the dataclass of its flags."""

    options: ClassVar[type] = NoOptions
    summary: ClassVar[str] = ""  # one line for --help: what it produces


class Generate(Capability):
    """`blueberry-generate`: samples from a trained model (text, a grid of images...)."""

    @abstractmethod
    def __call__(self, run: OpenedRun, options: Any, services: Services) -> None:
        """Draw what `options` asks for, print it or write it where they say."""

    def evaluation_samples(self, task: Task, data: Any, logger: ArtifactLogger,
                           settings: SampleSettings) -> Hook | None:
        """A hook that hands samples to the tracker at each of the loop's evaluations (None: none)."""
        return None


@dataclass(frozen=True)
class SampleSettings:
    """`blueberry-train`'s settings of the samples logged at evaluations, for kinds that read them."""

    prompts: tuple[str, ...] = ()  # empty: the kind's own
    max_new_tokens: int = 48  # 0: no samples


class ArtifactLogger(Protocol):
    """Where evaluation samples go (the MLflow tracker, or the null one)."""

    def log_text(self, text: str, artifact_file: str) -> None: ...

    def log_image(self, image: Any, artifact_file: str) -> None: ...


@dataclass(frozen=True)
class Evaluation:
    """What `blueberry-eval` prints and records: a table of (task, metric, value, note) rows, every metric
    by name, and what else the record of the evaluation should hold (counts, files)."""

    rows: list[tuple[str, str, float, str]]
    metrics: dict[str, float]
    record: dict[str, Any] = field(default_factory=dict)


class Evaluate(Capability):
    """`blueberry-eval`: a trained model scored on what the kind is judged by."""

    @abstractmethod
    def __call__(self, run: OpenedRun, options: Any, services: Services) -> Evaluation:
        """Score the run; read nothing the options do not name."""

    def scorer(self, run: OpenedRun, batch_size: int) -> Any | None:
        """What scores text under the run's model for lm-evaluation-harness (`blueberry.evals.harness.Scorer`);
        None for a kind that does not model text."""
        return None


class Downstream(ABC):
    """Tasks scored while a model trains (`blueberry-train --eval-tasks`, a study's `--eval-tasks`): the
    names a study may be judged by, and the hook that scores them."""

    @abstractmethod
    def metrics(self, tasks: str) -> Mapping[str, str]:
        """What scoring `tasks` reports, each name with the way it improves ("min" or "max"); a one-line
        `UserError` for a task that does not exist, before anything trains."""

    @abstractmethod
    def hook(self, task: Task, data: Any, tasks: str, report: Hook, every: int, limit: int | None) -> Hook:
        """A hook scoring `tasks` on the model `task` trains on `data`, every `every` steps (0: at each of the
        loop's evaluations), reporting to `report` (a tracker, a Tune reporter)."""


class ExportedModel(Protocol):
    """A model as another library reads it (`blueberry.models.lm.export.HFCheckpoint` is one)."""

    format: str
    config: dict[str, Any]
    generation_config: dict[str, Any]
    weights: dict[str, Any]
    requires: str | None  # an import the reader must run first, if any
    description: str  # a paragraph for the model card: the architecture
    max_length: int


class Export(Capability):
    """`blueberry-export`: a trained model as a directory another library loads."""

    formats: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def __call__(self, run: OpenedRun, options: Any) -> ExportedModel:
        """The run's model converted as `options` say (its format, its dtype)."""
