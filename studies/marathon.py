"""How low does Blueberry's validation loss go in 1B tokens, and how long does it take?

The 1B-token marathon: `nano-88m` with the record hyperparameters, data-parallel across
`--workers` GPUs with Ray Train, validated at the leaderboard's milestones (8M, 20M, 100M and 1B
tokens), checkpointed every `--checkpoint-every` steps, restarted from the last checkpoint when a
worker fails. `--name` is the resume key: run the same command again after the job died.

    python studies/marathon.py --data data/marathon-1b --workers 4
    python studies/marathon.py --smoke                # two CPU workers, a small budget
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from blueberry.cli.common import positive_int, run_command
from blueberry.config import RunConfig, TrainConfig, preset
from blueberry.study_cli import study_parser

MILESTONES = (8_011_776, 20_004_864, 100_007_936, 1_000_000_000)


def main(argv: Sequence[str] | None = None) -> int:
    def body(argv):
        from blueberry.distributed import DistributedConfig, run_distributed
        from blueberry.study_cli import default_name
        from pipelines.builtin_data import open_data
        from pipelines.share import share

        parser = study_parser(__doc__.splitlines()[0])
        parser.add_argument("--workers", type=positive_int, help="data-parallel workers (default 2)")
        parser.add_argument("--checkpoint-every", type=positive_int, help="optimizer steps between checkpoints")
        parser.add_argument("--max-failures", type=int, default=3)
        args = parser.parse_args(argv)
        preset_name = args.preset or ("tiny" if args.smoke else "nano-88m")
        tokens = args.train_tokens or (40_960 if args.smoke else 1_000_000_000)
        train_cfg = TrainConfig(train_tokens=tokens, batch_size=args.batch_size or (4 if args.smoke else 8),
                                eval_every=0, eval_at_tokens=MILESTONES if not args.smoke else (tokens // 2,))
        run = RunConfig(preset(preset_name), train_cfg)
        data = open_data(args.data, run.model.seq_len, progress=False)
        data.check_fits(run.model)
        workers = args.workers or 2
        cfg = DistributedConfig(name=args.name or default_name("marathon", preset_name, run, {"workers": workers}),
                                workers=workers, cpus_per_worker=args.cpus_per_trial or 1.0,
                                checkpoint_every=args.checkpoint_every or (5 if args.smoke else 200),
                                max_failures=args.max_failures, storage=args.storage, tracking_uri=args.tracking_uri,
                                preset=preset_name, use_gpu=None if args.gpus_per_trial is None else args.gpus_per_trial > 0)
        result = run_distributed(run, share(data), cfg)
        m = result.metrics
        print(f"marathon     {cfg.name}: {workers} workers, {m['final/tokens']:,.0f} tokens in {m['final/steps']:.0f} steps")
        print(f"validation   loss {m['final/val_loss']:.4f}  accuracy {m['final/val_accuracy']:.1%}  "
              f"perplexity {m['final/val_perplexity']:.1f}")
        print(f"time         {m['final/active_time_s']:.1f} s active ({m['final/tokens_per_s']:,.0f} tokens/s, "
              f"{m['final/tokens_per_s'] / workers:,.0f} per worker)"
              + (f", resumed from step {m['resumed_from_step']:.0f}" if m.get("resumed_from_step") else ""))
        print(f"checkpoints  {result.path}  (run the same command again to resume)")
        return 0

    return run_command("marathon", body, argv)


if __name__ == "__main__":
    sys.exit(main())
