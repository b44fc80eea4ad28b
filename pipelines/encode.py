"""Tokenising batches of documents in parallel, in order, behind one interface.

An encoder turns an iterator of document batches into an iterator of token-id batches (one uint32
array per document, EOS not yet appended), in the input's order, holding a bounded number of
batches in flight. Three executors:

- `InlineEncoder`: in this process; the Rust tokenizer still uses every core inside each batch;
- `ProcessPoolEncoder`: a local pool of worker processes, each with its own single-threaded
  tokenizer, so Python-side work (building id arrays) runs in parallel too; what laptops use;
- `RayDataEncoder`: Ray Data `map_batches` over windows of batches, for preparing on a Ray cluster.

Every executor encodes with `encode_batch_fast`, which skips the character offsets that
`encode_batch` (and `transformers`' `__call__`) compute and that token shards never need.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from itertools import islice
from typing import Protocol

import numpy as np
import tokenizers

_worker_tokenizer: tokenizers.Tokenizer | None = None


def encode_texts(backend: tokenizers.Tokenizer, texts: list[str]) -> list[np.ndarray]:
    return [np.asarray(e.ids, dtype=np.uint32) for e in backend.encode_batch_fast(texts, add_special_tokens=False)]


class Encoder(Protocol):
    def encode(self, batches: Iterator[list[str]]) -> Iterator[list[np.ndarray]]: ...

    def close(self) -> None: ...


class InlineEncoder:
    def __init__(self, tokenizer_json: str) -> None:
        self.backend = tokenizers.Tokenizer.from_str(tokenizer_json)

    def encode(self, batches: Iterator[list[str]]) -> Iterator[list[np.ndarray]]:
        for batch in batches:
            yield encode_texts(self.backend, batch)

    def close(self) -> None:
        pass


def _init_worker(tokenizer_json: str) -> None:
    global _worker_tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker; the pool is the parallelism
    _worker_tokenizer = tokenizers.Tokenizer.from_str(tokenizer_json)


def _encode_in_worker(texts: list[str]) -> list[np.ndarray]:
    assert _worker_tokenizer is not None
    return encode_texts(_worker_tokenizer, texts)


class ProcessPoolEncoder:
    def __init__(self, tokenizer_json: str, workers: int) -> None:
        # spawn, not fork: the parent may hold threads (Rust tokenizer, Ray) that fork would copy half-alive.
        context = multiprocessing.get_context("spawn")
        self.pool = context.Pool(workers, initializer=_init_worker, initargs=(tokenizer_json,))
        self.in_flight = 4 * workers

    def encode(self, batches: Iterator[list[str]]) -> Iterator[list[np.ndarray]]:
        pending = [self.pool.apply_async(_encode_in_worker, (b,)) for b in islice(batches, self.in_flight)]
        while pending:
            result = pending.pop(0).get()
            following = next(batches, None)
            if following is not None:
                pending.append(self.pool.apply_async(_encode_in_worker, (following,)))
            yield result

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


class _RayTokenize:
    """A Ray Data UDF: a column of texts in, a column of token-id arrays out."""

    def __init__(self, tokenizer_json: str) -> None:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        self.backend = tokenizers.Tokenizer.from_str(tokenizer_json)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = encode_texts(self.backend, [str(t) for t in batch["text"]])
        out = np.empty(len(ids), dtype=object)
        out[:] = ids
        return {"ids": out, "index": batch["index"]}


class RayDataEncoder:
    """Ray Data over windows of `window` batches: memory stays bounded by one window while the
    cluster tokenises it with `workers` actors. Rows carry their index, so order never depends on Ray."""

    def __init__(self, tokenizer_json: str, workers: int, window: int = 64) -> None:
        self.tokenizer_json, self.workers, self.window = tokenizer_json, workers, window

    def encode(self, batches: Iterator[list[str]]) -> Iterator[list[np.ndarray]]:
        import ray.data

        while window := list(islice(batches, self.window)):
            sizes = [len(b) for b in window]
            texts = [t for b in window for t in b]
            ds = ray.data.from_items([{"text": t, "index": i} for i, t in enumerate(texts)])
            ds = ds.map_batches(_RayTokenize, fn_constructor_args=(self.tokenizer_json,), batch_size=256,
                                compute=ray.data.ActorPoolStrategy(size=self.workers), batch_format="numpy")
            ordered: list[np.ndarray] = [np.empty(0, np.uint32)] * len(texts)
            for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for index, ids in zip(out["index"], out["ids"]):
                    ordered[int(index)] = np.asarray(ids, dtype=np.uint32)
            start = 0
            for size in sizes:
                yield ordered[start:start + size]
                start += size

    def close(self) -> None:
        pass


def make_encoder(tokenizer_json: str, workers: int, backend: str = "auto") -> Encoder:
    """`ray` when asked (or `auto` inside a running Ray cluster), a process pool for workers > 1, else inline."""
    if backend == "auto":
        backend = "local"
        try:
            import ray

            backend = "ray" if ray.is_initialized() else "local"
        except ImportError:
            pass
    if backend == "ray":
        return RayDataEncoder(tokenizer_json, workers)
    return ProcessPoolEncoder(tokenizer_json, workers) if workers > 1 else InlineEncoder(tokenizer_json)
