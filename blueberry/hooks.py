"""What the training loop tells the world, and the hooks that listen.

The loop calls every hook unconditionally; a hook that does nothing is a valid hook. Each hook owns
its own timing (`every=N`), so the loop has no `if tracking:` or `if step % ...` for anyone else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from blueberry.train import TrainState


@dataclass(frozen=True)
class StepInfo:
    """After each optimizer step."""

    step: int  # optimizer steps completed
    total_steps: int
    tokens: int  # training tokens seen so far
    loss: float  # this step's mean train loss
    smoothed_loss: float  # bias-corrected EMA of the train loss
    lr_multiplier: float
    tokens_per_s: float  # over the active time so far
    active_time_s: float
    mfu: float | None


@dataclass(frozen=True)
class EvalInfo:
    step: int
    tokens: int
    loss: float
    accuracy: float
    perplexity: float


@dataclass(frozen=True)
class RunResult:
    """A finished run's outcome."""

    steps: int
    tokens: int
    train_loss: float  # smoothed, at the end
    val: EvalInfo | None
    active_time_s: float  # training only: compile warm-up and evaluation excluded
    eval_time_s: float
    setup_time_s: float  # model build, compile warm-up
    tokens_per_s: float
    mfu: float | None
    diverged: bool = False
    reached_target: bool = False
    target_tokens: int | None = None  # tokens seen when target_train_loss was reached
    target_time_s: float | None = None  # active time when it was reached
    params: dict[str, int] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Final numbers as flat metrics (what trackers and Tune record)."""
        out: dict[str, float] = {
            "final/train_loss": self.train_loss, "final/tokens": self.tokens, "final/steps": self.steps,
            "final/active_time_s": self.active_time_s, "final/tokens_per_s": self.tokens_per_s,
            "final/diverged": float(self.diverged),
        }
        if self.val is not None:
            out |= {"final/val_loss": self.val.loss, "final/val_accuracy": self.val.accuracy,
                    "final/val_perplexity": self.val.perplexity}
        if self.mfu is not None:
            out["final/mfu"] = self.mfu
        if self.target_tokens is not None and self.target_time_s is not None:
            out |= {"final/target_tokens": self.target_tokens, "final/target_time_s": self.target_time_s}
        return out


class Hook:
    """Base hook: every method does nothing; override what you need."""

    def on_start(self, state: TrainState) -> None:
        """Before the first step; `state` may be restored here (checkpoint resume)."""

    def on_step(self, info: StepInfo, state: TrainState) -> None:
        """After each optimizer step."""

    def on_eval(self, info: EvalInfo, state: TrainState) -> None:
        """After each validation."""

    def on_end(self, result: RunResult, state: TrainState) -> None:
        """After the run, diverged or not."""


class Hooks(Hook):
    """Several hooks called in order, as one."""

    def __init__(self, hooks: list[Hook] | tuple[Hook, ...] = ()) -> None:
        self.hooks = list(hooks)

    def on_start(self, state: TrainState) -> None:
        for h in self.hooks:
            h.on_start(state)

    def on_step(self, info: StepInfo, state: TrainState) -> None:
        for h in self.hooks:
            h.on_step(info, state)

    def on_eval(self, info: EvalInfo, state: TrainState) -> None:
        for h in self.hooks:
            h.on_eval(info, state)

    def on_end(self, result: RunResult, state: TrainState) -> None:
        for h in self.hooks:
            h.on_end(result, state)


class History(Hook):
    """Keeps every logged step and evaluation in memory (for plots and tests)."""

    def __init__(self, every: int = 1) -> None:
        self.every = every
        self.steps: list[StepInfo] = []
        self.evals: list[EvalInfo] = []

    def on_step(self, info: StepInfo, state: Any) -> None:
        if info.step % self.every == 0 or info.step == info.total_steps:
            self.steps.append(info)

    def on_eval(self, info: EvalInfo, state: Any) -> None:
        self.evals.append(info)
