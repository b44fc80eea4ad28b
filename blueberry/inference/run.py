"""A trained run opened for inference: its model from the newest whole checkpoint, in eval mode, and the
tokenizer it was trained with, checked against the checkpoint's record of it. What `blueberry-generate`,
`blueberry-eval`, `blueberry-export` and the lm-evaluation-harness adapter start from, whatever the kind."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from blueberry.core.checkpoint import SavedWeights, latest_checkpoint
from blueberry.core.task import Task
from blueberry.data.tokenizer import load_tokenizer
from blueberry.errors import UserError
from blueberry.files import confined
from blueberry.models.registry import load_model


@dataclass
class TrainedRun:
    name: str  # the run's name, or the checkpoint's path when opened by path
    checkpoint: Path
    task: Task
    model: torch.nn.Module
    saved: SavedWeights
    tokenizer: Any  # `blueberry.data.tokenizer.Tokenizer` where the checkpoint records one (or --tokenizer); else None


def checkpoint_of(run: str | None, runs_dir: Path, checkpoint: Path | None) -> tuple[str, Path]:
    """(name, path) of what `--run NAME [--runs-dir DIR]` or `--checkpoint PATH` names."""
    if checkpoint is not None:
        return str(checkpoint), checkpoint
    if run is None:
        raise UserError("name a run: --run NAME (under --runs-dir) or --checkpoint PATH")
    run_dir = confined(runs_dir, run, "--run")
    if not run_dir.is_dir():
        known = sorted(p.name for p in runs_dir.iterdir() if (p / "checkpoints").is_dir()) if runs_dir.is_dir() else []
        hint = f"runs there: {', '.join(known[:10])}" if known else "it holds no runs"
        raise UserError(f"no run {run!r} in --runs-dir {runs_dir} ({hint})")
    return run, run_dir / "checkpoints"


def open_run(run: str | None = None, runs_dir: Path = Path("runs"), checkpoint: Path | None = None,
             device: str = "cpu", tokenizer: str | None = None) -> TrainedRun:
    """The run's model, and its tokenizer where it has one. A tokenizer that is not the one the run was trained
    with (its definition's sha256 differs) is refused: decoding with it would print plausible nonsense."""
    name, path = checkpoint_of(run, runs_dir, checkpoint)
    task, model, saved = load_model(str(path), device)
    resolved = path if path.is_file() else latest_checkpoint(path) or path
    return TrainedRun(name=name, checkpoint=resolved, task=task, model=model, saved=saved,
                      tokenizer=run_tokenizer(saved, tokenizer))


def run_tokenizer(saved: SavedWeights, override: str | None = None) -> Any:
    """The tokenizer a checkpoint records (or `override`, for checkpoints that predate the record), checked
    against the record; None for a run trained without one (an image model)."""
    recorded = saved.data.get("tokenizer")
    if recorded is None and override is None:
        return None
    tokenizer = load_tokenizer(override or recorded["name"])
    if recorded is not None and tokenizer.sha256 != recorded["sha256"]:
        raise UserError(f"tokenizer {tokenizer.name} is not the one the run was trained with (sha256 "
                        f"{tokenizer.sha256[:12]}, the checkpoint records {recorded['sha256'][:12]}): use the "
                        "tokenizer the run's data was prepared with")
    vocab = saved.model_config.get("vocab_size")
    if vocab is not None and tokenizer.vocab_size > vocab:
        raise UserError(f"tokenizer {tokenizer.name} has {tokenizer.vocab_size} tokens, more than the model's "
                        f"vocabulary of {vocab}: it is not the run's tokenizer")
    return tokenizer
