"""Checkpoints: everything a run needs to continue exactly where it stopped, and to be used without it.

A checkpoint holds the model, every optimizer's state (and so the schedule's position), the data
stream's position, the loop's counters and smoothed loss, and the torch RNG state. It also records
the run's configuration (task kind, model config, train config) and what the task says of its data
(the language model: its tokenizer), so `load_weights` serves inference from the file alone, with no
optimizer and no data stream.

Integrity: `step-N.pt` is written to a temporary name and renamed, so a crash never leaves a
half-written checkpoint that looks whole; its SHA-256, computed while writing, is then saved beside
it as `step-N.pt.sha256` (the `sha256sum` format). Loading checks the checksum first, then the
payload's structure: a damaged file raises `DamagedFile` before any of it reaches the model, and
`Checkpointer` sets it aside and resumes from the previous checkpoint instead. (A checkpoint with no
checksum file, written before checksums or by a process killed between the two renames, is still
checked for structure.) Files load with `torch.load(weights_only=True)`: no pickled code runs.

Sharded (FSDP) runs keep this contract unchanged: a checkpoint is the whole state, gathered from
the shards by every rank and written by the main rank alone (`TrainState.state_dict`), in the same
single file. It is not torch.distributed.checkpoint's sharded format, whose per-rank files would
need a directory renamed into place as the unit of atomicity and whose `.metadata` torch 2.13 reads
with `pickle.load`, outside `weights_only`. The price is host memory on the main rank while saving
(the whole model and optimizer state in fp32: 8 bytes a Muon parameter, 12 an AdamW one) and on
every rank while resuming (each reads the whole file); in return any strategy and worker count
resumes it, and `load_weights` reads it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import signal
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from blueberry.core.events import RunResult, StepInfo
from blueberry.core.hooks import Hook
from blueberry.core.state import TrainState
from blueberry.errors import DamagedFile, UserError
from blueberry.files import atomic_file, write_atomic

log = logging.getLogger(__name__)

_NAME = re.compile(r"^step-(\d{8})\.pt$")
CHECKSUM_SUFFIX = ".sha256"
DAMAGED_SUFFIX = ".damaged"


def checkpoint_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"step-{step:08d}.pt"


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def checkpoints(directory: Path) -> list[Path]:
    """The checkpoints in `directory`, newest (highest step) first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    steps = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(steps, reverse=True)]


def latest_checkpoint(directory: Path) -> Path | None:
    """The checkpoint with the highest step in `directory`, by step number in its name."""
    found = checkpoints(directory)
    return found[0] if found else None


class _HashingWriter:
    """A file object that hashes what passes through it, so the checksum costs no second read."""

    def __init__(self, out: BinaryIO) -> None:
        self.out, self.sha = out, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()


def save_checkpoint(path: Path, state: TrainState) -> Path | None:
    """Save `state` to `path`; every rank of a multi-process run calls it (FSDP gathers the shards) and
    the main rank writes. The path written, or None on the other ranks."""
    payload = state.state_dict()
    if payload is None:
        return None
    return write_checkpoint(path, payload)


def write_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    """Write a checkpoint payload atomically, with its SHA-256 beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as out:
        writer = _HashingWriter(out)
        torch.save(payload, writer)
    write_atomic(checksum_path(path), f"{writer.sha.hexdigest()}  {path.name}\n")
    return path


def verify_checksum(path: Path) -> None:
    """Raise `DamagedFile` unless `path` matches its recorded SHA-256 (no checksum file: nothing to check)."""
    recorded = checksum_path(path)
    if not recorded.is_file():
        return
    expected = recorded.read_text().split(maxsplit=1)[0] if recorded.stat().st_size else ""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            sha.update(chunk)
    if sha.hexdigest() != expected:
        raise DamagedFile(f"checkpoint {path} does not match its checksum ({recorded.name}): it is damaged")


# What every training checkpoint holds (TrainState.state_dict); `load_weights` needs only some of it.
TRAIN_KEYS = ("model", "optimizer", "data_position", "torch_rng", *TrainState.COUNTERS)
WEIGHT_KEYS = ("model", "step", "tokens")


def read_checkpoint(path: Path, device: torch.device | str = "cpu", required: tuple[str, ...] = TRAIN_KEYS
                    ) -> dict[str, Any]:
    """A checkpoint's payload, verified: its checksum, that it unpickles safely, and that it holds `required`."""
    path = Path(path)
    verify_checksum(path)
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        if isinstance(err, pickle.UnpicklingError) or reason.startswith("Weights only load failed"):
            # torch's own message goes on to suggest weights_only=False, which would run the file's code.
            reason = ("not a checkpoint Blueberry wrote (checkpoints load with weights_only=True, which reads "
                      "tensors and plain data and never runs code from the file)")
        raise DamagedFile(f"cannot read checkpoint {path}: {reason}") from None
    if not isinstance(payload, dict):
        raise DamagedFile(f"checkpoint {path} holds a {type(payload).__name__}, not a Blueberry checkpoint")
    missing = [key for key in required if key not in payload]
    if missing:
        raise DamagedFile(f"checkpoint {path} lacks {', '.join(missing)}: it is damaged or not a Blueberry checkpoint")
    return payload


