"""Shared fixtures: a private cache (so tests never touch ~/.cache), the built-in data prepared once."""

from __future__ import annotations

import os
from pathlib import Path

# Tests never reach a hub. Set before anything imports huggingface_hub, which reads these once, at
# import: test modules that import transformers at collection would otherwise see them unset, and a
# hub name would spend tens of seconds in retries before failing.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import pytest  # noqa: E402

from blueberry.core.config import TrainConfig  # noqa: E402
from blueberry.models.lm.config import tiny  # noqa: E402

TEST_SEQ_LEN = 256


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("blueberry-cache")
    os.environ["BLUEBERRY_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def builtin_dir(private_cache: Path) -> Path:
    from pipelines.builtin import builtin_data_dir

    return builtin_data_dir(TEST_SEQ_LEN, progress=False)


@pytest.fixture(scope="session")
def builtin_data(builtin_dir: Path):
    from blueberry.data.tokens import TokenShards

    return TokenShards.open(builtin_dir)


@pytest.fixture(scope="session")
def quick_train() -> TrainConfig:
    """A few seconds of `tiny` training on CPU."""
    return TrainConfig(train_tokens=12 * 4 * TEST_SEQ_LEN, batch_size=4, eval_every=6, eval_tokens=8 * TEST_SEQ_LEN,
                       warmup_frac=0.1, device="cpu", log_every=1)


@pytest.fixture
def tiny_model():
    return tiny()


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the session's `ray` tests, shut down at the end even if tests fail."""
    ray = pytest.importorskip("ray")
    # Every package under tests/ (a model kind a test adds: tests/toy, tests/classifier) travels to the
    # workers, where importing it registers the kind.
    kinds = sorted(str(p) for p in Path(__file__).parent.iterdir() if (p / "__init__.py").is_file())
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"BLUEBERRY_CACHE": os.environ["BLUEBERRY_CACHE"]}, "py_modules": kinds})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def quick_run_dir(builtin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(runs dir, run name) of a few seconds of `blueberry-train` on the built-in data, untracked:
    what `blueberry-generate`, `blueberry-eval` and `blueberry-export` open by `--run`."""
    from blueberry.cli.train import main as train_main

    runs_dir = tmp_path_factory.mktemp("runs")
    assert train_main(["--data", str(builtin_dir), "--train-tokens", "40960", "--batch-size", "4", "--eval-every", "0",
                       "--no-track", "--no-progress", "--runs-dir", str(runs_dir), "--run-name", "quick"]) == 0
    return runs_dir, "quick"
