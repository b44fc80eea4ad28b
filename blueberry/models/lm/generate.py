"""Decoding a Blueberry language model: prefill then one token a step on a preallocated KV cache,
batched prompts of different lengths (left-padded, each decoding as it would alone), and sampling
(greedy, temperature, top-k, top-p) from a seeded generator, stopping at EOS or a token limit.

`CompiledGenerator` decodes the same way with the decode step compiled whole (a fixed-size cache, the position
as a tensor): CUDA graphs on a GPU, where an eager step is bound by launching a few hundred small kernels.

Token ids in, token ids out: the tokenizer is the caller's (`blueberry.inference.run`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from blueberry.errors import UserError
from blueberry.models.lm.model import Blueberry, KVCache, StaticKVCache


@dataclass(frozen=True)
class Sampling:
    """How the next token is picked. temperature 0 is greedy (argmax); top_k 0 and top_p 1 keep every
    token. top-k then top-p are applied to the temperature-scaled distribution, as transformers does."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise UserError(f"temperature must be >= 0 (0: greedy), got {self.temperature}")
        if self.top_k < 0:
            raise UserError(f"top-k must be >= 0 (0: off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top-p must be in (0, 1], got {self.top_p}")


# Which tokens decoding step `step` (0 for the first new token) may produce: a boolean mask (V,) or (B, V),
# or None for every token. Multimodal generation allows only image codes inside an image segment.
AllowedTokens = Callable[[int], torch.Tensor | None]


def sample(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None,
           allowed: torch.Tensor | None = None) -> torch.Tensor:
    """The next token of each row of `logits` (B, V): (B,) int64. With `allowed` (a boolean mask (V,) or
    (B, V)), only those tokens: the others are removed before temperature, top-k and top-p."""
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / sampling.temperature
    if sampling.top_k and sampling.top_k < logits.shape[-1]:
        kth = logits.topk(sampling.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1:
        # Keep the smallest set of most likely tokens whose probability reaches top_p (the first
        # token always stays: its mass before it is 0).
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        drop = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, mass_before >= sampling.top_p)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


@dataclass(frozen=True)
class Step:
    """One decoding step: the token each row produced (B,), which rows had already stopped before it
    (their token is padding, not output), and the logits (B, V) the tokens were drawn from."""

    tokens: torch.Tensor
    done_before: torch.Tensor
    logits: torch.Tensor


class Generator:
    """Decodes with one model; `stream` yields each step, `generate` returns the finished sequences."""

    def __init__(self, model: Blueberry, eos_id: int | None = None, pad_id: int = 0) -> None:
        self.model, self.eos_id, self.pad_id = model, eos_id, pad_id
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype

    def max_prompt_tokens(self, max_new_tokens: int) -> int:
        """The longest prompt that leaves room for `max_new_tokens` in the model's context."""
        room = self.model.cfg.seq_len - max_new_tokens
        if room < 1:
            raise UserError(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in the model's context "
                            f"of {self.model.cfg.seq_len} tokens: ask for fewer")
        return room

    @torch.inference_mode()
    def stream(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, sampling: Sampling = Sampling(),
               seed: int | None = None, allowed: AllowedTokens | None = None) -> Iterator[Step]:
        """Prefill the prompts (each truncated from the left to fit), then decode up to `max_new_tokens`
        steps, stopping early once every row has produced EOS; `allowed(step)` restricts each step's tokens."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise UserError("every prompt needs at least one token")
        room = self.max_prompt_tokens(max_new_tokens)
        prompts = [list(p)[-room:] for p in prompts]
        longest = max(len(p) for p in prompts)
        pad = torch.tensor([longest - len(p) for p in prompts], device=self.device)
        ids = torch.tensor([[self.pad_id] * (longest - len(p)) + p for p in prompts], device=self.device)
        cache = self._cache(len(prompts), longest + max_new_tokens, pad)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(seed)
        logits = self.model(ids, cache=cache, last_only=True).logits[:, -1]
        done = torch.zeros(len(prompts), dtype=torch.bool, device=self.device)
        filler = self.eos_id if self.eos_id is not None else self.pad_id  # what a stopped row is fed
        for step in range(max_new_tokens):
            mask = allowed(step) if allowed is not None else None
            token = torch.where(done, filler, sample(logits, sampling, generator, mask))
            yield Step(tokens=token, done_before=done.clone(), logits=logits)
            if step == max_new_tokens - 1:
                return
            if self.eos_id is not None:
                done |= token == self.eos_id
                if bool(done.all()):  # synchronises with the device: only where rows can stop
                    return
            logits = self._decode(token[:, None], cache)

    def _cache(self, batch_size: int, length: int, pad: torch.Tensor) -> KVCache | StaticKVCache:
        """An empty cache for `batch_size` rows of up to `length` slots, the first `pad[b]` of row b padding."""
        return KVCache(self.model.cfg, batch_size, length, pad, self.device, self.dtype)

    def _decode(self, tokens: torch.Tensor, cache: KVCache | StaticKVCache) -> torch.Tensor:
        """Logits (B, V) after one more token per row (B, 1), which the cache then holds too."""
        return self.model(tokens, cache=cache).logits[:, -1]

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, sampling: Sampling = Sampling(),
                 seed: int | None = None, allowed: AllowedTokens | None = None) -> list[list[int]]:
        """Each prompt's new tokens, up to and including its EOS."""
        # Kept on the device and read once at the end: reading each step's tokens would wait for the device
        # every step, and a GPU would idle while the next step is launched.
        tokens: list[torch.Tensor] = []
        done: list[torch.Tensor] = []
        for step in self.stream(prompts, max_new_tokens, sampling, seed, allowed):
            tokens.append(step.tokens)
            done.append(step.done_before)
        if not tokens:
            return [[] for _ in prompts]
        rows, stopped = torch.stack(tokens, dim=1).tolist(), torch.stack(done, dim=1).tolist()  # (B, steps) each
        return [[t for t, was_done in zip(row, row_done) if not was_done] for row, row_done in zip(rows, stopped)]


