"""Ray, reached one way: connecting to the cluster, where Ray keeps results, and train state as Ray
checkpoints (Tune's and Train's reporters share them).

Ray is imported inside the two functions that talk to it: importing it takes a second or more, and
building configs or printing a flag error should not wait for it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from blueberry.core.checkpoint import load_checkpoint, save_checkpoint
from blueberry.core.state import TrainState

RAY_STATE_FILE = "state.pt"  # the state's file inside a Ray (Tune or Train) checkpoint directory


def connect() -> None:
    """Join the cluster `RAY_ADDRESS` names (a job's driver), else start a local one; once per process."""
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False, configure_logging=False)


def has_gpus() -> bool:
    """Whether the cluster (connecting to it first) has a GPU for a trial."""
    import ray

    connect()
    return ray.cluster_resources().get("GPU", 0) >= 1


def storage_path(storage: str | None) -> str:
    """Ray's storage: a URI as given, a local path made absolute, or ~/ray_results by default."""
    if storage and "://" in storage:
        return storage
    return str(Path(storage or "~/ray_results").expanduser().resolve())


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
