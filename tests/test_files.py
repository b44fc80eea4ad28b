"""Atomic writes, exclusive locks and confined names (`blueberry.files`)."""

import os
import signal
import subprocess
import sys
import time

import pytest

from blueberry.errors import UserError
from blueberry.files import ExclusiveLock, LockHeld, confined, read_json_object, write_atomic

HOLD = """
import sys, time
from blueberry.files import ExclusiveLock
ExclusiveLock(sys.argv[1], "the test's data").acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_failed_write_leaves_the_old_file_whole_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "result.json"
    write_atomic(target, '{"loss": 3.0}')

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        write_atomic(target, '{"loss": 2.0}')
    assert target.read_text() == '{"loss": 3.0}'
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


@pytest.mark.parametrize("content", ["", "{", "[1, 2]", "null"])
def test_an_unfinished_marker_file_reads_as_absent(tmp_path, content):
    path = tmp_path / "result.json"
    path.write_text(content)
    assert read_json_object(path) is None
    assert read_json_object(tmp_path / "missing.json") is None


def test_a_second_lock_is_refused_and_names_its_holder(tmp_path):
    with ExclusiveLock(tmp_path / ".lock", "run r1"):
        # flock excludes by open file, so even a second lock in the same process is refused.
        with pytest.raises(LockHeld, match=rf"^run r1 is in use by process {os.getpid()} on .* wait for it to finish"):
            ExclusiveLock(tmp_path / ".lock", "run r1").acquire()
    with ExclusiveLock(tmp_path / ".lock", "run r1"):  # released on exit
        pass


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    lock = tmp_path / ".lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockHeld, match=f"in use by process {holder.pid} "):
            ExclusiveLock(lock, "the test's data").acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    deadline = time.monotonic() + 10
    while True:  # the kernel drops the lock when the process is gone; no stale-lock clean-up needed
        try:
            ExclusiveLock(lock, "the test's data").acquire().release()
            break
        except LockHeld:
            assert time.monotonic() < deadline
            time.sleep(0.05)


@pytest.mark.parametrize("name, message", [
    ("../x", "leaves"), ("a/../../x", "leaves"), ("/etc/passwd", "must be a relative name"), ("", "must be a relative"),
    (".", "leaves"),
])
def test_names_that_leave_their_directory_are_refused(tmp_path, name, message):
    with pytest.raises(UserError, match=message):
        confined(tmp_path, name, "--run-name")


def test_a_symlink_pointing_out_is_refused_and_plain_names_pass(tmp_path):
    (tmp_path / "out").symlink_to("/etc")
    with pytest.raises(UserError, match="leaves"):
        confined(tmp_path, "out/passwd", "shard")
    assert confined(tmp_path, "runs/r1", "--run-name") == tmp_path / "runs" / "r1"
