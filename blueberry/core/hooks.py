"""The hooks that listen to the training loop, and when they are called.

The loop calls every hook unconditionally; a hook that does nothing is a valid hook. A hook's
`on_step` cadence is set where it is registered: `Hooks().add(hook, every=N)` (or the hook's own
`every`, its default) calls it after every N-th optimizer step and after the last step of the
budget; `every=0` never calls it. No hook checks `step % N` itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from blueberry.core.events import EvalInfo, RunResult, StepInfo
from blueberry.core.state import TrainState

log = logging.getLogger(__name__)


class Hook:
    """Base hook: every method does nothing; override what you need."""

    every: int = 1  # default on_step cadence in optimizer steps (0: never); registration may override it

    def on_start(self, state: TrainState) -> None:
        """Before the first step; `state` may be restored here (checkpoint resume)."""

    def on_step(self, info: StepInfo, state: TrainState) -> None:
        """After every `every`-th optimizer step and after the budget's last step."""

    def on_eval(self, info: EvalInfo, state: TrainState) -> None:
        """After each validation."""

    def on_end(self, result: RunResult, state: TrainState) -> None:
        """After the run, diverged or not."""

    def on_abort(self, error: BaseException, state: TrainState) -> None:
        """When the run stops on an exception (Ctrl-C included), before it propagates: close what
        was opened. `state` may be mid-step, so it is not a state to save."""


def is_due(every: int, info: StepInfo) -> bool:
    """Whether a hook registered with `every` hears about this step."""
    return every > 0 and (info.step % every == 0 or info.step == info.total_steps)


class Hooks(Hook):
    """Several hooks called in order, as one, each on its own cadence."""

    def __init__(self, hooks: Iterable[Hook] = ()) -> None:
        self._entries: list[tuple[Hook, int]] = []
        for hook in hooks:
            self.add(hook)

    def add(self, hook: Hook, every: int | None = None) -> Hooks:
        """Register `hook`, its `on_step` called every `every` steps (default: the hook's own `every`)."""
        cadence = hook.every if every is None else every
        if cadence < 0:
            raise ValueError(f"every must be >= 0, got {cadence}")
        self._entries.append((hook, cadence))
        return self

    def on_start(self, state: TrainState) -> None:
        for hook, _ in self._entries:
            hook.on_start(state)

    def on_step(self, info: StepInfo, state: TrainState) -> None:
        for hook, every in self._entries:
            if is_due(every, info):
                hook.on_step(info, state)

    def on_eval(self, info: EvalInfo, state: TrainState) -> None:
        for hook, _ in self._entries:
            hook.on_eval(info, state)

    def on_end(self, result: RunResult, state: TrainState) -> None:
        for hook, _ in self._entries:
            hook.on_end(result, state)

    def on_abort(self, error: BaseException, state: TrainState) -> None:
        # Every hook gets its chance, and the error that stopped the run is the one that propagates:
        # a hook failing to clean up (a tracking server gone too) is logged, not raised over it.
        for hook, _ in self._entries:
            try:
                hook.on_abort(error, state)
            except Exception:
                log.exception("%s could not clean up after the run stopped", type(hook).__name__)


class History(Hook):
    """Keeps every step it hears of and every evaluation in memory (for plots and tests)."""

    def __init__(self, every: int = 1) -> None:
        self.every = every
        self.steps: list[StepInfo] = []
        self.evals: list[EvalInfo] = []

    def on_step(self, info: StepInfo, state: TrainState) -> None:
        self.steps.append(info)

    def on_eval(self, info: EvalInfo, state: TrainState) -> None:
        self.evals.append(info)
