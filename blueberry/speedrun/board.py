"""The leaderboard: submitted claims judged in order into records and refusals, written as Markdown.

A claim is the runs submitted together under one `speedrun.claim` tag: a repeatability study's runs,
or an A/B's candidate arm with its baseline arm. Claims on a track are judged in the order they were
submitted. A claim becomes the track's next record when at least `Track.min_runs` of its runs are
valid (`runs.invalid_reason`) and beat the reference with a one-sided Welch t-test at p < 0.01
(`stats.accepted`). The reference is:

- the claim's own baseline arm, for an A/B: both arms ran interleaved on the same pool, so machine
  noise fell on both, as the lab's rule "measure the baseline on your hardware" asks;
- else the current record's runs; on a time track only runs on the same hardware compare, so a claim
  from other hardware is refused with the advice to run an A/B;
- nothing, for the first claim on a track: it needs only its minimum number of valid runs.

Every refusal says why.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from blueberry.speedrun.runs import BASELINE, Run, split_valid
from blueberry.speedrun.stats import ALPHA, Welch, accepted, welch_test
from blueberry.speedrun.tracks import LAB_TRACKS, TRACKS, Track


@dataclass(frozen=True)
class Claim:
    id: str
    track: str
    submitted: str  # ISO time: the order claims are judged in
    runs: tuple[Run, ...]  # the candidate's (or a repeatability study's) runs
    baseline: tuple[Run, ...] = ()  # an A/B's reference arm

    def _one(self, attribute: str) -> str:
        values = dict.fromkeys(str(getattr(run, attribute)) for run in self.runs if getattr(run, attribute))
        return "; ".join(values)

    @property
    def author(self) -> str:
        return self._one("author")

    @property
    def notes(self) -> str:
        return self._one("notes")

    @property
    def commit(self) -> str:
        dirty = "+dirty"
        short = (run.commit[:10] + (dirty if run.commit.endswith(dirty) else "") for run in self.runs if run.commit)
        return "; ".join(dict.fromkeys(short))

    @property
    def hardware(self) -> str:
        return self._one("hardware")


@dataclass(frozen=True)
class Verdict:
    """What the board made of one claim."""

    claim: Claim
    accepted: bool
    reason: str
    valid: tuple[Run, ...]
    invalid: tuple[str, ...]  # "run: why it does not count"
    test: Welch | None  # against the reference; None for a first record or a claim refused before testing
    against: str  # what it was compared with, in words
    number: int | None = None  # its record number, if accepted


@dataclass(frozen=True)
class TrackBoard:
    track: Track
    verdicts: tuple[Verdict, ...]  # in submission order

    @property
    def records(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.accepted]

    @property
    def refused(self) -> list[Verdict]:
        return [v for v in self.verdicts if not v.accepted]


def claims(runs: Iterable[Run]) -> list[Claim]:
    """The submitted runs grouped into claims (by claim id and track), oldest submission first."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        if run.submitted:
            groups.setdefault((run.claim, run.track), []).append(run)
    out = []
    for (claim_id, track_name), members in groups.items():
        members.sort(key=lambda r: (r.seed if r.seed is not None else -1, r.run_id))
        out.append(Claim(claim_id, track_name, min(r.submitted for r in members),
                         tuple(r for r in members if r.arm != BASELINE),
                         tuple(r for r in members if r.arm == BASELINE)))
    return sorted(out, key=lambda c: (c.submitted, c.id))


def values(runs: Sequence[Run], metric: str) -> list[float]:
    return [run.value(metric) for run in runs]


def hardware_keys(runs: Sequence[Run]) -> set[str]:
    return {run.hardware.key for run in runs}


