"""Ray, reached one way: connecting to the cluster, where Ray keeps results, and train state as Ray
checkpoints (Tune's and Train's reporters share them).

Ray is imported inside the functions that talk to it: importing it takes a second or more, and
building configs or printing a flag error should not wait for it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from blueberry.core.checkpoint import load_checkpoint, write_checkpoint
from blueberry.core.state import TrainState
from blueberry.errors import UserError
from blueberry.files import ExclusiveLock, confined

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


def device_count() -> int:
    """The devices a distributed run can spread over: the cluster's GPUs, or its CPUs when it has none
    (connecting to it first)."""
    import ray

    connect()
    resources = ray.cluster_resources()
    return int(resources.get("GPU", 0)) or int(resources.get("CPU", 1))


def storage_path(storage: str | None) -> str:
    """Ray's storage: a URI as given, a local path made absolute, or ~/ray_results by default."""
    if storage and "://" in storage:
        return storage
    path = Path(storage or "~/ray_results").expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise UserError(f"--storage {storage} is a file: pass a directory (or a URI such as s3://bucket/path)")
    return str(path)


def driver_lock(storage: str, name: str, what: str) -> ExclusiveLock:
    """The lock that lets one driver at a time run `name` (a study, a distributed run) in `storage`.

    With local (or shared-filesystem) storage it sits beside the results, so it also excludes drivers
    on other machines that mount the same directory; with a URI (s3://...) it is per machine, under
    ~/.cache/blueberry/locks."""
    if "://" in storage:
        digest = hashlib.sha256(f"{storage.rstrip('/')}/{name}".encode()).hexdigest()[:16]
        return ExclusiveLock(Path.home() / ".cache" / "blueberry" / "locks" / f"{digest}.lock", what)
    target = confined(storage, name, "--name")
    return ExclusiveLock(target.with_name(f".{target.name}.lock"), what)


def check_resources(cpus: float, gpus: float, what: str) -> None:
    """Refuse, before anything is scheduled, work the cluster can never place (Ray would wait forever)."""
    import ray

    total = ray.cluster_resources()
    have_cpus, have_gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    if cpus > have_cpus or gpus > have_gpus:
        raise UserError(f"{what} needs {cpus:g} CPU and {gpus:g} GPU but the cluster has {have_cpus:g} CPU and "
                        f"{have_gpus:g} GPU: ask for less, or add nodes")


@contextmanager
def ray_checkpoint(state: TrainState, checkpoint_cls: Any) -> Iterator[Any]:
    """`state` as a Ray checkpoint of `checkpoint_cls` (Tune's and Train's are different classes), valid
    inside the block: report it there, and Ray copies it to the run's storage. Every rank of a
    multi-process run enters it (under FSDP, saving gathers the shards); the main rank gets the
    checkpoint and the others None."""
    payload = state.state_dict()
    if payload is None:
        yield None
        return
    with tempfile.TemporaryDirectory() as directory:
        write_checkpoint(Path(directory) / RAY_STATE_FILE, payload)
        yield checkpoint_cls.from_directory(directory)


def restore_ray_checkpoint(checkpoint: Any, state: TrainState) -> int:
    """Load `state` from a Ray checkpoint (or leave it as is for None); the step it continues from."""
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as directory:
        load_checkpoint(Path(directory) / RAY_STATE_FILE, state)
    return state.step
