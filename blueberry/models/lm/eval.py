"""Scoring a language model on text: continuation log-likelihoods, multiple choice, bits per byte.

The multiple-choice rules are lm-evaluation-harness's (v0.4), so a task scored here and the same
task scored by `lm_eval` give the same numbers (tests/test_evaluation.py checks that they do):
- a request is (context, continuation); trailing spaces of the context move to the continuation;
  the continuation's tokens are those of `encode(context + continuation)` after `encode(context)`;
  an empty context is replaced by the EOS token (`TemplateLM._encode_pair`, `TemplateLM.loglikelihood`);
- context and continuation together are cut from the left to the model's `seq_len` + 1 tokens;
- a question's choices are scored as `query + " " + choice`; `acc` takes the choice with the largest
  summed log-likelihood, `acc_norm` the largest log-likelihood per character of the choice
  (`len(choice)`, the delimiter not counted: `ConfigurableTask.process_results`); ties go to the
  first choice (`np.argmax`).

Bits per byte follows nanochat's `evaluate_bpb`: the summed cross-entropy (nats) of the validation
targets over ln 2 x the UTF-8 bytes those targets stand for. Special tokens (EOS) stand for no text:
they count 0 bytes and their loss is left out, so the number does not depend on how documents were
separated or how many EOS tokens a tokenizer emits.

`core` is the DCLM paper's centring (Li et al. 2024, "DataComp-LM"), averaged over
whatever multiple-choice tasks were run: (acc_norm - chance) / (1 - chance), chance being the mean
of 1 / (number of choices) over the questions. It is CORE-style, not DCLM's 22-task CORE.

Everything here is plain PyTorch on a model and a tokenizer already in memory; where the questions
and data come from is `blueberry.models.lm.benchmarks`, and lm-eval's adapter `blueberry.evals.harness`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tokenizers import decoders

from blueberry.core.events import EvalInfo, StepInfo
from blueberry.core.hooks import Hook
from blueberry.core.state import TrainState
from blueberry.data.tokens import TokenShards
from blueberry.errors import UserError
from blueberry.models.lm.generate import Generator, Sampling

TARGET_DELIMITER = " "  # lm-eval's default `target_delimiter` between a query and its choice


class TextTokenizer(Protocol):
    """What scoring needs of a tokenizer (`blueberry.data.tokenizer.Tokenizer` is one)."""

    eos_id: int
    backend: Any  # a `tokenizers.Tokenizer`: its vocabulary says how many bytes each token stands for

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def decode(self, ids: list[int]) -> str: ...


class Question(Protocol):
    """A multiple-choice question: `query + " " + choice` is scored for each choice; `label` is right."""

    @property
    def query(self) -> str: ...

    @property
    def choices(self) -> Sequence[str]: ...

    @property
    def label(self) -> int: ...


class LMScorer:
    """Log-likelihoods of text under a causal language model whose forward returns `.logits` (B, T, V).

    Requests are scored in a fixed order (longest first, then by their tokens), so a set of requests is
    batched the same way whatever order it arrives in: this scorer and lm-eval driving it see the same
    floating-point results."""

    def __init__(self, model: nn.Module, tokenizer: TextTokenizer, batch_size: int = 16) -> None:
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.max_length: int = model.cfg.seq_len
        self.device = next(model.parameters()).device

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode_batch([text])[0]

    def encode_request(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context tokens, continuation tokens) as lm-eval's `TemplateLM.loglikelihood` makes them."""
        if context == "":
            tokens = self.encode(continuation)
            eos = self.tokenizer.eos_id
            return ([eos], tokens) if tokens[:1] != [eos] else (tokens[:1], tokens[1:])
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole, context_ids = self.tokenizer.encode_batch([context + continuation, context])
        return context_ids, whole[len(context_ids):]

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """(log P(continuation | context), whether greedy decoding would produce it) per request."""
        return self.loglikelihood_tokens([self.encode_request(c, x) for c, x in requests])

    @torch.no_grad()
    def loglikelihood_tokens(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[tuple[float, bool]]:
        """The same for requests already tokenized (lm-eval's `_loglikelihood_tokens`)."""
        rows: list[tuple[list[int], int]] = []  # (tokens cut to max_length + 1, continuation length)
        for context, continuation in requests:
            if not 0 < len(continuation) <= self.max_length:
                raise UserError(f"a continuation of {len(continuation)} tokens cannot be scored by a model with a "
                                f"context of {self.max_length} tokens")
            rows.append(([*context, *continuation][-(self.max_length + 1):], len(continuation)))
        order = sorted(range(len(rows)), key=lambda i: (-len(rows[i][0]), rows[i][0]))
        results: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                width = len(rows[chunk[0]][0]) - 1  # the longest row's inputs; the rest padded after their end
                inputs = torch.zeros((len(chunk), width), dtype=torch.long)
                for b, i in enumerate(chunk):
                    inputs[b, :len(rows[i][0]) - 1] = torch.tensor(rows[i][0][:-1])
                logits = self.model(inputs.to(self.device)).logits  # (B, T, V)
                for b, i in enumerate(chunk):
                    tokens, n = rows[i]
                    end = len(tokens) - 1  # causal attention: padding after `end` does not reach these positions
                    logprobs = logits[b, end - n:end].float().log_softmax(dim=-1)  # (n, V)
                    target = torch.tensor(tokens[-n:], device=logprobs.device)
                    picked = logprobs.gather(-1, target[:, None]).double().sum().item()
                    results[i] = (picked, bool((logprobs.argmax(dim=-1) == target).all()))
        finally:
            self.model.train(was_training)
        return results

    @torch.no_grad()
    def generate_until(self, context: str, until: Sequence[str] = (), max_new_tokens: int = 256) -> str:
        """Greedy continuation of `context`, cut before the first of `until` (or at EOS), decoded on the
        KV cache (`blueberry.models.lm.generate`). The context keeps its last tokens that leave room
        for `max_new_tokens` (at most half the model's context)."""
        ids, new = self.encode(context) or [self.tokenizer.eos_id], []
        engine = Generator(self.model, eos_id=self.tokenizer.eos_id)
        was_training = self.model.training
        self.model.eval()
        try:
            steps = min(max_new_tokens, self.max_length // 2)
            for step in engine.stream([ids], steps, Sampling(temperature=0)):
                token = int(step.tokens[0])
                if token == self.tokenizer.eos_id:
                    break
                new.append(token)
                if any(stop in self.tokenizer.decode(new) for stop in until):
                    break
        finally:
            self.model.train(was_training)
        text = self.tokenizer.decode(new)
        cut = min((text.index(stop) for stop in until if stop in text), default=len(text))
        return text[:cut]


@dataclass(frozen=True)
class ChoiceResult:
    acc: float
    acc_norm: float
    chance: float  # mean of 1 / (number of choices): what guessing scores
    questions: int


def multiple_choice(scorer: LMScorer, questions: Sequence[Question]) -> ChoiceResult:
    """acc and acc_norm of `questions` as lm-eval scores a `multiple_choice` task."""
    if not questions:
        raise UserError("a multiple-choice task has no questions to score")
    requests = [(q.query, TARGET_DELIMITER + choice) for q in questions for choice in q.choices]
    scores = iter(scorer.loglikelihood(requests))
    acc = acc_norm = chance = 0.0
    for q in questions:
        ll = np.array([next(scores)[0] for _ in q.choices])
        chars = np.array([float(len(choice)) for choice in q.choices])
        acc += float(np.argmax(ll) == q.label)
        acc_norm += float(np.argmax(ll / chars) == q.label)
        chance += 1.0 / len(q.choices)
    n = len(questions)
    return ChoiceResult(acc=acc / n, acc_norm=acc_norm / n, chance=chance / n, questions=n)


def centered(accuracy: float, chance: float) -> float:
    """DCLM's centred accuracy: 0 at chance, 1 at perfect."""
    return (accuracy - chance) / (1.0 - chance)


def core_score(results: Sequence[ChoiceResult]) -> float:
    """Mean centred acc_norm over multiple-choice tasks (CORE-style)."""
    return float(np.mean([centered(r.acc_norm, r.chance) for r in results]))


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-to-unicode table inverted: the character each byte is written as in a byte-level
    BPE vocabulary, back to that byte (Radford et al. 2019, `encoder.py` `bytes_to_unicode`)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {b: b for b in printable}, 0
    for b in range(256):
        if b not in chars:
            chars[b], extra = 256 + extra, extra + 1
    return {chr(c): b for b, c in chars.items()}


def token_byte_lengths(tokenizer: TextTokenizer, vocab_size: int | None = None) -> np.ndarray:
    """How many UTF-8 bytes of text each token id stands for (0 for special tokens such as EOS).

    Byte-level BPE vocabularies spell each byte as one character, so the count is exact even for a
    token holding part of a multi-byte character (decoding it alone would give U+FFFD, 3 bytes).
    Other vocabularies: `<0xNN>` byte-fallback tokens count 1, SentencePiece's "▁" counts as a space."""
    backend = tokenizer.backend
    size = max(vocab_size or 0, backend.get_vocab_size(with_added_tokens=True))
    lengths = np.zeros(size, dtype=np.int64)
    special = {i for i, added in backend.get_added_tokens_decoder().items() if added.special}
    byte_level = isinstance(backend.decoder, decoders.ByteLevel)
    alphabet = _byte_level_alphabet()
    for token, i in backend.get_vocab(with_added_tokens=True).items():
        if i in special:
            continue
        if byte_level and all(ch in alphabet for ch in token):
            lengths[i] = len(token)
        elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            lengths[i] = 1
        else:
            lengths[i] = len(token.replace("▁", " ").encode("utf-8"))
    return lengths


@torch.no_grad()
def bits_per_byte(model: nn.Module, data: TokenShards, token_bytes: np.ndarray, limit: int | None = None,
                  batch_size: int = 16) -> tuple[float, int]:
    """Bits per byte over the first `limit` validation sequences of `data` (all when None), and how
    many sequences that was. Cross-entropy per token in float32, sums in float64."""
    if data.seq_len > model.cfg.seq_len:
        raise UserError(f"the data's sequences of {data.seq_len} tokens exceed the model's context of "
                        f"{model.cfg.seq_len}: use data prepared with --seq-len {model.cfg.seq_len}")
    device = next(model.parameters()).device
    table = torch.as_tensor(token_bytes, device=device)
    nats, n_bytes, sequences = 0.0, 0, 0
    was_training = model.training
    model.eval()
    try:
        max_tokens = (limit if limit is not None else 2**40) * data.seq_len
        for batch in data.val_batches(batch_size, max_tokens):
            batch = batch.to(device)
            inputs, targets = batch[:, :-1], batch[:, 1:]
            logits = model(inputs).logits  # (B, T, V)
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
            counted = table[targets.flatten()]
            nats += loss[counted > 0].double().sum().item()
            n_bytes += int(counted.sum().item())
            sequences += len(batch)
    finally:
        model.train(was_training)
    if n_bytes == 0:
        raise UserError("the data holds no validation text to measure bits per byte on (no validation sequences)")
    return nats / (math.log(2) * n_bytes), sequences


EvalTask = Sequence[Question] | TokenShards  # a multiple-choice task, or token data to measure bits per byte on


def evaluate_tasks(model: nn.Module, tokenizer: TextTokenizer, tasks: Mapping[str, EvalTask], limit: int | None = None,
                   batch_size: int = 16) -> dict[str, float]:
    """Score `model` on named tasks: `{name}/acc` and `{name}/acc_norm` for each multiple-choice task,
    `{name}` (bits per byte) for token data, and `core` over the multiple-choice tasks.

    `limit` takes the first `limit` questions of each task, or validation sequences of token data."""
    scorer = LMScorer(model, tokenizer, batch_size)
    metrics: dict[str, float] = {}
    choices: list[ChoiceResult] = []
    for name, task in tasks.items():
        if isinstance(task, TokenShards):
            metrics[name], _ = bits_per_byte(model, task, token_byte_lengths(tokenizer, model.cfg.vocab_size), limit,
                                             batch_size)
            continue
        result = multiple_choice(scorer, task[:limit] if limit is not None else task)
        metrics[f"{name}/acc"], metrics[f"{name}/acc_norm"] = result.acc, result.acc_norm
        choices.append(result)
    if choices:
        metrics["core"] = core_score(choices)
    return metrics


class DownstreamEval(Hook):
    """Runs `evaluate_tasks` on the model being trained every `every` steps (and after the last step)
    and hands the metrics to `report` as an evaluation, so `MlflowTracker` logs them as `val/<name>`.

        hooks.add(DownstreamEval(tasks, tokenizer, report=tracker), every=500)

    With `every=0` it scores at each of the loop's own evaluations instead, right after the validation
    loss: a sweep's trials do this, so every report to Tune carries the downstream metrics of the same
    step (and so do the evaluations of a run stopped at a target loss).

    With several data-parallel processes only rank 0 evaluates (its model is whole); the others wait
    for it at the next step's gradient reduction."""

    def __init__(self, tasks: Mapping[str, EvalTask], tokenizer: TextTokenizer, report: Hook | None = None,
                 every: int = 1000, limit: int | None = None, batch_size: int = 16) -> None:
        self.tasks, self.tokenizer, self.report = tasks, tokenizer, report or Hook()
        self.every, self.limit, self.batch_size = every, limit, batch_size
        self.history: list[EvalInfo] = []

    def on_step(self, info: StepInfo, state: TrainState) -> None:
        self._score(info.step, info.tokens, state)

    def on_eval(self, info: EvalInfo, state: TrainState) -> None:
        if self.every == 0:
            self._score(info.step, info.tokens, state)

    def _score(self, step: int, tokens: int, state: TrainState) -> None:
        if not state.parallel.is_main:
            return
        metrics = evaluate_tasks(state.model, self.tokenizer, self.tasks, self.limit, self.batch_size)
        result = EvalInfo(step=step, tokens=tokens, metrics=metrics)
        self.history.append(result)
        self.report.on_eval(result, state)
