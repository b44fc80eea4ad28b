"""Speedrun tracks as data: what a track measures, which way is better, and how many runs a claim needs.

The lab's tracks, as its leaderboard runs them on one RTX 4090 (../shared/seeds: the rules of the
old project's board): the fastest active training time for 8M, 20M and 100M tokens, the fastest
time to a smoothed train loss of 4.5 and of 3.5, and the lowest validation loss after 1B tokens (the
marathon). Active time excludes setup and compilation (`blueberry.core.loop`). The token budgets are
whole steps of the record's batch (8 x 2048 = 16,384 tokens): 489, 1,221 and 6,104 steps; the
marathon's 1B is what `studies/marathon.py` trains. The minimum of five runs is the lab's
repeatability list; the marathon, 2h43m a run, asks for three.

Two small tracks let a laptop try the machinery with the `tiny` preset on the built-in corpus:
`cpu-loss` at the study's cpu scale and `smoke-loss` at its smoke scale (the tests').
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from blueberry.errors import UserError

# A track's metric is one of a run's final metrics (`RunResult.metrics()` without `final/`): how the
# board names it, its unit, and whether it depends on the hardware (times do; losses barely).
METRICS: dict[str, tuple[str, str, bool]] = {
    "active_time_s": ("active time", "s", True),
    "target_time_s": ("time to target", "s", True),
    "val_loss": ("val loss", "", False),
    "train_loss": ("train loss", "", False),
}
Direction = Literal["min", "max"]


@dataclass(frozen=True)
class Track:
    """One leaderboard: a metric to beat under a fixed token budget or to a target train loss."""

    name: str
    goal: str  # one line, as the board's heading says it
    metric: str  # a key of METRICS
    min_runs: int  # a claim needs at least this many valid runs
    direction: Direction = "min"
    budget_tokens: int | None = None  # a budget track: every run trains this many tokens (to a whole step)
    target_train_loss: float | None = None  # a target track: runs stop at this smoothed train loss
    schedule_tokens: int | None = None  # a target track's default `train_tokens` (the LR schedule's length)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise UserError(f"track {self.name!r}: metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if self.direction not in ("min", "max"):
            raise UserError(f"track {self.name!r}: direction must be min or max, got {self.direction!r}")
        if self.min_runs < 2:
            raise UserError(f"track {self.name!r}: min_runs must be at least 2 (a t-test needs a spread)")
        if (self.budget_tokens is None) == (self.target_train_loss is None):
            raise UserError(f"track {self.name!r} needs exactly one of a token budget or a target train loss")
        if self.target_train_loss is not None and (self.schedule_tokens is None or self.target_train_loss <= 0):
            raise UserError(f"track {self.name!r}: a target track needs a positive target and schedule_tokens")
        if self.target_train_loss is not None and self.metric != "target_time_s":
            raise UserError(f"track {self.name!r}: a target track measures target_time_s")

    @property
    def train_tokens(self) -> int:
        """What a run of this track sets `TrainConfig.train_tokens` to."""
        return self.budget_tokens if self.budget_tokens is not None else self.schedule_tokens

    @property
    def metric_name(self) -> str:
        return METRICS[self.metric][0]

    @property
    def unit(self) -> str:
        return METRICS[self.metric][1]

    @property
    def hardware_bound(self) -> bool:
        """Whether the metric is a time, so only runs on the same hardware compare."""
        return METRICS[self.metric][2]

    def better(self, a: float, b: float) -> bool:
        """Whether `a` is better than `b` on this track."""
        return a < b if self.direction == "min" else a > b


STEP = 8 * 2048  # the record's batch in tokens

TRACKS: dict[str, Track] = {t.name: t for t in (
    Track("8m", "fastest active time to train 8,011,776 tokens", "active_time_s", 5, budget_tokens=489 * STEP),
    Track("20m", "fastest active time to train 20,004,864 tokens", "active_time_s", 5, budget_tokens=1221 * STEP),
    Track("100m", "fastest active time to train 100,007,936 tokens", "active_time_s", 5, budget_tokens=6104 * STEP),
    Track("loss-4.5", "fastest active time to a smoothed train loss of 4.5", "target_time_s", 5,
          target_train_loss=4.5, schedule_tokens=1221 * STEP),  # the reference passes 4.5 between 8M and 20M
    Track("loss-3.5", "fastest active time to a smoothed train loss of 3.5", "target_time_s", 5,
          target_train_loss=3.5, schedule_tokens=1_000_000_000),  # 100M tokens reach 3.67
    Track("1b", "lowest validation loss after 1,000,000,000 tokens (the marathon)", "val_loss", 3,
          budget_tokens=1_000_000_000),
    Track("cpu-loss", "lowest validation loss after 409,600 tokens (a CPU track: `tiny` on the built-in corpus)",
          "val_loss", 5, budget_tokens=409_600),
    Track("smoke-loss", "lowest validation loss after 40,960 tokens (the smoke scale; for tests)", "val_loss", 3,
          budget_tokens=40_960),
)}
LAB_TRACKS = ("8m", "20m", "100m", "loss-4.5", "loss-3.5", "1b")


def track(name: str) -> Track:
    """The track called `name`; a one-line error naming the known ones otherwise."""
    try:
        return TRACKS[name]
    except KeyError:
        raise UserError(f"unknown track {name!r}: use one of {', '.join(TRACKS)}") from None


def track_for_target(target_train_loss: float, schedule_tokens: int) -> Track:
    """The track of a target train loss: a known one (`loss-4.5`), else one made for it (with
    `schedule_tokens`), which the board does not list."""
    for known in TRACKS.values():
        if known.target_train_loss == target_train_loss:
            return known
    return Track(f"loss-{target_train_loss:g}", f"fastest active time to a smoothed train loss of "
                 f"{target_train_loss:g}", "target_time_s", 5, target_train_loss=target_train_loss,
                 schedule_tokens=schedule_tokens)
