"""What every Blueberry command shares: one-line errors with exit status 2, no tracebacks for user mistakes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from blueberry.errors import UserError

USER_ERROR_EXIT = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (not usage + error) and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USER_ERROR_EXIT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def run_command(prog: str, body: Callable[[Sequence[str] | None], int | None],
                argv: Sequence[str] | None = None) -> int:
    """Run a command body; turn `UserError` into one line on stderr and exit status 2."""
    try:
        return body(argv) or 0
    except SystemExit as exit_:  # argparse's own exits (--help, a bad flag) keep their status
        return exit_.code if isinstance(exit_.code, int) else USER_ERROR_EXIT
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return USER_ERROR_EXIT
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; run the same command again to continue", file=sys.stderr)
        return 130


def positive_int(text: str) -> int:
    """argparse type for counts; accepts 500000 and 5e5."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value.is_integer() or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(value)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value
