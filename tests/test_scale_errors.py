"""`blueberry-scale` answers each input of issue #12 with one line on stderr and exit status 2, no traceback:
a CSV that is not text, an output path that cannot become a file, a plot extension matplotlib cannot
write, a law file that is not a usable law, and a plan target beyond any meaningful size. Output paths
and plot formats are refused before the fit runs (the fit is replaced by one that fails the test), and a
refused command leaves its directory as it was."""

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from blueberry.cli import scale as scale_cli
from blueberry.scaling import fit as scaling_fit

LAW = {"E": 1.82, "A": 482.0, "B": 2085.0, "alpha": 0.35, "beta": 0.37}  # Epoch AI's Chinchilla refit, rounded
BLUEBERRY_SCALE = Path(sys.executable).parent / "blueberry-scale"


def refused(argv: list, capsys) -> str:
    """Run the command in-process; it must exit 2 with one `blueberry-scale: error:` line on stderr."""
    assert scale_cli.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("blueberry-scale: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def listing(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.fixture
def runs_csv(tmp_path) -> Path:
    N, D = (a.ravel() for a in np.meshgrid(np.logspace(7, 10, 4), np.logspace(9, 12, 4)))
    loss = LAW["E"] + LAW["A"] / N ** LAW["alpha"] + LAW["B"] / D ** LAW["beta"]
    path = tmp_path / "runs.csv"
    path.write_text("N,D,loss\n" + "".join(f"{n},{d},{x}\n" for n, d, x in zip(N, D, loss)))
    return path


@pytest.fixture
def no_fit(monkeypatch):
    """A mistake in the arguments must be answered before the (expensive) fit starts."""
    def fit_law(*args, **kwargs):
        raise AssertionError("the fit ran before the arguments were checked")
    monkeypatch.setattr(scaling_fit, "fit_law", fit_law)


@pytest.mark.parametrize("command", [["fit"], ["hparams"], ["plan", "--params", "1e9"]])
@pytest.mark.parametrize("kind, message", [("random bytes", "not UTF-8 text"), ("gzip", "gzip-compressed")])
def test_a_binary_csv_is_refused(command, kind, message, runs_csv, tmp_path, capsys):
    binary = tmp_path / "runs.bin"
    binary.write_bytes(bytes(range(128, 256)) * 16 if kind == "random bytes" else gzip.compress(runs_csv.read_bytes()))
    err = refused([command[0], "--csv", binary, *command[1:]], capsys)
    assert message in err and str(binary) in err


@pytest.mark.parametrize("flag, name", [("--json", "law.json"), ("--plot", "law.png")])
@pytest.mark.parametrize("where, message", [("missing", "does not exist"), ("directory", "is a directory")])
def test_fit_output_that_cannot_be_written_is_refused_before_the_fit(flag, name, where, message, runs_csv, tmp_path,
                                                                      no_fit, capsys):
    (tmp_path / "out").mkdir()
    target = tmp_path / "nowhere" / name if where == "missing" else tmp_path / "out"
    before = listing(tmp_path)
    err = refused(["fit", "--csv", runs_csv, flag, target], capsys)
    assert f"{flag} {target}" in err and message in err
    assert listing(tmp_path) == before


@pytest.mark.parametrize("command", [["plan", "--csv", "{csv}", "--params", "1e9"], ["hparams", "--csv", "{csv}"]])
def test_plan_and_hparams_output_in_a_missing_directory_is_refused_first(command, runs_csv, tmp_path, no_fit,
                                                                          capsys):
    target = tmp_path / "nowhere" / "out.json"
    err = refused([a.format(csv=runs_csv) for a in command] + ["--json", target], capsys)
    assert f"--json {target}" in err and "does not exist" in err


@pytest.mark.parametrize("command", [["fit"], ["plan", "--params", "1e9"]])
def test_a_plot_extension_matplotlib_cannot_write_is_refused_before_the_fit(command, runs_csv, tmp_path, no_fit,
                                                                             capsys):
    before = listing(tmp_path)
    err = refused([command[0], "--csv", runs_csv, *command[1:], "--json", tmp_path / "out.json",
                   "--plot", tmp_path / "law.xyz"], capsys)
    assert ".xyz" in err and ".png" in err and ".svg" in err
    assert listing(tmp_path) == before  # in particular no JSON without its plot


def with_samples(**samples) -> dict:
    draws = {name: [value] * 3 for name, value in LAW.items()}
    return {**{k: {"estimate": v} for k, v in LAW.items()}, "bootstrap_samples": {**draws, **samples}}


@pytest.mark.parametrize("law, message", [
    ({**with_samples(), "alpha": {"estimate": -0.3}}, "alpha must be > 0"),
    ({**with_samples(), "beta": {"estimate": 0}}, "beta must be > 0"),
    ({**with_samples(), "E": {"estimate": float("nan")}}, "E has no finite number"),
    (with_samples(E=[[1.8, 1.9], [1.7, 1.8]]), "bootstrap_samples['E'] must be a flat list of numbers"),
    (with_samples(A=["482", "490", "470"]), "bootstrap_samples['A'] must be a flat list of numbers"),
    (with_samples(alpha=[0.35, float("nan"), 0.34]), "bootstrap_samples['alpha'] holds NaN"),
    (with_samples(beta=[0.37]), "bootstrap_samples lists differ in length"),
    ({**with_samples(), "bootstrap_samples": [[1.8, 482.0, 2085.0, 0.35, 0.37]]},
     "bootstrap_samples must be an object"),
    ({**with_samples(), "bootstrap_samples": {"E": [1.8]}}, "bootstrap_samples['A']"),
])
def test_a_law_file_that_is_not_a_usable_law_is_refused(law, message, tmp_path, capsys):
    path = tmp_path / "law.json"
    path.write_text(json.dumps(law))  # NaN is written as the bare token NaN, which Python's json reads back
    err = refused(["plan", "--law", path, "--params", "1e9"], capsys)
    assert str(path) in err and message in err


def test_a_law_whose_exponents_overflow_the_plan_is_refused(tmp_path, capsys):
    path = tmp_path / "law.json"  # positive but tiny exponents: G = (alpha A / (beta B))^5000 underflows to 0
    path.write_text(json.dumps({**with_samples(), "alpha": {"estimate": 1e-4}, "beta": {"estimate": 1e-4}}))
    err = refused(["plan", "--law", path, "--params", "1e9"], capsys)
    assert "beyond floating-point range" in err and "N^0.0001" in err


@pytest.mark.parametrize("text", ["[1, 2]", '"a law"', json.dumps({"E": {"estimate": 1.8}}), "\x00\x01 not json"])
def test_a_law_file_that_is_not_a_fit_json_object_is_refused(text, tmp_path, capsys):
    # Already refused before issue #12; kept so the stricter reader does not lose them.
    path = tmp_path / "law.json"
    path.write_text(text)
    assert str(path) in refused(["plan", "--law", path, "--params", "1e9"], capsys)


@pytest.mark.parametrize("target, limit", [
    (["--params", "1e300"], "1e+15"),
    (["--params", "1e30"], "1e+15"),
    (["--flops", "1e300"], "1e+33"),
    (["--gpu-hours", "1e300"], "1e+33"),
    (["--params", "1e9", "--tokens", "1e300"], "1e+33"),
    (["--flops", "1e33"], "1e+15"),  # the compute is in range, the compute-optimal model it implies is not
])
def test_plan_targets_beyond_any_plan_are_refused_naming_the_limit(target, limit, capsys):
    err = refused(["plan", "--law", "chinchilla", *target], capsys)
    assert target[0] in err and limit in err


def test_the_largest_plan_still_plans(capsys):
    assert scale_cli.main(["plan", "--law", "chinchilla", "--params", "1e15", "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["N"] == 1e15


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "0"])
def test_non_positive_or_non_finite_targets_are_refused(value, capsys):
    # Already refused before issue #12 (by argparse or by Target); kept as a guard.
    assert scale_cli.main(["plan", "--law", "chinchilla", f"--params={value}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["fit", "--csv", "{binary}"], "not UTF-8 text"),
    (["plan", "--law", "chinchilla", "--params", "1e300"], "1e+15"),
])
def test_the_installed_command_exits_2_with_one_line(argv, message, tmp_path):
    binary = tmp_path / "runs.csv"
    binary.write_bytes(bytes(range(128, 256)) * 16)
    done = subprocess.run([str(BLUEBERRY_SCALE), *(a.format(binary=binary) for a in argv)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("blueberry-scale: error: ") and done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr and message in done.stderr and done.stdout == ""


# Issue #18: `plan --hparams` values that are not numbers, the backtest's hold-out, the downstream fit
# and the plan's new flags. Before, a string or list coefficient in --hparams ended in a TypeError traceback.
HPARAMS = {"lr": {"coefficient": 0.31, "exponent": -0.125}, "batch_tokens": {"coefficient": 0.29, "exponent": 0.33}}


@pytest.mark.parametrize("change, message", [
    ({"lr": {"coefficient": "x", "exponent": 1}}, "lr.coefficient must be a positive finite number"),
    ({"lr": {"coefficient": [0.3], "exponent": -0.1}}, "lr.coefficient must be a positive finite number"),
    ({"batch_tokens": {"coefficient": -1.0, "exponent": 0.3}}, "batch_tokens.coefficient must be a positive"),
    ({"batch_tokens": {"coefficient": 0.3, "exponent": "0.3"}}, "batch_tokens.exponent must be a finite number"),
    ({"lr": {"coefficient": 0.3, "exponent": float("nan")}}, "lr.exponent must be a finite number"),
    ({"lr": {"coefficient": 0.3, "exponent": -0.1, "exponent_ci": [1]}}, "lr.exponent_ci must be null or two"),
    ({"lr": 5}, "lr must be an object with coefficient and exponent"),
    ({"budgets": [{"compute": "1e18"}]}, "budgets must be a list of objects of numbers"),
    ({"source": 3}, "source must be text"),
])
def test_an_hparams_file_with_bad_values_is_refused(change, message, tmp_path, capsys):
    path = tmp_path / "hparams.json"
    path.write_text(json.dumps({**HPARAMS, **change}))
    err = refused(["plan", "--law", "chinchilla", "--params", "1e9", "--hparams", path], capsys)
    assert str(path) in err and message in err


@pytest.mark.parametrize("text", ["[1]", "not json", '{"lr": {"coefficient": 0.3, "exponent": 1}}'])
def test_an_hparams_file_that_is_not_one_is_refused(text, tmp_path, capsys):
    path = tmp_path / "hparams.json"
    path.write_text(text)
    assert str(path) in refused(["plan", "--law", "chinchilla", "--params", "1e9", "--hparams", path], capsys)


def test_a_missing_hparams_file_is_refused(tmp_path, capsys):
    assert "does not exist" in refused(["plan", "--law", "chinchilla", "--params", "1e9", "--hparams",
                                        tmp_path / "nope.json"], capsys)


def test_a_law_file_with_a_bad_data_range_is_refused(tmp_path, capsys):
    path = tmp_path / "law.json"
    path.write_text(json.dumps({**with_samples(), "data_range": {"runs": 10, "N_max": "big"}}))
    err = refused(["plan", "--law", path, "--params", "1e9"], capsys)
    assert "data_range must hold positive numbers" in err


@pytest.mark.parametrize("flags, message", [
    (["--holdout-min", "1e30"], "no run to hold out"),
    (["--holdout", "N", "--holdout-min", "1"], "are all the runs"),
    (["--holdout-fraction", "1.5"], "--holdout-fraction must be in (0, 1)"),
    (["--level", "80"], "--level must be in (0, 1)"),
    (["--bootstrap", "1"], "--bootstrap must be 0 (no bootstrap intervals) or at least 2"),
])
def test_backtest_mistakes_are_refused(flags, message, runs_csv, capsys):
    assert message in refused(["backtest", "--csv", runs_csv, *flags], capsys)


def refused_by_flags(argv: list, capsys) -> str:
    """As `refused`, for mistakes argparse answers: its line names the subcommand (`blueberry-scale plan: error:`)."""
    assert scale_cli.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"blueberry-scale {argv[0]}: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("flags, message", [
    (["--holdout", "D"], "invalid choice: 'D'"),
    (["--holdout-min", "1e9", "--holdout-fraction", "0.2"], "not allowed with argument"),
    (["--holdout-min", "-5"], "expected a positive finite number"),
])
def test_backtest_flag_mistakes_are_refused(flags, message, runs_csv, capsys):
    assert message in refused_by_flags(["backtest", "--csv", runs_csv, *flags], capsys)


def test_backtest_output_in_a_missing_directory_is_refused_before_the_fit(runs_csv, tmp_path, no_fit, capsys):
    err = refused(["backtest", "--csv", runs_csv, "--plot", tmp_path / "nowhere" / "b.png"], capsys)
    assert "does not exist" in err


@pytest.fixture
def evaluated_csv(tmp_path) -> Path:
    loss = np.linspace(2.5, 4.5, 8)
    accuracy = 0.25 + 0.5 / (1 + np.exp(3 * (loss - 3.2)))
    path = tmp_path / "evaluated.csv"
    path.write_text("loss,hellaswag,rising\n" + "".join(f"{x},{a},{1 - a}\n" for x, a in zip(loss, accuracy)))
    return path


@pytest.mark.parametrize("flags, message", [
    (["--metric", "arc"], "has both 'arc' and 'loss'"),
    (["--metric", "hellaswag", "--chance", "2"], "--chance must be in [-1, 1)"),
    (["--metric", "rising"], "no sigmoid with accuracy rising as loss falls"),
    (["--metric", "hellaswag", "--bootstrap", "1"], "--bootstrap must be 0 (no intervals) or at least 2"),
])
def test_downstream_mistakes_are_refused(flags, message, evaluated_csv, capsys):
    assert message in refused(["downstream", "--csv", evaluated_csv, *flags], capsys)


def test_downstream_percentages_are_refused(tmp_path, capsys):
    path = tmp_path / "percent.csv"
    path.write_text("loss,acc\n" + "".join(f"{3 + i / 10},{60 - i}\n" for i in range(8)))
    assert "is the metric a percentage" in refused(["downstream", "--csv", path, "--metric", "acc"], capsys)


def test_too_few_evaluated_runs_are_refused(tmp_path, capsys):
    path = tmp_path / "few.csv"
    path.write_text("loss,acc\n3.0,0.4\n3.5,0.3\n4.0,0.27\n")
    assert "need at least 4" in refused(["downstream", "--csv", path, "--metric", "acc", "--chance", "0.25"], capsys)


@pytest.mark.parametrize("text, message", [
    ("[]", "expected a JSON object"),
    (json.dumps({"floor": {"estimate": 0.25}}), "ceiling.estimate must be a list of numbers"),
    (json.dumps({n: {"estimate": v} for n, v in (("floor", 0.25), ("ceiling", 0.2), ("k", 3), ("L0", 3))}),
     "ceiling > floor"),
])
def test_a_downstream_file_that_is_not_one_is_refused(text, message, tmp_path, capsys):
    path = tmp_path / "ds.json"
    path.write_text(text)
    law = tmp_path / "law.json"
    law.write_text(json.dumps(with_samples()))
    err = refused(["plan", "--law", law, "--params", "1e9", "--downstream", path], capsys)
    assert str(path) in err and message in err


@pytest.mark.parametrize("flags, message", [
    (["--downstream", "ds.json"], "--law chinchilla predicts loss on Chinchilla's data"),
    (["--accuracy-goal", "0.3"], "--accuracy-goal needs --downstream FILE"),
    (["--accuracy-goal", "29.45"], "--accuracy-goal must be an accuracy in [-1, 1]"),
    (["--accuracy-goal", "nan"], "--accuracy-goal must be an accuracy in [-1, 1]"),
])
def test_plan_downstream_mistakes_are_refused(flags, message, tmp_path, capsys):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({n: {"estimate": v} for n, v in (("floor", 0.25), ("ceiling", 0.8), ("k", 3), ("L0", 3))}
                             | {"runs": {"loss": [3.0, 3.5], "accuracy": [0.5, 0.4]}}))
    flags = [str(ds) if f == "ds.json" else f for f in flags]
    assert message in refused(["plan", "--law", "chinchilla", "--params", "8e9", *flags], capsys)


