"""Source -> tokenizer -> Arrow token shards + manifest, resumable and idempotent.

- **Keyed**: an output directory is keyed by a hash of everything that determines its contents
  (source, tokenizer, seq_len, split, limits, shard size, format). `prepare()` returns at once when
  the directory already holds that preparation and refuses a directory holding anything else.
- **Resumable**: after every shard, the state needed to continue (shards written with their sha256,
  documents consumed, each split's tokens not yet in a shard) is saved atomically in
  `.preparing.json` + `.pending-*.npy`. A rerun checks the shards against their checksums, skips the
  consumed documents and continues; the shards it writes are byte-identical to an uninterrupted run's.
- **Finished means manifest**: `manifest.json` is written last, atomically; until then the directory
  holds only the partial state, which nothing mistakes for finished data. A saved state that cannot
  be read (empty, cut short) is stale: the preparation starts over instead of failing on it.
- **One preparer per directory**: an exclusive lock on `.lock` inside the output directory (released by
  the kernel however its holder exits). A second `prepare` into the same directory is refused with
  a line naming the holder, or with `wait=True` (the built-in cache) waits for it and uses its result.
- **Bounded memory**: documents stream through in batches; a split holds at most one shard of tokens.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

import numpy as np
from tqdm import tqdm

from blueberry.data.format import (FORMAT_VERSION, MANIFEST_NAME, SPLITS, TOKEN_DTYPES, Manifest, ShardInfo,
                                   read_manifest, sha256_file, token_dtype_for)
from blueberry.data.tokenizer import Tokenizer, load_tokenizer
from blueberry.errors import ConfigError, DataError, UserError
from blueberry.files import ExclusiveLock, LockHeld, atomic_file, confined, read_json_object, write_atomic
from pipelines.encode import make_encoder
from pipelines.shards import ShardWriter
from pipelines.sources import Source, open_source

ENCODE_BATCH_DOCS = 256
PARTIAL_STATE = ".preparing.json"
LOCK = ".lock"  # held while preparing; never listed in the manifest, never removed (see blueberry.files)
WAIT_POLL_S = 0.25


@dataclass(frozen=True)
class PrepareConfig:
    """Everything that determines a preparation's output (how many workers run it does not)."""

    source: str = "builtin"
    tokenizer: str = "builtin"
    seq_len: int = 2048
    val_fraction: float = 0.05
    max_tokens: int | None = None  # stop after the document that brings the total to this many tokens
    max_documents: int | None = None  # read at most this many documents from the source
    seed: int = 0  # decides which documents go to validation
    shard_tokens: int = 1 << 24  # tokens per shard file (16M tokens = 32 MB of uint16)
    text_field: str = "text"
    dtype: str = "auto"  # auto: the narrowest that holds the vocabulary

    def __post_init__(self) -> None:
        if self.seq_len <= 0:
            raise ConfigError(f"seq_len must be positive, got {self.seq_len}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        for name in ("max_tokens", "max_documents"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name.replace('_', ' ')} must be positive, got {value}")
        if self.shard_tokens < self.seq_len:
            raise ConfigError(f"shard_tokens ({self.shard_tokens}) must hold at least one sequence ({self.seq_len})")
        if self.dtype not in ("auto", *TOKEN_DTYPES):
            raise ConfigError(f"dtype must be auto, {' or '.join(TOKEN_DTYPES)}; got {self.dtype!r}")


