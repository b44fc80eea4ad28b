"""blueberry-export: a trained run as a directory that Hugging Face `transformers` loads.

    blueberry-export --run tiny-2m --out exports/tiny-2m
    blueberry-export --checkpoint runs/tiny-2m/checkpoints --out exports/tiny-2m --dtype bfloat16 --force

SwiGLU models become Qwen3 (or Qwen3-MoE) and dense relu2 models Apertus: transformers' own
classes, which compute the same function, so `AutoModelForCausalLM.from_pretrained(out)` needs no
Blueberry code. `--format blueberry` (the only choice for a relu2 mixture of experts) keeps
Blueberry's own module, loaded after `import blueberry.models.lm.hf`. See docs/export.md.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from blueberry.cli.common import ArgumentParser, run_command
from blueberry.errors import UserError
from blueberry.models.lm.export import DTYPES, FORMATS, to_hf

PROG = "blueberry-export"


def build_parser() -> ArgumentParser:
    from blueberry.platform.inference import add_run_flags

    parser = ArgumentParser(prog=PROG, description="Write a trained run as a Hugging Face transformers model "
                                                   "directory (safetensors, tokenizer, model card).")
    add_run_flags(parser)
    parser.add_argument("--out", type=Path, required=True,
                        help="the directory to write (created; built aside and renamed into place)")
    parser.add_argument("--format", choices=FORMATS,
                        help="the transformers architecture (default: the one the model is exactly: qwen3 or "
                             "qwen3_moe for SwiGLU, apertus for relu2, blueberry for a relu2 mixture of experts)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="the weights' dtype")
    parser.add_argument("--force", action="store_true", help="replace a previous export in --out")
    return parser


def main_body(argv: Sequence[str] | None) -> None:
    args = build_parser().parse_args(argv)
    from blueberry.platform.export import check_destination, export_run
    from blueberry.platform.inference import checkpoint_of, open_run

    # Before the checkpoint is read: a bad --out or a missing run answers at once.
    check_destination(args.out, args.force, protect=checkpoint_of(args.run, args.runs_dir, args.checkpoint)[1])
    run = open_run(args.run, args.runs_dir, args.checkpoint, tokenizer=args.tokenizer)
    if run.task.kind != "lm":
        raise UserError(f"{run.name} is a {run.task.kind!r} model; blueberry-export writes language models only")
    model = to_hf(run.task.config, run.model.state_dict(), args.format, eos_id=run.tokenizer.eos_id, dtype=args.dtype)
    out = export_run(run, model, args.out, force=args.force)
    print(f"exported {run.name} (step {run.saved.step:,}, {run.saved.tokens:,} tokens) to {out} as {model.format} "
          f"({model.config['architectures'][0]}, {args.dtype})")
    print("load it with:" + (f" {model.requires};" if model.requires else "")
          + f' AutoModelForCausalLM.from_pretrained("{out}"), AutoTokenizer.from_pretrained("{out}")')


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(PROG, main_body, argv)


if __name__ == "__main__":
    sys.exit(main())