@pytest.mark.parametrize("flags, message", [
    (["--gpus", "0"], "expected a positive integer"),
    (["--gpus", "1.5"], "expected a positive integer"),
    (["--deadline-days", "-3"], "expected a positive finite number"),
    (["--dataset", "c4"], "invalid choice: 'c4'"),
    (["--dataset", "fineweb", "--dataset-tokens", "1e12"], "not allowed with argument"),
    (["--estimate-gpu-hours", "nan"], "expected a positive finite number"),
])
def test_plan_flag_mistakes_are_refused(flags, message, capsys):
    assert message in refused_by_flags(["plan", "--law", "chinchilla", "--params", "8e9", *flags], capsys)


# Issue #28's probes. Before: `fit --seed -1` and `hparams --bootstrap -5` ended in NumPy tracebacks; a duplicated
# column was read silently (the last copy won); `fit --experiment` on a store that did not exist created it (an
# empty m.db); a degenerate fit planned "95% interval nan to nan" with exit status 0.
@pytest.mark.parametrize("argv, message", [
    (["fit", "--csv", "chinchilla", "--seed", "-1"], "argument --seed: expected an integer in [0, 2**63)"),
    (["hparams", "--csv", "chinchilla", "--bootstrap", "-5"], "argument --bootstrap: expected an integer >= 0"),
    (["fit", "--csv", "chinchilla", "--bootstrap", "1"], "expected 0 (no bootstrap) or at least 2 refits"),
])
def test_negative_seeds_and_bootstrap_counts_are_refused_in_one_line(argv, message, capsys):
    assert message in refused_by_flags(argv, capsys)


