"""blueberry-board: the speedrun leaderboard, from the submitted runs in MLflow.

    blueberry-board --tracking-uri sqlite:///mlflow.db --experiment speedrun --out docs/LEADERBOARD.md
    blueberry-board --track cpu-loss --out -          # one track, printed

Per track: the records in order (date, losses, time, tokens, model FLOPs, author, notes, hardware,
commit, repeatability) and the refused claims with the reason. The same Markdown is logged as
`LEADERBOARD.md` on the experiment's `leaderboard` run. See docs/speedrun.md.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from blueberry.cli.common import ArgumentParser, non_empty, run_command
from blueberry.speedrun.tracks import TRACKS

PROG = "blueberry-board"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Write the speedrun leaderboard from the claims submitted "
                                                   "to an MLflow experiment.")
    parser.add_argument("--tracking-uri",
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    parser.add_argument("--experiment", type=non_empty, default="speedrun", help="the speedrun study's experiment")
    parser.add_argument("--out", default="docs/LEADERBOARD.md", help="the Markdown file to write; - prints it")
    parser.add_argument("--track", action="append", default=[], metavar="NAME",
                        help=f"only this track (repeatable): {', '.join(TRACKS)} (default: all)")
    parser.add_argument("--no-artifact", action="store_true",
                        help="do not log LEADERBOARD.md to the experiment's leaderboard run")
    return parser


def main_body(argv: Sequence[str] | None) -> None:
    args = build_parser().parse_args(argv)
    from blueberry.platform.leaderboard import ARTIFACT, publish
    from blueberry.platform.tracking import absolute_uri, tracking_uri

    out = None if args.out == "-" else Path(args.out)
    uri = absolute_uri(tracking_uri(args.tracking_uri))
    markdown, boards = publish(uri, args.experiment, out, args.track, artifact=not args.no_artifact)
    if out is None:
        print(markdown, end="")
        return
    counts = ", ".join(f"{b.track.name} {len(b.records)}" + (f" (+{len(b.refused)} refused)" if b.refused else "")
                       for b in boards if b.verdicts)
    logged = "" if args.no_artifact else f"; also {ARTIFACT} on the leaderboard run of experiment {args.experiment!r}"
    print(f"wrote {out}: records per track: {counts or 'none'}{logged}")


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(PROG, main_body, argv)


if __name__ == "__main__":
    sys.exit(main())
