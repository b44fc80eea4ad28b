"""The built-in corpus prepared for a model's seq_len, once, in the cache (what `--data builtin` opens)."""

from __future__ import annotations

from pathlib import Path

from blueberry.data.cache import cache_dir
from blueberry.data.tokenizer import builtin_tokenizer
from pipelines.prepare import PrepareConfig, preparation_key, prepare
from pipelines.sources import BuiltinSource


def builtin_data_dir(seq_len: int, progress: bool = True) -> Path:
    """A prepared directory of the built-in corpus at `seq_len`, built on first use. The directory is
    named by the preparation's key, so a new corpus, tokenizer or format gets a new directory. Two
    processes starting cold at once do not race: the second waits for the first and uses its result."""
    cfg = PrepareConfig(source="builtin", tokenizer="builtin", seq_len=seq_len)
    key = preparation_key(cfg, BuiltinSource().key, builtin_tokenizer().sha256)
    out = cache_dir() / "data" / f"builtin-seq{seq_len}-{key[:12]}"
    prepare(cfg, out, progress=progress, wait=True)
    return out
