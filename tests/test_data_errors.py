"""Token data that cannot lie (issue #12): a manifest's shards lie inside its directory, one process
prepares a directory at a time, a preparation killed mid-write resumes or restarts instead of failing,
and every bad input (a binary source, a file that is not a tokenizer, an output that cannot be written,
a malformed manifest, a damaged shard, token ids beyond the vocabulary) is one line on stderr and
exit status 2, through the real `blueberry-data` entry point too."""

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from blueberry.cli import data as data_cli
from blueberry.cli import train as train_cli
from blueberry.data.format import MANIFEST_NAME, read_manifest
from blueberry.data.tokenizer import load_tokenizer
from blueberry.data.tokens import TokenShards
from blueberry.errors import DataError
from blueberry.files import ExclusiveLock, LockHeld, read_json_object
from pipelines.prepare import PrepareConfig, preparation_key, prepare
from pipelines.preparation import LOCK, PARTIAL_STATE
from pipelines.sources import open_source

BLUEBERRY_DATA = str(Path(sys.executable).with_name("blueberry-data"))  # the installed console script
DOCS = [f"Note {i}: " + " ".join(f"term{(i * 11 + j) % 89}" for j in range(60 + i % 7)) for i in range(80)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for i, doc in enumerate(DOCS):
        (root / f"{i:03d}.txt").write_text(doc)
    return root


def config(corpus: Path) -> PrepareConfig:
    return PrepareConfig(source=f"local:{corpus}", tokenizer="builtin", seq_len=32, shard_tokens=32 * 40,
                         val_fraction=0.1)


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory) -> Path:
    """A finished preparation with several shards per split (read-only: tests damage copies)."""
    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare(config(corpus), out, progress=False)
    assert len(read_manifest(out).splits["train"].files) > 2
    return out