def is_validation_document(index: int, seed: int, val_fraction: float) -> bool:
    """A document's split, decided by a hash of (seed, its index): stable, whole documents only."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < val_fraction


def _batched(docs: Iterator[str], size: int) -> Iterator[list[str]]:
    while batch := list(islice(docs, size)):
        yield batch


@dataclass
class _State:
    documents: int = 0
    tokens: int = 0
    shards: dict[str, list[ShardInfo]] | None = None
    pending: dict[str, np.ndarray] | None = None


def _save_state(out: Path, key: str, seq: int, state: _State, writers: dict[str, ShardWriter]) -> None:
    """Pending tokens first (new names), then the JSON that names them (atomic), then old files go."""
    for split, writer in writers.items():
        with atomic_file(out / f".pending-{split}-{seq:06d}.npy") as f:
            np.save(f, writer.pending())
    payload = {"key": key, "seq": seq, "documents": state.documents, "tokens": state.tokens,
               "shards": {split: [asdict(s) for s in w.shards] for split, w in writers.items()}}
    write_atomic(out / PARTIAL_STATE, json.dumps(payload))
    for old in out.glob(".pending-*.npy"):
        if not old.name.endswith(f"-{seq:06d}.npy"):
            old.unlink()


def _load_state(out: Path, key: str) -> tuple[_State, int] | None:
    """The saved state of an interrupted preparation of `key`, if it reads back whole and every shard
    it lists checks out; None means start over."""
    raw = read_json_object(out / PARTIAL_STATE)
    if raw is None or "seq" not in raw:
        return None  # unreadable (cut short), or claimed but interrupted before its first shard: nothing to keep
    if raw.get("key") != key:
        raise UserError(f"{out} holds an unfinished preparation with other settings: rerun it with those settings "
                        "or delete the directory")
    try:
        seq, documents, tokens = (int(raw[k]) for k in ("seq", "documents", "tokens"))
        shards = {split: [ShardInfo(**s) for s in raw["shards"][split]] for split in SPLITS}
        for shard in (s for split in SPLITS for s in shards[split]):
            path = confined(out, shard.name, "shard")
            if not path.is_file() or sha256_file(path) != shard.sha256:
                return None  # a damaged shard: start over rather than build on it
        pending = {split: np.load(out / f".pending-{split}-{seq:06d}.npy", allow_pickle=False) for split in SPLITS}
    except (KeyError, TypeError, ValueError, EOFError, OSError, UserError):
        return None  # a state this code did not write whole: start over
    return _State(documents, tokens, shards, pending), seq


def _is_ours(path: Path) -> bool:
    """A file a preparation writes (shards, saved state and their temporaries), so starting over may delete it."""
    return path.is_file() and (path.suffix == ".arrow" or path.name.startswith((".pending-", PARTIAL_STATE))
                               or (path.name.startswith(".") and path.name.endswith(".tmp")))


def _start_fresh(out: Path, key: str) -> None:
    # The new state first: a kill at any point below still leaves a state that says "start over".
    write_atomic(out / PARTIAL_STATE, json.dumps({"key": key}))
    for path in out.iterdir():
        if path.name != PARTIAL_STATE and _is_ours(path):
            path.unlink()


def _foreign(out: Path) -> bool:
    """A non-empty directory that holds no preparation (finished or not): not ours to write into. The lock
    and a temporary being renamed into place (the first saved state, written by the lock's holder) do not count."""
    return (out.is_dir() and not (out / PARTIAL_STATE).exists() and not (out / MANIFEST_NAME).exists()
            and any(p.name != LOCK and not (p.name.startswith(".") and p.name.endswith(".tmp")) for p in out.iterdir()))


def _claim(out: Path, key: str) -> tuple[_State, int]:
    """A fresh start in an empty directory, or the saved state of our own interrupted run (under the lock)."""
    if _foreign(out):
        raise UserError(f"{out} is not empty and holds no preparation: choose another --out or delete it")
    resumed = _load_state(out, key) if (out / PARTIAL_STATE).exists() else None
    if resumed is None:
        _start_fresh(out, key)
        return _State(), 0
    for stray in out.glob(".*.tmp"):
        stray.unlink()
    return resumed


def _check_output(out: Path) -> None:
    """Refuse an output that cannot work before any tokenizer loads or any document is read."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory: choose another --out")
    if (out / MANIFEST_NAME).is_file():
        return  # finished: reading it needs no write access
    if _foreign(out):
        raise UserError(f"{out} is not empty and holds no preparation: choose another --out or delete it")
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"--out {out} lies under {existing}, which is a file: choose another --out")
    try:  # a real file, not os.access: root passes every permission check yet cannot write to /proc
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise UserError(f"--out {out} is not writable (cannot create a file in {existing}: {err.strerror}): "
                        "choose another --out") from None


def _lock(out: Path, what: str, wait: bool) -> ExclusiveLock:
    """Hold `out`'s lock: refused at once while another process prepares it, or with `wait`, after it."""
    lock = ExclusiveLock(out / LOCK, f"output directory {out}")
    announced = False
    while True:
        try:
            return lock.acquire()
        except LockHeld:
            if not wait:
                raise
            if not announced:
                holder = read_json_object(out / LOCK) or {}
                print(f"waiting for process {holder.get('pid', '(unknown)')} on {holder.get('host', 'this host')} "
                      f"preparing {what} in {out}", file=sys.stderr, flush=True)
                announced = True
            time.sleep(WAIT_POLL_S)
        except OSError as err:
            raise UserError(f"cannot write to output directory {out} ({err.strerror}): choose another --out") from None


def _finished(out: Path, key: str) -> Manifest | None:
    """The manifest of a finished preparation of `key` in `out`; None when unfinished; else refused."""
    if not (out / MANIFEST_NAME).is_file():
        return None
    existing = read_manifest(out)
    if existing.preparation_key == key:
        return existing
    raise UserError(f"{out} already holds a different preparation (source {existing.source!r}, "
                    f"tokenizer {existing.tokenizer.name!r}, seq_len {existing.seq_len}): "
                    "choose another --out or delete it")


def preparation_key(cfg: PrepareConfig, source_key: str, tokenizer_sha: str) -> str:
    fields = {**asdict(cfg), "source": source_key, "tokenizer": tokenizer_sha, "format": FORMAT_VERSION}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def prepare(cfg: PrepareConfig, out: str | Path, workers: int = 1, backend: str = "auto",
            progress: bool = True, wait: bool = False) -> Manifest:
    """Prepare `out` from `cfg` (resuming an interrupted run), or return its manifest if already done.

    While another process prepares `out`, this one is refused (`LockHeld`, naming it), or with `wait`
    waits for it and returns what it prepared."""
    out = Path(out)
    _check_output(out)
    source = open_source(cfg.source, cfg.text_field, cfg.max_documents)
    tokenizer = load_tokenizer(cfg.tokenizer)
    dtype = token_dtype_for(tokenizer.vocab_size) if cfg.dtype == "auto" else cfg.dtype
    if tokenizer.vocab_size > np.iinfo(TOKEN_DTYPES[dtype]).max + 1:
        raise UserError(f"tokenizer {tokenizer.name!r} has {tokenizer.vocab_size} tokens, more than {dtype} holds: "
                        "use --dtype uint32 or auto")
    key = preparation_key(cfg, source.key, tokenizer.sha256)
    if finished := _finished(out, key):
        return finished
    what = "the built-in corpus" if cfg.source == "builtin" else cfg.source
    with _lock(out, what, wait):
        if finished := _finished(out, key):  # the holder we waited for finished it
            return finished
        return _prepare_locked(cfg, out, key, source, tokenizer, dtype, workers, backend, progress)


def _prepare_locked(cfg: PrepareConfig, out: Path, key: str, source: Source, tokenizer: Tokenizer, dtype: str,
                    workers: int, backend: str, progress: bool) -> Manifest:
    state, seq = _claim(out, key)
    rows_per_shard = max(1, cfg.shard_tokens // cfg.seq_len)
    writers = {split: ShardWriter(out, split, cfg.seq_len, dtype, rows_per_shard,
                                  shards=state.shards[split] if state.shards else None,
                                  pending=state.pending[split] if state.pending else None) for split in SPLITS}
    budget = cfg.max_tokens if cfg.max_tokens is not None else float("inf")
    eos = np.array([tokenizer.eos_id], dtype=np.uint32)
    documents = islice(source.documents(), state.documents, None)  # skip what finished shards hold
    encoder = make_encoder(tokenizer.backend.to_str(), workers, backend)
    # delay: a bad input that fails at once prints its one error line and no bar before it
    bar = tqdm(desc=f"prepare {cfg.source}", unit=" tok", unit_scale=True, initial=state.tokens,
               disable=not progress, dynamic_ncols=True, delay=1.0)
    started, resumed_tokens = time.perf_counter(), state.tokens
    try:
        for batch in encoder.encode(_batched(documents, ENCODE_BATCH_DOCS)):
            for ids in batch:
                split = "val" if is_validation_document(state.documents, cfg.seed, cfg.val_fraction) else "train"
                wrote = writers[split].add(np.concatenate((ids, eos)))
                state.documents += 1
                state.tokens += len(ids) + 1
                if wrote:
                    seq += 1
                    _save_state(out, key, seq, state, writers)
                if state.tokens >= budget:  # per document, so the documents taken never depend on batching
                    break
            rate = (state.tokens - resumed_tokens) / max(time.perf_counter() - started, 1e-9)
            bar.set_postfix(docs=f"{state.documents:,}", tok_per_s=f"{rate:,.0f}", refresh=False)
            bar.update(state.tokens - bar.n)
            if state.tokens >= budget:
                break
    finally:
        encoder.close()
        bar.close()
    if state.tokens == 0:
        raise DataError(f"source {cfg.source!r} yielded no text: nothing to prepare")

    manifest = Manifest(tokenizer=tokenizer.info(), seq_len=cfg.seq_len, dtype=dtype,
                        splits={split: w.finish() for split, w in writers.items()}, source=cfg.source,
                        preparation_key=key, extra={"documents": state.documents, "config": asdict(cfg)})
    if manifest.splits["train"].sequences == 0:
        raise DataError(f"only {state.tokens} tokens: not one training sequence of {cfg.seq_len}; "
                        "use more data or a shorter --seq-len")
    if cfg.val_fraction > 0 and manifest.splits["val"].sequences == 0:
        # Before: prepared silently, and training then reported `val loss nan`.
        raise DataError(f"{state.documents} documents, and those held out for validation ({cfg.val_fraction:g} of "
                        f"them) do not fill one sequence of {cfg.seq_len} tokens: use more text, a larger "
                        "--val-fraction or a shorter --seq-len, or --val-fraction 0 to prepare without validation")
    manifest.write(out)
    for leftover in [out / PARTIAL_STATE, *out.glob(".pending-*.npy")]:
        leftover.unlink()
    return manifest
