"""What the training loop tells the world: after each step, after each evaluation, at the end.

Progress is counted in the task's unit (`Task.unit`); the fields keep the language model's name,
`tokens`, as MLflow histories and Tune results already do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class StepInfo:
    """After each optimizer step."""

    step: int  # optimizer steps completed
    total_steps: int
    tokens: int  # units seen so far
    loss: float  # this step's mean train loss
    smoothed_loss: float  # bias-corrected EMA of the train loss
    lr_multiplier: float
    tokens_per_s: float  # units per second over the active time so far
    active_time_s: float
    mfu: float | None


@dataclass(frozen=True)
class EvalInfo:
    """After each evaluation: the task's named metrics, also readable as attributes (`info.loss`)."""

    step: int
    tokens: int
    metrics: dict[str, float]

    def __getattr__(self, name: str) -> Any:
        # Only called for names that are not fields; dunder lookups (pickle, copy) must fail normally.
        if name.startswith("__") or name == "metrics":
            raise AttributeError(name)
        try:
            return self.metrics[name]
        except KeyError:
            raise AttributeError(f"the evaluation has no metric {name!r}; it has {', '.join(self.metrics)}") from None

    @property
    def loss(self) -> float:
        return self.metrics["loss"]


@dataclass(frozen=True)
class RunResult:
    """A finished run's outcome."""

    steps: int
    tokens: int  # units trained on
    train_loss: float  # smoothed, at the end
    val: EvalInfo | None
    active_time_s: float  # training only: compile warm-up and evaluation excluded
    eval_time_s: float
    setup_time_s: float  # model build, compile warm-up
    tokens_per_s: float
    mfu: float | None
    diverged: bool = False
    reached_target: bool = False
    target_tokens: int | None = None  # units seen when target_train_loss was reached
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
            out |= {f"final/val_{name}": value for name, value in self.val.metrics.items()}
        if self.mfu is not None:
            out["final/mfu"] = self.mfu
        if self.target_tokens is not None and self.target_time_s is not None:
            out |= {"final/target_tokens": self.target_tokens, "final/target_time_s": self.target_time_s}
        return out
