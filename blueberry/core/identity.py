"""One identity for a run: a key from what determines its result.

`run_key(config, ...)` hashes a config's determining fields (`blueberry.core.config.determining`:
every field but those declared `observed`, such as evaluation, logging and checkpoint cadence)
together with whatever else fixes the outcome (the data's preparation key, a study's settings).
Runs (`blueberry-train`'s default name), sweep trials (the `blueberry.config_hash` tag), studies'
default names and the scaling grid's finished points all use it, so the same work has the same key
everywhere and finished work is recognised instead of redone.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from blueberry.core.config import determining

KEY_CHARS = 16  # hex digits: 64 bits, far beyond any lab's number of runs


def run_key(config: Any, **context: Any) -> str:
    """A hex key of `config`'s determining fields and `context` (JSON-serialisable values)."""
    payload = {"config": determining(config), **context}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_CHARS]