def load_checkpoint(path: Path, state: TrainState) -> None:
    # Sharded runs read the whole state onto the CPU and move only their shards to the device.
    state.load_state_dict(read_checkpoint(path, "cpu" if state.parallel.sharded else state.device))


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
    payload = read_checkpoint(path, device, required=WEIGHT_KEYS)
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
    """Saves every `every` steps (0: never) and at the end of a run that did not diverge; on start,
    resumes from the newest checkpoint in `directory` that is whole. A damaged one is renamed
    `*.damaged` (kept for inspection, never loaded or counted again) and the one before it is tried;
    when none is whole, the run stops with one line. The cadence is enforced where the hook is
    registered (`Hooks.add`). In a multi-process run every rank registers it with the same (shared)
    directory: every rank resumes from it, and the main rank writes, rotates and sets aside."""

    def __init__(self, directory: str | Path, every: int = 0, keep: int = 2, every_s: float | None = None) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1 (the checkpoint just written), got {keep}")
        self.directory, self.every, self.keep = Path(directory), every, keep
        # Or a time cadence: register the hook with every=1 and it saves when `every_s` seconds have
        # passed since the last save (a run's step time is not known before it starts).
        self.every_s = every_s
        self._last_save = time.monotonic()
        self._saved_step: int | None = None
        self.resumed_from: Path | None = None
        self.set_aside: list[Path] = []  # damaged checkpoints found on start, renamed *.damaged

    def on_start(self, state: TrainState) -> None:
        for path in checkpoints(self.directory):
            try:
                load_checkpoint(path, state)
            except DamagedFile as err:
                self.set_aside.append(_set_aside(path) if state.parallel.is_main else path)
                log.warning("%s; set aside as %s, trying the checkpoint before it", err, self.set_aside[-1].name)
                continue
            self.resumed_from = path
            return
        if self.set_aside:
            raise DamagedFile(f"every checkpoint in {self.directory} is damaged (set aside as *{DAMAGED_SUFFIX}): "
                              "run the same command again to start this run over from step 0")

    def on_step(self, info: StepInfo, state: TrainState) -> None:
        if info.step >= info.total_steps:  # the last step's state is saved by on_end, after the final evaluation
            return
        if self.every_s is None or time.monotonic() - self._last_save >= self.every_s:
            self.save(state)

    def on_end(self, result: RunResult, state: TrainState) -> None:
        # A diverged state is not worth resuming: the checkpoints before it are what a rerun needs.
        if not result.diverged:
            self.save(state)

    def save(self, state: TrainState) -> None:
        """Save `state` now (between steps: a state mid-step is not one to resume) and rotate."""
        self._last_save = time.monotonic()
        if self._saved_step == state.step:
            return
        self._saved_step = state.step
        if save_checkpoint(checkpoint_path(self.directory, state.step), state) is None:
            return  # another rank writes it
        for old in checkpoints(self.directory)[self.keep:]:
            old.unlink()
            checksum_path(old).unlink(missing_ok=True)


def _set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint (and its checksum) out of the way; the new name of the checkpoint."""
    target = path.with_name(path.name + DAMAGED_SUFFIX)
    if checksum_path(path).exists():
        os.replace(checksum_path(path), checksum_path(target))
    os.replace(path, target)
    return target


class StopOnSignal(Hook):
    """Ctrl-C (SIGINT) or SIGTERM during training finishes the step under way, saves a checkpoint
    and stops the run with `KeyboardInterrupt`, so the next attempt resumes from that very step; a
    second signal stops at once. Outside the steps (start-up, the final evaluation) signals act as
    before. It handles signals only in the main thread (where Python delivers them)."""

    every = 1

    def __init__(self, checkpointer: Checkpointer, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
        self.checkpointer, self.signals = checkpointer, signals
        self.requested: int | None = None  # the signal received, until the step ends
        self._previous: dict[int, Any] = {}

    def _request(self, signum: int, frame: object) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signum
        log.warning("stopping after this step, once its checkpoint is saved (signal again to stop at once)")

    def on_start(self, state: TrainState) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._request) for sig in self.signals}

    def on_step(self, info: StepInfo, state: TrainState) -> None:
        if self.requested is not None:
            self._restore()
            self.checkpointer.save(state)
            raise KeyboardInterrupt

    def on_end(self, result: RunResult, state: TrainState) -> None:
        self._restore()

    def on_abort(self, error: BaseException, state: TrainState) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
