"""Is the record repeatable, and does a change really beat it?

Repeatability: the record configuration runs once per seed on a speedrun track (a grid, no early
stopping); the report gives the mean and standard deviation of the final losses and of active time
(and of time and tokens to the target on a target track). With a target train loss it adds a
one-sided t-test of H0: mean final train loss >= target.

A/B (`--ab BASELINE.json CANDIDATE.json`): both arms run `--runs` times each, interleaved as Tune
trials on the same pool, so machine noise falls on both; the report gives the difference of the
track's metric with a confidence interval and a one-sided Welch p-value, and whether the candidate is
accepted (p < 0.01 with at least the track's minimum number of runs). An arm file holds dotted
overrides (`{"train.muon_lr": 0.03}`) or a whole config.json (`blueberry.speedrun.ab`).

Every run is tagged in MLflow with its track, claim, arm, author, notes, git commit and hardware;
`--submit` puts the claim on the board, which `blueberry-board` writes: as the track's next record if
accepted (an A/B's verdict is the board's), else among the refused claims with the reason.
See docs/speedrun.md.

    python studies/speedrun.py --smoke
    python studies/speedrun.py --track 8m --runs 5 --data data/speedrun-40m --author NAME --notes "..." --submit
    python studies/speedrun.py --ab baseline.json candidate.json --runs 5 --track 8m --data data/speedrun-40m
"""

from __future__ import annotations

import argparse
import getpass
import sys

from blueberry.cli.common import positive_float, positive_int
from blueberry.cli.study import Study, summary
from blueberry.core.config import replace
from blueberry.errors import UserError
from blueberry.models.run import RunConfig
from blueberry.platform.search import apply_params
from blueberry.speedrun.ab import BUDGET, SEED, arm_kind, interleave, read_arm
from blueberry.speedrun.report import ab_lines, repeatability_lines
from blueberry.speedrun.runs import BASELINE, CANDIDATE
from blueberry.speedrun.tracks import TRACKS, track, track_for_target

SCALE_TRACKS = {"smoke": "smoke-loss", "cpu": "cpu-loss", "gpu": "8m"}  # the track a scale runs by default


def arm_file(text: str) -> str:
    """argparse type: an A/B arm file that reads (a bad one fails before anything starts)."""
    try:
        read_arm(text)
    except UserError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


class Speedrun(Study):
    """Is the record repeatable, and does a change really beat it?

    Runs over seeds on a speedrun track, or an A/B of two configs interleaved on one pool, judged as
    the leaderboard judges."""

    experiment = "speedrun"
    evals_per_trial = 1  # the numbers are final ones; every evaluation is wall time the pool spends

    def add_flags(self, parser):
        parser.add_argument("--track", choices=list(TRACKS),
                            help="the speedrun track, whose budget or target the runs train to (default: "
                                 + ", ".join(f"{t} at the {s} scale" for s, t in SCALE_TRACKS.items()) + ")")
        parser.add_argument("--target-train-loss", type=positive_float,
                            help="the track of this target train loss (4.5 is --track loss-4.5)")
        parser.add_argument("--runs", "--seeds", dest="runs", type=positive_int,
                            help="runs (of each arm in an A/B) (default: the track's minimum)")
        parser.add_argument("--ab", nargs=2, type=arm_file, metavar=("BASELINE.json", "CANDIDATE.json"),
                            help="compare two configs (JSON overrides or a config.json), their runs interleaved")
        parser.add_argument("--author", default=getpass.getuser(), help="who the runs are credited to")
        parser.add_argument("--notes", help="what the claim changes (default in an A/B: the candidate's overrides)")
        parser.add_argument("--submit", action="store_true",
                            help="submit the claim to the board, which lists it as a record or says why not")

    def track(self, args, scale):
        if args.target_train_loss is not None:
            chosen = track_for_target(args.target_train_loss, args.train_tokens or scale.train_tokens)
            if args.track and args.track != chosen.name:
                raise UserError(f"--track {args.track} and --target-train-loss {args.target_train_loss:g} disagree: "
                                "pass one of them")
            return chosen
        return track(args.track or SCALE_TRACKS[scale.name])

    def base(self, args, scale):
        preset_name, run = super().base(args, scale)
        chosen = self.track(args, scale)
        if chosen.budget_tokens is not None and args.train_tokens and args.train_tokens != chosen.budget_tokens:
            raise UserError(f"--train-tokens {args.train_tokens:,} contradicts track {chosen.name}'s budget of "
                            f"{chosen.budget_tokens:,} tokens: leave it out, or pick another --track")
        target = chosen.target_train_loss
        tokens = args.train_tokens if target is not None and args.train_tokens else chosen.train_tokens
        return preset_name, RunConfig(run.model, replace(run.train, train_tokens=tokens, target_train_loss=target))

    def points(self, args, base, scale):
        """[(arm, overrides with the run's seed)]: the A/B's arms interleaved, or the record over seeds."""
        runs = args.runs or self.track(args, scale).min_runs
        if not args.ab:
            return [(CANDIDATE, {SEED: seed}) for seed in range(runs)]
        for path in args.ab:
            if arm_kind(path) not in (None, base.kind):
                raise UserError(f"A/B arm {path} is a {arm_kind(path)!r} config; this study trains {base.kind!r}")
        arms = [read_arm(path) for path in args.ab]
        if base.train.target_train_loss is None and any(BUDGET in arm for arm in arms):
            raise UserError(f"an A/B arm sets {BUDGET}, but track {self.track(args, scale).name} fixes the budget")
        points = interleave(*arms, runs, defaults=base.flatten())
        for _, point in points:
            apply_params(base, point)  # an unknown field or a bad value fails here, before Ray starts
        return points

    def grid(self, args, base, scale):
        points = self.points(args, base, scale)
        return {"point": [p for _, p in points]} if args.ab else {SEED: [p[SEED] for _, p in points]}

    def run(self, args, scale) -> str:
        from blueberry.platform.leaderboard import record_claim
        from blueberry.platform.sweep import run_sweep
        from blueberry.platform.tracking import client

        chosen, cfg = self.track(args, scale), self.sweep_config(args, scale)
        if args.submit and chosen.name not in TRACKS:
            raise UserError(f"track {chosen.name} is not on the board: --submit needs one of {', '.join(TRACKS)}")
        points = self.points(args, cfg.base, scale)
        notes = {CANDIDATE: args.notes or "", BASELINE: args.notes or ""}
        if args.ab and args.notes is None:  # what the candidate changes, by default
            baseline, candidate = read_arm(args.ab[0]), read_arm(args.ab[1])
            notes[CANDIDATE] = ", ".join(f"{k}={v}" for k, v in candidate.items() if baseline.get(k) != v)
        result = run_sweep(cfg)
        claim = record_claim(client(result.tracking_uri), result.experiment_id, result.trials, cfg.base, chosen,
                             points, cfg.name, args.author, notes, args.submit)
        lines = [summary(cfg, result), f"track        {chosen.name}: {chosen.goal}"]
        lines += (ab_lines(chosen, claim.verdict, claim.arms) if args.ab else
                  repeatability_lines(chosen, claim.arms[CANDIDATE], cfg.base.train.target_train_loss))
        if claim.submitted:
            lines.append(f"submitted    claim {cfg.name} on track {chosen.name}; the board: blueberry-board "
                         f"--tracking-uri {result.tracking_uri} --experiment {cfg.experiment} --out LEADERBOARD.md")
        return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(Speedrun().main())
