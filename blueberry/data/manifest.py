"""What every prepared directory shares, whatever its shards hold (tokens, images): the one reader of
manifests and the one opener of the shards they list.

A prepared directory holds `manifest.json`, written last and atomically by its preparation, and shard
files named in it, each with its sha256. Reading a manifest checks its structure and types: a manifest
that is damaged or was edited by hand is a one-line `DataError` naming the file and the field
(`splits.train.files[0].sha256 is 7, not a string`), never a traceback from deep inside a reader. Each
format's manifest (`blueberry.data.format.Manifest` for tokens, `blueberry.data.images.ImageManifest`) is
a `ManifestFile` that declares its `ManifestFormat` (its version, the `kind` its manifests carry, what to
tell a user whose directory is missing or unfinished) and reads its own fields (`from_fields`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, TypeVar

from blueberry.errors import DataError, UserError
from blueberry.files import confined, write_atomic

MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val")

T = TypeVar("T")

_KIND_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer"}


def sha256_file(path: Path, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def corrupt(where: str, what: str) -> DataError:
    return DataError(f"corrupt manifest {where}: {what}; delete its directory and prepare it again")


def typed(value: Any, kind: type, where: str, name: str) -> Any:
    """`value` when it is a `kind`; else the manifest is corrupt at field `name`."""
    # bool is an int to Python but never a count or a name in a manifest
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise corrupt(where, f"{name} is {json.dumps(value)[:60]}, not {_KIND_NAMES[kind]}")
    return value


class Fields:
    """One JSON object of a manifest, read field by field. `where` names the file, `path` the object
    inside it (`splits.train.files[0]`), so any field missing or of the wrong type is one line saying
    which."""

    def __init__(self, raw: Any, where: str, path: str = "") -> None:
        self.raw: dict[str, Any] = typed(raw, dict, where, path)
        self.where, self.path = where, path

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def corrupt(self, what: str) -> DataError:
        return corrupt(self.where, what)

    def value(self, key: str, kind: type) -> Any:
        if key not in self.raw:
            raise self.corrupt(f"{self.name(key)} is missing")
        return typed(self.raw[key], kind, self.where, self.name(key))

    def text(self, key: str) -> str:
        return self.value(key, str)

    def integer(self, key: str) -> int:
        return self.value(key, int)

    def count(self, key: str, minimum: int = 0) -> int:
        value = self.integer(key)
        if value < minimum:
            raise self.corrupt(f"{self.name(key)} is {value}, below {minimum}")
        return value

    def optional_count(self, key: str) -> int | None:
        """A count that older manifests lack (absent or null: None)."""
        return None if self.raw.get(key) is None else self.count(key)

    def array(self, key: str) -> list[Any]:
        return self.value(key, list)

    def object(self, key: str) -> Fields:
        return Fields(self.value(key, dict), self.where, self.name(key))

    def objects(self, key: str) -> list[Fields]:
        """A list of objects (a split's shard files)."""
        return [Fields(item, self.where, f"{self.name(key)}[{i}]") for i, item in enumerate(self.array(key))]

    def members(self, key: str) -> dict[str, Fields]:
        """An object of objects (the splits), by name."""
        return {name: Fields(item, self.where, f"{self.name(key)}.{name}")
                for name, item in self.value(key, dict).items()}

    def provenance(self) -> dict[str, Any]:
        """The fields every manifest may carry: its source, preparation key and free-form extras."""
        return {"source": typed(self.raw.get("source", ""), str, self.where, "source"),
                "preparation_key": typed(self.raw.get("preparation_key", ""), str, self.where, "preparation_key"),
                "extra": typed(self.raw.get("extra", {}), dict, self.where, "extra")}


@dataclass(frozen=True)
class ManifestFormat:
    """What one kind of prepared directory declares to the one reader of manifests, besides its fields."""

    version: int
    version_name: str  # how a version refusal names the format: "format", "image format"
    kind: str | None  # the manifest's `kind` field; None for token data, whose manifests predate it
    wrong_kind: str  # what to pass instead when a manifest of another kind is given
    directory: str  # "a prepared data directory": what a file given in its place is not
    absent: str  # what to say of a directory that does not exist ({directory} is filled in)
    unfinished: str  # what to do with one whose preparation never finished ({directory} is filled in)

    def fields(self, text: str, where: str) -> Fields:
        """The manifest's top-level object, once it is JSON, an object, of this kind and this version."""
        try:
            raw = json.loads(text)
        except ValueError as err:
            raise corrupt(where, f"not JSON ({str(err).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise corrupt(where, f"a JSON {type(raw).__name__}, not an object")
        if self.kind is not None and raw.get("kind") != self.kind:
            raise DataError(f"{where} describes {raw.get('kind') or 'token'} data, not {self.kind}: "
                            f"{self.wrong_kind}")
        if raw.get("format_version") != self.version:
            raise DataError(f"{where} has {self.version_name} version {raw.get('format_version')}, this Blueberry "
                            f"reads version {self.version}: prepare the data again with this version")
        return Fields(raw, where)

    def text(self, directory: Path) -> tuple[str, str]:
        """The text of a prepared directory's manifest and where it lies, or a one-line `DataError` saying why
        there is none."""
        if directory.exists() and not directory.is_dir():
            raise DataError(f"{directory} is a file, not {self.directory}")
        if not directory.is_dir():
            raise DataError(self.absent.format(directory=directory))
        path = directory / MANIFEST_NAME
        if not path.is_file():
            raise DataError(f"{directory} has no {MANIFEST_NAME}, so its preparation never finished: "
                            + self.unfinished.format(directory=directory))
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except (OSError, UnicodeDecodeError) as err:
            raise corrupt(str(path), f"unreadable ({err})") from None


class ManifestFile:
    """What every manifest dataclass shares. On disk: its fields as JSON with sorted keys, each split's
    totals (`split.totals()`) beside its files, written whole. Read back: the checks of its `FORMAT`, then
    its own fields (`from_fields`)."""

    FORMAT: ClassVar[ManifestFormat]
    splits: Mapping[str, Any]

    @classmethod
    def from_fields(cls, raw: Fields) -> Self:
        raise NotImplementedError

    @classmethod
    def from_json(cls, text: str, where: str = "manifest") -> Self:
        """Parse and validate a manifest; anything malformed is a one-line `DataError` naming what is wrong."""
        return cls.from_fields(cls.FORMAT.fields(text, where))

    @classmethod
    def read(cls, directory: str | Path) -> Self:
        """The manifest of a prepared directory, or a one-line `DataError` saying why there is none."""
        return cls.from_json(*cls.FORMAT.text(Path(directory)))

    def as_json(self) -> dict[str, Any]:
        raw = asdict(self)  # every subclass is a dataclass
        for name, split in self.splits.items():
            raw["splits"][name].update(split.totals())
        return raw

    def to_json(self) -> str:
        return json.dumps(self.as_json(), indent=2, sort_keys=True)

    def write(self, directory: str | Path) -> None:
        """Write atomically: readers see the old manifest or the new one, never half of one."""
        write_atomic(Path(directory) / MANIFEST_NAME, self.to_json())


class Shard(Protocol):
    name: str
    sha256: str


class Split(Protocol):
    @property
    def files(self) -> Sequence[Shard]: ...


def shard_path(directory: Path, name: str) -> Path:
    """Where a manifest's shard lies: inside `directory`, or the manifest is corrupt (a name like
    `../elsewhere.arrow`, an absolute path or one holding a NUL byte would train on files the
    preparation never wrote, or on none)."""
    try:
        return confined(directory, name, "shard")
    except (UserError, ValueError):  # ValueError: a NUL byte, which no path may hold
        raise corrupt(str(directory / MANIFEST_NAME), f"shard name {name!r} is not a file inside "
                                                      f"{directory}") from None


def open_shards(directory: Path, splits: Mapping[str, Split], verify: bool,
                read: Callable[[Path, Any], T]) -> dict[str, list[T]]:
    """Each split's shards in the manifest's order, each opened by `read(path, shard)`. Always: every shard
    lies inside `directory` and exists; with `verify`, its bytes match the sha256 its manifest records."""
    opened: dict[str, list[T]] = {}
    for name, split in splits.items():
        opened[name] = []
        for shard in split.files:
            path = shard_path(directory, shard.name)
            if not path.is_file():
                raise DataError(f"shard {path} listed in the manifest is missing: prepare the data again")
            if verify and sha256_file(path) != shard.sha256:
                raise DataError(f"shard {path} fails its sha256 check (corrupt or changed since preparation): "
                                "prepare the data again")
            opened[name].append(read(path, shard))
    return opened


def check_rows(path: Path, found: int, recorded: int, unit: str) -> None:
    """A shard must hold as many rows as its manifest records."""
    if found != recorded:
        raise DataError(f"shard {path} holds {found} {unit}, the manifest says {recorded}: prepare the data again")
