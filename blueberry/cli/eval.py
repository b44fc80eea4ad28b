"""`blueberry-eval`: score a trained run on downstream tasks, or run lm-evaluation-harness on it.

    blueberry-eval --run NAME --runs-dir runs                          # cloze and bpb on the built-in corpus
    blueberry-eval --run NAME --tasks hellaswag=data/hellaswag_val.jsonl,arc_easy=data/ARC-Easy@test,cloze
    blueberry-eval --checkpoint runs/NAME/checkpoints --tasks bpb --data DIR --limit 64 --json eval.json
    blueberry-eval harness --model blueberry --model_args run=NAME,runs_dir=runs --tasks hellaswag

The tasks and their file formats are in `blueberry/platform/evaluation.py` and docs/evaluation.md;
the scoring (lm-eval's rules for multiple choice, nanochat's for bits per byte) in
`blueberry/models/lm/eval.py`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from blueberry.cli.common import ArgumentParser, positive_int, run_command
from blueberry.errors import UserError
from blueberry.files import write_atomic

PROG = "blueberry-eval"
DEFAULT_TASKS = "cloze,bpb"


def build_parser() -> ArgumentParser:
    from blueberry.platform.inference import add_run_flags

    parser = ArgumentParser(prog=PROG, description="Score a trained run on downstream tasks. "
                                                   "`blueberry-eval harness ARGS` runs lm-eval instead.")
    add_run_flags(parser)
    parser.add_argument("--tasks", default=DEFAULT_TASKS,
                        help="comma-separated: cloze, bpb (built in), hellaswag=PATH, arc_easy=PATH, "
                             "arc_challenge=PATH, piqa=PATH; PATH@SPLIT picks a split of a directory")
    parser.add_argument("--data", default="builtin",
                        help="prepared token data for cloze and bpb: a directory, or builtin (the built-in corpus)")
    parser.add_argument("--limit", type=positive_int, help="score only the first N questions of each task "
                                                           "(for bpb: N validation sequences)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="sequences per forward pass")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    return parser


def format_table(rows: list[tuple[str, str, float, str]]) -> str:
    width = max(len(task) for task, *_ in rows)
    lines = [f"{'task':<{width}}  {'metric':<8}  {'value':>7}  n"]
    lines += [f"{task:<{width}}  {metric:<8}  {value:>7.4f}  {n}" for task, metric, value, n in rows]
    return "\n".join(lines)


def main_body(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from blueberry.models.lm.eval import evaluate_tasks
    from blueberry.platform.evaluation import load_tasks, parse_tasks
    from blueberry.platform.inference import open_run

    specs = parse_tasks(args.tasks)  # names and files first: a typo fails before the model loads
    if args.json is not None and args.json.is_dir():
        raise UserError(f"--json {args.json} is a directory: pass a file name")
    run = open_run(run=args.run, runs_dir=args.runs_dir, checkpoint=args.checkpoint, device=args.device,
                   tokenizer=args.tokenizer)
    if run.task.kind != "lm":
        raise UserError(f"{run.name} is a {run.task.kind!r} model: blueberry-eval scores language models")
    tasks = load_tasks(specs, run.tokenizer, seq_len=run.task.units_per_sample, data=args.data)
    metrics = evaluate_tasks(run.model, run.tokenizer, tasks, args.limit, args.batch_size)

    rows, counts = [], {}
    for name, task in tasks.items():
        if name in metrics:  # token data: bits per byte
            counts[name] = min(args.limit or 2**62, task.manifest.splits["val"].sequences)
            rows.append((name, "bpb", metrics[name], f"{counts[name]} sequences"))
            continue
        counts[name] = min(args.limit or len(task), len(task))
        chance = sum(1 / len(q.choices) for q in task[:counts[name]]) / counts[name]
        for metric in ("acc", "acc_norm"):
            rows.append((name, metric, metrics[f"{name}/{metric}"], f"{counts[name]} questions (chance {chance:.4f})"))
    if "core" in metrics:
        rows.append(("core", "centred", metrics["core"], "mean of (acc_norm - chance) / (1 - chance)"))
    print(f"{run.name} ({run.checkpoint})")
    print(format_table(rows))
    if args.json is not None:
        write_atomic(args.json, json.dumps({"run": run.name, "checkpoint": str(run.checkpoint), "tasks": args.tasks,
                                            "data": args.data, "limit": args.limit, "metrics": metrics,
                                            "counts": counts}, indent=2))
    return 0


def harness_body(argv: Sequence[str] | None) -> int:
    """`blueberry-eval harness ARGS`: lm-eval's command line with the `blueberry` model registered."""
    try:
        from blueberry.platform import harness
    except ImportError as err:
        raise UserError(f"lm-eval is not installed ({err}): pip install 'blueberry-llm[eval]'") from None
    from blueberry.models.lm.eval import LMScorer

    harness.use_scorer(lambda run, batch_size: LMScorer(run.model, run.tokenizer, batch_size))
    harness.run_harness(list(argv or []))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["harness"]:
        return run_command(PROG, harness_body, argv[1:])
    return run_command(PROG, main_body, argv)


if __name__ == "__main__":
    sys.exit(main())
