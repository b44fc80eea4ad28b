"""Image source -> uint8 image shards + manifest (`blueberry.data.images`), resumable and idempotent.

The directory is prepared by `pipelines.preparation`, as token shards are: keyed by a hash of the source,
the settings and the format, locked, finished only by its manifest, and resumable. What an image
preparation saves after each shard: the shards written, examples consumed, the image shape, images per
class so far, and the images not yet in a shard (`.pending-{split}-{seq}.npz`); a rerun skips the consumed
examples and writes byte-identical shards.

Every image becomes (channels, size, size) uint8: converted to grey (1 channel) or RGB (3), and resized
(bicubic) when `image_size` says so. Unset, both come from the first image, and an image of another size
is refused. Held-out images are the source's own test split when it has one, else a hash of
(seed, example index) decides, as it does for documents.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from tqdm import tqdm

from blueberry.data.cache import cache_dir
from blueberry.data.images import (IMAGE_FORMAT_VERSION, MAX_CLASSES, ImageManifest, ImageShardInfo, ImageSplit,
                                   read_image_manifest, write_image_shard)
from blueberry.data.manifest import SPLITS
from blueberry.errors import ConfigError, DataError, UserError
from pipelines.images.sources import Example, ImageSource, open_image_source
from pipelines.preparation import Preparation, ShardKind, check_output, prepare_directory


@dataclass(frozen=True)
class ImagePrepareConfig:
    """Everything that determines an image preparation's output."""

    source: str = "builtin"
    image_size: int | None = None  # resize every image to this square side; None: keep the first image's size
    channels: int | None = None  # 1 (grey) or 3 (RGB); None: the first image's (grey stays grey, else RGB)
    val_fraction: float = 0.1  # held out by hash when the source has no split of its own
    max_images: int | None = None  # read at most this many examples
    seed: int = 0  # decides which examples are held out
    shard_images: int = 16384  # images per shard file (16,384 CIFAR images: 48 MB)

    def __post_init__(self) -> None:
        if self.image_size is not None and self.image_size <= 0:
            raise ConfigError(f"image_size must be positive, got {self.image_size}")
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {self.channels}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.max_images is not None and self.max_images <= 0:
            raise ConfigError(f"max_images must be positive, got {self.max_images}")
        if self.shard_images <= 0:
            raise ConfigError(f"shard_images must be positive, got {self.shard_images}")


