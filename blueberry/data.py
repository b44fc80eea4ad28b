"""Token data on disk: Arrow IPC shards of fixed-length rows plus a manifest, read zero-copy.

A prepared directory holds
- `manifest.json`: format version, tokenizer (name, vocab size, sha256 of its definition, EOS id),
  `seq_len`, token dtype, and per split the shard files with their row and token counts and sha256;
- `{split}-{index:05d}.arrow`: Arrow IPC files with one column `tokens` of type
  fixed_size_list<uint16|uint32>[seq_len + 1].

Each row carries seq_len + 1 tokens so that inputs row[:-1] and targets row[1:] are both seq_len
long; consecutive rows overlap by one token, so every token of the stream is a target exactly once.
A step of batch B therefore trains on B x seq_len tokens, the way the speedrun counts them.

`TokenShards` memory-maps the files (nothing is read until a row is touched), serves a deterministic,
resumable shuffled stream of training batches and a fixed validation set. The manifest is written
last, atomically, by the preparation pipeline: a directory without one is unfinished.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from blueberry.config import ModelConfig
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


class RowStore:
    """Rows of one split, spread over several arrays, addressed by a global row index."""

    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.arrays = [a for a in arrays if len(a)]
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def gather(self, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Copy the given rows into `out` (len(rows), row_len), converting dtype on the way."""
        which = np.searchsorted(self.offsets, rows, side="right") - 1
        for i, (array_idx, row) in enumerate(zip(which, rows)):
            out[i] = self.arrays[array_idx][row - self.offsets[array_idx]]
        return out


class TokenShards:
    """A prepared token dataset: a shuffled, resumable train stream and a fixed validation set."""

    def __init__(self, manifest: Manifest, splits: dict[str, list[np.ndarray]]) -> None:
        self.manifest = manifest
        self.rows = {name: RowStore(arrays) for name, arrays in splits.items()}
        if not len(self.rows.get("train", RowStore([]))):
            raise DataError("the data has no training sequences: prepare it with more tokens or a shorter --seq-len")

    @classmethod
    def open(cls, directory: str | Path, verify: bool = True) -> TokenShards:
        """Open a prepared directory; with `verify`, check every shard's sha256 against the manifest."""
        directory = Path(directory)
        manifest = read_manifest(directory)
        splits: dict[str, list[np.ndarray]] = {}
        for name, split in manifest.splits.items():
            splits[name] = []
            for shard in split.files:
                path = directory / shard.name
                if not path.is_file():
                    raise DataError(f"shard {path} listed in the manifest is missing: prepare the data again")
                if verify and sha256_file(path) != shard.sha256:
                    raise DataError(f"shard {path} fails its sha256 check (corrupt or changed since preparation): "
                                    "prepare the data again")
                views = map_shard(path, manifest.row_len, manifest.dtype)
                if sum(len(v) for v in views) != shard.sequences:
                    raise DataError(f"shard {path} holds {sum(len(v) for v in views)} rows, the manifest says "
                                    f"{shard.sequences}: prepare the data again")
                splits[name].extend(views)
        return cls(manifest, splits)

    @property
    def seq_len(self) -> int:
        return self.manifest.seq_len

    def check_fits(self, model: ModelConfig) -> None:
        """Fail with a clear message when these tokens cannot train this model."""
        vocab = self.manifest.tokenizer.vocab_size
        if vocab > model.vocab_size:
            raise DataError(f"the data's tokenizer {self.manifest.tokenizer.name!r} has {vocab} tokens but the model's "
                            f"vocab_size is {model.vocab_size}: use a preset with a larger vocabulary or other data")
        if self.seq_len != model.seq_len:
            raise DataError(f"the data was prepared with seq_len {self.seq_len} but the model's seq_len is "
                            f"{model.seq_len}: prepare the data with --seq-len {model.seq_len} or pass --seq-len "
                            f"{self.seq_len}")

    def unigram_entropy(self) -> float:
        """Entropy (nats/token) of the training targets' token frequencies: the loss of the best model
        that ignores context, which a trained model should beat by a wide margin."""
        counts = np.zeros(self.manifest.tokenizer.vocab_size, np.int64)
        for array in self.rows["train"].arrays:
            counts += np.bincount(array[:, 1:].reshape(-1), minlength=len(counts))
        p = counts[counts > 0] / counts.sum()
        return float(-(p * np.log(p)).sum())

    def train_stream(self, batch_size: int, seed: int, position: int = 0, rank: int = 0,
                     world_size: int = 1) -> TrainStream:
        return TrainStream(self.rows["train"], batch_size, seed, position, rank, world_size)

    def val_batches(self, batch_size: int, max_tokens: int, rank: int = 0,
                    world_size: int = 1) -> Iterator[torch.Tensor]:
        """The first `max_tokens // seq_len` validation rows (all of them if fewer), in order; with
        several ranks, rank r takes rows r, r + world_size, ... so together they cover each row once."""
        store = self.rows.get("val")
        if store is None or not len(store):
            return
        n = min(len(store), max(1, max_tokens // self.seq_len))
        mine = np.arange(rank, n, world_size)
        for start in range(0, len(mine), batch_size):
            rows = mine[start:start + batch_size]
            yield torch.from_numpy(store.gather(rows, np.empty((len(rows), self.manifest.row_len), np.int64)))


class TrainStream:
    """An endless stream of training batches in a seeded random order, one epoch after another.

    The whole state is `position`, the number of rows served so far, so checkpointing it and
    building a new stream with the same seed and position continues exactly where this one was.
    With `world_size` ranks, each step serves a global batch of batch_size x world_size rows and
    rank r takes the r-th slice of it: the ranks together see exactly what one process with the
    global batch would, and `position` is the same on every rank.
    """

    def __init__(self, store: RowStore, batch_size: int, seed: int, position: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        self.store, self.batch_size, self.seed, self.position = store, batch_size, seed, position
        self.rank, self.world_size = rank, world_size
        self._epoch, self._order = -1, np.empty(0, np.int64)
        self._buffer = np.empty((batch_size, store.arrays[0].shape[1]), np.int64)

    def _order_for(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.store))
        return self._order

    def _rows(self, start: int, count: int) -> np.ndarray:
        n = len(self.store)
        positions = np.arange(start, start + count)
        out = np.empty(count, np.int64)
        for epoch in np.unique(positions // n):
            mask = positions // n == epoch
            out[mask] = self._order_for(int(epoch))[positions[mask] % n]
        return out

    def _my_rows(self) -> np.ndarray:
        start = self.position + self.rank * self.batch_size
        return self._rows(start, self.batch_size)

    def peek(self) -> torch.Tensor:
        """The next batch without advancing (compile warm-up uses it)."""
        return torch.from_numpy(self.store.gather(self._my_rows(), self._buffer.copy()))

    def next(self) -> torch.Tensor:
        """This rank's next (batch_size, seq_len + 1) int64 batch. The tensor shares its buffer with the
        stream: it is overwritten by the following call, so move it to the device (or copy it) first."""
        rows = self._my_rows()
        self.position += self.batch_size * self.world_size
        return torch.from_numpy(self.store.gather(rows, self._buffer))
