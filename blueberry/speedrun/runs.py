"""One speedrun run as the board sees it, the tags that make a run one, and which runs count for a track.

Every run of `studies/speedrun.py` carries the `TAGS` below in MLflow (its track, the claim it
belongs to, its arm in an A/B, author, notes, git commit, the model's FLOPs per token), and the
hardware it ran on (`hardware.gpu`, `hardware.cpu`, `hardware.torch`, `hardware.cuda`, which the
MLflow tracker sets from the machine that trained). `blueberry.platform.leaderboard` reads them into
`Run`s.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from blueberry.speedrun.tracks import Track

PREFIX = "speedrun."
TRACK_TAG = PREFIX + "track"
CLAIM_TAG = PREFIX + "claim"  # the runs submitted together: a repeatability study, or both arms of an A/B
ARM_TAG = PREFIX + "arm"  # candidate | baseline (an A/B's reference, measured on the same pool)
AUTHOR_TAG, NOTES_TAG, COMMIT_TAG = PREFIX + "author", PREFIX + "notes", PREFIX + "git_commit"
FLOPS_TAG = PREFIX + "flops_per_token"  # the model's training FLOPs per token (6N + attention), for model FLOPs
OVERRIDES_TAG = PREFIX + "overrides"  # the arm's config overrides, JSON
SUBMITTED_TAG = PREFIX + "submitted"  # ISO time the claim was submitted to the board; absent: not submitted
CANDIDATE, BASELINE = "candidate", "baseline"


@dataclass(frozen=True)
class Hardware:
    gpu: str = "unknown"  # "none" on a CPU-only machine
    cpu: str = "unknown"
    torch: str = "unknown"
    cuda: str = "unknown"

    @property
    def key(self) -> str:
        """What a time depends on: the GPU, or the CPU where there is none."""
        return self.gpu if self.gpu not in ("none", "unknown") else f"CPU {self.cpu}"

    def __str__(self) -> str:
        return f"{self.key}, torch {self.torch}" + (f", CUDA {self.cuda}" if self.cuda not in ("none", "") else "")


@dataclass(frozen=True)
class Run:
    """A finished (or failed) speedrun run: its tags and final metrics (`RunResult.metrics()` without
    `final/`: train_loss, val_loss, active_time_s, tokens, target_time_s, target_tokens, diverged)."""

    run_id: str
    track: str
    claim: str
    arm: str = CANDIDATE
    submitted: str | None = None  # ISO time; None: not submitted
    author: str = ""
    notes: str = ""
    commit: str = ""
    hardware: Hardware = field(default_factory=Hardware)
    metrics: dict[str, float] = field(default_factory=dict)
    target_train_loss: float | None = None  # the run's TrainConfig.target_train_loss
    batch_tokens: int | None = None  # tokens per optimizer step
    flops_per_token: float | None = None
    seed: int | None = None
    name: str = ""

    def value(self, metric: str) -> float | None:
        value = self.metrics.get(metric)
        return None if value is None or not math.isfinite(value) else float(value)

    @property
    def tokens(self) -> float | None:
        """Tokens the run's metric was measured at: to the target if it had one, else all it trained."""
        return self.value("target_tokens") if self.target_train_loss is not None else self.value("tokens")

    @property
    def model_flops(self) -> float | None:
        """Training FLOPs of the model over `tokens` (the FLOPs Marin scores speedruns by)."""
        tokens = self.tokens
        return self.flops_per_token * tokens if self.flops_per_token and tokens else None


def invalid_reason(track: Track, run: Run) -> str | None:
    """Why `run` does not count for `track`, or None if it does."""
    if run.value("diverged"):
        return "diverged"
    if track.target_train_loss is not None:
        if run.target_train_loss != track.target_train_loss:
            return f"its target train loss was {run.target_train_loss}, not {track.target_train_loss:g}"
        if run.value("target_time_s") is None:
            return f"did not reach train loss {track.target_train_loss:g}"
    else:
        if run.target_train_loss is not None:
            return f"stopped at a target train loss ({run.target_train_loss:g}); the track trains a fixed budget"
        # A budget is trained to its last whole step: within one step of it (all of it if the step is unknown).
        tokens, step = run.value("tokens"), run.batch_tokens
        if tokens is None or (tokens <= track.budget_tokens - step if step else tokens < track.budget_tokens):
            return f"trained {tokens or 0:,.0f} tokens of the track's {track.budget_tokens:,}"
    if run.value(track.metric) is None:
        return f"has no {track.metric}"
    return None


def split_valid(track: Track, runs: list[Run]) -> tuple[list[Run], list[str]]:
    """(the runs that count, why each other one does not: "run NAME: reason")."""
    valid, reasons = [], []
    for run in runs:
        reason = invalid_reason(track, run)
        if reason is None:
            valid.append(run)
        else:
            reasons.append(f"{run.name or run.run_id[:8]}: {reason}")
    return valid, reasons


def run_tags(track: str, claim: str, arm: str, author: str, notes: str, commit: str, overrides: dict,
             flops_per_token: float) -> dict[str, str]:
    """The tags a speedrun study gives each of its runs (the hardware tags come from the tracker)."""
    return {TRACK_TAG: track, CLAIM_TAG: claim, ARM_TAG: arm, AUTHOR_TAG: author, NOTES_TAG: notes,
            COMMIT_TAG: commit, OVERRIDES_TAG: json.dumps(overrides, sort_keys=True), FLOPS_TAG: repr(flops_per_token)}
