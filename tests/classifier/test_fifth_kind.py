"""A fifth kind added in one folder goes through the whole platform with no file outside the folder edited:
it trains from `blueberry-train`, is evaluated by `blueberry-eval` (its Task's own evaluation, as it declares
none), sweeps with ASHA, trains under Ray Train with FSDP (its layers found by its own `Task.blocks`, in an
attribute not named `blocks`), and `blueberry-generate` and `blueberry-export` refuse it in one line."""

from __future__ import annotations

import json

import pytest
import torch
from classifier.config import ClassifierConfig, classifier_train
from classifier.task import ClassifierTask

from blueberry.cli.eval import main as eval_main
from blueberry.cli.export import main as export_main
from blueberry.cli.generate import main as generate_main
from blueberry.cli.train import main as train_main
from blueberry.core.config import replace
from blueberry.core.loop import train
from blueberry.core.parallel import DataParallel
from blueberry.errors import ConfigError
from blueberry.models.registry import task_kinds
from blueberry.models.run import RunConfig

CHANCE = 0.1  # ten digit classes


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(runs dir, result.json) of `blueberry-train --preset classifier-tiny` on the built-in digits."""
    runs = tmp_path_factory.mktemp("runs")
    assert train_main(["--preset", "classifier-tiny", "--no-track", "--no-progress", "--runs-dir", str(runs),
                       "--run-name", "digits"]) == 0
    return runs, json.loads((runs / "digits" / "result.json").read_text())


def test_the_kind_is_registered_by_its_folder_alone():
    assert "classifier" in task_kinds()
    task = ClassifierTask(ClassifierConfig())
    model = task.build_model()
    assert not hasattr(model, "blocks") and len(task.blocks(model)) == 2  # found by declaration, not by name
    hidden = task.hidden_matrices(model)  # Muon: each mixer's three matrices; embedding and head stay with AdamW
    assert len(hidden) == 6 and all(p.ndim == 2 for p in hidden)
    assert not any(p is model.embed.weight or p is model.head.weight for p in hidden)


def test_it_trains_from_the_command_and_learns(trained):
    _, result = trained
    assert result["final/val_accuracy"] > 8 * CHANCE  # untrained: about chance
    assert result["final/tokens"] == classifier_train().train_tokens  # progress counted in images


def test_blueberry_eval_scores_it_with_its_task_evaluation(trained, tmp_path, capsys):
    runs, result = trained
    out = tmp_path / "eval.json"
    assert eval_main(["--run", "digits", "--runs-dir", str(runs), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "val   accuracy" in printed.replace("val  accuracy", "val   accuracy") and \
        "held-out images of --data builtin" in printed
    metrics = json.loads(out.read_text())["metrics"]
    # The same held-out images the run's last evaluation scored: the same numbers.
    assert metrics["val/accuracy"] == pytest.approx(result["final/val_accuracy"], abs=1e-12)
    assert metrics["val/loss"] == pytest.approx(result["final/val_loss"], rel=1e-6)


@pytest.mark.parametrize("command, main, extra", [
    ("blueberry-generate", generate_main, []),
    ("blueberry-export", export_main, ["--out", "OUT"]),
])
def test_generate_and_export_refuse_it_in_one_line(trained, tmp_path, capsys, command, main, extra):
    runs, _ = trained
    extra = [str(tmp_path / "export") if a == "OUT" else a for a in extra]
    assert main(["--run", "digits", "--runs-dir", str(runs), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{command}: error: digits is a 'classifier' model: its kind has no")
    assert "kinds that have one: " in err and "lm" in err
    assert not (tmp_path / "export").exists()


def test_fsdp_without_declared_blocks_is_refused_in_one_line():
    class Flat(ClassifierTask):  # a kind that declares no blocks (not registered: only its Task is needed)
        def blocks(self, model):
            return []

    with pytest.raises(ConfigError, match="declares no blocks"):
        DataParallel(rank=0, world_size=2, strategy="fsdp").prepare(Flat(ClassifierConfig()).build_model(),
                                                                   torch.device("cpu"), [])


def mixer_width(trial):  # module-level: Tune pickles the search space
    trial.suggest_categorical("model.width", [16, 32])


@pytest.mark.ray
@pytest.mark.slow
def test_it_sweeps_and_trains_under_ray_train_with_fsdp(ray_local, tmp_path):
    from blueberry.platform.distributed import DistributedConfig, run_distributed
    from blueberry.platform.sweep import SweepConfig, run_sweep

    base = RunConfig(ClassifierConfig(), replace(classifier_train(), eval_every=10))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sweep = run_sweep(SweepConfig(experiment="classifier_sweep", name="c", preset="classifier-tiny", base=base,
                                  space=mixer_width, baseline={"model.width": 32}, trials=2, data="builtin",
                                  storage=str(tmp_path / "ray"), tracking_uri=uri, evals_per_trial=4))
    assert len(sweep.trials) == 2 and sweep.best["val_loss"] < 1.5  # untrained: ln 10 = 2.3

    from blueberry.platform.data import open_for, open_shared

    task = ClassifierTask(ClassifierConfig())
    steps, per_worker = 12, 32
    fsdp = run_distributed(RunConfig(ClassifierConfig(), replace(classifier_train(), batch_size=per_worker,
                                                                 train_tokens=steps * 2 * per_worker, eval_every=0)),
                           open_shared(task, "builtin"), DistributedConfig(name="c-fsdp", workers=2, checkpoint_every=5,
                                                        strategy="fsdp", experiment="classifier_train",
                                                        storage=str(tmp_path / "ray"), tracking_uri=uri))
    torch.set_num_threads(2)
    alone = train(task, replace(classifier_train(), batch_size=2 * per_worker, train_tokens=steps * 2 * per_worker,
                                eval_every=0), open_for(task, "builtin", progress=False))
    # Two FSDP workers with half the batch each are one process with the whole batch.
    assert fsdp.metrics["final/val_loss"] == pytest.approx(alone.val.loss, rel=1e-3)
