"""blueberry-eval: score a trained run, or run lm-evaluation-harness on it.

    blueberry-eval --run NAME --runs-dir runs                          # cloze and bpb on the built-in corpus
    blueberry-eval --run NAME --tasks hellaswag=data/hellaswag_val.jsonl,arc_easy=data/ARC-Easy@test,cloze
    blueberry-eval --checkpoint runs/NAME/checkpoints --tasks bpb --data DIR --limit 64 --json eval.json
    blueberry-eval --run dit-digits                                     # an image model: its own evaluation
    blueberry-eval harness --model blueberry --model_args run=NAME,runs_dir=runs --tasks hellaswag

What a run is scored on is its kind's (`Task.capabilities.evaluate`: for a language model, downstream tasks,
read by `blueberry/models/lm/benchmarks.py` and scored by `blueberry/models/lm/eval.py`); a kind that declares
none is scored by its Task's own evaluation on the held-out split of `--data` (`blueberry/evals/validation.py`).
`blueberry-eval --run NAME --help` lists the flags of the run's kind.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from blueberry.cli.common import ArgumentParser, run_command
from blueberry.errors import UserError
from blueberry.files import write_atomic

PROG = "blueberry-eval"
DESCRIPTION = ("Score a trained run on what its kind is judged by. `blueberry-eval harness ARGS` runs lm-eval "
               "instead.")


def add_flags(parser: ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")


def format_table(rows: list[tuple[str, str, float, str]]) -> str:
    width = max(len(task) for task, *_ in rows)
    lines = [f"{'task':<{width}}  {'metric':<8}  {'value':>7}  n"]
    lines += [f"{task:<{width}}  {metric:<8}  {value:>7.4f}  {n}" for task, metric, value, n in rows]
    return "\n".join(lines)


def check_json_destination(path: Path | None) -> None:
    """Refuse, before any scoring, a --json that cannot be written."""
    if path is None:
        return
    if path.is_dir():
        raise UserError(f"--json {path} is a directory: pass a file name")
    if not path.parent.is_dir():
        raise UserError(f"--json {path}: directory {path.parent} does not exist")


def build_parser(options: type | None = None, title: str | None = None, with_help: bool = True) -> ArgumentParser:
    """The command's parser, with a kind's capability `options` when given."""
    from blueberry.cli.runs import command_parser

    return command_parser(PROG, DESCRIPTION, add_flags, options, title, with_help)


def main_body(argv: Sequence[str] | None) -> int:
    from blueberry.cli.runs import open_from_flags, parse_with_kind, services

    def evaluation(run):  # imported once a run is named: --help imports no model kind, nor torch
        from blueberry.evals.validation import evaluation_for

        return evaluation_for(run.task)

    args, run, evaluate, options = parse_with_kind(list(argv or []), build_parser,
                                                   lambda first: open_from_flags(first, first.device), evaluation)
    check_json_destination(args.json)
    result = evaluate(run, options, services(args.device))
    print(f"{run.name} ({run.checkpoint})")
    print(format_table(result.rows))
    if args.json is not None:
        write_atomic(args.json, json.dumps({"run": run.name, "checkpoint": str(run.checkpoint), **result.record,
                                            "metrics": result.metrics}, indent=2))
    return 0


def harness_body(argv: Sequence[str] | None) -> int:
    """`blueberry-eval harness ARGS`: lm-eval's command line with the `blueberry` model registered."""
    try:
        from blueberry.evals import harness
    except ImportError as err:
        raise UserError(f"lm-eval is not installed ({err}): pip install 'blueberry-llm[eval]'") from None
    harness.run_harness(list(argv or []))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["harness"]:
        return run_command(PROG, harness_body, argv[1:])
    return run_command(PROG, main_body, argv)


if __name__ == "__main__":
    sys.exit(main())
