"""Where Blueberry caches what it builds once: the built-in corpus, its tokenizer, prepared data."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$BLUEBERRY_CACHE`, else `~/.cache/blueberry`; created on first use."""
    path = Path(os.environ.get("BLUEBERRY_CACHE") or Path.home() / ".cache" / "blueberry")
    path.mkdir(parents=True, exist_ok=True)
    return path
