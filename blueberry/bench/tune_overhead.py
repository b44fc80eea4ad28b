"""Platform overhead: the same `tiny` run as a bare `train()` call and as a Tune trial (with MLflow
tracking, Tune reports and checkpoints), one after the other in one process.

    python -m blueberry.bench.tune_overhead --train-tokens 409600

Two ratios: active-training throughput (steps only), and end to end (tokens over the trial's whole
wall time, including actor start-up, data from the object store, tracking and checkpoints).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from blueberry.core.config import TrainConfig
from blueberry.core.loop import train
from blueberry.models.lm.config import preset
from blueberry.models.run import RunConfig
from blueberry.platform.data import open_for
from blueberry.platform.sweep import SweepConfig, run_sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-tokens", type=int, default=409_600)
    args = parser.parse_args()
    base = RunConfig(preset("tiny"), TrainConfig(train_tokens=args.train_tokens, batch_size=8))
    torch.set_num_threads(1)  # what a one-CPU trial gets
    start = time.perf_counter()
    data = open_for(base.task(), "builtin", progress=False)
    bare = train(base.task(), base.train, data)
    bare_wall = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        result = run_sweep(SweepConfig(experiment="tune_overhead", name="one-trial", preset="tiny", base=base,
                                       space=None, grid={"train.seed": [base.train.seed]}, trials=1,
                                       storage=f"{tmp}/ray", tracking_uri=f"sqlite:///{tmp}/mlflow.db",
                                       max_concurrent_trials=1))
        from ray.tune import ExperimentAnalysis

        (trial,) = ExperimentAnalysis(result.storage_path).trials
        trial_wall, trial_active_rate = trial.last_result["time_total_s"], trial.last_result["tokens_per_s"]
    print(f"bare train()  active {bare.tokens_per_s:10,.0f} tokens/s   end to end {bare.tokens / bare_wall:10,.0f} tokens/s")
    print(f"Tune trial    active {trial_active_rate:10,.0f} tokens/s   end to end {bare.tokens / trial_wall:10,.0f} "
          "tokens/s")
    print(f"trial / bare  active {trial_active_rate / bare.tokens_per_s:.3f}   end to end {bare_wall / trial_wall:.3f}")


if __name__ == "__main__":
    main()
