"""Files that cannot lie: atomic writes, exclusive locks, and names confined to their directory.

Everything that marks work as finished (a run's result, a dataset's manifest, a checkpoint) is
written with `write_atomic`: to a temporary name in the same directory, flushed to disk, then
renamed over the target. A reader sees the old file or the new one, never a truncated one.

`ExclusiveLock` lets one process at a time work on a run, a study or a data directory. It is an
`flock` on a lock file: the kernel releases it when its holder exits, however it exits (kill -9
included), so a lock left by a dead process never blocks. The file also says who holds it (pid,
host, command), which is how a second process names the holder when it is refused.

`confined` resolves a name read from a file or typed by a user inside a directory, and refuses one
that would leave it (`../x`, an absolute path, a symlink pointing out).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from blueberry.errors import UserError


@contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file that appears at `path` whole when the block ends, or not at all if it raises."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_directory(path.parent)


def write_atomic(path: str | Path, content: str | bytes) -> Path:
    """Write `content` to `path` so that a crash leaves the old file or the new one, never a part."""
    with atomic_file(path) as out:
        out.write(content.encode() if isinstance(content, str) else content)
    return Path(path)


def fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (the rename itself lives in the directory's metadata)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not every filesystem lets a directory be opened; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`; None when the file is missing, empty or not a JSON object (a file
    that was never finished), so callers treat it as absent instead of failing on it."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class LockHeld(UserError):
    """Another live process holds the lock."""


class ExclusiveLock:
    """An exclusive, non-blocking lock on `path` (a file created next to what it guards).

        with ExclusiveLock(run_dir / ".lock", f"run {name}"):
            ...  # only this process works on the run

    A second process (or a second lock in this one) is refused at once with `LockHeld`, whose message
    names the holder and what to do. Locks are per open file, so they also exclude threads and
    other lock objects of the same process.
    """

    def __init__(self, path: str | Path, what: str) -> None:
        self.path, self.what = Path(path), what
        self._fd: int | None = None

    def acquire(self) -> ExclusiveLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise LockHeld(f"{self.what} is in use by {holder}: wait for it to finish, or stop it "
                           f"(the lock is {self.path}, released when that process exits)") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                                  "command": " ".join(sys.argv)[:500]}).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock; the file stays for the next holder
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> ExclusiveLock:
        return self if self.held else self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
        return f"process {info['pid']} on {info['host']} (since {started}: {info['command']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def confined(directory: str | Path, name: str, what: str) -> Path:
    """`directory / name`, refused unless it resolves inside `directory` (after following symlinks)."""
    directory = Path(directory)
    if not name or Path(name).is_absolute():
        raise UserError(f"{what} {name!r} must be a relative name inside {directory}")
    path = directory / name
    root = directory.resolve()
    if not path.resolve().is_relative_to(root) or path.resolve() == root:
        raise UserError(f"{what} {name!r} leaves {directory}: use a plain name inside it")
    return path
