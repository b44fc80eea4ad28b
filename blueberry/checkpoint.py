"""Checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint holds the model, every optimizer's state (and so the schedule's position), the data
stream's position, the loop's counters and smoothed loss, and the torch RNG state. Files are written
to a temporary name and renamed, so a crash never leaves a half-written checkpoint that looks whole,
and they load with `torch.load(weights_only=True)`: no pickled code runs on load.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from blueberry.errors import UserError
from blueberry.hooks import Hook, StepInfo

if TYPE_CHECKING:
    from blueberry.train import TrainState

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


def load_checkpoint(path: Path, state: TrainState) -> None:
    try:
        payload = torch.load(path, map_location=state.device, weights_only=True)
    except (RuntimeError, EOFError, OSError) as err:
        raise UserError(f"cannot read checkpoint {path}: {str(err).splitlines()[0]}") from None
    state.load_state_dict(payload)


RAY_STATE_FILE = "state.pt"  # the state's file inside a Ray (Tune or Train) checkpoint directory


@contextmanager
def ray_checkpoint(state: TrainState, checkpoint_cls: Any) -> Iterator[Any]:
    """`state` as a Ray checkpoint of `checkpoint_cls` (Tune's and Train's are different classes), valid
    inside the block: report it there, and Ray copies it to the run's storage."""
    with tempfile.TemporaryDirectory() as directory:
        save_checkpoint(Path(directory) / RAY_STATE_FILE, state)
        yield checkpoint_cls.from_directory(directory)


def restore_ray_checkpoint(checkpoint: Any, state: TrainState) -> int:
    """Load `state` from a Ray checkpoint (or leave it as is for None); the step it continues from."""
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as directory:
        load_checkpoint(Path(directory) / RAY_STATE_FILE, state)
    return state.step


class Checkpointer(Hook):
    """Saves every `every` steps and at the end; on start, resumes from the latest checkpoint in `directory`."""

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
        if self.every and info.step % self.every == 0:
            self._save(state)

    def on_end(self, result: object, state: TrainState) -> None:
        self._save(state)

    def _save(self, state: TrainState) -> None:
        save_checkpoint(checkpoint_path(self.directory, state.step), state)
        old = sorted(p for p in self.directory.iterdir() if _NAME.match(p.name))[:-self.keep]
        for p in old:
            p.unlink()
