"""Data-parallel scaling on this machine: the same run with 1 and 2 Ray Train workers (gloo on CPU).

    python -m blueberry.bench.ddp_scaling --steps 60

A functional check, not a GPU figure: on a 2-core machine two workers share the cores the single
worker had. Global batch, data and steps are the same in both runs; each worker gets one thread.
"""

from __future__ import annotations

import argparse
import tempfile

import ray

from blueberry.core.config import TrainConfig
from blueberry.models.lm.config import tiny
from blueberry.models.run import RunConfig
from blueberry.platform.data import open_shared
from blueberry.platform.distributed import DistributedConfig, run_distributed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--global-batch", type=int, default=8)
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    data = open_shared(RunConfig(tiny()).task(), "builtin")
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            per_worker = args.global_batch // workers
            run = RunConfig(tiny(), TrainConfig(train_tokens=args.steps * args.global_batch * 256, batch_size=per_worker,
                                                eval_every=0, eval_tokens=2048))
            result = run_distributed(run, data, DistributedConfig(
                name=f"scaling-{workers}", workers=workers, checkpoint_every=args.steps, storage=f"{tmp}/ray",
                tracking_uri=f"sqlite:///{tmp}/mlflow.db"))
            rates[workers] = result.metrics["final/tokens_per_s"]
            print(f"{workers} worker(s): {rates[workers]:10,.0f} tokens/s (active), final train loss "
                  f"{result.metrics['final/train_loss']:.4f}")
    print(f"speed-up 2 vs 1: {rates[2] / rates[1]:.2f}x, scaling efficiency {rates[2] / rates[1] / 2:.0%}")


if __name__ == "__main__":
    main()
