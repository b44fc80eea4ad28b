"""The commands: a real run end to end, idempotent re-runs, and one-line errors with exit status 2."""

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
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
    """The one stderr line of a refused command (`prog` None: whatever the program calls itself)."""
    err = capsys.readouterr().err.strip()
    assert f"{prog or ''}: error: " in err.split("\n")[0] and "\n" not in err and "Traceback" not in err, err
    assert prog is None or err.startswith(prog), err
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
    (["--seed", "-1"], "expected an integer in [0, 2**63), got '-1'"),
    (["--seed", "1234567890123456789012345"], "expected an integer in [0, 2**63)"),
    (["--muon-lr", "inf"], "expected a positive finite number, got 'inf'"),
    (["--adamw-lr", "nan"], "expected a positive finite number, got 'nan'"),
    (["--experiment", ""], "expected a non-empty name"),
    (["--run-name", "../../x"], "--run-name '../../x' leaves runs: use a plain name inside it"),
    (["--run-name", "/tmp/x"], "--run-name '/tmp/x' must be a relative name inside runs"),
    (["--runs-dir", "a-file"], "--runs-dir a-file is a file: pass a directory"),
    (["--runs-dir", "a-file/runs"], "cannot write run tiny-"),
    (["--track", "--tracking-uri", "bogus://x"], "tracking URI 'bogus://x' has an unknown scheme 'bogus'"),
    (["--track", "--tracking-uri", "sqlite:////nonexistent-bb/x.db"], "directory /nonexistent-bb does not exist"),
])
def test_train_errors_are_one_line_with_exit_status_2(args, message, capsys, builtin_dir, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("not a directory")
    data = [] if "--data" in args else ["--data", str(builtin_dir)]
    track = [] if "--track" in args else ["--no-track"]
    assert run_train(*data, *track, *[a for a in args if a != "--track"]) == 2
    assert message in one_line_error(capsys)
    # Checked before anything is trained or written: nothing left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"] and not Path("/nonexistent-bb").exists()


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


def wait_for(condition, timeout_s=120.0, process=None):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process is None or process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)


@pytest.mark.slow
def test_one_run_at_a_time_and_an_interrupted_run_resumes_into_one_mlflow_run(builtin_dir, tmp_path, monkeypatch,
                                                                                capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # No --checkpoint-every: the default time cadence (10 minutes) saves nothing in a run this short,
    # so the resume below comes from the checkpoint Ctrl-C saves.
    args = ["--data", str(builtin_dir), "--train-tokens", "40960", "--batch-size", "4", "--eval-every", "10",
            "--tracking-uri", uri, "--run-name", "r1", "--no-progress"]
    first = subprocess.Popen([sys.executable, "-m", "blueberry.cli.train", *args], cwd=tmp_path, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    checkpoints = tmp_path / "runs" / "r1" / "checkpoints"
    client = MlflowClient(uri)

    def logged_steps():
        experiment = client.get_experiment_by_name("blueberry-train")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        return [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")] if runs else []

    wait_for(lambda: 20 in logged_steps(), process=first)  # train losses are logged every 10 steps

    # A second process on the same run is refused in one line that names the holder.
    capsys.readouterr()
    assert run_train(*args) == 2
    assert f"run r1 is in use by process {first.pid} " in one_line_error(capsys)

    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=60)
    assert first.returncode == 130 and "interrupted; run the same command again to continue" in err
    (run,) = client.search_runs([client.get_experiment_by_name("blueberry-train").experiment_id])
    assert run.info.status == "KILLED"  # before: left RUNNING
    (saved,) = checkpoints.glob("step-*.pt")  # saved on Ctrl-C, after the step under way
    assert 20 <= int(saved.stem.split("-")[1]) < 40 and max(logged_steps()) < 40

    (tmp_path / "runs" / "r1" / "result.json").write_text("")  # as a kill mid-write would have left it
    assert run_train(*args) == 0
    assert f"resumed from runs/r1/checkpoints/{saved.name}" in capsys.readouterr().err
    (run,) = client.search_runs([run.info.experiment_id])
    assert run.info.status == "FINISHED"
    assert sorted(logged_steps()) == [10, 20, 30, 40]  # every logged step once, none twice
    assert json.loads((tmp_path / "runs" / "r1" / "result.json").read_text())["final/steps"] == 40


def test_data_commands(builtin_dir, tmp_path, capsys):
    assert data_cli.main(["verify", str(builtin_dir)]) == 0
    assert "OK" in capsys.readouterr().out
    assert data_cli.main(["info", str(builtin_dir)]) == 0
    info = capsys.readouterr().out
    assert "seq_len     256" in info and info.count("sample") == 3
    out = tmp_path / "prep"
    assert data_cli.main(["prepare", "--out", str(out), "--seq-len", "64", "--tokens", "50000"]) == 0
    assert (out / "manifest.json").is_file()
    capsys.readouterr()
    assert data_cli.main(["prepare", "--out", str(out), "--seq-len", "32", "--tokens", "50000"]) == 2
    assert "different preparation" in one_line_error(capsys, "blueberry-data")


def test_scale_without_a_subcommand_is_refused_naming_them(capsys):
    assert scale_cli.main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "required: command" in err and "Traceback" not in err


def test_console_script_exit_status_from_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "blueberry.cli.train", "--preset", "nope"], capture_output=True,
                          text=True, cwd=tmp_path)
    from blueberry.models.registry import preset_names

    assert proc.returncode == 2
    # The built-in kinds' presets (a kind a test registers in this process is not in the other one).
    known = ", ".join(p for p in preset_names() if not p.startswith("classifier"))
    assert proc.stderr.strip() == f"blueberry-train: error: unknown preset 'nope'; choose one of {known}"
    assert {"tiny", "small", "nano-88m", "nano-151m", "dit-tiny"} <= set(preset_names())  # every kind's presets


