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
unfinished. It is read by the reader every format shares (`blueberry.data.manifest`): a manifest that
is damaged or was edited by hand is a one-line `DataError`, never a traceback from deep inside a reader.
Each shard records its largest token id (`max_token`), so a manifest whose vocabulary is smaller than
its data is refused before a single row is read. This module is the contract between `pipelines/`
(which writes) and the readers in `blueberry.data.tokens`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from blueberry.data.manifest import MANIFEST_NAME  # noqa: F401  (where the token format's readers look for it)
from blueberry.data.manifest import Fields, ManifestFile, ManifestFormat, sha256_file
from blueberry.errors import DataError
from blueberry.files import atomic_file

FORMAT_VERSION = 1
TOKEN_COLUMN = "tokens"
TOKEN_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}


def token_dtype_for(vocab_size: int) -> str:
    """The narrowest dtype that holds every token id of a vocabulary."""
    if vocab_size <= np.iinfo(np.uint16).max + 1:
        return "uint16"
    if vocab_size <= np.iinfo(np.uint32).max + 1:
        return "uint32"
    raise DataError(f"vocab size {vocab_size} does not fit in uint32 token ids")


@dataclass(frozen=True)
class VisualVocab:
    """Multimodal data: where images sit in the vocabulary. The text tokenizer's ids come first (below
    `text_vocab_size`), then the segment markers, then the visual tokenizer's codes, code c as token
    `code_offset + c`. An image is a document `[BOS] caption <seg_start> codes <seg_end> [EOS]`, its codes in
    row-major order of the `grid`. `encoder` names the visual tokenizer (a VQ-VAE run: its name, checkpoint
    path, the checkpoint's sha256 and step), which decodes the codes back to images."""

    text_vocab_size: int
    seg_start: int
    seg_end: int
    code_offset: int
    codebook_size: int
    grid: tuple[int, int]  # codes per image: rows, columns
    image_shape: tuple[int, int, int]  # channels, height, width of the images the codes decode to
    captions: tuple[str, ...]  # class i's caption
    encoder: dict[str, Any] = field(default_factory=dict)

    @property
    def codes_per_image(self) -> int:
        return self.grid[0] * self.grid[1]

    @classmethod
    def from_dict(cls, raw: Any, vocab_size: int) -> VisualVocab:
        """Parse and check a recorded layout against the vocabulary; a `ValueError` says what is wrong."""
        if not isinstance(raw, dict):
            raise ValueError(f"visual vocabulary is {json.dumps(raw)[:60]}, not an object")

        def ints(name: str, n: int | None = None) -> Any:
            value = raw.get(name)
            values = value if n is not None and isinstance(value, (list, tuple)) else [value]
            if (n is not None and len(values) != n) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                             and v >= 0 for v in values):
                raise ValueError(f"visual.{name} is {json.dumps(value)[:60]}, not "
                                 + (f"{n} integers >= 0" if n else "an integer >= 0"))
            return tuple(values) if n is not None else value

        captions = raw.get("captions")
        if not isinstance(captions, (list, tuple)) or not captions or not all(isinstance(c, str) for c in captions):
            raise ValueError("visual.captions must be a non-empty list of strings")
        if not isinstance(raw.get("encoder", {}), dict):
            raise ValueError("visual.encoder must be an object")
        layout = cls(text_vocab_size=ints("text_vocab_size"), seg_start=ints("seg_start"), seg_end=ints("seg_end"),
                     code_offset=ints("code_offset"), codebook_size=ints("codebook_size"), grid=ints("grid", 2),
                     image_shape=ints("image_shape", 3), captions=tuple(captions), encoder=dict(raw.get("encoder", {})))
        markers = {layout.seg_start, layout.seg_end}
        if len(markers) != 2 or min(markers) < layout.text_vocab_size or max(markers) >= layout.code_offset:
            raise ValueError(f"visual markers {layout.seg_start} and {layout.seg_end} must differ and lie between the "
                             f"text vocabulary ({layout.text_vocab_size}) and the codes (from {layout.code_offset})")
        if layout.codebook_size < 1 or layout.code_offset + layout.codebook_size > vocab_size:
            raise ValueError(f"visual codes {layout.code_offset}..{layout.code_offset + layout.codebook_size - 1} do "
                             f"not fit the vocab_size {vocab_size}")
        if min(layout.grid) < 1 or min(layout.image_shape) < 1:
            raise ValueError("visual grid and image_shape must be positive")
        return layout


@dataclass(frozen=True)
class TokenizerInfo:
    name: str
    vocab_size: int
    sha256: str  # of the tokenizer's serialised definition: two tokenizers with one name can differ
    eos_id: int
    # Multimodal data: the text tokenizer above (`vocab_size` is then the whole vocabulary) plus the codes of a
    # visual tokenizer; None for text.
    visual: VisualVocab | None = None


@dataclass(frozen=True)
class ShardInfo:
    name: str
    sequences: int
    tokens: int  # prediction targets: sequences x seq_len
    sha256: str
    max_token: int | None = None  # the largest token id in the shard; None in manifests older than this field


@dataclass(frozen=True)
class SplitInfo:
    files: tuple[ShardInfo, ...] = ()

    @property
    def sequences(self) -> int:
        return sum(f.sequences for f in self.files)

    @property
    def tokens(self) -> int:
        return sum(f.tokens for f in self.files)

    def totals(self) -> dict[str, int]:
        return {"sequences": self.sequences, "tokens": self.tokens}


