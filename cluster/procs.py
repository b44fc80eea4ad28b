"""Start a service in a session of its own, record its processes, and later stop exactly those.

    python3 cluster/procs.py run   RECORD -- CMD...      run CMD (e.g. `ray start`) and wait for it
    python3 cluster/procs.py spawn RECORD LOG -- CMD...  start CMD in the background, output to LOG
    python3 cluster/procs.py alive RECORD                exit 0 (and print the PIDs) if any still runs
    python3 cluster/procs.py stop  RECORD NAME [--last PROGRAM]  stop them, saying what was stopped

RECORD is a text file, one line per process: `PID START COMMAND`, START being the process's start
time in clock ticks since boot (field 22 of /proc/PID/stat). A PID alone names a process only while it
lives; the kernel hands it to another process later. So `stop` signals a recorded PID only while its
start time still matches, plus the processes that are provably this service's:

- everything in the session of a recorded process that still runs: CMD starts a new session, every
  process it starts inherits it, and Linux does not reuse a session's id while any process holds it;
- the descendants of those (a process that started a session of its own, or was started later).

Standard library only, Linux only (it reads /proc), so it runs before anything is installed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

GRACE_S = 10.0


class Proc(NamedTuple):
    pid: int
    ppid: int
    sid: int
    start: int
    command: str


def read_proc(pid: int) -> Proc | None:
    """The process `pid` now, or None once it has gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None  # gone, or not ours to see (and so not ours to signal)
    # The command name (field 2) is in parentheses and may itself contain spaces or ')'.
    name, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
    command = " ".join(cmdline.decode(errors="replace").replace("\0", " ").split()) or f"[{name}]"
    if fields[0] == "Z":
        return None  # a zombie has ended; only its parent's wait() is left
    return Proc(pid, ppid=int(fields[1]), sid=int(fields[3]), start=int(fields[19]), command=command)


def all_procs() -> list[Proc]:
    return [p for pid in os.listdir("/proc") if pid.isdigit() and (p := read_proc(int(pid)))]


def write_record(record: Path, procs: list[Proc]) -> None:
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_name(record.name + ".tmp")
    tmp.write_text("".join(f"{p.pid} {p.start} {p.command[:200]}\n" for p in procs))
    tmp.replace(record)


def recorded_alive(record: Path) -> list[Proc]:
    """The recorded processes that still run: same PID, same start time."""
    if not record.exists():
        return []
    alive = []
    for line in record.read_text().splitlines():
        pid, start = (int(x) for x in line.split()[:2])
        now = read_proc(pid)
        if now is not None and now.start == start:
            alive.append(now)
    return alive


def run(record: Path, argv: list[str]) -> int:
    """Run argv in a new session; when it exits, record every process still in that session."""
    try:
        child = subprocess.Popen(argv, start_new_session=True)
    except FileNotFoundError:
        print(f"{argv[0]}: command not found", file=sys.stderr)
        return 127
    # Wait without reaping: while the child is a zombie its PID, which is also the session's id,
    # cannot be given to anyone else, so the session's members found now are certainly its own.
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    write_record(record, [p for p in all_procs() if p.sid == child.pid])
    return child.wait()


def spawn(record: Path, log: Path, argv: list[str]) -> int:
    """Start argv in a new session in the background and record it."""
    with open(log, "ab") as out:
        try:
            child = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT)
        except FileNotFoundError:
            print(f"{argv[0]}: command not found", file=sys.stderr)
            return 127
    leader = read_proc(child.pid)
    if leader is None:  # it failed at once; its output is in the log
        return child.wait()
    write_record(record, [leader])
    return 0


def to_stop(record: Path) -> list[Proc]:
    alive = recorded_alive(record)
    sessions = {p.sid for p in alive}
    table = all_procs()
    chosen = {p.pid: p for p in alive} | {p.pid: p for p in table if p.sid in sessions}
    children: dict[int, list[Proc]] = {}
    for p in table:
        children.setdefault(p.ppid, []).append(p)
    frontier = list(chosen)
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child.pid not in chosen:
                chosen[child.pid] = child
                frontier.append(child.pid)
    # Never this process or its callers (`stop` run from a shell inside the service's session).
    pid = os.getpid()
    while pid > 1 and (me := read_proc(pid)) is not None:
        chosen.pop(pid, None)
        pid = me.ppid
    return sorted(chosen.values())


def signal_if_same(p: Proc, sig: int) -> None:
    now = read_proc(p.pid)
    if now is not None and now.start == p.start:
        try:
            os.kill(p.pid, sig)
        except ProcessLookupError:
            pass


def end(procs: list[Proc]) -> tuple[list[Proc], list[Proc]]:
    """SIGTERM, then SIGKILL what is left after GRACE_S: (those that needed SIGKILL, survivors)."""
    for p in procs:
        signal_if_same(p, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    left = procs
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if (now := read_proc(p.pid)) is not None and now.start == p.start]
    for p in left:
        signal_if_same(p, signal.SIGKILL)
    time.sleep(0.2 if left else 0)
    return left, [p for p in left if (now := read_proc(p.pid)) is not None and now.start == p.start]


def stop(record: Path, name: str, last: str | None) -> int:
    """Stop the service's processes; those whose program is named `last` after all the others."""
    procs = to_stop(record)
    if not procs:
        print(f"{name}: nothing to stop (no process recorded in {record} is running).")
        record.unlink(missing_ok=True)
        return 0
    is_last = [p for p in procs if last is not None and Path(p.command.split()[0]).name == last]
    killed, survivors = [], []
    for stage in ([p for p in procs if p not in is_last], is_last):
        k, s = end(stage)
        killed += k
        survivors += s
    print(f"{name} stopped: {len(procs) - len(survivors)} processes"
          f"{f' ({len(killed)} after SIGKILL)' if killed else ''}:")
    for p in procs:
        print(f"  {p.pid} {p.command[:120]}")
    if survivors:
        print(f"{name}: still running after SIGKILL: {' '.join(str(p.pid) for p in survivors)}", file=sys.stderr)
        return 1
    record.unlink(missing_ok=True)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) >= 4 and argv[0] == "run" and argv[2] == "--":
        return run(Path(argv[1]), argv[3:])
    if len(argv) >= 5 and argv[0] == "spawn" and argv[3] == "--":
        return spawn(Path(argv[1]), Path(argv[2]), argv[4:])
    if len(argv) == 2 and argv[0] == "alive":
        alive = recorded_alive(Path(argv[1]))
        print(" ".join(str(p.pid) for p in alive))
        return 0 if alive else 1
    if len(argv) in (3, 5) and argv[0] == "stop" and argv[3:4] in ([], ["--last"]):
        return stop(Path(argv[1]), argv[2], last=argv[4] if len(argv) == 5 else None)
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