@pytest.mark.parametrize("args, message", [
    (["--gpus-per-trial", "-1"], "expected a number >= 0, got '-1'"),
    (["--seed", "-3"], "expected an integer in [0, 2**63)"),
    (["--name", ""], "expected a non-empty name"),
    (["--storage", "a-file"], "--storage a-file is a file: pass a directory"),
    (["--name", "../up"], "--name '../up' leaves"),
    (["--tracking-uri", "sqlite:////nonexistent-bb/m.db"], "directory /nonexistent-bb does not exist"),
])
def test_study_errors_are_one_line_with_exit_status_2(args, message, capsys, monkeypatch, tmp_path):
    import runpy

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("")
    lr_sweep = runpy.run_path(str(REPO / "studies" / "lr_sweep.py"))["LrSweep"]()
    flags = ["--smoke", "--storage", str(tmp_path / "ray"), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    assert lr_sweep.main([*flags, *args]) == 2
    # argparse names the program after sys.argv[0]; the study's own errors, after its experiment
    assert message in one_line_error(capsys, None)
    assert not Path("/nonexistent-bb").exists()


STUDY_CONFIG = """
import json, runpy, sys
import optuna
study = runpy.run_path(sys.argv[1])[sys.argv[2]]()
args = study.parser().parse_args(sys.argv[3:])
cfg = study.sweep_config(args, study.scale(args))
trial = optuna.create_study().ask()
cfg.space(trial)
print(json.dumps({"name": cfg.name, "tokens": cfg.base.train.train_tokens, "trials": cfg.trials,
                  "storage": cfg.storage,
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
    assert depth["storage"] == str(tmp_path / "ray_results")  # beside the SQLite tracking file, not ~/ray_results
    smoke = study_config(tmp_path, "depth_sweep.py", "DepthSweep", "--smoke")
    assert smoke["tokens"] == 40_960 and smoke["name"] != depth["name"]
    # The name is the study's identity: the same settings give the same name (so it resumes), others another.
    assert study_config(tmp_path, "depth_sweep.py", "DepthSweep", "--scale", "cpu")["name"] == depth["name"]
    assert study_config(tmp_path, "depth_sweep.py", "DepthSweep", "--scale", "cpu", "--seed", "1")["name"] != depth["name"]
    lr = study_config(tmp_path, "lr_sweep.py", "LrSweep", "--smoke", "--trials", "3")
    assert lr["baseline"] == {"train.muon_lr": 0.024, "train.adamw_lr": 0.006} and lr["trials"] == 3
    assert lr["name"].startswith("lr_sweep-tiny-")


def test_help_says_every_default():
    import runpy

    study = runpy.run_path(str(REPO / "studies" / "lr_sweep.py"))["LrSweep"]()
    from blueberry.cli import eval as eval_cli
    from blueberry.cli import export as export_cli
    from blueberry.cli import generate as generate_cli

    from blueberry.evals.validation import ValidationOptions
    from blueberry.models.registry import task_class, task_kinds

    parsers = [train_cli.build_parser(), study.parser(), generate_cli.build_parser(), eval_cli.build_parser(),
               export_cli.build_parser(), eval_cli.build_parser(ValidationOptions)]
    for kind in task_kinds():  # every kind's own flags, as `--run NAME --help` shows them
        caps = task_class(kind).capabilities
        parsers += [cli.build_parser(cap.options) for cli, cap in ((generate_cli, caps.generate), (eval_cli, caps.evaluate),
                                                                    (export_cli, caps.export)) if cap is not None]
    for cli in (data_cli, scale_cli):
        top = cli.build_parser()
        parsers += [p for a in top._actions if isinstance(a, argparse._SubParsersAction) for p in a.choices.values()]
    missing = []
    for parser in parsers:
        formatter = parser._get_formatter()
        for action in parser._actions:
            default = action.default
            has_default = not (default is None or default is False or default is argparse.SUPPRESS or default == [])
            train_field = parser.prog == "blueberry-train" and action.dest.replace("_", "-") in train_cli.TRAIN_FLAGS
            if (has_default or train_field) and "default" not in formatter._get_help_string(action):
                missing.append(f"{parser.prog} {action.option_strings}")
    assert missing == []
