"""Writing a token stream as fixed-length rows into Arrow IPC shards, one split at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from blueberry.data.format import TOKEN_DTYPES, ShardInfo, SplitInfo, write_shard


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.arrow"


class ShardWriter:
    """Cuts one split's token stream into rows of seq_len + 1 (overlapping by one token) and writes a
    shard each time `rows_per_shard` rows are ready, so memory stays bounded by one shard.

    `shards` and `pending` restore a writer from a saved state: the shards already written and the
    tokens that had not yet filled a shard."""

    def __init__(self, directory: Path, split: str, seq_len: int, dtype: str, rows_per_shard: int,
                 shards: list[ShardInfo] | None = None, pending: np.ndarray | None = None) -> None:
        self.directory, self.split, self.seq_len = directory, split, seq_len
        self.dtype, self.rows_per_shard = TOKEN_DTYPES[dtype], rows_per_shard
        self.shards: list[ShardInfo] = list(shards or [])
        self._pending: list[np.ndarray] = [] if pending is None or not len(pending) else [pending.astype(self.dtype)]
        self._pending_tokens = sum(len(p) for p in self._pending)

    def add(self, ids: np.ndarray) -> bool:
        """Append a document's tokens; True when that completed one or more shards."""
        self._pending.append(ids.astype(self.dtype, copy=False))
        self._pending_tokens += len(ids)
        wrote = False
        while self._pending_tokens >= self.rows_per_shard * self.seq_len + 1:
            self._write(self.rows_per_shard)
            wrote = True
        return wrote

    def pending(self) -> np.ndarray:
        """The tokens not yet in a shard (what a saved state must keep)."""
        return np.concatenate(self._pending) if self._pending else np.empty(0, self.dtype)

    def finish(self) -> SplitInfo:
        """Write the remaining full rows; a last partial row is dropped."""
        remaining_rows = (self._pending_tokens - 1) // self.seq_len
        if remaining_rows > 0:
            self._write(remaining_rows)
        return SplitInfo(tuple(self.shards))

    def _write(self, n_rows: int) -> None:
        stream = self.pending()
        rows = np.lib.stride_tricks.sliding_window_view(stream, self.seq_len + 1)[::self.seq_len][:n_rows]
        name = shard_name(self.split, len(self.shards))
        sha = write_shard(self.directory / name, rows)
        self.shards.append(ShardInfo(name=name, sequences=n_rows, tokens=n_rows * self.seq_len, sha256=sha,
                                     max_token=int(rows.max())))
        rest = stream[n_rows * self.seq_len:]  # starts with the last row's final token: the overlap
        self._pending, self._pending_tokens = [rest], len(rest)
