"""blueberry-export: a trained run as a directory another library loads, in the formats its kind declares.

    blueberry-export --run tiny-2m --out exports/tiny-2m
    blueberry-export --checkpoint runs/tiny-2m/checkpoints --out exports/tiny-2m --dtype bfloat16 --force

A language model becomes a Hugging Face `transformers` model: SwiGLU models Qwen3 (or Qwen3-MoE) and dense
relu2 models Apertus, transformers' own classes, which compute the same function, so
`AutoModelForCausalLM.from_pretrained(out)` needs no Blueberry code; `--format blueberry` (the only choice for
a relu2 mixture of experts) keeps Blueberry's own module. See docs/export.md. A kind with no export format is
refused in one line; `blueberry-export --run NAME --help` lists the flags of the run's kind.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from blueberry.cli.common import ArgumentParser, run_command

PROG = "blueberry-export"
DESCRIPTION = ("Write a trained run as a model directory another library loads (for a language model: Hugging "
               "Face transformers, with safetensors, tokenizer and model card).")


def add_flags(parser: ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True,
                        help="the directory to write (created; built aside and renamed into place)")
    parser.add_argument("--force", action="store_true", help="replace a previous export in --out")


def build_parser(options: type | None = None, title: str | None = None, with_help: bool = True) -> ArgumentParser:
    """The command's parser, with a kind's capability `options` when given."""
    from blueberry.cli.runs import command_parser

    return command_parser(PROG, DESCRIPTION, add_flags, options, title, with_help)


def main_body(argv: Sequence[str] | None) -> None:
    from blueberry.cli.runs import open_from_flags, parse_with_kind, required

    def open_checked(first):  # a bad --out or a missing run answers before the checkpoint is read
        from blueberry.export.directory import check_destination
        from blueberry.inference.run import checkpoint_of

        check_destination(first.out, first.force, protect=checkpoint_of(first.run, first.runs_dir,
                                                                         first.checkpoint)[1])
        return open_from_flags(first)

    args, run, export, options = parse_with_kind(list(argv or []), build_parser, open_checked, required("export"))
    from blueberry.export.directory import export_run

    model = export(run, options)
    out = export_run(run, model, args.out, force=args.force)
    print(f"exported {run.name} (step {run.saved.step:,}, {run.saved.tokens:,} tokens) to {out} as {model.format} "
          f"({model.config['architectures'][0]}, {model.config.get('dtype', 'float32')})")
    print("load it with:" + (f" {model.requires};" if model.requires else "")
          + f' AutoModelForCausalLM.from_pretrained("{out}"), AutoTokenizer.from_pretrained("{out}")')


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(PROG, main_body, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
