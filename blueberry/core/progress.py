"""A terminal progress bar as a hook."""

from __future__ import annotations

from tqdm import tqdm

from blueberry.core.events import EvalInfo, RunResult, StepInfo
from blueberry.core.hooks import Hook
from blueberry.core.state import TrainState


class ProgressBar(Hook):
    def __init__(self, every: int = 1) -> None:
        self.every = every
        self.bar: tqdm | None = None
        self.val_loss: float | None = None

    def on_step(self, info: StepInfo, state: TrainState) -> None:
        if self.bar is None:
            self.bar = tqdm(total=info.total_steps, initial=info.step - 1, unit="step", dynamic_ncols=True)
        postfix = {"loss": f"{info.smoothed_loss:.3f}", f"{state.task.unit}/s": f"{info.tokens_per_s:,.0f}"}
        if self.val_loss is not None:
            postfix["val"] = f"{self.val_loss:.3f}"
        if info.mfu is not None:
            postfix["mfu"] = f"{info.mfu:.1%}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(info.step - self.bar.n)

    def on_eval(self, info: EvalInfo, state: TrainState) -> None:
        self.val_loss = info.loss

    def on_end(self, result: RunResult, state: TrainState) -> None:
        if self.bar is not None:
            self.bar.close()
