"""Source -> tokenizer -> Arrow token shards + manifest, resumable and idempotent.

The directory is prepared by `pipelines.preparation` (keyed, locked, resumable, finished only by its
manifest). What a token preparation saves after each shard: the shards written, documents consumed,
tokens so far, and each split's tokens not yet in a shard (`.pending-{split}-{seq}.npy`). A rerun skips
the consumed documents and continues; the shards it writes are byte-identical to an uninterrupted run's.
The key covers everything that determines the shards (source, tokenizer, seq_len, split, limits, shard
size, format), not how many workers tokenise. Memory stays bounded: documents stream through in batches,
and a split holds at most one shard of tokens.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from blueberry.data.format import FORMAT_VERSION, TOKEN_DTYPES, Manifest, ShardInfo, read_manifest, token_dtype_for
from blueberry.data.manifest import SPLITS
from blueberry.data.tokenizer import Tokenizer, load_tokenizer
from blueberry.errors import ConfigError, DataError, UserError
from pipelines.encode import make_encoder
from pipelines.preparation import Preparation, ShardKind, check_output, prepare_directory
from pipelines.shards import ShardWriter
from pipelines.sources import Source, open_source

ENCODE_BATCH_DOCS = 256


@dataclass(frozen=True)
class PrepareConfig:
    """Everything that determines a preparation's output (how many workers run it does not)."""

    source: str = "builtin"
    tokenizer: str = "builtin"
    seq_len: int = 2048
    val_fraction: float = 0.05
    max_tokens: int | None = None  # stop after the document that brings the total to this many tokens
    max_documents: int | None = None  # read at most this many documents from the source
    seed: int = 0  # decides which documents go to validation
    shard_tokens: int = 1 << 24  # tokens per shard file (16M tokens = 32 MB of uint16)
    text_field: str = "text"
    dtype: str = "auto"  # auto: the narrowest that holds the vocabulary

    def __post_init__(self) -> None:
        if self.seq_len <= 0:
            raise ConfigError(f"seq_len must be positive, got {self.seq_len}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        for name in ("max_tokens", "max_documents"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name.replace('_', ' ')} must be positive, got {value}")
        if self.shard_tokens < self.seq_len:
            raise ConfigError(f"shard_tokens ({self.shard_tokens}) must hold at least one sequence ({self.seq_len})")
        if self.dtype not in ("auto", *TOKEN_DTYPES):
            raise ConfigError(f"dtype must be auto, {' or '.join(TOKEN_DTYPES)}; got {self.dtype!r}")


