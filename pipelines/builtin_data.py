"""`--data builtin`: the built-in corpus prepared for a model's seq_len, once, in the cache."""

from __future__ import annotations

from pathlib import Path

from blueberry.data.tokens import TokenShards
from pipelines.cache import cache_dir
from pipelines.prepare import PrepareConfig, preparation_key, prepare
from pipelines.sources import BuiltinSource
from pipelines.tokenizer import builtin_tokenizer


def builtin_data_dir(seq_len: int, progress: bool = True) -> Path:
    """A prepared directory of the built-in corpus at `seq_len`, built on first use. The directory is
    named by the preparation's key, so a new corpus, tokenizer or format gets a new directory."""
    cfg = PrepareConfig(source="builtin", tokenizer="builtin", seq_len=seq_len)
    key = preparation_key(cfg, BuiltinSource().key, builtin_tokenizer().sha256)
    out = cache_dir() / "data" / f"builtin-seq{seq_len}-{key[:12]}"
    prepare(cfg, out, progress=progress)
    return out


def open_data(spec: str, seq_len: int, progress: bool = True) -> TokenShards:
    """What `--data` names: `builtin` (prepared at `seq_len` on first use, cached) or a prepared directory."""
    return TokenShards.open(builtin_data_dir(seq_len, progress=progress) if spec == "builtin" else spec)
