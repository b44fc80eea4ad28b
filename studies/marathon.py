"""How low does Blueberry's validation loss go in 1B tokens, and how long does it take?

The 1B-token marathon: `nano-88m` with the record hyperparameters, data-parallel across
`--workers` GPUs with Ray Train, validated at the leaderboard's milestones (8M, 20M, 100M and 1B
tokens), checkpointed every `--checkpoint-every` steps, restarted from the last checkpoint when a
worker fails. `--name` is the resume key: run the same command again after the job died.
`--strategy fsdp` shards the model, gradients and optimizer state across the workers (FSDP2) instead
of replicating them (DDP, the default); `--activation-checkpointing` trades recomputation for
activation memory.

    python studies/marathon.py --data data/marathon-1b --workers 4
    python studies/marathon.py --data data/marathon-1b --workers 4 --strategy fsdp --activation-checkpointing
    python studies/marathon.py --smoke                # two CPU workers, a small budget
"""

from __future__ import annotations

import sys

from blueberry.cli.common import positive_int
from blueberry.cli.study import Scales, Study, StudyScale
from blueberry.core.parallel import STRATEGIES
from blueberry.platform.data import data_key, open_shared
from blueberry.platform.cluster import storage_path
from blueberry.platform.distributed import DistributedConfig, check_strategy, run_distributed

MILESTONES = (8_011_776, 20_004_864, 100_007_936, 1_000_000_000)
FULL = StudyScale("gpu", "nano-88m", 1_000_000_000, 1, 8)


class Marathon(Study):
    """How low does Blueberry's validation loss go in 1B tokens, and how long does it take?"""

    experiment = "marathon"
    scales = Scales(smoke=StudyScale("smoke", "tiny", 40_960, 1, 4), cpu=FULL, gpu=FULL)

    def add_flags(self, parser):
        parser.add_argument("--workers", type=positive_int, default=2, help="data-parallel workers (default 2)")
        parser.add_argument("--checkpoint-every", type=positive_int, help="optimizer steps between checkpoints")
        parser.add_argument("--max-failures", type=int, default=3)
        parser.add_argument("--strategy", choices=STRATEGIES, default="ddp",
                            help="ddp: every worker holds the whole model; fsdp: parameters, gradients and optimizer "
                                 "state sharded across the workers (FSDP2)")
        parser.add_argument("--activation-checkpointing", action="store_true",
                            help="recompute each block's activations in backward instead of keeping them")

    def train_overrides(self, args, scale):
        tokens = args.train_tokens or scale.train_tokens
        milestones = (tokens // 2,) if scale.name == "smoke" else MILESTONES
        return {"eval_every": 0, "eval_at_tokens": milestones}

    def run(self, args, scale) -> str:
        check_strategy(args.strategy, args.workers)  # before Ray starts and the data is shared
        preset_name, run = self.base(args, scale)
        storage = self.storage(args)
        storage_path(storage)  # a bad --storage answers before Ray starts and the data is shared
        data = open_shared(run.task(), args.data)
        workers = args.workers
        cfg = DistributedConfig(
            name=args.name or self.default_name(preset_name, run, {"workers": workers, "data": data_key(data)}),
            workers=workers,
            cpus_per_worker=args.cpus_per_trial or 1.0,
            checkpoint_every=args.checkpoint_every or (5 if scale.name == "smoke" else 200),
            max_failures=args.max_failures, storage=storage, tracking_uri=args.tracking_uri, preset=preset_name,
            use_gpu=None if args.gpus_per_trial is None else args.gpus_per_trial > 0, strategy=args.strategy,
            activation_checkpointing=args.activation_checkpointing)
        result = run_distributed(run, data, cfg)
        m = result.metrics
        resumed = f", resumed from step {m['resumed_from_step']:.0f}" if m.get("resumed_from_step") else ""
        return "\n".join([
            f"marathon     {cfg.name}: {workers} workers ({cfg.strategy}"
            f"{', activation checkpointing' if cfg.activation_checkpointing else ''}), "
            f"{m['final/tokens']:,.0f} tokens in {m['final/steps']:.0f} steps",
            f"validation   loss {m['final/val_loss']:.4f}  accuracy {m['final/val_accuracy']:.1%}  "
            f"perplexity {m['final/val_perplexity']:.1f}",
            f"time         {m['final/active_time_s']:.1f} s active ({m['final/tokens_per_s']:,.0f} tokens/s, "
            f"{m['final/tokens_per_s'] / workers:,.0f} per worker){resumed}",
            f"checkpoints  {result.path}  (run the same command again to resume)"])


if __name__ == "__main__":
    sys.exit(Marathon().main())
