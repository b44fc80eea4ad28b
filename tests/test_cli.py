"""The commands: a real run end to end, idempotent re-runs, and one-line errors with exit status 2."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from blueberry.cli import data as data_cli
from blueberry.cli import scale as scale_cli
from blueberry.cli import train as train_cli

REPO = Path(__file__).resolve().parents[1]


def run_train(*args):
    return train_cli.main(["--no-progress", *args])


def one_line_error(capsys, prog="blueberry-train"):
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{prog}: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("args, message", [
    (["--preset", "giant"], "unknown preset 'giant'"),
    (["--train-tokens", "0"], "expected a positive integer"),
    (["--batch-size", "-8"], "expected a positive integer"),
    (["--model", "n_heads=5"], "n_heads (5) must divide d_model (128)"),
    (["--model", "layers=3"], "bad override"),
    (["--optimizer", "sgd"], "invalid choice"),
    (["--data", "/nonexistent/dir"], "does not exist"),
    (["--model", "vocab_size=1000"], "vocab_size is 1000"),
    (["--seq-len", "128"], "prepared with seq_len 256"),
    (["--device", "cuda"], "no CUDA device"),
])
def test_train_errors_are_one_line_with_exit_status_2(args, message, capsys, builtin_dir, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    data = [] if "--data" in args else ["--data", str(builtin_dir)]
    assert run_train(*data, "--no-track", *args) == 2
    assert message in one_line_error(capsys)


def test_corrupt_shard_is_a_one_line_error(builtin_dir, tmp_path, capsys):
    copy = tmp_path / "data"
    shutil.copytree(builtin_dir, copy)
    shard = next(copy.glob("train-*.arrow"))
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    shard.write_bytes(bytes(raw))
    assert run_train("--data", str(copy), "--no-track") == 2
    assert "fails its sha256 check" in one_line_error(capsys)
    assert data_cli.main(["verify", str(copy)]) == 2
    assert "fails its sha256 check" in one_line_error(capsys, "blueberry-data")


@pytest.mark.slow
def test_train_runs_tracks_and_does_not_redo_a_finished_run(builtin_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["--data", str(builtin_dir), "--train-tokens", "20480", "--batch-size", "4", "--eval-every", "10",
            "--tracking-uri", uri, "--run-name", "cli-run"]
    assert run_train(*args) == 0
    out = capsys.readouterr().out
    assert "val loss" in out and "tracked in" in out
    result = json.loads((tmp_path / "runs" / "cli-run" / "result.json").read_text())
    assert result["final/steps"] == 20

    assert run_train(*args) == 0
    assert "already finished" in capsys.readouterr().out
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("blueberry-train").experiment_id])
    assert len(runs) == 1 and runs[0].data.params["preset"] == "tiny"
    assert runs[0].data.params["N"] == "1770880" and runs[0].data.params["D"] == "20480"


def test_data_commands(builtin_dir, tmp_path, capsys):
    assert data_cli.main(["verify", str(builtin_dir)]) == 0
    assert "OK" in capsys.readouterr().out
    assert data_cli.main(["info", str(builtin_dir)]) == 0
    info = capsys.readouterr().out
    assert "seq_len     256" in info and info.count("sample") == 3
    out = tmp_path / "prep"
    assert data_cli.main(["prepare", "--out", str(out), "--seq-len", "64", "--tokens", "5000"]) == 0
    assert (out / "manifest.json").is_file()
    capsys.readouterr()
    assert data_cli.main(["prepare", "--out", str(out), "--seq-len", "32", "--tokens", "5000"]) == 2
    assert "different preparation" in one_line_error(capsys, "blueberry-data")


def test_scale_says_not_yet_available(capsys):
    assert scale_cli.main([]) == 2


def test_console_script_exit_status_from_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "blueberry.cli.train", "--preset", "nope"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("blueberry-train: error: unknown preset 'nope'; choose one of tiny, small, "
                                   "nano-88m, nano-151m")


STUDY_CONFIG = """
import json, runpy, sys
import optuna
study = runpy.run_path(sys.argv[1])[sys.argv[2]]()
args = study.parser().parse_args(sys.argv[3:])
cfg = study.sweep_config(args, study.scale(args))
trial = optuna.create_study().ask()
cfg.space(trial)
print(json.dumps({"name": cfg.name, "tokens": cfg.base.train.train_tokens, "trials": cfg.trials,
                  "baseline": cfg.baseline, "space": {k: [d.low, d.high] for k, d in trial.distributions.items()},
                  "heavy": sorted({m.split(".")[0] for m in sys.modules} & {"ray", "mlflow"})}))
"""


def study_config(tmp_path, script, cls, *flags):
    out = subprocess.run([sys.executable, "-c", STUDY_CONFIG, str(REPO / "studies" / script), cls,
                          "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", *flags],
                         cwd=tmp_path, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.slow
def test_a_study_declares_its_question_and_builds_its_config_without_ray(tmp_path):
    depth = study_config(tmp_path, "depth_sweep.py", "DepthSweep", "--scale", "cpu")
    assert depth["heavy"] == []  # neither Ray nor MLflow was even imported
    assert depth["space"] == {"model.n_layers": [1, 8]}  # twice the tiny preset's 4 layers: built from the base
    assert depth["baseline"] == {"model.n_layers": 4} and depth["tokens"] == 409_600 and depth["trials"] == 8
    smoke = study_config(tmp_path, "depth_sweep.py", "DepthSweep", "--smoke")
    assert smoke["tokens"] == 40_960 and smoke["name"] != depth["name"]
    # The name is the study's identity: the same settings give the same name (so it resumes), others another.
    assert study_config(tmp_path, "depth_sweep.py", "DepthSweep", "--scale", "cpu")["name"] == depth["name"]
    assert study_config(tmp_path, "depth_sweep.py", "DepthSweep", "--scale", "cpu", "--seed", "1")["name"] != depth["name"]
    lr = study_config(tmp_path, "lr_sweep.py", "LrSweep", "--smoke", "--trials", "3")
    assert lr["baseline"] == {"train.muon_lr": 0.024, "train.adamw_lr": 0.006} and lr["trials"] == 3
    assert lr["name"].startswith("lr_sweep-tiny-")
