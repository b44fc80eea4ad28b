"""Document sources: where the text comes from, named by a `--source` string.

- `builtin`: the offline corpus of Python's own documentation (`blueberry.data.corpus`);
- `local:<path or glob>`: .txt (one document per file), .jsonl / .json (a text field per record),
  .parquet (a text column); files in sorted order;
- `hf:<dataset>[:<config>][@<split>]`: a Hugging Face dataset, streamed, so taking the first 25,000
  documents of a 1B-token dataset reads only those. A local directory in a hub dataset's layout (data
  files, or a `save_to_disk` directory) works the same way, which is how the tests exercise it offline.

A source yields documents in a fixed order and has a `key` that changes when its contents would, so a
preparation can tell whether an output directory is its own. `max_documents` caps how many it yields.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Protocol

from blueberry.data.corpus import builtin_corpus_hash, iter_builtin_documents
from blueberry.errors import UserError

LOCAL_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")


class Source(Protocol):
    spec: str

    @property
    def key(self) -> str: ...

    def documents(self) -> Iterator[str]: ...


@dataclass(frozen=True)
class BuiltinSource:
    spec: str = "builtin"

    @property
    def key(self) -> str:
        return f"builtin:{builtin_corpus_hash()}"

    def documents(self) -> Iterator[str]:
        return iter_builtin_documents()


def _not_text(path: Path, err: UnicodeDecodeError) -> UserError:
    return UserError(f"{path} is not UTF-8 text (byte {err.start} is {err.object[err.start:err.start + 1]!r}; "
                     "a binary file?): remove it from the source or convert it to UTF-8")


def _read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise _not_text(path, err) from None
    if "\x00" in text:  # valid UTF-8 can still be binary; no text document holds a NUL
        raise UserError(f"{path} holds NUL bytes, so it is binary, not text: remove it from the source")
    return text


def _json_records(path: Path, text_field: str) -> Iterator[str]:
    """Texts of a .jsonl file (one object per line) or a .json file (a list of objects). A record
    without the field is an error naming the file and line: silently skipping would shrink the data."""
    if path.suffix == ".json":
        try:
            records = json.loads(_read_text(path))
        except json.JSONDecodeError as err:
            raise UserError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None
        if not isinstance(records, list):
            raise UserError(f"{path} must hold a JSON list of records with a {text_field!r} field")
        numbered = enumerate(records, start=1)
        where = "record"
    else:
        def parse() -> Iterator[tuple[int, object]]:
            with open(path, encoding="utf-8") as f:
                try:
                    for number, line in enumerate(f, start=1):
                        if line.strip():
                            try:
                                yield number, json.loads(line)
                            except json.JSONDecodeError as err:
                                raise UserError(f"{path}:{number}: not valid JSON ({err.msg})") from None
                except UnicodeDecodeError as err:
                    raise _not_text(path, err) from None
        numbered, where = parse(), "line"
    for number, record in numbered:
        text = record.get(text_field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise UserError(f"{path} {where} {number} has no string field {text_field!r}: fix it or pass "
                            "--text-field NAME")
        yield text


def _parquet_texts(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise UserError(f"{path} is not a Parquet file ({str(err).splitlines()[0][:120]})") from None
    if text_field not in parquet.schema_arrow.names:
        raise UserError(f"{path} has no column {text_field!r} (columns: {', '.join(parquet.schema_arrow.names)}): "
                        "pass --text-field NAME")
    column_type = parquet.schema_arrow.field(text_field).type
    if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
        raise UserError(f"{path} column {text_field!r} holds {column_type}, not text: pass --text-field NAME")
    for batch in parquet.iter_batches(columns=[text_field], batch_size=4096):
        for text in batch.column(0).to_pylist():
            if text is not None:
                yield text


@dataclass(frozen=True)
class LocalSource:
    spec: str
    pattern: str
    text_field: str = "text"

    def files(self) -> list[Path]:
        paths = sorted(Path(p) for p in glob.glob(os.path.expanduser(self.pattern), recursive=True))
        if len(paths) == 1 and paths[0].is_dir():
            paths = sorted(p for p in paths[0].rglob("*") if p.suffix in LOCAL_SUFFIXES)
        if not paths:
            raise UserError(f"no files match {self.pattern!r}: give an existing file, directory or glob")
        unsupported = [p for p in paths if p.suffix not in LOCAL_SUFFIXES]
        if unsupported:
            raise UserError(f"{unsupported[0]} is not a supported file type ({', '.join(LOCAL_SUFFIXES)})")
        return paths

    @property
    def key(self) -> str:
        digest = hashlib.sha256(f"local:{self.text_field}".encode())
        for path in self.files():  # a changed file changes its size or modification time
            stat = path.stat()
            digest.update(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return digest.hexdigest()

    def documents(self) -> Iterator[str]:
        for path in self.files():
            if path.suffix == ".txt":
                yield _read_text(path)
            elif path.suffix == ".parquet":
                yield from _parquet_texts(path, self.text_field)
            else:
                yield from _json_records(path, self.text_field)


@dataclass(frozen=True)
class HubSource:
    spec: str
    dataset: str
    config: str | None = None
    split: str = "train"
    text_field: str = "text"

    def _open(self):
        import datasets

        path = Path(self.dataset)
        try:
            if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():  # save_to_disk layout
                loaded = datasets.load_from_disk(str(path))
                if isinstance(loaded, datasets.DatasetDict):
                    loaded = loaded[self.split]
                return loaded.to_iterable_dataset()
            return datasets.load_dataset(self.dataset, self.config, split=self.split, streaming=True)
        except (FileNotFoundError, ValueError, KeyError, ConnectionError, OSError) as err:
            offline = " (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set)" if os.environ.get(
                "HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE") else ""
            raise UserError(f"cannot open dataset {self.dataset!r} split {self.split!r}{offline}: "
                            f"{str(err).splitlines()[0][:200]}") from None

    @property
    def key(self) -> str:
        dataset = self._open()
        fingerprint = getattr(dataset, "_fingerprint", None) or getattr(dataset, "config_id", "")
        return f"hf:{self.dataset}:{self.config}:{self.split}:{self.text_field}:{fingerprint}"

    def documents(self) -> Iterator[str]:
        for number, record in enumerate(self._open(), start=1):
            text = record.get(self.text_field)
            if not isinstance(text, str):
                raise UserError(f"{self.dataset} record {number} has no string field {self.text_field!r}: "
                                f"pass --text-field NAME (fields: {', '.join(record)})")
            yield text


@dataclass(frozen=True)
class Limited:
    """The first `max_documents` documents of another source."""

    inner: Source
    max_documents: int

    @property
    def spec(self) -> str:
        return self.inner.spec

    @property
    def key(self) -> str:
        return f"{self.inner.key}[:{self.max_documents}]"

    def documents(self) -> Iterator[str]:
        return islice(self.inner.documents(), self.max_documents)


SCHEMES = ("builtin", "local:<path or glob>", "hf:<dataset>[:<config>][@<split>]")


def open_source(spec: str, text_field: str = "text", max_documents: int | None = None) -> Source:
    """The source a `--source` string names."""
    source: Source
    if spec == "builtin":
        source = BuiltinSource()
    elif spec.startswith("local:") and len(spec) > len("local:"):
        source = LocalSource(spec, spec[len("local:"):], text_field)
    elif spec.startswith("hf:") and len(spec) > len("hf:"):
        name, _, split = spec[len("hf:"):].partition("@")
        dataset, _, config = name.partition(":")
        source = HubSource(spec, dataset, config or None, split or "train", text_field)
    else:
        raise UserError(f"unknown source {spec!r}: use {', '.join(SCHEMES)}")
    return Limited(source, max_documents) if max_documents is not None else source
