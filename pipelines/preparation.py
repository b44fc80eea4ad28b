"""One locked, resumable preparation of a directory of shards + manifest, whatever the shards hold
(token rows: `pipelines/prepare.py`, `pipelines/multimodal.py`; images: `pipelines/images/prepare.py`).

- **Keyed**: a directory is keyed by a hash of everything that determines its contents (the caller's
  preparation key). A preparation returns the manifest at once when the directory already holds that
  key, and refuses a directory holding anything else.
- **Resumable**: after every shard, the caller saves the state needed to continue (`Preparation.save`:
  its counters and shards, with their sha256, in `.preparing.json`; what no shard holds yet in
  `.pending-{split}-{seq}` files), atomically. A rerun checks the shards against their checksums and
  hands the caller its state back (`Preparation.resumed`), so the shards it goes on to write are
  byte-identical to an uninterrupted run's.
- **Finished means manifest**: the manifest is written last, atomically (`Preparation.finish`); until
  then the directory holds only the partial state, which nothing mistakes for finished data. A saved
  state that cannot be read (empty, cut short, damaged shards) is stale: the preparation starts over.
- **One preparer per directory**: an exclusive lock on `.lock` inside it (released by the kernel however
  its holder exits). A second preparer is refused with a line naming the holder, or with `wait=True`
  (the cache) waits for it and uses its result.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Generic, Protocol, TypeVar

from blueberry.data.manifest import MANIFEST_NAME, SPLITS, sha256_file
from blueberry.errors import UserError
from blueberry.files import ExclusiveLock, LockHeld, atomic_file, confined, read_json_object, write_atomic

PARTIAL_STATE = ".preparing.json"
PENDING = ".pending-"  # what no shard holds yet, one file per split: `.pending-{split}-{seq:06d}{suffix}`
LOCK = ".lock"  # held while preparing; never listed in the manifest, never removed (see blueberry.files)
WAIT_POLL_S = 0.25


class PreparedManifest(Protocol):
    preparation_key: str

    def write(self, directory: Path) -> None: ...


M = TypeVar("M", bound=PreparedManifest)
S = TypeVar("S")


@dataclass(frozen=True)
class ShardKind(Generic[M, S]):
    """What one kind of shard directory tells the preparation: how to read and name a finished one, and
    how its saved state (`S`, the kind's own) is written and read back."""

    read_manifest: Callable[[Path], M]
    describe: Callable[[M], str]  # a finished preparation, as the refusal of another names it
    pending_suffix: str  # of the files holding what no shard holds yet: ".npy", ".npz"
    save_pending: Callable[[BinaryIO, Any], None]
    load_pending: Callable[[Path], Any]
    # The kind's state from a saved state's JSON and its pending values per split; any KeyError, TypeError
    # or ValueError means a state this code did not write whole, and the preparation starts over.
    restore: Callable[[dict[str, Any], dict[str, Any]], S]


class Preparation(Generic[M, S]):
    """One preparation of `directory` under its lock: the state an interrupted run left (`resumed`, None
    for a fresh start), the state saved after each shard, and the manifest that finishes it."""

    def __init__(self, directory: Path, key: str, kind: ShardKind[M, S], resumed: S | None, seq: int) -> None:
        self.directory, self.key, self.kind, self.resumed, self.seq = directory, key, kind, resumed, seq

    def save(self, fields: dict[str, Any], pending: dict[str, Any]) -> None:
        """Save the state to continue from: `fields` (JSON; its `shards` per split list each shard's `name`
        and `sha256`) and each split's `pending` value. Pending files first (new names), then the JSON that
        names them (atomic), then the old files go: a kill at any point leaves one whole state."""
        self.seq += 1
        for split, value in pending.items():
            with atomic_file(_pending(self.directory, self.kind, split, self.seq)) as f:
                self.kind.save_pending(f, value)
        write_atomic(self.directory / PARTIAL_STATE, json.dumps({"key": self.key, "seq": self.seq, **fields}))
        current = {_pending(self.directory, self.kind, split, self.seq).name for split in pending}
        for old in self.directory.glob(f"{PENDING}*{self.kind.pending_suffix}"):
            if old.name not in current:
                old.unlink()

    def finish(self, manifest: M) -> M:
        """Write the manifest (atomically: the preparation is finished), then drop the saved state."""
        manifest.write(self.directory)
        for leftover in [self.directory / PARTIAL_STATE,
                         *self.directory.glob(f"{PENDING}*{self.kind.pending_suffix}")]:
            leftover.unlink()
        return manifest


def check_output(out: Path) -> None:
    """Refuse an output that cannot work before any tokenizer loads or any document is read."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory: choose another --out")
    if (out / MANIFEST_NAME).is_file():
        return  # finished: reading it needs no write access
    if _foreign(out):
        raise UserError(f"{out} is not empty and holds no preparation: choose another --out or delete it")
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"--out {out} lies under {existing}, which is a file: choose another --out")
    try:  # a real file, not os.access: root passes every permission check yet cannot write to /proc
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise UserError(f"--out {out} is not writable (cannot create a file in {existing}: {err.strerror}): "
                        "choose another --out") from None


def prepare_directory(out: Path, key: str, kind: ShardKind[M, S], what: str, wait: bool,
                      write: Callable[[Preparation[M, S]], M]) -> M:
    """The manifest of preparation `key` in `out`: at once when finished, else from `write(preparation)`
    under the lock (resuming what an interrupted run saved). While another process prepares `out`, this
    one is refused (`LockHeld`, naming it), or with `wait` waits for it and returns what it prepared.
    `what` names the source in the waiting line. Call `check_output(out)` first."""
    if finished := _finished(out, key, kind):
        return finished
    with _lock(out, what, wait):
        if finished := _finished(out, key, kind):  # the holder we waited for finished it
            return finished
        return write(_claim(out, key, kind))


def _finished(out: Path, key: str, kind: ShardKind[M, S]) -> M | None:
    """The manifest of a finished preparation of `key` in `out`; None when unfinished; else refused."""
    if not (out / MANIFEST_NAME).is_file():
        return None
    existing = kind.read_manifest(out)
    if existing.preparation_key == key:
        return existing
    raise UserError(f"{out} already holds a different preparation ({kind.describe(existing)}): "
                    "choose another --out or delete it")


def _lock(out: Path, what: str, wait: bool) -> ExclusiveLock:
    """Hold `out`'s lock: refused at once while another process prepares it, or with `wait`, after it."""
    lock = ExclusiveLock(out / LOCK, f"output directory {out}")
    announced = False
    while True:
        try:
            return lock.acquire()
        except LockHeld:
            if not wait:
                raise
            if not announced:
                holder = read_json_object(out / LOCK) or {}
                print(f"waiting for process {holder.get('pid', '(unknown)')} on {holder.get('host', 'this host')} "
                      f"preparing {what} in {out}", file=sys.stderr, flush=True)
                announced = True
            time.sleep(WAIT_POLL_S)
        except OSError as err:
            raise UserError(f"cannot write to output directory {out} ({err.strerror}): choose another --out") from None


def _claim(out: Path, key: str, kind: ShardKind[M, S]) -> Preparation[M, S]:
    """A fresh start in an empty directory, or the saved state of our own interrupted run (under the lock)."""
    if _foreign(out):
        raise UserError(f"{out} is not empty and holds no preparation: choose another --out or delete it")
    resumed = _load_state(out, key, kind) if (out / PARTIAL_STATE).exists() else None
    if resumed is None:
        # The new state first: a kill at any point below still leaves a state that says "start over".
        write_atomic(out / PARTIAL_STATE, json.dumps({"key": key}))
        for path in out.iterdir():
            if path.name != PARTIAL_STATE and _is_ours(path):
                path.unlink()
        return Preparation(out, key, kind, None, 0)
    for stray in out.glob(".*.tmp"):
        stray.unlink()
    state, seq = resumed
    return Preparation(out, key, kind, state, seq)


def _load_state(out: Path, key: str, kind: ShardKind[M, S]) -> tuple[S, int] | None:
    """The saved state of an interrupted preparation of `key`, if it reads back whole and every shard
    it lists checks out; None means start over."""
    raw = read_json_object(out / PARTIAL_STATE)
    if raw is None or "seq" not in raw:
        return None  # unreadable (cut short), or claimed but interrupted before its first shard: nothing to keep
    if raw.get("key") != key:
        raise UserError(f"{out} holds an unfinished preparation with other settings: rerun it with those settings "
                        "or delete the directory")
    try:
        seq = int(raw["seq"])
        for shard in (s for split in SPLITS for s in raw["shards"][split]):
            path = confined(out, shard["name"], "shard")
            if not path.is_file() or sha256_file(path) != shard["sha256"]:
                return None  # a damaged shard: start over rather than build on it
        pending = {split: kind.load_pending(_pending(out, kind, split, seq)) for split in SPLITS}
        return kind.restore(raw, pending), seq
    except (KeyError, TypeError, ValueError, EOFError, OSError, UserError):
        return None  # a state this code did not write whole: start over


def _pending(out: Path, kind: ShardKind[M, S], split: str, seq: int) -> Path:
    return out / f"{PENDING}{split}-{seq:06d}{kind.pending_suffix}"


def _is_ours(path: Path) -> bool:
    """A file a preparation writes (shards, saved state and their temporaries), so starting over may delete it."""
    return path.is_file() and (path.suffix == ".arrow" or path.name.startswith((PENDING, PARTIAL_STATE))
                               or (path.name.startswith(".") and path.name.endswith(".tmp")))


def _foreign(out: Path) -> bool:
    """A non-empty directory that holds no preparation (finished or not): not ours to write into. The lock
    and a temporary being renamed into place (the first saved state, written by the lock's holder) do not count."""
    return (out.is_dir() and not (out / PARTIAL_STATE).exists() and not (out / MANIFEST_NAME).exists()
            and any(p.name != LOCK and not (p.name.startswith(".") and p.name.endswith(".tmp")) for p in out.iterdir()))
