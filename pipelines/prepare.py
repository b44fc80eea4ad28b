"""Source -> tokenizer -> Arrow token shards + manifest.

`prepare()` is idempotent: it keys an output directory by a hash of everything that determines its
contents, returns at once when the directory already holds that preparation, and refuses to touch a
directory holding anything else. The manifest is written last and atomically, so a directory with
a manifest is finished and one without is not.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from blueberry.data import FORMAT_VERSION, MANIFEST_NAME, SPLITS, Manifest, read_manifest, token_dtype_for
from blueberry.errors import ConfigError, DataError, UserError
from pipelines.shards import ShardWriter
from pipelines.sources import open_source
from pipelines.tokenizer import load_tokenizer

ENCODE_BATCH_DOCS = 256
PARTIAL_MARKER = ".preparing.json"  # a preparation in progress; holds its key so a rerun knows it


@dataclass(frozen=True)
class PrepareConfig:
    source: str = "builtin"
    tokenizer: str = "builtin"
    seq_len: int = 2048
    val_fraction: float = 0.05
    max_tokens: int | None = None  # stop reading documents once this many tokens are tokenised
    seed: int = 0  # decides which documents go to validation
    shard_tokens: int = 1 << 24  # tokens per shard file (16M tokens = 32 MB of uint16)

    def __post_init__(self) -> None:
        if self.seq_len <= 0:
            raise ConfigError(f"seq_len must be positive, got {self.seq_len}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.max_tokens is not None and self.max_tokens <= 0:
            raise ConfigError(f"max tokens must be positive, got {self.max_tokens}")
        if self.shard_tokens < self.seq_len:
            raise ConfigError(f"shard_tokens ({self.shard_tokens}) must hold at least one sequence ({self.seq_len})")


def is_validation_document(index: int, seed: int, val_fraction: float) -> bool:
    """A document's split, decided by a hash of (seed, its index): stable, whole documents only."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < val_fraction


def _batched(docs: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def prepare(cfg: PrepareConfig, out: str | Path, progress: bool = True) -> Manifest:
    """Prepare `out` from `cfg`, or return its manifest if it already holds exactly this preparation."""
    out = Path(out)
    source = open_source(cfg.source)
    tokenizer = load_tokenizer(cfg.tokenizer)
    dtype = token_dtype_for(tokenizer.vocab_size)
    key_fields = {**asdict(cfg), "source": source.key, "tokenizer": tokenizer.sha256, "format": FORMAT_VERSION}
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()

    if (out / MANIFEST_NAME).is_file():
        existing = read_manifest(out)
        if existing.preparation_key == key:
            return existing
        raise UserError(f"{out} already holds a different preparation (source {existing.source!r}, "
                        f"tokenizer {existing.tokenizer.name!r}, seq_len {existing.seq_len}): "
                        "choose another --out or delete it")
    _claim_output_dir(out, key)

    writers = {split: ShardWriter(out, split, cfg.seq_len, dtype, max(1, cfg.shard_tokens // cfg.seq_len))
               for split in SPLITS}
    tokens = documents = 0
    bar = tqdm(desc=f"prepare {cfg.source}", unit=" tok", unit_scale=True, disable=not progress)
    budget = cfg.max_tokens if cfg.max_tokens is not None else float("inf")
    for batch in _batched(source.documents(), ENCODE_BATCH_DOCS):
        for ids in tokenizer.encode_batch(batch):
            split = "val" if is_validation_document(documents, cfg.seed, cfg.val_fraction) else "train"
            writers[split].add(ids + [tokenizer.eos_id])
            documents += 1
            tokens += len(ids) + 1
            if tokens >= budget:  # per document, so the documents taken never depend on the batch size
                break
        bar.update(tokens - bar.n)
        bar.set_postfix(docs=documents)
        if tokens >= budget:
            break
    bar.close()
    if tokens == 0:
        raise DataError(f"source {cfg.source!r} yielded no text: nothing to prepare")

    manifest = Manifest(tokenizer=tokenizer.info(), seq_len=cfg.seq_len, dtype=dtype,
                        splits={split: w.finish() for split, w in writers.items()}, source=cfg.source,
                        preparation_key=key, extra={"documents": documents, "config": asdict(cfg)})
    if manifest.splits["train"].sequences == 0:
        raise DataError(f"only {tokens} tokens: not one training sequence of {cfg.seq_len}; "
                        "use more data or a shorter --seq-len")
    manifest.write(out)
    (out / PARTIAL_MARKER).unlink()
    return manifest


def _claim_output_dir(out: Path, key: str) -> None:
    """Start a preparation in `out`: empty, or an unfinished preparation of the same key (redone)."""
    marker = out / PARTIAL_MARKER
    if out.exists() and any(out.iterdir()):
        if not marker.is_file() or json.loads(marker.read_text()).get("key") != key:
            raise UserError(f"{out} is not empty and holds no preparation of these settings: "
                            "choose another --out or delete it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"key": key}))
