"""Reading token shards: `TokenShards` memory-maps a prepared directory (nothing is read until a row
is touched) and serves a deterministic, resumable, shuffled stream of training batches and a fixed
validation set. The on-disk format is `blueberry.data.format`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from blueberry.data.format import Manifest, ShardInfo, map_shard, read_manifest
from blueberry.data.manifest import check_rows, open_shards
from blueberry.errors import DataError


class TokenModelShape(Protocol):
    """What the data must match in a model config: its vocabulary and sequence length."""

    vocab_size: int
    seq_len: int


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
        """Open a prepared directory. Always: every shard lies inside it and has the manifest's row
        count, and no shard's recorded largest token id reaches the vocabulary (a manifest-only check).
        With `verify`, also each shard's sha256 and its actual largest token id, a max over rows the
        checksum has just read (about a tenth of the checksum's cost)."""
        directory = Path(directory)
        manifest = read_manifest(directory)
        vocab = manifest.tokenizer.vocab_size

        def read(path: Path, shard: ShardInfo) -> list[np.ndarray]:
            views = map_shard(path, manifest.row_len, manifest.dtype)
            check_rows(path, sum(len(v) for v in views), shard.sequences, "rows")
            if verify:
                largest = max((int(v.max()) for v in views if v.size), default=0)
                if largest >= vocab:
                    raise DataError(f"shard {path} holds token id {largest}, beyond the vocabulary of "
                                    f"{vocab} its manifest names ({manifest.tokenizer.name!r}): the data and "
                                    "its manifest do not belong together; prepare the data again")
            return views

        shards = open_shards(directory, manifest.splits, verify, read)
        return cls(manifest, {name: [view for views in split for view in views] for name, split in shards.items()})

    @property
    def seq_len(self) -> int:
        return self.manifest.seq_len

    def check_fits(self, model: TokenModelShape) -> None:
        """Fail with a clear message when these tokens cannot train this model."""
        vocab = self.manifest.tokenizer.vocab_size
        if vocab > model.vocab_size:
            raise DataError(f"the data's tokenizer {self.manifest.tokenizer.name!r} has {vocab} tokens but the model's "
                            f"vocab_size is {model.vocab_size}: use a preset with a larger vocabulary or other data")
        if self.seq_len != model.seq_len:
            raise DataError(f"the data was prepared with seq_len {self.seq_len} but the model's seq_len is "
                            f"{model.seq_len}: prepare the data with --seq-len {model.seq_len} or pass --seq-len "
                            f"{self.seq_len}")
        asked_for_none = self.manifest.extra.get("config", {}).get("val_fraction") == 0
        if self.manifest.splits["val"].sequences == 0 and not asked_for_none:
            # Training would report `val loss nan`. Data prepared with --val-fraction 0 asked for no validation.
            raise DataError(f"the data holds no validation sequences (too little held-out text for one of "
                            f"{self.seq_len} tokens): prepare it with more text or a larger --val-fraction, or with "
                            "--val-fraction 0 to train without validation")

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
