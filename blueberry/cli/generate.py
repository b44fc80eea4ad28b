"""blueberry-generate: samples of a trained run, as its kind draws them: text from a language model (with the
tokenizer it was trained with), a grid of images from a diffusion model, held-out images and their
reconstructions from a VQ-VAE, the images captions name from a language model over image codes.

    blueberry-generate --run tiny-2m --prompt "Once upon a time" --max-new-tokens 100
    blueberry-generate --run tiny-2m --prompt "The" --prompt "A" --num-samples 3 --temperature 0.8 --top-p 0.95
    blueberry-generate --run dit-tiny-NAME --class 3 --num-samples 8 --steps 50 --cfg-scale 2 --sampler heun \
        --out grid.png
    blueberry-generate --run MM_RUN --prompt "a seven" --num-samples 8 --out grid.png    # text + image codes
    blueberry-generate --run VQ_RUN --num-samples 4 --out recon.png --score               # a VQ-VAE's reconstructions

The flags after the run's are its kind's (`Task.capabilities.generate`): `blueberry-generate --run NAME
--help` lists them. A kind that cannot sample is refused in one line.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from blueberry.cli.common import ArgumentParser, run_command, seed

PROG = "blueberry-generate"
DESCRIPTION = "Sample a trained run: text, or images, as its kind draws them."


def add_flags(parser: ArgumentParser) -> None:
    parser.add_argument("--seed", type=seed, default=0, help="seeds the sampling")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")


def build_parser(options: type | None = None, title: str | None = None, with_help: bool = True) -> ArgumentParser:
    """The command's parser, with a kind's capability `options` when given."""
    from blueberry.cli.runs import command_parser

    return command_parser(PROG, DESCRIPTION, add_flags, options, title, with_help)


def main_body(argv: Sequence[str] | None) -> None:
    from blueberry.cli.runs import open_from_flags, parse_with_kind, required, services

    args, run, generate, options = parse_with_kind(list(argv or []), build_parser,
                                                   lambda first: open_from_flags(first, first.device),
                                                   required("generate"))
    generate(run, options, services(args.device, args.seed))


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(PROG, main_body, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