def judge(track: Track, track_claims: Sequence[Claim]) -> TrackBoard:
    """Each claim on `track` accepted as the next record or refused, in submission order."""
    verdicts: list[Verdict] = []
    record: Verdict | None = None
    for claim in sorted(track_claims, key=lambda c: (c.submitted, c.id)):
        valid, invalid = split_valid(track, list(claim.runs))
        test, against = None, "no earlier record"
        if claim.baseline:
            reference, reference_invalid = split_valid(track, list(claim.baseline))
            invalid += [f"baseline {reason}" for reason in reference_invalid]
            against = f"its baseline arm ({len(reference)} runs on the same pool)"
            test = welch_test(values(valid, track.metric), values(reference, track.metric), track.direction)
            ok, reason = accepted(test, track.min_runs)
        elif record is None:
            ok = len(valid) >= track.min_runs
            reason = ("the track's first record" if ok else
                      f"{len(valid)} valid run{'s' if len(valid) != 1 else ''}; the track needs {track.min_runs}")
        else:
            against = f"record #{record.number}"
            mine, theirs = hardware_keys(valid), hardware_keys(record.valid)
            if valid and track.hardware_bound and mine != theirs:
                ok, reason = False, (f"ran on {', '.join(sorted(mine))} but record #{record.number} on "
                                     f"{', '.join(sorted(theirs))}: times on different hardware do not compare; "
                                     f"run an A/B against the record's config there (studies/speedrun.py --ab)")
            else:
                test = welch_test(values(valid, track.metric), values(record.valid, track.metric), track.direction)
                ok, reason = accepted(test, track.min_runs)
        if not ok and test is not None and not math.isnan(test.p):
            reason += (f" (mean {format_value(track, test.mean_candidate)} against "
                       f"{format_value(track, test.mean_baseline)})")
        number = (record.number + 1 if record else 1) if ok else None
        verdict = Verdict(claim, ok, reason, tuple(valid), tuple(invalid), test, against, number)
        verdicts.append(verdict)
        if ok:
            record = verdict
    return TrackBoard(track, tuple(verdicts))


def build(runs: Iterable[Run], tracks: dict[str, Track] = TRACKS, only: Sequence[str] = ()
          ) -> tuple[list[TrackBoard], dict[str, int]]:
    """(a board per track: the lab's tracks, then any other with claims; the number of submitted runs
    per track name the board does not know)."""
    by_track: dict[str, list[Claim]] = {}
    for claim in claims(runs):
        by_track.setdefault(claim.track, []).append(claim)
    unknown = {name: sum(len(c.runs) + len(c.baseline) for c in cs) for name, cs in by_track.items()
               if name not in tracks}
    names = list(only) or [*LAB_TRACKS, *(n for n in tracks if n not in LAB_TRACKS and n in by_track)]
    return [judge(tracks[name], by_track.get(name, [])) for name in names], unknown


# Formatting.