def is_validation_document(index: int, seed: int, val_fraction: float) -> bool:
    """A document's split, decided by a hash of (seed, its index): stable, whole documents only."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < val_fraction


def _batched(docs: Iterator[str], size: int) -> Iterator[list[str]]:
    while batch := list(islice(docs, size)):
        yield batch


@dataclass
class _State:
    documents: int = 0
    tokens: int = 0
    shards: dict[str, list[ShardInfo]] | None = None
    pending: dict[str, np.ndarray] | None = None


def _restore(raw: dict[str, Any], pending: dict[str, np.ndarray]) -> _State:
    return _State(int(raw["documents"]), int(raw["tokens"]),
                  {split: [ShardInfo(**s) for s in raw["shards"][split]] for split in SPLITS}, pending)


def _describe(manifest: Manifest) -> str:
    return f"source {manifest.source!r}, tokenizer {manifest.tokenizer.name!r}, seq_len {manifest.seq_len}"


TOKEN_SHARDS = ShardKind(read_manifest=read_manifest, describe=_describe, pending_suffix=".npy", save_pending=np.save,
                         load_pending=lambda path: np.load(path, allow_pickle=False), restore=_restore)


def preparation_key(cfg: PrepareConfig, source_key: str, tokenizer_sha: str) -> str:
    fields = {**asdict(cfg), "source": source_key, "tokenizer": tokenizer_sha, "format": FORMAT_VERSION}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def prepare(cfg: PrepareConfig, out: str | Path, workers: int = 1, backend: str = "auto",
            progress: bool = True, wait: bool = False) -> Manifest:
    """Prepare `out` from `cfg` (resuming an interrupted run), or return its manifest if already done.

    While another process prepares `out`, this one is refused (`LockHeld`, naming it), or with `wait`
    waits for it and returns what it prepared."""
    out = Path(out)
    check_output(out)
    source = open_source(cfg.source, cfg.text_field, cfg.max_documents)
    tokenizer = load_tokenizer(cfg.tokenizer)
    dtype = token_dtype_for(tokenizer.vocab_size) if cfg.dtype == "auto" else cfg.dtype
    if tokenizer.vocab_size > np.iinfo(TOKEN_DTYPES[dtype]).max + 1:
        raise UserError(f"tokenizer {tokenizer.name!r} has {tokenizer.vocab_size} tokens, more than {dtype} holds: "
                        "use --dtype uint32 or auto")
    key = preparation_key(cfg, source.key, tokenizer.sha256)
    what = "the built-in corpus" if cfg.source == "builtin" else cfg.source
    return prepare_directory(out, key, TOKEN_SHARDS, what, wait, lambda preparation: _prepare_locked(
        cfg, preparation, source, tokenizer, dtype, workers, backend, progress))


def _prepare_locked(cfg: PrepareConfig, preparation: Preparation[Manifest, _State], source: Source,
                    tokenizer: Tokenizer, dtype: str, workers: int, backend: str, progress: bool) -> Manifest:
    state = preparation.resumed or _State()
    rows_per_shard = max(1, cfg.shard_tokens // cfg.seq_len)
    writers = {split: ShardWriter(preparation.directory, split, cfg.seq_len, dtype, rows_per_shard,
                                  shards=state.shards[split] if state.shards else None,
                                  pending=state.pending[split] if state.pending else None) for split in SPLITS}
    budget = cfg.max_tokens if cfg.max_tokens is not None else float("inf")
    eos = np.array([tokenizer.eos_id], dtype=np.uint32)
    documents = islice(source.documents(), state.documents, None)  # skip what finished shards hold
    encoder = make_encoder(tokenizer.backend.to_str(), workers, backend)
    # delay: a bad input that fails at once prints its one error line and no bar before it
    bar = tqdm(desc=f"prepare {cfg.source}", unit=" tok", unit_scale=True, initial=state.tokens,
               disable=not progress, dynamic_ncols=True, delay=1.0)
    started, resumed_tokens = time.perf_counter(), state.tokens
    try:
        for batch in encoder.encode(_batched(documents, ENCODE_BATCH_DOCS)):
            for ids in batch:
                split = "val" if is_validation_document(state.documents, cfg.seed, cfg.val_fraction) else "train"
                wrote = writers[split].add(np.concatenate((ids, eos)))
                state.documents += 1
                state.tokens += len(ids) + 1
                if wrote:
                    shards = {name: [asdict(s) for s in w.shards] for name, w in writers.items()}
                    preparation.save({"documents": state.documents, "tokens": state.tokens, "shards": shards},
                                     {name: w.pending() for name, w in writers.items()})
                if state.tokens >= budget:  # per document, so the documents taken never depend on batching
                    break
            rate = (state.tokens - resumed_tokens) / max(time.perf_counter() - started, 1e-9)
            bar.set_postfix(docs=f"{state.documents:,}", tok_per_s=f"{rate:,.0f}", refresh=False)
            bar.update(state.tokens - bar.n)
            if state.tokens >= budget:
                break
    finally:
        encoder.close()
        bar.close()
    if state.tokens == 0:
        raise DataError(f"source {cfg.source!r} yielded no text: nothing to prepare")

    manifest = Manifest(tokenizer=tokenizer.info(), seq_len=cfg.seq_len, dtype=dtype,
                        splits={split: w.finish() for split, w in writers.items()}, source=cfg.source,
                        preparation_key=preparation.key, extra={"documents": state.documents, "config": asdict(cfg)})
    if manifest.splits["train"].sequences == 0:
        raise DataError(f"only {state.tokens} tokens: not one training sequence of {cfg.seq_len}; "
                        "use more data or a shorter --seq-len")
    if cfg.val_fraction > 0 and manifest.splits["val"].sequences == 0:
        # Before: prepared silently, and training then reported `val loss nan`.
        raise DataError(f"{state.documents} documents, and those held out for validation ({cfg.val_fraction:g} of "
                        f"them) do not fill one sequence of {cfg.seq_len} tokens: use more text, a larger "
                        "--val-fraction or a shorter --seq-len, or --val-fraction 0 to prepare without validation")
    return preparation.finish(manifest)
