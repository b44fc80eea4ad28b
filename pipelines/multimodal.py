"""Token shards from documents tokenised elsewhere: multimodal data, whose images a VQ-VAE (a model the
pipelines do not import) has already turned into codes (`blueberry.models.lm.multimodal`).

The output is the token format of every other preparation (`blueberry.data.format`): rows of
seq_len + 1 tokens cut from the documents joined as given, a manifest written last, keyed by a hash of
what determines the contents (`documents_key`), refused into a directory that holds anything else, one
preparer at a time (`pipelines.preparation`, as every preparation). Unlike text preparation it does
not resume: documents are made in memory from a finished image preparation in seconds to minutes, so an
interrupted preparation starts over.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from blueberry.data.format import FORMAT_VERSION, Manifest, TokenizerInfo, token_dtype_for
from blueberry.data.manifest import SPLITS
from blueberry.errors import DataError
from pipelines.prepare import TOKEN_SHARDS
from pipelines.preparation import Preparation, check_output, prepare_directory
from pipelines.shards import ShardWriter

Documents = Callable[[], Iterable[tuple[str, np.ndarray]]]  # (split, one document's token ids)


def documents_key(fields: dict[str, Any]) -> str:
    """The preparation key of documents determined by `fields` (JSON-serialisable) in this format."""
    return hashlib.sha256(json.dumps({**fields, "format": FORMAT_VERSION, "kind": "documents"},
                                     sort_keys=True).encode()).hexdigest()


def prepare_documents(out: str | Path, documents: Documents, tokenizer: TokenizerInfo, seq_len: int, key: str,
                      source: str, extra: dict[str, Any] | None = None, shard_tokens: int = 1 << 24) -> Manifest:
    """Write `documents()` (called only when `out` does not already hold preparation `key`) as token shards
    of `seq_len`, or return the manifest of the finished preparation."""
    out = Path(out)
    check_output(out)
    # An interrupted attempt saved no state to resume (`preparation.resumed` is None): it starts over.
    return prepare_directory(out, key, TOKEN_SHARDS, source, False, lambda preparation: _write(
        preparation, documents, tokenizer, seq_len, source, extra, shard_tokens))


def _write(preparation: Preparation[Manifest, Any], documents: Documents, tokenizer: TokenizerInfo, seq_len: int,
           source: str, extra: dict[str, Any] | None, shard_tokens: int) -> Manifest:
    dtype = token_dtype_for(tokenizer.vocab_size)
    rows_per_shard = max(1, shard_tokens // seq_len)
    writers = {split: ShardWriter(preparation.directory, split, seq_len, dtype, rows_per_shard) for split in SPLITS}
    counts = dict.fromkeys(SPLITS, 0)
    for split, ids in documents():
        ids = np.asarray(ids)
        if len(ids) and (ids.min() < 0 or ids.max() >= tokenizer.vocab_size):
            raise DataError(f"a {split} document holds token ids outside [0, {tokenizer.vocab_size}): the "
                            "documents do not fit their vocabulary")
        writers[split].add(ids)
        counts[split] += 1
    manifest = Manifest(tokenizer=tokenizer, seq_len=seq_len, dtype=dtype,
                        splits={split: w.finish() for split, w in writers.items()}, source=source,
                        preparation_key=preparation.key, extra={**(extra or {}), "documents": counts})
    if manifest.splits["train"].sequences == 0:
        raise DataError(f"{counts['train']} training documents do not fill one sequence of {seq_len} tokens: use "
                        "more data or a shorter --seq-len")
    if counts["val"] and manifest.splits["val"].sequences == 0:
        raise DataError(f"the {counts['val']} held-out documents do not fill one sequence of {seq_len} tokens: "
                        "use a shorter --seq-len")
    return preparation.finish(manifest)
