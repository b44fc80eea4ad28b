"""Blueberry runs as a model of EleutherAI's lm-evaluation-harness (`lm-eval`, v0.4): any harness
task scores a trained run.

    blueberry-eval harness --model blueberry --model_args run=NAME,runs_dir=runs --tasks hellaswag
    blueberry-eval harness --model blueberry --model_args checkpoint=PATH --tasks arc_easy --limit 100

lm-eval finds models in its own registry and has no plugin entry point, so the `lm_eval` command
alone does not know `blueberry`: `blueberry-eval harness ARGS` registers it and then runs lm-eval's
own command line on ARGS (`lm-eval run`'s flags). From Python, pass an instance instead:
`lm_eval.simple_evaluate(model=BlueberryLM(LMScorer(model, tokenizer)), tasks=[...])`.

The adapter is a `TemplateLM`: lm-eval turns (context, continuation) text into tokens its own way
(`_encode_pair`) and this class scores the tokens with the scorer the run's kind gives
(`Evaluate.scorer`: for the language model, the one `blueberry-eval` uses); a kind that does not model
text is refused in one line.

`lm_eval` is imported here at the top, and this module only where the harness is used, so Blueberry
works without lm-eval installed (`pip install 'blueberry-llm[eval]'` adds it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from blueberry.errors import UserError
from blueberry.evals.validation import evaluation_for
from blueberry.inference.run import open_run

DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_NEW_TOKENS = 256  # lm-eval's own default for `max_gen_toks`


class Scorer(Protocol):
    """What the adapter needs (`blueberry.models.lm.eval.LMScorer` is one)."""

    tokenizer: Any
    max_length: int

    def encode(self, text: str) -> list[int]: ...

    def loglikelihood_tokens(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]
                             ) -> list[tuple[float, bool]]: ...

    def generate_until(self, context: str, until: Sequence[str] = (), max_new_tokens: int = 256) -> str: ...


@register_model("blueberry")
class BlueberryLM(TemplateLM):
    """A Blueberry language model behind lm-eval's `LM` interface."""

    def __init__(self, scorer: Scorer) -> None:
        super().__init__()
        self.scorer = scorer

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> BlueberryLM:
        return cls.create_from_arg_obj(lm_utils.simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None) -> BlueberryLM:
        """`run=NAME[,runs_dir=DIR]` or `checkpoint=PATH`, with `device=` and `tokenizer=` as for
        `blueberry-eval`; lm-eval's `--batch_size` and `--device` arrive in `additional_config`."""
        args = {**arg_dict, **{k: v for k, v in (additional_config or {}).items() if v is not None}}
        unknown = set(args) - {"run", "runs_dir", "checkpoint", "device", "tokenizer", "batch_size", "max_batch_size"}
        if unknown:
            raise UserError(f"unknown --model_args for blueberry: {', '.join(sorted(unknown))} (it takes run, "
                            "runs_dir, checkpoint, device, tokenizer)")
        if (args.get("run") is None) == (args.get("checkpoint") is None):
            raise UserError("--model_args for blueberry name one of run=NAME (with runs_dir=DIR) or checkpoint=PATH")
        batch = args.get("batch_size")
        batch_size = int(batch) if isinstance(batch, int) or str(batch).isdigit() else DEFAULT_BATCH_SIZE
        device = str(args.get("device") or "cpu")
        if "device" not in arg_dict and device.startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"  # lm-eval's --device defaults to cuda; its HFLM falls back to the CPU the same way
        run = open_run(run=str(args["run"]) if args.get("run") is not None else None,
                       runs_dir=Path(str(args.get("runs_dir", "runs"))),
                       checkpoint=Path(str(args["checkpoint"])) if args.get("checkpoint") else None,
                       device=device, tokenizer=args.get("tokenizer"))
        scorer = evaluation_for(run.task).scorer(run, batch_size)
        if scorer is None:
            raise UserError(f"{run.name} is a {run.task.kind!r} model, which does not score text: lm-evaluation-harness "
                            "evaluates language models")
        return cls(scorer)

    @property
    def eot_token_id(self) -> int:
        return self.scorer.tokenizer.eos_id

    @property
    def max_length(self) -> int:
        return self.scorer.max_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.scorer.encode(string)

    def tok_decode(self, tokens: list[int], **kwargs: Any) -> str:
        return self.scorer.tokenizer.decode(tokens)

    def _loglikelihood_tokens(self, requests: list[tuple[tuple[str, str], list[int], list[int]]],
                              **kwargs: Any) -> list[tuple[float, bool]]:
        results = self.scorer.loglikelihood_tokens([(context, continuation) for _, context, continuation in requests])
        for (text, _, _), result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", text, result)
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Whole-text log-likelihoods over disjoint windows of `max_length` tokens, as lm-eval's HFLM."""
        totals = []
        for (text,) in (request.args for request in requests):
            windows = [lm_utils.make_disjoint_window(w) for w in lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                context_len=1)]
            totals.append(sum(ll for ll, _ in self.scorer.loglikelihood_tokens(windows)))
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy decoding only: sampling settings in a task's `generation_kwargs` are not honoured."""
        out = []
        for context, kwargs in (request.args for request in requests):
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            out.append(self.scorer.generate_until(context, until, int(kwargs.get("max_gen_toks",
                                                                                 DEFAULT_MAX_NEW_TOKENS))))
        return out


def run_harness(argv: Sequence[str]) -> None:
    """lm-eval's own command line (`lm-eval run`'s flags) with `blueberry` registered."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm-eval", *argv]
    cli_evaluate()
