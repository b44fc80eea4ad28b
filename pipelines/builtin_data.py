"""`--data builtin`: the built-in corpus prepared for a model's seq_len, once, in the cache."""

from __future__ import annotations

from pathlib import Path

from pipelines.builtin import builtin_corpus_hash
from pipelines.cache import cache_dir
from pipelines.prepare import PrepareConfig, prepare


def builtin_data_dir(seq_len: int, progress: bool = True) -> Path:
    """A prepared directory of the built-in corpus at `seq_len`, built on first use."""
    out = cache_dir() / "data" / f"builtin-seq{seq_len}-{builtin_corpus_hash()[:12]}"
    prepare(PrepareConfig(source="builtin", tokenizer="builtin", seq_len=seq_len), out, progress=progress)
    return out
