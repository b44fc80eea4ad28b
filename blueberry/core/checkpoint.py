"""Checkpoints: everything a run needs to continue exactly where it stopped, and to be used without it.

A checkpoint holds the model, every optimizer's state (and so the schedule's position), the data
stream's position, the loop's counters and smoothed loss, and the torch RNG state. It also records
the run's configuration (task kind, model config, train config) and what the task says of its data
(the language model: its tokenizer), so `load_weights` serves inference from the file alone, with no
optimizer and no data stream. Files are written to a temporary name and renamed, so a crash never
leaves a half-written checkpoint that looks whole, and they load with `torch.load(weights_only=True)`:
no pickled code runs on load.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from blueberry.core.events import RunResult, StepInfo
from blueberry.core.hooks import Hook
from blueberry.core.state import TrainState
from blueberry.errors import UserError

_NAME = re.compile(r"^step-(\d{8})\.pt$")


def checkpoint_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"step-{step:08d}.pt"


def latest_checkpoint(directory: Path) -> Path | None:
    """The checkpoint with the highest step in `directory`, by step number in its name."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    steps = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return max(steps)[1] if steps else None


def save_checkpoint(path: Path, state: TrainState) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state.state_dict(), tmp)
    os.replace(tmp, path)
    return path


def _read(path: Path, device: torch.device | str) -> dict[str, Any]:
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
        raise UserError(f"cannot read checkpoint {path}: {str(err).splitlines()[0]}") from None


def load_checkpoint(path: Path, state: TrainState) -> None:
    state.load_state_dict(_read(path, state.device))


@dataclass(frozen=True)
class SavedWeights:
    """A checkpoint's model, with what it takes to rebuild and use it."""

    task: str | None  # the task kind that wrote it ("lm"); None: written before checkpoints named it
    model_config: dict[str, Any]  # the model config as plain data (`blueberry.models` rebuilds it)
    train_config: dict[str, Any]
    weights: dict[str, torch.Tensor]  # the model's state dict
    data: dict[str, Any]  # what the task recorded of its data, e.g. {"tokenizer": {...}}
    step: int
    tokens: int


def load_weights(path: str | Path, device: torch.device | str = "cpu") -> SavedWeights:
    """The model weights of a checkpoint and their description, without an optimizer or data."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"no checkpoint at {path}: pass a checkpoint file or a run's checkpoint directory")
    if path.is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise UserError(f"{path} holds no checkpoint (step-NNNNNNNN.pt): pass a checkpoint file or a run's "
                            "checkpoint directory")
        path = latest
    payload = _read(path, device)
    if "run" in payload:
        run = payload["run"]
    elif "config" in payload:  # before run records: the configuration as JSON, and no task kind or tokenizer
        run = {"task": None, **json.loads(payload["config"])}
    else:
        raise UserError(f"{path} records no run configuration: it is not a Blueberry checkpoint")
    return SavedWeights(task=run["task"], model_config=run["model"], train_config=run["train"],
                        weights=payload["model"], data=payload.get("data", {}), step=payload["step"],
                        tokens=payload["tokens"])


class Checkpointer(Hook):
    """Saves every `every` steps (0: never) and at the end; on start, resumes from the latest checkpoint
    in `directory`. The cadence is enforced where the hook is registered (`Hooks.add`)."""

    def __init__(self, directory: str | Path, every: int = 0, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1 (the checkpoint just written), got {keep}")
        self.directory, self.every, self.keep = Path(directory), every, keep
        self.resumed_from: Path | None = None

    def on_start(self, state: TrainState) -> None:
        latest = latest_checkpoint(self.directory)
        if latest is not None:
            load_checkpoint(latest, state)
            self.resumed_from = latest

    def on_step(self, info: StepInfo, state: TrainState) -> None:
        if info.step < info.total_steps:  # the last step's state is saved by on_end, after the final evaluation
            self._save(state)

    def on_end(self, result: RunResult, state: TrainState) -> None:
        self._save(state)

    def _save(self, state: TrainState) -> None:
        save_checkpoint(checkpoint_path(self.directory, state.step), state)
        old = sorted(p for p in self.directory.iterdir() if _NAME.match(p.name))[:-self.keep]
        for p in old:
            p.unlink()
