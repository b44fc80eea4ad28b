"""What the commands that open a trained run share (`blueberry-generate`, `blueberry-eval`, `blueberry-export`):
the flags that name the run, the two-step parse that adds the flags of the run's kind, and the services a
kind's capability borrows from the platform (opening `--data`, another checkpoint).

A command's own flags are known before the run is; the kind's are not, so a command parses in two steps:
the run flags first (`parse_known_args`), then, with the run opened, the whole command line against the
command's flags plus those of the kind's capability. `--help` without a run shows the command's flags and
how to see a kind's (`--run NAME --help`); nothing imports a model kind until a run is named.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from blueberry.cli.common import ArgumentParser, add_options, read_options
from blueberry.errors import UserError

KIND_FLAGS_EPILOG = ("Each model kind adds flags of its own (a language model's --prompt, a diffusion model's "
                     "--class...): pass --run NAME (or --checkpoint PATH) with --help to see those of a run.")


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """--run NAME [--runs-dir DIR] | --checkpoint PATH, and --tokenizer to override a missing record."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--run", help="a run's name under --runs-dir (its newest checkpoint)")
    which.add_argument("--checkpoint", type=Path, help="a checkpoint file, or a run's checkpoints directory")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs live")
    parser.add_argument("--tokenizer", help="the tokenizer, for checkpoints that predate recording it")


def command_parser(prog: str, describe: str, add_flags: Callable[[ArgumentParser], None], options: type | None = None,
                   title: str | None = None, with_help: bool = True) -> ArgumentParser:
    """A command's parser: the run flags, the command's own (`add_flags`), and a capability's `options` under
    `title`; without options, an epilog says how to see a kind's."""
    parser = ArgumentParser(prog=prog, description=describe, add_help=with_help,
                            epilog=None if options else KIND_FLAGS_EPILOG)
    add_run_flags(parser)
    add_flags(parser)
    if options is not None:
        add_options(parser, options, title)
    return parser


def parse_with_kind(argv: Sequence[str], build_parser: Callable[..., ArgumentParser],
                    open_run: Callable[[argparse.Namespace], Any],
                    capability: Callable[[Any], Any]) -> tuple[argparse.Namespace, Any, Any, Any]:
    """(args, run, capability, its options): `argv` parsed against the command's flags and, once
    `open_run(args)` has opened the run, those of `capability(run)`'s options. `build_parser(options, title,
    with_help)` is the command's `command_parser`."""
    named, _ = _run_flags_only().parse_known_args(argv)
    if named.run is None and named.checkpoint is None:
        build_parser().parse_args(argv)  # --help prints and exits; a bad or unknown flag is refused
        build_parser().error("name a run: --run NAME (under --runs-dir) or --checkpoint PATH")
    first, _ = build_parser(with_help=False).parse_known_args(argv)  # the command's own flags, before the run
    run = open_run(first)
    chosen = capability(run)
    title = f"{run.task.kind!r} runs: {chosen.summary}" if chosen.summary else f"{run.task.kind!r} runs"
    parser = build_parser(chosen.options, title)
    args, extra = parser.parse_known_args(argv)
    if extra:  # a flag of another kind (--class for a language model): say whose flags these are
        flags = [a for a in extra if a.startswith("-")] or extra
        how = f"--run {named.run}" if named.run is not None else f"--checkpoint {named.checkpoint}"
        raise UserError(f"{' '.join(flags)} {'does' if len(flags) == 1 else 'do'} not apply to {run.name}, a "
                        f"{run.task.kind!r} model: its flags are listed by {parser.prog} {how} --help")
    return args, run, chosen, read_options(args, chosen.options)


def required(capability: str) -> Callable[[Any], Any]:
    """The run's capability `capability`, or the one-line refusal of a kind that lacks it."""
    def lookup(run: Any) -> Any:
        from blueberry.inference.capabilities import require

        return require(run.task, capability, run.name)

    return lookup


def _run_flags_only() -> ArgumentParser:
    only = ArgumentParser(add_help=False)
    add_run_flags(only)
    return only


def open_from_flags(args: argparse.Namespace, device: str = "cpu") -> Any:
    """The run `--run`/`--checkpoint` name, opened for inference (`blueberry.inference.run.open_run`)."""
    from blueberry.inference.run import open_run

    return open_run(args.run, args.runs_dir, args.checkpoint, device, args.tokenizer)


def services(device: str = "cpu", seed: int = 0) -> Any:
    """What the platform lends a capability: `--data` opened through the one door into the pipelines, and
    other checkpoints opened for inference."""
    from blueberry.core.capabilities import Services
    from blueberry.inference.run import open_run
    from blueberry.platform.data import open_for, open_images

    return Services(open_for=lambda task, spec: open_for(task, spec, progress=False),
                    open_images=lambda spec: open_images(spec, progress=False),
                    open_run=lambda path: open_run(checkpoint=Path(path), device=device), device=device, seed=seed)
