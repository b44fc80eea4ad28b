"""A trained run opened for inference: its model from the newest whole checkpoint, in eval mode, and
the tokenizer it was trained with, checked against the checkpoint's record of it. What
`blueberry-generate`, `blueberry-eval` and `blueberry-export` start from."""

from __future__ import annotations

from argparse import ArgumentParser
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from blueberry.core.checkpoint import SavedWeights, latest_checkpoint
from blueberry.core.task import Task
from blueberry.errors import UserError
from blueberry.files import confined
from blueberry.models.registry import load_model
from blueberry.platform.data import load_tokenizer


@dataclass
class TrainedRun:
    name: str  # the run's name, or the checkpoint's path when opened by path
    checkpoint: Path
    task: Task
    model: torch.nn.Module
    saved: SavedWeights
    tokenizer: Any  # `pipelines.tokenizer.Tokenizer` for language models; None for kinds without one


def add_run_flags(parser: ArgumentParser) -> None:
    """--run NAME [--runs-dir DIR] | --checkpoint PATH, and --tokenizer to override a missing record."""
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="a run's name under --runs-dir (its newest checkpoint)")
    which.add_argument("--checkpoint", type=Path, help="a checkpoint file, or a run's checkpoints directory")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs live (default: runs)")
    parser.add_argument("--tokenizer", help="the tokenizer, for checkpoints that predate recording it")


def checkpoint_of(run: str | None, runs_dir: Path, checkpoint: Path | None) -> tuple[str, Path]:
    if checkpoint is not None:
        return str(checkpoint), checkpoint
    assert run is not None
    run_dir = confined(runs_dir, run, "--run")
    if not run_dir.is_dir():
        known = sorted(p.name for p in runs_dir.iterdir() if (p / "checkpoints").is_dir()) if runs_dir.is_dir() else []
        hint = f"runs there: {', '.join(known[:10])}" if known else "it holds no runs"
        raise UserError(f"no run {run!r} in --runs-dir {runs_dir} ({hint})")
    return run, run_dir / "checkpoints"


def open_run(run: str | None = None, runs_dir: Path = Path("runs"), checkpoint: Path | None = None,
             device: str = "cpu", tokenizer: str | None = None) -> TrainedRun:
    """The run's model and tokenizer. A tokenizer that is not the one the run was trained with (its
    definition's sha256 differs) is refused: decoding with it would print plausible nonsense."""
    name, path = checkpoint_of(run, runs_dir, checkpoint)
    task, model, saved = load_model(str(path), device)
    resolved = path if path.is_file() else latest_checkpoint(path) or path
    return TrainedRun(name=name, checkpoint=resolved, task=task, model=model, saved=saved,
                      tokenizer=run_tokenizer(saved, tokenizer) if task.kind == "lm" else None)


def run_tokenizer(saved: SavedWeights, override: str | None = None) -> Any:
    recorded = saved.data.get("tokenizer")
    if recorded is None and override is None:
        raise UserError("the checkpoint does not record its tokenizer (it predates that record): pass --tokenizer "
                        "with the one the run was trained with (builtin, a tokenizer.json, or a hub name)")
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