def _shard(raw: Fields, seq_len: int, vocab_size: int) -> ShardInfo:
    shard = ShardInfo(name=raw.text("name"), sequences=raw.count("sequences"), tokens=raw.count("tokens"),
                      sha256=raw.text("sha256"), max_token=raw.optional_count("max_token"))
    if shard.tokens != shard.sequences * seq_len:
        raise raw.corrupt(f"shard {shard.name} has {shard.tokens} tokens, not sequences x seq_len "
                          f"({shard.sequences} x {seq_len})")
    if shard.max_token is not None and shard.max_token >= vocab_size:
        raise raw.corrupt(f"shard {shard.name} holds token ids up to {shard.max_token}, beyond the "
                          f"tokenizer's vocab_size {vocab_size}")
    return shard


@dataclass(frozen=True)
class Manifest(ManifestFile):
    """A prepared token directory's manifest (`Manifest.read`, `Manifest.from_json`; `write`)."""

    tokenizer: TokenizerInfo
    seq_len: int
    dtype: str
    splits: dict[str, SplitInfo]
    source: str = ""
    preparation_key: str = ""  # hash of everything that determines the shards' contents
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    FORMAT = ManifestFormat(version=FORMAT_VERSION, version_name="format", kind=None, wrong_kind="",
                            directory="a prepared data directory",
                            absent="data directory {directory} does not exist: prepare it with `blueberry-data "
                                   "prepare --source builtin --out {directory}` or pass --data builtin",
                            unfinished="run `blueberry-data prepare` again with --out {directory}")

    @property
    def row_len(self) -> int:
        return self.seq_len + 1

    @classmethod
    def from_fields(cls, raw: Fields) -> Manifest:
        tok = raw.object("tokenizer")
        vocab_size = tok.count("vocab_size", minimum=1)
        try:
            visual = None if tok.raw.get("visual") is None else VisualVocab.from_dict(tok.raw["visual"], vocab_size)
        except ValueError as err:
            raise raw.corrupt(f"tokenizer.{err}") from None
        tokenizer = TokenizerInfo(name=tok.text("name"), vocab_size=vocab_size, sha256=tok.text("sha256"),
                                  eos_id=tok.count("eos_id"), visual=visual)
        if tokenizer.eos_id >= tokenizer.vocab_size:
            raise raw.corrupt(f"tokenizer eos_id {tokenizer.eos_id} is not below its vocab_size "
                              f"{tokenizer.vocab_size}")
        seq_len = raw.count("seq_len", minimum=1)
        dtype = raw.text("dtype")
        if dtype not in TOKEN_DTYPES:
            raise raw.corrupt(f"unknown dtype {dtype!r} (expected {' or '.join(TOKEN_DTYPES)})")
        splits = {name: SplitInfo(tuple(_shard(f, seq_len, vocab_size) for f in split.objects("files")))
                  for name, split in raw.members("splits").items()}
        return cls(tokenizer=tokenizer, seq_len=seq_len, dtype=dtype, splits=splits, **raw.provenance())

    def as_json(self) -> dict[str, Any]:
        raw = super().as_json()
        if self.tokenizer.visual is None:  # text data: the manifest as it was before multimodal data
            del raw["tokenizer"]["visual"]
        return raw


def read_manifest(directory: str | Path) -> Manifest:
    """The token manifest of a prepared directory, or a one-line `DataError` saying why there is none."""
    return Manifest.read(directory)


def write_shard(path: Path, rows: np.ndarray) -> str:
    """Write rows (n, row_len) as one Arrow IPC file; returns its sha256. Atomic and on disk before anything
    (a saved state, the manifest) names it."""
    n, row_len = rows.shape
    flat = pa.array(np.ascontiguousarray(rows).reshape(-1))
    table = pa.table({TOKEN_COLUMN: pa.FixedSizeListArray.from_arrays(flat, row_len)})
    with atomic_file(path) as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sha256_file(path)


def map_shard(path: Path, row_len: int, dtype: str) -> list[np.ndarray]:
    """Memory-map an Arrow IPC shard: one zero-copy (rows, row_len) numpy view per record batch."""
    try:
        reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
        batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"shard {path} is not a readable Arrow file ({str(err).splitlines()[0][:120]}): "
                        "prepare the data again") from None
    views = []
    for batch in batches:
        if TOKEN_COLUMN not in batch.schema.names:
            raise DataError(f"shard {path} has no {TOKEN_COLUMN!r} column: the directory mixes preparations; "
                            "prepare it again")
        column = batch.column(TOKEN_COLUMN)
        if not pa.types.is_fixed_size_list(column.type) or column.type.list_size != row_len:
            raise DataError(f"{path} holds rows of type {column.type}, the manifest says {row_len} x {dtype}: "
                            "the directory mixes preparations; prepare it again")
        values = column.values.to_numpy(zero_copy_only=True)
        if values.dtype != TOKEN_DTYPES[dtype]:
            raise DataError(f"{path} holds {values.dtype} tokens, the manifest says {dtype}: prepare it again")
        views.append(values.reshape(-1, row_len))
    return views