def test_a_csv_naming_a_column_twice_is_refused(tmp_path, capsys):
    path = tmp_path / "twice.csv"
    path.write_text("N,D,loss,loss\n" + "".join(f"{n},{d},{x},9\n" for n, d, x in ((1e8, 1e9, 3.0), (2e8, 2e9, 2.9))))
    for command in (["fit"], ["plan", "--params", "1e9"], ["backtest"]):
        err = refused([command[0], "--csv", path, *command[1:]], capsys)
        assert "names column 'loss' more than once" in err and str(path) in err


@pytest.mark.parametrize("column", ["N", "D", "loss"])
def test_a_csv_holding_nan_is_refused_by_plan(column, runs_csv, tmp_path, capsys):
    rows = runs_csv.read_text().splitlines()
    header = rows[0].split(",")
    cells = rows[2].split(",")
    cells[header.index(column)] = "NaN"
    path = tmp_path / "nan.csv"
    path.write_text("\n".join([rows[0], rows[1], ",".join(cells), *rows[3:]]) + "\n")
    assert f"row 2 has a non-finite '{column}'" in refused(["plan", "--csv", path, "--params", "1e9"], capsys)


def test_a_plan_never_prints_nan(tmp_path, capsys):
    """Seven runs whose Chinchilla fit overflows: before, the plan printed a NaN interval and exit status 0."""
    path = tmp_path / "few.csv"
    path.write_text("N,D,loss\n1e8,1e9,3.0\n2e8,1e9,2.9\n3e8,2e9,2.8\n1e8,4e9,2.9\n4e8,8e9,2.5\n5e8,2e10,2.4\n"
                    "6e8,4e10,2.3\n")
    status = scale_cli.main(["plan", "--csv", str(path), "--params", "1e9"])
    out, err = capsys.readouterr()
    assert not re.search(r"\bnan\b", (out + err).lower())
    assert status == 0 or (status == 2 and err.count("\n") == 1)


