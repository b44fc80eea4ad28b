"""The image-shard format on disk and its reader: Arrow IPC shards of uint8 images with class labels.

A prepared image directory holds
- `manifest.json`: `"kind": "images"`, format version, image `shape` [channels, height, width], the
  class names (label i is `classes[i]`), and per split the shard files with their image counts, largest
  label and sha256, and the split's images per class;
- `{split}-{index:05d}.arrow`: Arrow IPC files with two columns, `image` (fixed_size_list<uint8>[C*H*W],
  channel-major: the layout a (C, H, W) tensor has) and `label` (uint16).

It is the token format's twin (`blueberry.data.format`): the manifest is written last and atomically
by the preparation pipeline (`pipelines/images/`), so a directory without one is unfinished; reading
it checks its structure and types, a damaged or hand-edited manifest is one `DataError` line; shard
names must stay inside the directory; `ImageShards.open` checks each shard's row count and, with
`verify`, its sha256 and its labels (range and per-class counts).

Training batches are `ImageBatch`es (uint8 images and int64 labels, moved to the device together) from
a seeded permutation of the training images, a new one each epoch; the stream's whole state is how many
images it has served, which checkpoints store. Validation is the first images of the `val` split.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from blueberry.data.manifest import (SPLITS, Fields, ManifestFile, ManifestFormat, check_rows, open_shards,
                                     sha256_file)
from blueberry.data.tokens import RowStore
from blueberry.errors import DataError
from blueberry.files import atomic_file

KIND = "images"
IMAGE_FORMAT_VERSION = 1
IMAGE_COLUMN, LABEL_COLUMN = "image", "label"
MAX_CLASSES = 1 << 16  # labels are uint16


@dataclass(frozen=True)
class ImageShardInfo:
    name: str
    images: int
    sha256: str
    max_label: int  # the largest label in the shard (-1 when empty): checked against the classes on reading


@dataclass(frozen=True)
class ImageSplit:
    files: tuple[ImageShardInfo, ...] = ()
    class_counts: tuple[int, ...] = ()  # images per class, in label order

    @property
    def images(self) -> int:
        return sum(f.images for f in self.files)

    def totals(self) -> dict[str, int]:
        return {"images": self.images}


def _shard(raw: Fields, num_classes: int) -> ImageShardInfo:
    shard = ImageShardInfo(name=raw.text("name"), images=raw.count("images"), sha256=raw.text("sha256"),
                           max_label=raw.integer("max_label"))
    if shard.max_label >= num_classes:
        raise raw.corrupt(f"shard {shard.name} holds labels up to {shard.max_label}, beyond its {num_classes} classes")
    return shard


@dataclass(frozen=True)
class ImageManifest(ManifestFile):
    """A prepared image directory's manifest (`ImageManifest.read`, `ImageManifest.from_json`; `write`)."""

    shape: tuple[int, int, int]  # (channels, height, width)
    classes: tuple[str, ...]
    splits: dict[str, ImageSplit]
    source: str = ""
    preparation_key: str = ""  # hash of everything that determines the shards' contents
    format_version: int = IMAGE_FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    FORMAT = ManifestFormat(version=IMAGE_FORMAT_VERSION, version_name="image format", kind=KIND,
                            wrong_kind="pass a directory prepared from an image source (or `builtin` for the "
                                       "built-in digits)",
                            directory="a prepared image directory",
                            absent="image data directory {directory} does not exist: pass builtin (the built-in "
                                   "digits), local:DIR or hf:DATASET to prepare one, or a directory prepared before",
                            unfinished="prepare it again")

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def image_size(self) -> int:
        """The side of a square image (every preparation in this format makes square images)."""
        return self.shape[1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def pixels(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]

    @property
    def shape_text(self) -> str:
        return "x".join(map(str, self.shape))

    def description(self) -> dict[str, Any]:
        """What a model of these images needs without them (a checkpoint records it): the class names,
        the image shape, and which data it was."""
        return {"classes": list(self.classes), "shape": list(self.shape), "source": self.source,
                "preparation_key": self.preparation_key}

    @classmethod
    def from_fields(cls, raw: Fields) -> ImageManifest:
        shape = raw.array("shape")
        if len(shape) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
            raise raw.corrupt(f"shape is {json.dumps(shape)[:60]}, not [channels, height, width] of positive integers")
        if shape[1] != shape[2]:
            raise raw.corrupt(f"shape {shape} is not square")
        classes = raw.array("classes")
        if not classes or len(classes) > MAX_CLASSES or not all(isinstance(c, str) for c in classes):
            raise raw.corrupt(f"classes must be a list of 1 to {MAX_CLASSES} names")
        splits = {}
        for name, split in raw.members("splits").items():
            files = tuple(_shard(f, len(classes)) for f in split.objects("files"))
            counts = split.array("class_counts")
            if len(counts) != len(classes) or not all(isinstance(c, int) and c >= 0 for c in counts):
                raise raw.corrupt(f"splits.{name}.class_counts must hold one count per class ({len(classes)})")
            if sum(counts) != sum(f.images for f in files):
                raise raw.corrupt(f"splits.{name}.class_counts add up to {sum(counts)}, its shards hold "
                                  f"{sum(f.images for f in files)} images")
            splits[name] = ImageSplit(files, tuple(counts))
        for name in SPLITS:
            if name not in splits:
                raise raw.corrupt(f"splits.{name} is missing")
        return cls(shape=tuple(shape), classes=tuple(classes), splits=splits, **raw.provenance())

    def as_json(self) -> dict[str, Any]:
        return {"kind": KIND, **super().as_json()}


def read_image_manifest(directory: str | Path) -> ImageManifest:
    """The image manifest of a prepared directory, or a one-line `DataError` saying why there is none."""
    return ImageManifest.read(directory)


def require_images(data: Any, kind: str) -> ImageManifest:
    """The manifest of `data` when it is image shards; a `DataError` saying what to pass otherwise."""
    if not isinstance(data, ImageShards):
        raise DataError(f"a {kind} model trains on images, not {type(data).__name__}: pass --data builtin "
                        "(the built-in digits), local:DIR, hf:DATASET or a prepared image directory")
    return data.manifest


def check_images_fit(data: Any, kind: str, channels: int, image_size: int, num_classes: int | None = None) -> None:
    """Refuse, in one line naming the `--model` overrides that fit, data that is not image shards of
    (channels, image_size, image_size) images, of `num_classes` classes unless that is None (a model that
    ignores the labels)."""
    manifest = require_images(data, kind)
    expected = (channels, image_size, image_size)
    if manifest.shape == expected and num_classes in (None, manifest.num_classes):
        return
    held, takes = manifest.shape_text, "x".join(map(str, expected))
    fits = f"--model channels={manifest.channels} --model image_size={manifest.image_size}"
    if num_classes is not None:
        held, takes = f"{manifest.num_classes} classes of {held}", f"{num_classes} classes of {takes}"
        fits += f" --model num_classes={manifest.num_classes}"
    raise DataError(f"the data holds {held} images, the model takes {takes}: pass {fits}, or choose a preset made "
                    "for this data")


def write_image_shard(path: Path, images: np.ndarray, labels: np.ndarray) -> str:
    """Write images (n, C, H, W) uint8 and labels (n,) as one Arrow IPC file; returns its sha256. Atomic, and
    on disk before anything (a saved state, the manifest) names it."""
    n = len(images)
    if images.dtype != np.uint8 or labels.shape != (n,):
        raise ValueError(f"expected uint8 images (n, C, H, W) and n labels, got {images.dtype} {images.shape}, "
                         f"labels {labels.shape}")
    flat = pa.array(np.ascontiguousarray(images).reshape(-1))
    table = pa.table({IMAGE_COLUMN: pa.FixedSizeListArray.from_arrays(flat, int(np.prod(images.shape[1:]))),
                      LABEL_COLUMN: pa.array(labels.astype(np.uint16))})
    with atomic_file(path) as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sha256_file(path)


def map_image_shard(path: Path, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Memory-map a shard: zero-copy (n, C*H*W) uint8 images and (n,) uint16 labels."""
    pixels = shape[0] * shape[1] * shape[2]
    try:
        reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
        table = reader.read_all()
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"shard {path} is not a readable Arrow file ({str(err).splitlines()[0][:120]}): "
                        "prepare the data again") from None
    if table.schema.names != [IMAGE_COLUMN, LABEL_COLUMN]:
        raise DataError(f"shard {path} has columns {table.schema.names}, not {IMAGE_COLUMN} and {LABEL_COLUMN}: the "
                        "directory mixes preparations; prepare it again")
    column = table.column(IMAGE_COLUMN).combine_chunks()
    if not pa.types.is_fixed_size_list(column.type) or column.type.list_size != pixels \
            or column.type.value_type != pa.uint8():
        raise DataError(f"{path} holds images of type {column.type}, the manifest says {pixels} x uint8 "
                        f"({'x'.join(map(str, shape))}): the directory mixes preparations; prepare it again")
    labels = table.column(LABEL_COLUMN).combine_chunks()
    if labels.type != pa.uint16() or labels.null_count:
        raise DataError(f"{path} holds labels of type {labels.type}, not uint16: prepare the data again")
    images = column.values.to_numpy(zero_copy_only=True).reshape(-1, pixels) if len(column) else \
        np.empty((0, pixels), np.uint8)
    return images, labels.to_numpy(zero_copy_only=True)


@dataclass
class ImageBatch:
    """A batch of uint8 images (B, C, H, W) and their int64 labels (B,), moved to a device together."""

    images: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ImageBatch:
        return ImageBatch(self.images.to(device, non_blocking=non_blocking),
                          self.labels.to(device, non_blocking=non_blocking))

    def __len__(self) -> int:
        return len(self.labels)


class ImageShards:
    """A prepared image dataset: a shuffled, resumable train stream and a fixed validation set."""

    def __init__(self, manifest: ImageManifest, splits: dict[str, tuple[list[np.ndarray], list[np.ndarray]]]) -> None:
        self.manifest = manifest
        self.images = {name: RowStore(images) for name, (images, _) in splits.items()}
        self.labels = {name: RowStore([lab.reshape(-1, 1) for lab in labels]) for name, (_, labels) in splits.items()}
        if not len(self.images.get("train", RowStore([]))):
            raise DataError("the image data has no training images: prepare it from a larger source")

    @classmethod
    def open(cls, directory: str | Path, verify: bool = True) -> ImageShards:
        """Open a prepared image directory. Always: every shard lies inside it and has the manifest's image
        count. With `verify`, also each shard's sha256, and its labels against the classes and the
        manifest's per-class counts."""
        directory = Path(directory)
        manifest = read_image_manifest(directory)

        def read(path: Path, shard: ImageShardInfo) -> tuple[np.ndarray, np.ndarray]:
            images, labels = map_image_shard(path, manifest.shape)
            check_rows(path, len(images), shard.images, "images")
            if verify and len(labels) and int(labels.max()) >= manifest.num_classes:
                raise DataError(f"shard {path} holds label {int(labels.max())}, beyond the {manifest.num_classes} "
                                "classes of its manifest: prepare the data again")
            return images, labels

        shards = open_shards(directory, manifest.splits, verify, read)
        splits = {name: ([images for images, _ in split], [labels for _, labels in split])
                  for name, split in shards.items()}
        if verify:
            for name, (_, labels) in splits.items():
                counts = np.bincount(np.concatenate([np.empty(0, np.uint16), *labels]), minlength=manifest.num_classes)
                if tuple(int(c) for c in counts) != manifest.splits[name].class_counts:
                    raise DataError(f"the {name} images of {directory} are not the class counts its manifest "
                                    "records: prepare the data again")
        return cls(manifest, splits)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.manifest.shape

    def split_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Every image (n, C, H, W) uint8 and label (n,) int64 of a split, in order (a copy)."""
        store, labels = self.images[split], self.labels[split]
        rows = np.arange(len(store))
        images = store.gather(rows, np.empty((len(rows), self.manifest.pixels), np.uint8))
        return images.reshape(-1, *self.shape), labels.gather(rows, np.empty((len(rows), 1), np.int64))[:, 0]

    def train_stream(self, batch_size: int, seed: int, position: int = 0, rank: int = 0,
                     world_size: int = 1) -> ImageStream:
        return ImageStream(self.images["train"], self.labels["train"], self.shape, batch_size, seed, position,
                           rank, world_size)

    def val_batches(self, batch_size: int, max_images: int, rank: int = 0,
                    world_size: int = 1) -> Iterator[ImageBatch]:
        """The first `max_images` validation images (all of them if fewer), in order; with several ranks,
        rank r takes images r, r + world_size, ... so together they cover each image once."""
        store = self.images.get("val")
        if store is None or not len(store):
            return
        mine = np.arange(rank, min(len(store), max_images), world_size)
        for start in range(0, len(mine), batch_size):
            yield _gather(store, self.labels["val"], mine[start:start + batch_size], self.shape)


@dataclass(frozen=True)
class SharedImages:
    """The handle trials open image data from (`blueberry.platform.data.open_shared`): the arrays travel
    with it, so Ray puts them into the object store once (`tune.with_parameters`) and each trial's
    `open()` reads them from there."""

    data: ImageShards

    def open(self) -> ImageShards:
        return self.data


def _gather(images: RowStore, labels: RowStore, rows: np.ndarray, shape: tuple[int, int, int]) -> ImageBatch:
    pixels = np.empty((len(rows), shape[0] * shape[1] * shape[2]), np.uint8)
    label = np.empty((len(rows), 1), np.int64)
    images.gather(rows, pixels)
    labels.gather(rows, label)
    return ImageBatch(torch.from_numpy(pixels.reshape(-1, *shape)), torch.from_numpy(label[:, 0]))


class ImageStream:
    """An endless stream of training batches in a seeded random order, one epoch after another.

    Its whole state is `position`, the images served so far: a new stream with the same seed and
    position continues exactly where this one was. With `world_size` ranks each step serves a global
    batch of batch_size x world_size images and rank r takes the r-th slice of it."""

    def __init__(self, images: RowStore, labels: RowStore, shape: tuple[int, int, int], batch_size: int, seed: int,
                 position: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.store, self.label_store, self.shape = images, labels, shape
        self.batch_size, self.seed, self.position = batch_size, seed, position
        self.rank, self.world_size = rank, world_size
        self._epoch, self._order = -1, np.empty(0, np.int64)

    def _order_for(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.store))
        return self._order

    def _my_rows(self) -> np.ndarray:
        n = len(self.store)
        positions = np.arange(self.position + self.rank * self.batch_size,
                              self.position + (self.rank + 1) * self.batch_size)
        out = np.empty(len(positions), np.int64)
        for epoch in np.unique(positions // n):
            mask = positions // n == epoch
            out[mask] = self._order_for(int(epoch))[positions[mask] % n]
        return out

    def peek(self) -> ImageBatch:
        """The next batch without advancing (compile warm-up uses it)."""
        return _gather(self.store, self.label_store, self._my_rows(), self.shape)

    def next(self) -> ImageBatch:
        batch = self.peek()
        self.position += self.batch_size * self.world_size
        return batch
