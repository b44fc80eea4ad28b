"""What every Blueberry command shares: one-line errors with exit status 2, no tracebacks for user mistakes."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import signal
import sys
import threading
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from blueberry.errors import UserError

USER_ERROR_EXIT = 2


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Says each flag's default in `--help`, unless its help already does or there is none to say."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        empty = default is None or default is False or (isinstance(default, (list, tuple)) and not default)
        if ("default" in text or empty or default is argparse.SUPPRESS
                or action.option_strings == [] or isinstance(action, argparse._HelpAction)):
            return text
        return f"{text} (default: {default})" if text else f"default: {default}"


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (not usage + error) and exits 2, and says defaults."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(USER_ERROR_EXIT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def run_command(prog: str, body: Callable[[Sequence[str] | None], int | None],
                argv: Sequence[str] | None = None) -> int:
    """Run a command body; turn `UserError` into one line on stderr and exit status 2."""
    # SIGTERM (a scheduler's or `kill`'s polite stop) ends a command as Ctrl-C does: hooks close what
    # they opened and the run resumes on the next invocation.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None
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
    except BrokenPipeError:  # output piped into `head`, which stopped reading: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not fail again
        return 141
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _number(text: str, parse: Callable[[str], float], ok: Callable[[float], bool], expected: str) -> float:
    """`text` parsed and checked, or argparse's one-line error saying what was expected."""
    try:
        value = parse(text)
    except ValueError:
        value = math.nan
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type for counts; accepts 500000 and 5e5."""
    return int(_number(text, float, lambda v: v > 0 and float(v).is_integer(), "a positive integer"))


def non_negative_int(text: str) -> int:
    """argparse type for counts where 0 means off."""
    return int(_number(text, float, lambda v: 0 <= v < math.inf and v == int(v), "an integer >= 0"))


def positive_float(text: str) -> float:
    return _number(text, float, lambda v: 0 < v < math.inf, "a positive finite number")


def non_negative_float(text: str) -> float:
    return _number(text, float, lambda v: 0 <= v < math.inf, "a number >= 0")


def seed(text: str) -> int:
    """argparse type for seeds: what numpy and torch both accept."""
    return int(_number(text, int, lambda v: 0 <= v < 2**63, "an integer in [0, 2**63)"))


def non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a non-empty name")
    return text


def _option_type(annotation: Any) -> tuple[type, bool, bool]:
    """(element type, optional, repeated) of an options field's annotation: `int`, `Path | None`,
    `tuple[str, ...]`."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is tuple:
        return args[0], False, True
    if type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return inner, True, False
    return annotation, False, False


def add_options(parser: argparse.ArgumentParser, options: type, title: str | None = None) -> None:
    """Flags for each field of `options`, a capability's frozen dataclass (`blueberry.core.capabilities.option`):
    `max_new_tokens` is `--max-new-tokens`, typed and checked against the field's limits; a bool is a switch,
    a tuple a repeatable flag."""
    group = parser.add_argument_group(title) if title else parser
    hints = typing.get_type_hints(options)
    for f in dataclasses.fields(options):
        meta = f.metadata
        kind, _, repeated = _option_type(hints[f.name])
        flag = "--" + (meta.get("flag") or f.name).replace("_", "-")
        common = {"dest": f.name, "help": meta.get("help"), "default": f.default}
        if meta.get("metavar"):
            common["metavar"] = meta["metavar"]
        if kind is bool:
            group.add_argument(flag, action="store_true", **common)
            continue
        if meta.get("choices"):
            common["choices"] = meta["choices"]
        parse = _checked(kind, meta)
        if repeated:
            group.add_argument(flag, action="append", type=parse, **{**common, "default": None})
        else:
            group.add_argument(flag, type=parse, **common)


def _checked(kind: type, meta: Mapping[str, Any]) -> Callable[[str], Any]:
    """argparse's type for a field: parsed as `kind`, then held to the field's limits."""
    low, high, positive = meta.get("minimum"), meta.get("maximum"), meta.get("positive")
    if kind not in (int, float):
        return non_empty if kind is str else kind
    bounds = " and ".join(part for part in (
        "> 0" if positive else None, f">= {low:g}" if low is not None else None,
        f"<= {high:g}" if high is not None else None) if part)
    expected = f"{'an integer' if kind is int else 'a number'}{' ' + bounds if bounds else ''}"

    def ok(value: float) -> bool:
        return (math.isfinite(value) and (kind is float or float(value).is_integer())
                and not (positive and value <= 0) and (low is None or value >= low)
                and (high is None or value <= high))

    def parse(text: str) -> Any:
        return kind(_number(text, float, ok, expected))

    return parse


def read_options(args: argparse.Namespace, options: type) -> Any:
    """The `options` dataclass from the flags `add_options` added (repeated flags as tuples)."""
    values = {}
    for f in dataclasses.fields(options):
        value = getattr(args, f.name)
        if isinstance(f.default, tuple):  # a repeatable flag: None when never given
            value = f.default if value is None else tuple(value)
        values[f.name] = value
    return options(**values)
