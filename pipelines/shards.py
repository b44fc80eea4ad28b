"""Writing a token stream as fixed-length rows into Arrow IPC shards, one split at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from blueberry.data import TOKEN_DTYPES, ShardInfo, SplitInfo, write_shard


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.arrow"


class ShardWriter:
    """Cuts one split's token stream into rows of seq_len + 1 (overlapping by one token) and writes a
    shard each time `rows_per_shard` rows are ready, so memory stays bounded by one shard."""

    def __init__(self, directory: Path, split: str, seq_len: int, dtype: str, rows_per_shard: int) -> None:
        self.directory, self.split, self.seq_len = directory, split, seq_len
        self.dtype, self.rows_per_shard = TOKEN_DTYPES[dtype], rows_per_shard
        self.shards: list[ShardInfo] = []
        self._pending: list[np.ndarray] = []
        self._pending_tokens = 0

    def add(self, ids: list[int] | np.ndarray) -> None:
        self._pending.append(np.asarray(ids, dtype=self.dtype))
        self._pending_tokens += len(ids)
        while self._pending_tokens >= self.rows_per_shard * self.seq_len + 1:
            self._write(self.rows_per_shard)

    def finish(self) -> SplitInfo:
        """Write the remaining full rows; a last partial row is dropped."""
        remaining_rows = (self._pending_tokens - 1) // self.seq_len
        if remaining_rows > 0:
            self._write(remaining_rows)
        return SplitInfo(tuple(self.shards))

    def _write(self, n_rows: int) -> None:
        stream = np.concatenate(self._pending)
        rows = np.lib.stride_tricks.sliding_window_view(stream, self.seq_len + 1)[::self.seq_len][:n_rows]
        name = shard_name(self.split, len(self.shards))
        sha = write_shard(self.directory / name, rows)
        self.shards.append(ShardInfo(name=name, sequences=n_rows, tokens=n_rows * self.seq_len, sha256=sha))
        rest = stream[n_rows * self.seq_len:]  # starts with the last row's final token: the overlap
        self._pending, self._pending_tokens = [rest], len(rest)