def format_seconds(seconds: float) -> str:
    """As the lab's board writes times: 1m 28s 664ms, 2h 43m 5s, 12s 345ms."""
    if seconds >= 3600:
        h, rest = divmod(round(seconds), 3600)
        return f"{h}h {rest // 60}m {rest % 60}s"
    ms = round(seconds * 1000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{m}m {s}s {ms}ms" if m else f"{s}s {ms}ms"


def format_value(track: Track, value: float) -> str:
    return format_seconds(value) if track.unit == "s" else f"{value:.4f}"


def _mean(numbers: Iterable[float | None]) -> float | None:
    present = [x for x in numbers if x is not None]
    return float(np.mean(present)) if present else None


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|") or "-"


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def repeatability(track: Track, runs: Sequence[Run]) -> str:
    """n, mean and standard deviation of the track's metric over `runs`."""
    xs = values(runs, track.metric)
    if not xs:
        return "n = 0"
    std = format_value(track, float(np.std(xs, ddof=1))) if len(xs) > 1 else "-"
    return f"n = {len(xs)}, mean {format_value(track, float(np.mean(xs)))}, std {std}"


def difference(track: Track, test: Welch) -> str:
    """The candidate's mean minus the reference's, its interval and the one-sided p-value."""
    lo, hi = test.ci
    return (f"{test.difference:+.4g}{track.unit} ({test.relative:+.2%}), {test.confidence:.0%} CI "
            f"[{lo:+.4g}, {hi:+.4g}]{track.unit}, one-sided Welch p = {test.p:.2g}")


def comparison(track: Track, verdict: Verdict) -> str:
    """The test against the reference, in one line."""
    test = verdict.test
    if test is None or math.isnan(test.p):
        return verdict.against
    return (f"Against {verdict.against}, mean {format_value(track, test.mean_baseline)}: difference "
            f"{difference(track, test)}")


def render_track(board: TrackBoard) -> str:
    track = board.track
    better = "lower" if track.direction == "min" else "higher"
    lines = [f"## {track.name}: {track.goal}", "",
             f"Metric: {track.metric_name} ({better} is better); a claim needs {track.min_runs} valid runs.", ""]
    records = board.records
    if not records:
        lines += ["No records yet.", ""]
    else:
        time_key = "target_time_s" if track.target_train_loss is not None else "active_time_s"
        lines += ["| # | date | train loss | val loss | time | tokens | model FLOPs | author | notes | hardware | "
                  "commit | repeatability |",
                  "| :-- | :-- | --: | --: | --: | --: | --: | :-- | :-- | :-- | :-- | :-- |"]
        for v in records:
            runs, claim = v.valid, v.claim
            time = _mean(r.value(time_key) for r in runs)
            lines.append("| " + " | ".join(_cell(x) for x in (
                v.number, claim.submitted[:10], _num(_mean(r.value("train_loss") for r in runs), ".4f"),
                _num(_mean(r.value("val_loss") for r in runs), ".4f"), "-" if time is None else format_seconds(time),
                _num(_mean(r.tokens for r in runs), ",.0f"), _num(_mean(r.model_flops for r in runs), ".3e"),
                claim.author, claim.notes, claim.hardware, claim.commit, repeatability(track, runs))) + " |")
        lines += ["", "Repeatability: each record's runs, and the test that accepted it.", ""]
        for v in records:
            runs = ", ".join(
                f"{format_value(track, r.value(track.metric))}" + (f" (seed {r.seed})" if r.seed is not None else "")
                for r in v.valid)
            lines.append(f"- **#{v.number}** `{v.claim.id}`: {repeatability(track, v.valid)}; runs: {runs}. "
                         f"{comparison(track, v) if v.test else v.reason.capitalize()}.")
        lines.append("")
    refused = board.refused
    if refused:
        lines += ["Refused claims:", "", "| submitted | claim | author | notes | valid runs | why |",
                  "| :-- | :-- | :-- | :-- | --: | :-- |"]
        for v in refused:
            why = v.reason + (f"; not counted: {'; '.join(v.invalid)}" if v.invalid else "")
            lines.append("| " + " | ".join(_cell(x) for x in (
                v.claim.submitted[:10], f"`{v.claim.id}`", v.claim.author, v.claim.notes,
                f"{len(v.valid)} of {len(v.claim.runs)}", why)) + " |")
        lines.append("")
    return "\n".join(lines)


RULE = ("A claim is the runs submitted together (`python studies/speedrun.py --submit`, or an A/B with "
        "`--ab BASELINE.json CANDIDATE.json --submit`). It becomes the track's next record when at least the "
        "track's minimum number of valid runs beat the reference with a one-sided Welch t-test at "
        f"p < {ALPHA:g} on the track's metric. The reference is the claim's own baseline arm for an A/B (both "
        "arms interleaved on the same machines), else the current record's runs, which on a time track must "
        "have run on the same hardware; the first claim on a track needs only its minimum number of runs. "
        "Each value in a table is the mean over the record's valid runs; model FLOPs are the model's training "
        "FLOPs per token times the tokens trained (to the target, on a target track). See "
        "[docs/speedrun.md](speedrun.md).")


def render(boards: Sequence[TrackBoard], source: str, generated: str, unknown: dict[str, int] | None = None) -> str:
    """The whole leaderboard as Markdown; `source` says where the runs came from, `generated` when."""
    parts = ["# Speedrun leaderboard", "", f"Generated by `blueberry-board` from {source} on {generated}.", "",
             RULE, ""]
    parts += [render_track(board) for board in boards]
    if unknown:
        parts += ["Submitted runs on tracks this board does not know (left out): "
                  + ", ".join(f"`{name}` ({n} runs)" for name, n in sorted(unknown.items())) + ".", ""]
    return "\n".join(parts).rstrip() + "\n"