@pytest.mark.parametrize("command", [["fit"], ["backtest"], ["plan", "--params", "1e9"], ["downstream"]])
def test_reading_a_tracking_store_that_does_not_exist_creates_nothing(command, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    err = refused([command[0], "--experiment", "grid", "--tracking-uri", "sqlite:///m.db", *command[1:]], capsys)
    assert "no MLflow store at sqlite:///m.db" in err
    err = refused([command[0], "--experiment", "grid", *command[1:]], capsys)  # the default store, mlflow.db
    assert "no MLflow store at sqlite:///mlflow.db" in err
    assert listing(tmp_path) == []


def test_plan_costs_in_dollars_by_default_and_names_the_price(capsys):
    from blueberry.scaling.datasets import GPU_PRICES

    assert scale_cli.main(["plan", "--law", "chinchilla", "--params", "8e9", "--tokens", "15e12", "--json", "-"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["price_per_gpu_hour"] == GPU_PRICES["h100"].dollars
    assert plan["cost"] == pytest.approx(plan["gpu_hours"] * GPU_PRICES["h100"].dollars, rel=1e-12)
    assert scale_cli.main(["plan", "--law", "chinchilla", "--params", "8e9", "--price-per-gpu-hour", "2"]) == 0
    assert "at $2.00 per H100-hour" in capsys.readouterr().out
    assert scale_cli.main(["plan", "--law", "chinchilla", "--params", "8e9", "--gpu", "l4"]) == 0
    assert "no default price for l4: give --price-per-gpu-hour" in capsys.readouterr().out


README = Path(__file__).resolve().parents[1] / "README.md"


def readme_scaling_commands() -> list[str]:
    """The `blueberry-scale ...` commands the README shows, as written."""
    return re.findall(r"`(blueberry-scale [^`]+)`", README.read_text())


@pytest.mark.slow
def test_the_readmes_scaling_commands_run_as_written(tmp_path, capsys, monkeypatch):
    """Before, the README's bare `blueberry-scale backtest` failed for want of runs."""
    import shlex

    commands = readme_scaling_commands()
    assert any(c.split()[1] == "backtest" for c in commands) and any(c.split()[1] == "plan" for c in commands)
    monkeypatch.chdir(tmp_path)
    for command in commands:
        assert scale_cli.main(shlex.split(command)[1:]) == 0, command
    capsys.readouterr()


def test_the_scaling_grid_reading_lrs_from_a_store_that_does_not_exist_creates_nothing(tmp_path, capsys):
    """Issue #28: `scaling_grid --lr-from` on a store that did not exist left an empty m.db behind."""
    import runpy

    grid = runpy.run_path(str(Path(__file__).resolve().parents[1] / "studies" / "scaling_grid.py"))["ScalingGrid"]
    assert grid().main(["--smoke", "--lr-from", "lr_sweep", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    assert "no MLflow store at" in capsys.readouterr().err
    assert listing(tmp_path) == []