class CompiledGenerator(Generator):
    """Decodes exactly as `Generator` does, with the decode step compiled whole: the cache has a fixed size and
    counts its position in a tensor (`StaticKVCache`), so one graph serves every step of every call of a batch
    size and cache size, and `torch.compile(mode="reduce-overhead")` captures it as a CUDA graph on a GPU: a
    step is then one launch instead of a few hundred. The prefill runs eagerly.

    `max_len` fixes the cache at that many positions; by default each call gets the power of two (at least 64,
    at most the model's context) that holds its prompt and new tokens, so attention spans at most twice the
    slots it needs and calls of similar lengths share a graph. The first call of each batch size and cache size
    compiles (tens of seconds): keep the engine to reuse it. (TorchDynamo compiles at most
    `torch._dynamo.config.recompile_limit` such graphs, 8 by default, before it decodes eagerly.)"""

    def __init__(self, model: Blueberry, eos_id: int | None = None, pad_id: int = 0,
                 max_len: int | None = None) -> None:
        super().__init__(model, eos_id, pad_id)
        if max_len is not None and not 1 < max_len <= model.cfg.seq_len:
            raise UserError(f"a compiled engine's cache of {max_len} positions must hold 2 to the model's "
                            f"{model.cfg.seq_len}")
        self.max_len = max_len
        self._caches: dict[tuple[int, int], StaticKVCache] = {}
        self._step = torch.compile(super()._decode, mode="reduce-overhead", fullgraph=True, dynamic=False)

    def max_prompt_tokens(self, max_new_tokens: int) -> int:
        if self.max_len is None:
            return super().max_prompt_tokens(max_new_tokens)
        room = self.max_len - max_new_tokens
        if room < 1:
            raise UserError(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in the compiled "
                            f"engine's cache of {self.max_len} positions: ask for fewer")
        return room

    def cache_size(self, length: int) -> int:
        """The positions of the cache a call needing `length` of them decodes on."""
        if self.max_len is not None:
            return self.max_len
        return min(self.model.cfg.seq_len, max(64, 1 << (length - 1).bit_length()))

    def _cache(self, batch_size: int, length: int, pad: torch.Tensor) -> StaticKVCache:
        key = (batch_size, self.cache_size(length))
        if key not in self._caches:
            self._caches[key] = StaticKVCache(self.model.cfg, batch_size, key[1], self.device, self.dtype)
        cache = self._caches[key]
        cache.reset(pad)
        return cache

    def _decode(self, tokens: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
        # Each step is a new iteration for CUDA-graph trees, which reuse the output's memory at the next
        # replay: the copy keeps a step's logits (`Step.logits`) valid after it.
        torch.compiler.cudagraph_mark_step_begin()
        return self._step(tokens, cache).clone()


def continuation(tokenizer: Any, prompt_ids: Sequence[int], new: Sequence[int]) -> str:
    """The text `new` adds after the prompt (its EOS left out). Decoded with the prompt before it and
    cut after it: some decoders (SentencePiece's) drop a sequence's leading space, which decoding `new`
    alone would lose."""
    new = [t for t in new if t != tokenizer.eos_id]
    before = tokenizer.decode(list(prompt_ids))
    text = tokenizer.decode(list(prompt_ids) + new)
    return text[len(before):] if text.startswith(before) else tokenizer.decode(new)
