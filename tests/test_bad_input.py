"""Every command, given each bad input issue #12 found, answers as a user needs: exit status 2, one
line on stderr that says what is wrong, no traceback, nothing on stdout, and nothing left behind.

These run the installed console scripts (and study scripts) as real processes, the way a user types
them; the per-command tests beside this file check the same inputs in-process, message by message.
"""

import gzip
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LR_SWEEP = [sys.executable, str(REPO / "studies" / "lr_sweep.py"), "--smoke"]
MARATHON = [sys.executable, str(REPO / "studies" / "marathon.py"), "--smoke"]


def cases(builtin: Path) -> dict[str, list[str]]:
    """name -> argv; `{tmp}` is the case's own working directory, prepared by `workspace`."""
    train = [str(BIN / "blueberry-train"), "--data", str(builtin), "--no-progress"]
    scale = [str(BIN / "blueberry-scale")]
    data = [str(BIN / "blueberry-data")]
    return {
        "train --seed -1": [*train, "--no-track", "--seed", "-1"],
        "train --seed 25 digits": [*train, "--no-track", "--seed", "1234567890123456789012345"],
        "train --muon-lr inf": [*train, "--no-track", "--muon-lr", "inf"],
        "train --runs-dir a file": [*train, "--no-track", "--runs-dir", "a-file"],
        "train --runs-dir unwritable": [*train, "--no-track", "--runs-dir", "a-file/runs"],
        "train --run-name ../../x": [*train, "--no-track", "--run-name", "../../x"],
        "train --tracking-uri bogus://x": [*train, "--tracking-uri", "bogus://x"],
        "train --tracking-uri sqlite in a missing dir": [*train, "--tracking-uri", "sqlite:////nonexistent-bb/x.db"],
        "train --experiment ''": [*train, "--experiment", ""],
        "study --gpus-per-trial -1": [*LR_SWEEP, "--gpus-per-trial", "-1"],
        "study --storage a file": [*LR_SWEEP, "--storage", "a-file", "--tracking-uri", "sqlite:///m.db"],
        "marathon --storage a file": [*MARATHON, "--storage", "a-file", "--tracking-uri", "sqlite:///m.db"],
        "scale fit --csv binary": [*scale, "fit", "--csv", "binary.csv.gz"],
        "scale fit --plot x.xyz": [*scale, "fit", "--csv", "runs.csv", "--plot", "x.xyz"],
        "scale fit --json into a missing dir": [*scale, "fit", "--csv", "runs.csv", "--json", "missing/law.json"],
        "scale plan --law with a negative exponent": [*scale, "plan", "--law", "bad-law.json", "--params", "1e9"],
        "scale plan --params 1e300": [*scale, "plan", "--law", "chinchilla", "--params", "1e300"],
        "data prepare --out a file": [*data, "prepare", "--out", "a-file", "--tokens", "5000"],
        "data info on a manifest that is a list": [*data, "info", "list-manifest"],
        "generate --run that does not exist": [str(BIN / "blueberry-generate"), "--run", "nope", "--prompt", "x"],
        "generate --checkpoint a text file": [str(BIN / "blueberry-generate"), "--checkpoint", "a-file",
                                              "--prompt", "x"],
        "eval --tasks with a missing file": [str(BIN / "blueberry-eval"), "--run", "nope", "--tasks",
                                             "hellaswag=missing.jsonl"],
        "eval --tasks unknown": [str(BIN / "blueberry-eval"), "--checkpoint", "a-file", "--tasks", "mmlu"],
        "export --out a file": [str(BIN / "blueberry-export"), "--run", "nope", "--out", "a-file"],
        "export --run that does not exist": [str(BIN / "blueberry-export"), "--run", "nope", "--out", "out"],
    }


def workspace(directory: Path) -> list[str]:
    """The files the bad inputs name; what the directory holds before a command runs."""
    directory.mkdir()
    (directory / "a-file").write_text("not a directory")
    (directory / "binary.csv.gz").write_bytes(gzip.compress(b"N,D,loss\n1,2,3\n"))
    (directory / "runs.csv").write_text("N,D,loss\n1e7,1e9,3.1\n1e8,1e10,2.6\n1e9,1e11,2.2\n")
    (directory / "bad-law.json").write_text(json.dumps({k: {"estimate": v} for k, v in
                                                        dict(E=1.8, A=400, B=400, alpha=-0.3, beta=0.3).items()}))
    (directory / "list-manifest").mkdir()
    (directory / "list-manifest" / "manifest.json").write_text("[1, 2, 3]")
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.mark.slow
def test_every_command_refuses_bad_input_in_one_line_with_exit_status_2(builtin_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": ""}
    runs = cases(builtin_dir)

    def run(item):
        name, argv = item
        cwd = tmp_path / name.replace(" ", "_").replace("/", "_")
        before = workspace(cwd)
        done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        after = sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*"))
        return name, done, before, after

    with ThreadPoolExecutor(max_workers=2) as pool:  # imports dominate: two at a time on two cores
        results = list(pool.map(run, runs.items()))
    wrong = []
    for name, done, before, after in results:
        lines = done.stderr.strip().splitlines()
        if (done.returncode != 2 or len(lines) != 1 or ": error: " not in lines[0] or "Traceback" in done.stderr
                or done.stdout.strip() or after != before):
            wrong.append(f"{name}: exit {done.returncode}, stderr {done.stderr[-600:]!r}, stdout "
                         f"{done.stdout[-200:]!r}, new files {sorted(set(after) - set(before))}")
    assert wrong == [] and not Path("/nonexistent-bb").exists(), "\n".join(wrong)