@pytest.fixture
def copy(prepared, tmp_path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(prepared, target)
    return target


def edit_manifest(directory: Path, change) -> None:
    raw = json.loads((directory / MANIFEST_NAME).read_text())
    raw = change(raw) or raw
    (directory / MANIFEST_NAME).write_text(json.dumps(raw))


def assert_one_line_error(returncode: int, stderr: str, message: str) -> None:
    lines = stderr.strip().splitlines()
    assert returncode == 2 and "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("blueberry-data: error: "), stderr
    assert message in lines[0], lines[0]


# --- 1. a manifest's shards lie inside its directory ---------------------------------------------

def move_shard_out(copy: Path, how: str) -> str:
    """Move the first train shard out of the directory and point the manifest at it; the new name."""
    outside = copy.parent / "outside"
    outside.mkdir()
    first = read_manifest(copy).splits["train"].files[0].name
    shutil.move(copy / first, outside / "x.arrow")
    if how == "symlink":
        (copy / "link.arrow").symlink_to(outside / "x.arrow")
    name = {"dotdot": "../outside/x.arrow", "absolute": str(outside / "x.arrow"), "symlink": "link.arrow"}[how]

    def point(raw):
        raw["splits"]["train"]["files"][0]["name"] = name
    edit_manifest(copy, point)
    return name


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_shard_names_must_stay_inside_the_dataset(copy, how, capsys):
    name = move_shard_out(copy, how)
    refused = f"corrupt manifest .*: shard name '{re.escape(name)}' is not a file inside"
    for verify in (True, False):
        with pytest.raises(DataError, match=refused):
            TokenShards.open(copy, verify=verify)
    assert_one_line_error(data_cli.main(["verify", str(copy)]), capsys.readouterr().err, "is not a file inside")


def test_a_nul_byte_in_a_shard_name_is_one_line(copy, tmp_path, capsys, monkeypatch):
    """Issue #28's probe: a NUL byte in a shard name (no path may hold one) ended `blueberry-data verify` and
    `info` and `blueberry-train --data` in a traceback (`ValueError: embedded null byte`)."""
    def nul(raw):
        raw["splits"]["train"]["files"][0]["name"] = "train-00000.arrow\x00.txt"
    edit_manifest(copy, nul)
    refused = "shard name 'train-00000.arrow\\x00.txt' is not a file inside"
    for command in ("verify", "info"):
        assert_one_line_error(data_cli.main([command, str(copy)]), capsys.readouterr().err, refused)
    monkeypatch.chdir(tmp_path)
    assert train_cli.main(["--no-progress", "--no-track", "--seq-len", "32", "--data", str(copy)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("blueberry-train: error: corrupt manifest") and err.count("\n") == 1, err
    assert refused in err and not (tmp_path / "runs").exists()


# --- 2. one process prepares a directory at a time -----------------------------------------------

def test_second_prepare_into_one_output_is_refused_naming_the_holder(tmp_path, prepared):
    """Two real `blueberry-data prepare` processes into one --out at once. Whichever takes the lock first
    then reads its source, a named pipe, so it holds the lock for as long as the test leaves the pipe
    empty; the other must be refused in one line naming it, and the winner must finish valid data."""
    fifo, out = tmp_path / "slow.txt", tmp_path / "out"
    os.mkfifo(fifo)
    argv = [BLUEBERRY_DATA, "prepare", "--source", f"local:{fifo}", "--tokenizer", "builtin", "--seq-len", "32",
            "--val-fraction", "0", "--workers", "1", "--out", str(out)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        deadline = time.time() + 90
        while all(p.poll() is None for p in procs):
            assert time.time() < deadline, "neither process was refused"
            time.sleep(0.05)
        loser = next(p for p in procs if p.poll() is not None)
        winner = next(p for p in procs if p is not loser)
        _, refusal = loser.communicate()
        assert_one_line_error(loser.returncode, refusal, f"is in use by process {winner.pid} ")
        while True:  # the winner opens the pipe once it reads its source: then the document goes in
            try:
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:
                assert winner.poll() is None and time.time() < deadline, winner.communicate()
                time.sleep(0.05)
        os.set_blocking(writer, True)
        os.write(writer, " ".join(DOCS).encode())
        os.close(writer)
        _, stderr = winner.communicate(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert winner.returncode == 0 and "Traceback" not in stderr, stderr
    data = TokenShards.open(out)
    assert len(data.rows["train"]) > 0 and not (out / PARTIAL_STATE).exists()


def test_a_waiting_prepare_uses_the_holders_result(tmp_path, corpus, prepared, capsys):
    """Refused at once while another holds the lock; with wait=True (the built-in cache), it says whom it waits
    for, then returns what the holder prepared without preparing anything itself."""
    out = tmp_path / "out"
    holder = ExclusiveLock(out / LOCK, "test").acquire()
    try:
        with pytest.raises(LockHeld, match=f"is in use by process {os.getpid()} "):
            prepare(config(corpus), out, progress=False)
        result = {}
        waiter = threading.Thread(target=lambda: result.update(manifest=prepare(config(corpus), out, progress=False,
                                                                                wait=True)))
        waiter.start()
        said, deadline = "", time.time() + 30
        while f"waiting for process {os.getpid()} " not in said:
            assert waiter.is_alive() and time.time() < deadline, said
            time.sleep(0.05)
            said += capsys.readouterr().err
        assert said.strip().count("\n") == 0  # one line, however long it waits
        shutil.copytree(prepared, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(LOCK))  # the holder finishes
        finished = {p.name: p.stat().st_mtime_ns for p in out.glob("*.arrow")}
    finally:
        holder.release()
    waiter.join(timeout=60)
    assert result["manifest"] == read_manifest(prepared)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.arrow")} == finished  # nothing prepared twice


@pytest.mark.slow
def test_two_cold_builtin_starts_end_with_the_same_data(tmp_path, prepared, private_cache):
    """Two processes open `--data builtin` with a cold data cache at once: no traceback, one directory, valid."""
    cache = tmp_path / "cache"
    shutil.copytree(private_cache / "tokenizers", cache / "tokenizers")  # the tokenizer is warm, the data cold
    script = "from pipelines.builtin import builtin_data_dir; print(builtin_data_dir(48, progress=False))"
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "BLUEBERRY_CACHE": str(cache)}) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs) and not any("Traceback" in err for _, err in results), results
    (first, _), (second, _) = results
    assert first == second
    data = TokenShards.open(first.strip())
    assert data.seq_len == 48 and len(data.rows["train"]) > 0


# --- 3. a preparation killed mid-write restarts cleanly ----------------------------------------

def cut_state(corpus: Path) -> str:
    """A state file of this very preparation (its key is right) whose fields are garbage."""
    key = preparation_key(config(corpus), open_source(config(corpus).source).key, load_tokenizer("builtin").sha256)
    return json.dumps({"key": key, "seq": 2, "documents": "many", "tokens": 7, "shards": {"train": [{"x": 1}]}})


@pytest.mark.parametrize("state", ["", '{"key": "0123', "[]", "null", "garbage-with-right-key"])
def test_a_damaged_saved_state_restarts_the_preparation(tmp_path, corpus, prepared, state):
    out = tmp_path / "out"
    out.mkdir()
    (out / PARTIAL_STATE).write_text(cut_state(corpus) if state == "garbage-with-right-key" else state)
    (out / "train-00000.arrow").write_bytes(b"half a shard")
    (out / ".pending-train-000002.npy").write_bytes(b"")
    prepare(config(corpus), out, progress=False)
    assert {p.name: p.read_bytes() for p in out.glob("*.arrow")} == \
           {p.name: p.read_bytes() for p in prepared.glob("*.arrow")}
    assert sorted(p.name for p in out.glob(".*")) == [LOCK]
    TokenShards.open(out)


# --- 4. every bad input is one line and exit status 2 -------------------------------------------

def binary_source(tmp: Path, copy: Path) -> list[str]:
    (tmp / "bin").mkdir()
    (tmp / "bin" / "photo.txt").write_bytes(bytes(range(256)) * 8)
    return prepare_argv(f"local:{tmp}/bin", tmp / "out")


def not_parquet(tmp: Path, copy: Path) -> list[str]:
    (tmp / "table.parquet").write_bytes(b"PAR1 not really")
    return prepare_argv(f"local:{tmp}/table.parquet", tmp / "out")


def prepare_argv(source: str, out: Path, tokenizer: str = "builtin") -> list[str]:
    return ["prepare", "--source", source, "--tokenizer", tokenizer, "--seq-len", "32", "--workers", "1",
            "--out", str(out)]


def tokenizer_file(content: bytes):
    def make(tmp: Path, copy: Path) -> list[str]:
        (tmp / "tok.json").write_bytes(content)
        return prepare_argv("builtin", tmp / "out", tokenizer=str(tmp / "tok.json"))
    return make


def empty_tokenizer_dir(tmp: Path, copy: Path) -> list[str]:
    (tmp / "tok").mkdir()
    return prepare_argv("builtin", tmp / "out", tokenizer=str(tmp / "tok"))


def out_is_a_file(tmp: Path, copy: Path) -> list[str]:
    (tmp / "out").write_text("notes")
    return prepare_argv("builtin", tmp / "out")


def out_under_a_file(tmp: Path, copy: Path) -> list[str]:
    (tmp / "out").write_text("notes")
    return prepare_argv("builtin", tmp / "out" / "data")


def out_unwritable(tmp: Path, copy: Path) -> list[str]:
    if os.geteuid() == 0:  # root writes anywhere permissions allow nothing; /proc refuses even root
        return prepare_argv("builtin", Path("/proc/blueberry-cannot-write-here"))
    (tmp / "locked").mkdir(mode=0o500)
    return prepare_argv("builtin", tmp / "locked" / "out")


def manifest_edit(change, command: str = "verify"):
    def make(tmp: Path, copy: Path) -> list[str]:
        edit_manifest(copy, change)
        return [command, str(copy)]
    return make


def set_field(key, value):
    def change(raw):
        raw[key] = value
    return change


def small_vocab(keep_max_token: bool):
    def change(raw):
        raw["tokenizer"]["vocab_size"] = 100
        if not keep_max_token:  # as a manifest written before shards recorded it
            for split in raw["splits"].values():
                for f in split["files"]:
                    del f["max_token"]
    return change


def damaged_shard(tmp: Path, copy: Path) -> list[str]:
    shard = copy / read_manifest(copy).splits["train"].files[1].name
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    return ["info", str(copy)]


def empty_state(tmp: Path, copy: Path) -> list[str]:
    (tmp / "unfinished").mkdir()
    (tmp / "unfinished" / PARTIAL_STATE).write_text("")
    return ["verify", str(tmp / "unfinished")]


BAD_INPUTS = {
    "binary source": (binary_source, "photo.txt is not UTF-8 text"),
    "not parquet": (not_parquet, "table.parquet is not a Parquet file"),
    "tokenizer binary": (tokenizer_file(bytes(range(256))), "tok.json is not a tokenizer.json (a binary file)"),
    "tokenizer not json": (tokenizer_file(b"vocab: 5"), "tok.json is not a tokenizer.json (not JSON"),
    "tokenizer json without a model": (tokenizer_file(b'{"vocab": 5}'), "is not a tokenizer.json (JSON without"),
    "tokenizer bad model": (tokenizer_file(b'{"model": {"type": "BPE", "vocab": 5}}'), "is not a tokenizer.json ("),
    "tokenizer dir without one": (empty_tokenizer_dir, "holds no tokenizer.json or tokenizer_config.json"),
    "out is a file": (out_is_a_file, "is a file, not a directory"),
    "out under a file": (out_under_a_file, "which is a file"),
    "out unwritable": (out_unwritable, "writ"),
    "manifest is a list": (manifest_edit(lambda raw: [raw]), "corrupt manifest"),
    "seq_len a string": (manifest_edit(set_field("seq_len", "2048")), 'seq_len is "2048", not an integer'),
    "seq_len a float": (manifest_edit(set_field("seq_len", 32.5)), "seq_len is 32.5, not an integer"),
    "unknown dtype": (manifest_edit(set_field("dtype", "int8")), "unknown dtype 'int8'"),
    "splits a list": (manifest_edit(set_field("splits", [1])), "splits is [1], not an object"),
    "files an object": (manifest_edit(lambda raw: raw["splits"]["train"].update(files={})),
                        "splits.train.files is {}, not a list"),
    "vocab below recorded max": (manifest_edit(small_vocab(keep_max_token=True)),
                                 "beyond the tokenizer's vocab_size 100"),
    "vocab below the data": (manifest_edit(small_vocab(keep_max_token=False), command="info"),
                             "beyond the vocabulary of 100"),
    "damaged shard, info": (damaged_shard, "fails its sha256 check"),
    "empty saved state": (empty_state, "never finished"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, copy, capsys, monkeypatch):
    make, message = BAD_INPUTS[case]
    argv = make(tmp_path, copy)
    if case.startswith("out "):  # the output is checked first: nothing is loaded or encoded for a bad one
        monkeypatch.setattr("pipelines.prepare.open_source", lambda *a: pytest.fail("source opened"))
    assert_one_line_error(data_cli.main(argv), capsys.readouterr().err, message)
    assert not (tmp_path / "out" / MANIFEST_NAME).exists()


SUBPROCESS_CASES = ["binary source", "tokenizer not json", "out is a file", "seq_len a string", "vocab below the data"]


def test_the_entry_point_prints_one_line_for_bad_input(tmp_path, prepared):
    """The installed `blueberry-data`, one process per bad input (run side by side): exit 2, one line."""
    procs = {}
    for i, case in enumerate(SUBPROCESS_CASES):
        work = tmp_path / f"case{i}"
        work.mkdir()
        shutil.copytree(prepared, work / "copy")
        make, message = BAD_INPUTS[case]
        procs[case] = (subprocess.Popen([BLUEBERRY_DATA, *make(work, work / "copy")], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True), message)
    for case, (proc, message) in procs.items():
        _, stderr = proc.communicate(timeout=120)
        assert_one_line_error(proc.returncode, stderr, message)