def image_preparation_key(cfg: ImagePrepareConfig, source_key: str) -> str:
    fields = {**asdict(cfg), "source": source_key, "kind": "images", "format": IMAGE_FORMAT_VERSION}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def is_held_out(index: int, seed: int, val_fraction: float) -> bool:
    """An example's split when the source has none: a hash of (seed, its index), stable across runs."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < val_fraction


def to_chw(example: Example, channels: int | None, size: int | None) -> np.ndarray:
    """The example's image as (channels, size, size) uint8; unset channels/size keep the image's own."""
    from PIL import Image

    image = example.image
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
            raise UserError(f"{example.where}: an array of {image.dtype} {image.shape}, not uint8 (H, W[, 1 or 3])")
        image = Image.fromarray(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    elif not isinstance(image, Image.Image):
        raise UserError(f"{example.where}: {type(image).__name__} is not an image")
    mode = {1: "L", 3: "RGB"}[channels] if channels else ("L" if image.mode in ("L", "1", "I;16", "I") else "RGB")
    if image.mode != mode:
        image = image.convert(mode)
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))


@dataclass
class _State:
    examples: int = 0
    shape: tuple[int, int, int] | None = None
    shards: dict[str, list[ImageShardInfo]] | None = None
    counts: dict[str, list[int]] | None = None
    pending: dict[str, tuple[np.ndarray, np.ndarray]] | None = None


def _save_pending(f: BinaryIO, pending: tuple[np.ndarray, np.ndarray]) -> None:
    np.savez(f, images=pending[0], labels=pending[1])


def _load_pending(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as saved:
        return saved["images"], saved["labels"]


def _restore(raw: dict[str, Any], pending: dict[str, tuple[np.ndarray, np.ndarray]]) -> _State:
    return _State(int(raw["examples"]), tuple(raw["shape"]),
                  {split: [ImageShardInfo(**s) for s in raw["shards"][split]] for split in SPLITS},
                  {split: list(raw["counts"][split]) for split in SPLITS}, pending)


IMAGE_SHARDS = ShardKind(read_manifest=read_image_manifest,
                         describe=lambda manifest: f"source {manifest.source!r}, shape {manifest.shape_text}",
                         pending_suffix=".npz", save_pending=_save_pending, load_pending=_load_pending,
                         restore=_restore)


def prepare_images(cfg: ImagePrepareConfig, out: str | Path, progress: bool = True, wait: bool = False
                   ) -> ImageManifest:
    """Prepare `out` from `cfg` (resuming an interrupted run), or return its manifest if already done."""
    out = Path(out)
    check_output(out)
    source = open_image_source(cfg.source)
    key = image_preparation_key(cfg, source.key)
    what = "the built-in digits" if cfg.source == "builtin" else cfg.source
    return prepare_directory(out, key, IMAGE_SHARDS, what, wait,
                             lambda preparation: _prepare_locked(cfg, preparation, source, progress))


def _prepare_locked(cfg: ImagePrepareConfig, preparation: Preparation[ImageManifest, _State], source: ImageSource,
                    progress: bool) -> ImageManifest:
    state = preparation.resumed or _State()
    shards = state.shards or {split: [] for split in SPLITS}
    counts = state.counts or {split: [] for split in SPLITS}
    pending_images: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    pending_labels: dict[str, list[int]] = {split: [] for split in SPLITS}
    if state.pending:
        for split, (images, labels) in state.pending.items():
            pending_images[split] = list(images)
            pending_labels[split] = [int(label) for label in labels]
    shape = state.shape
    size, channels = cfg.image_size, cfg.channels

    def write(split: str) -> None:
        images = np.stack(pending_images[split]) if pending_images[split] else np.empty((0, *shape), np.uint8)
        labels = np.asarray(pending_labels[split], np.int64)
        name = f"{split}-{len(shards[split]):05d}.arrow"
        sha = write_image_shard(preparation.directory / name, images, labels)
        shards[split].append(ImageShardInfo(name, len(images), sha, int(labels.max()) if len(labels) else -1))
        pending_images[split], pending_labels[split] = [], []

    def save() -> None:
        preparation.save({"examples": state.examples, "shape": list(shape),
                          "shards": {split: [asdict(s) for s in files] for split, files in shards.items()},
                          "counts": counts},
                         {s: (np.stack(pending_images[s]) if pending_images[s] else np.empty((0, *shape), np.uint8),
                              np.asarray(pending_labels[s], np.int64)) for s in SPLITS})

    budget = cfg.max_images if cfg.max_images is not None else float("inf")
    bar = tqdm(desc=f"prepare {cfg.source}", unit=" img", initial=state.examples, disable=not progress,
               dynamic_ncols=True, delay=1.0)
    try:
        for example in islice(source.examples(), state.examples, None):
            if state.examples >= budget:
                break
            if not 0 <= example.label < MAX_CLASSES:
                raise DataError(f"{example.where} has label {example.label}, not a class index in [0, {MAX_CLASSES})")
            image = to_chw(example, channels or (shape[0] if shape else None), size or (shape[1] if shape else None))
            if shape is None:
                if image.shape[1] != image.shape[2]:
                    raise UserError(f"{example.where} is {image.shape[2]}x{image.shape[1]}, not square: prepare with "
                                    "image_size set (python -m pipelines.images --image-size N) to resize every image")
                shape = tuple(image.shape)
            split = example.split or ("val" if is_held_out(state.examples, cfg.seed, cfg.val_fraction) else "train")
            pending_images[split].append(image)
            pending_labels[split].append(example.label)
            split_counts = counts[split]
            split_counts.extend([0] * (example.label + 1 - len(split_counts)))
            split_counts[example.label] += 1
            state.examples += 1
            bar.update(1)
            if len(pending_images[split]) >= cfg.shard_images:
                write(split)
                save()
    finally:
        bar.close()
    if shape is None:
        raise DataError(f"source {cfg.source!r} yielded no images: nothing to prepare")
    for split in SPLITS:
        if pending_images[split] or not shards[split]:
            write(split)
    seen = max(len(counts["train"]), len(counts["val"]))
    classes = source.classes or tuple(str(i) for i in range(seen))
    if seen > len(classes):
        raise DataError(f"source {cfg.source!r} has labels up to {seen - 1} but names {len(classes)} classes")
    splits = {split: ImageSplit(tuple(shards[split]), tuple(counts[split] + [0] * (len(classes) - len(counts[split]))))
              for split in SPLITS}
    if splits["train"].images == 0:
        raise DataError(f"source {cfg.source!r}: no training images (every image was held out)")
    if splits["val"].images == 0 and cfg.val_fraction > 0:
        raise DataError(f"source {cfg.source!r}: {state.examples} images and none held out for validation at "
                        f"val_fraction {cfg.val_fraction:g}: use more images or a larger val_fraction")
    manifest = ImageManifest(shape=shape, classes=classes, splits=splits, source=cfg.source,
                             preparation_key=preparation.key, extra={"examples": state.examples, "config": asdict(cfg)})
    return preparation.finish(manifest)


def _slug(spec: str) -> str:
    if spec == "builtin":
        return "digits"
    name = spec.split(":", 1)[1].rstrip("/").split("@")[0]
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(name).name or "data")[:40]


def prepared_image_dir(spec: str, progress: bool = True, **settings: Any) -> Path:
    """An image source (`builtin`, `local:...`, `hf:...`) prepared once in the cache, keyed by its
    preparation key (a new source, setting or format gets a new directory); two processes starting cold
    at once do not race: the second waits for the first and uses its result."""
    cfg = ImagePrepareConfig(source=spec, **settings)
    key = image_preparation_key(cfg, open_image_source(spec).key)
    out = cache_dir() / "data" / f"images-{_slug(spec)}-{key[:12]}"
    prepare_images(cfg, out, progress=progress, wait=True)
    return out
