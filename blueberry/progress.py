"""A terminal progress bar as a hook."""

from __future__ import annotations

from typing import Any

from tqdm import tqdm

from blueberry.hooks import EvalInfo, Hook, RunResult, StepInfo


class ProgressBar(Hook):
    def __init__(self, every: int = 1) -> None:
        self.every = every
        self.bar: tqdm | None = None
        self.val_loss: float | None = None

    def on_step(self, info: StepInfo, state: Any) -> None:
        if self.bar is None:
            self.bar = tqdm(total=info.total_steps, initial=info.step - 1, unit="step", dynamic_ncols=True)
        if info.step % self.every == 0 or info.step == info.total_steps:
            postfix = {"loss": f"{info.smoothed_loss:.3f}", "tok/s": f"{info.tokens_per_s:,.0f}"}
            if self.val_loss is not None:
                postfix["val"] = f"{self.val_loss:.3f}"
            if info.mfu is not None:
                postfix["mfu"] = f"{info.mfu:.1%}"
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(info.step - self.bar.n)

    def on_eval(self, info: EvalInfo, state: Any) -> None:
        self.val_loss = info.loss

    def on_end(self, result: RunResult, state: Any) -> None:
        if self.bar is not None:
            self.bar.close()
