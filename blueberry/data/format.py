"""The token-shard format on disk: Arrow IPC shards of fixed-length rows plus a manifest.

A prepared directory holds
- `manifest.json`: format version, tokenizer (name, vocab size, sha256 of its definition, EOS id),
  `seq_len`, token dtype, and per split the shard files with their row and token counts and sha256;
- `{split}-{index:05d}.arrow`: Arrow IPC files with one column `tokens` of type
  fixed_size_list<uint16|uint32>[seq_len + 1].

Each row carries seq_len + 1 tokens so that inputs row[:-1] and targets row[1:] are both seq_len
long; consecutive rows overlap by one token, so every token of the stream is a target exactly once.
A step of batch B therefore trains on B x seq_len tokens, the way the speedrun counts them.

The manifest is written last, atomically, by the preparation pipeline: a directory without one is
unfinished. This module is the contract between `pipelines/` (which writes) and the readers in
`blueberry.data.tokens`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from blueberry.errors import DataError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
TOKEN_COLUMN = "tokens"
SPLITS = ("train", "val")
TOKEN_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}


def token_dtype_for(vocab_size: int) -> str:
    """The narrowest dtype that holds every token id of a vocabulary."""
    if vocab_size <= np.iinfo(np.uint16).max + 1:
        return "uint16"
    if vocab_size <= np.iinfo(np.uint32).max + 1:
        return "uint32"
    raise DataError(f"vocab size {vocab_size} does not fit in uint32 token ids")


def sha256_file(path: Path, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class TokenizerInfo:
    name: str
    vocab_size: int
    sha256: str  # of the tokenizer's serialised definition: two tokenizers with one name can differ
    eos_id: int


@dataclass(frozen=True)
class ShardInfo:
    name: str
    sequences: int
    tokens: int  # prediction targets: sequences x seq_len
    sha256: str


@dataclass(frozen=True)
class SplitInfo:
    files: tuple[ShardInfo, ...] = ()

    @property
    def sequences(self) -> int:
        return sum(f.sequences for f in self.files)

    @property
    def tokens(self) -> int:
        return sum(f.tokens for f in self.files)


@dataclass(frozen=True)
class Manifest:
    tokenizer: TokenizerInfo
    seq_len: int
    dtype: str
    splits: dict[str, SplitInfo]
    source: str = ""
    preparation_key: str = ""  # hash of everything that determines the shards' contents
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def row_len(self) -> int:
        return self.seq_len + 1

    def to_json(self) -> str:
        raw = asdict(self)
        for name, split in self.splits.items():
            raw["splits"][name] = {"sequences": split.sequences, "tokens": split.tokens,
                                   "files": [asdict(f) for f in split.files]}
        return json.dumps(raw, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "manifest") -> Manifest:
        try:
            raw = json.loads(text)
            if raw.get("format_version") != FORMAT_VERSION:
                raise DataError(f"{where} has format version {raw.get('format_version')}, this Blueberry reads "
                                f"version {FORMAT_VERSION}: prepare the data again with this version")
            splits = {name: SplitInfo(tuple(ShardInfo(**f) for f in s["files"])) for name, s in raw["splits"].items()}
            return cls(tokenizer=TokenizerInfo(**raw["tokenizer"]), seq_len=int(raw["seq_len"]),
                       dtype=raw["dtype"], splits=splits, source=raw.get("source", ""),
                       preparation_key=raw.get("preparation_key", ""), extra=raw.get("extra", {}))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(f"{where} is not a valid Blueberry manifest ({err}): prepare the data again") from None

    def write(self, directory: Path) -> None:
        """Write atomically: readers see the old manifest or the new one, never half of one."""
        tmp = directory / f".{MANIFEST_NAME}.tmp"
        tmp.write_text(self.to_json())
        os.replace(tmp, directory / MANIFEST_NAME)


def read_manifest(directory: Path) -> Manifest:
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"data directory {directory} does not exist: prepare it with "
                        f"`blueberry-data prepare --source builtin --out {directory}` or pass --data builtin")
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"{directory} has no {MANIFEST_NAME}, so its preparation never finished: "
                        f"run `blueberry-data prepare` again with --out {directory}")
    return Manifest.from_json(path.read_text(), where=str(path))


def write_shard(path: Path, rows: np.ndarray) -> str:
    """Write rows (n, row_len) as one Arrow IPC file; returns its sha256. Atomic via rename."""
    n, row_len = rows.shape
    flat = pa.array(np.ascontiguousarray(rows).reshape(-1))
    table = pa.table({TOKEN_COLUMN: pa.FixedSizeListArray.from_arrays(flat, row_len)})
    tmp = path.with_name(f".{path.name}.tmp")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    os.replace(tmp, path)
    return sha256_file(path)


def map_shard(path: Path, row_len: int, dtype: str) -> list[np.ndarray]:
    """Memory-map an Arrow IPC shard: one zero-copy (rows, row_len) numpy view per record batch."""
    reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
    views = []
    for i in range(reader.num_record_batches):
        column = reader.get_batch(i).column(TOKEN_COLUMN)
        if not pa.types.is_fixed_size_list(column.type) or column.type.list_size != row_len:
            raise DataError(f"{path} holds rows of type {column.type}, the manifest says {row_len} x {dtype}: "
                            "the directory mixes preparations; prepare it again")
        values = column.values.to_numpy(zero_copy_only=True)
        if values.dtype != TOKEN_DTYPES[dtype]:
            raise DataError(f"{path} holds {values.dtype} tokens, the manifest says {dtype}: prepare it again")
        views.append(values.reshape(-1, row_len))
    return views
