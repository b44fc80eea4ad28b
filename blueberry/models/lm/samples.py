"""Samples of what a run writes, kept with the run: at each evaluation, continuations of fixed prompts
handed to the tracker as a text file (`samples/step-00000100.txt`, an MLflow artifact for
`blueberry-train`), the lab's "Inference Hall of Fame" next to the loss curve. Greedy, so the samples
of two runs (or two steps) compare like for like."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from blueberry.core.events import EvalInfo
from blueberry.core.hooks import Hook
from blueberry.core.state import TrainState
from blueberry.models.lm.generate import Generator, Sampling, continuation

DEFAULT_PROMPTS = ("Once upon a time", "The most important thing to know about", "In the beginning")


class SampleLogger(Hook):
    """Hands `log_text(text, artifact_file)` (the tracker's) each evaluation's samples."""

    def __init__(self, tokenizer: Any, log_text: Any, prompts: Sequence[str] = DEFAULT_PROMPTS,
                 max_new_tokens: int = 48) -> None:
        self.tokenizer, self.log_text, self.prompts = tokenizer, log_text, list(prompts)
        self.max_new_tokens = max_new_tokens

    def samples(self, model: torch.nn.Module) -> str:
        was_training = model.training
        model.eval()
        try:
            engine = Generator(model, eos_id=self.tokenizer.eos_id)
            ids = self.tokenizer.encode_batch(self.prompts)
            new = engine.generate(ids, min(self.max_new_tokens, model.cfg.seq_len // 2), Sampling(temperature=0))
        finally:
            model.train(was_training)
        return "\n\n".join(f"{prompt}{continuation(self.tokenizer, prompt_ids, out)}"
                           for prompt, prompt_ids, out in zip(self.prompts, ids, new))

    def on_eval(self, info: EvalInfo, state: TrainState) -> None:
        loss = info.metrics.get("loss", float("nan"))
        header = f"step {info.step}, {info.tokens:,} {state.task.unit}, val loss {loss:.4f}"
        self.log_text(f"{header}\n\n{self.samples(state.model)}\n", f"samples/step-{info.step:08d}.txt")
