"""Image source -> uint8 image shards + manifest (`blueberry.data.images`), resumable and idempotent.

The same contract as token preparation (`pipelines/prepare.py`):
- **Keyed**: the output directory is keyed by a hash of the source, the settings and the format; `prepare_images`
  returns at once when it already holds that preparation and refuses a directory holding anything else.
- **Resumable**: after every shard, the state to continue from (shards written with their sha256, examples
  consumed, images per class so far, the images not yet in a shard) is saved atomically in `.preparing.json`
  and `.pending-*.npz`. A rerun checks the shards against their checksums, skips the consumed examples and
  writes byte-identical shards; a state that does not read back whole starts the preparation over.
- **Finished means manifest**: `manifest.json` is written last, atomically.
- **One preparer per directory**: an exclusive lock on `.lock`; a second is refused (or, with `wait`, waits).

Every image becomes (channels, size, size) uint8: converted to grey (1 channel) or RGB (3), and resized
(bicubic) when `image_size` says so. Unset, both come from the first image, and an image of another size
is refused. Held-out images are the source's own test split when it has one, else a hash of
(seed, example index) decides, as it does for documents.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from blueberry.data.cache import cache_dir
from blueberry.data.format import MANIFEST_NAME, SPLITS, sha256_file
from blueberry.data.images import (IMAGE_FORMAT_VERSION, MAX_CLASSES, ImageManifest, ImageShardInfo, ImageSplit,
                                   read_image_manifest, write_image_shard)
from blueberry.errors import ConfigError, DataError, UserError
from blueberry.files import ExclusiveLock, LockHeld, atomic_file, confined, read_json_object, write_atomic
from pipelines.images.sources import Example, ImageSource, open_image_source

PARTIAL_STATE = ".preparing.json"
LOCK = ".lock"
WAIT_POLL_S = 0.25


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


def _save_state(out: Path, key: str, seq: int, state: _State) -> None:
    """Pending images first (new names), then the JSON naming them (atomic), then the old files go."""
    for split, (images, labels) in state.pending.items():
        with atomic_file(out / f".pending-{split}-{seq:06d}.npz") as f:
            np.savez(f, images=images, labels=labels)
    payload = {"key": key, "seq": seq, "examples": state.examples, "shape": list(state.shape),
               "shards": {split: [asdict(s) for s in shards] for split, shards in state.shards.items()},
               "counts": state.counts}
    write_atomic(out / PARTIAL_STATE, json.dumps(payload))
    for old in out.glob(".pending-*.npz"):
        if not old.name.endswith(f"-{seq:06d}.npz"):
            old.unlink()


def _load_state(out: Path, key: str) -> tuple[_State, int] | None:
    """An interrupted preparation's state, if it reads back whole and its shards check out; else None."""
    raw = read_json_object(out / PARTIAL_STATE)
    if raw is None or "seq" not in raw:
        return None
    if raw.get("key") != key:
        raise UserError(f"{out} holds an unfinished preparation with other settings: rerun it with those settings "
                        "or delete the directory")
    try:
        seq, examples = int(raw["seq"]), int(raw["examples"])
        shards = {split: [ImageShardInfo(**s) for s in raw["shards"][split]] for split in SPLITS}
        for shard in (s for split in SPLITS for s in shards[split]):
            path = confined(out, shard.name, "shard")
            if not path.is_file() or sha256_file(path) != shard.sha256:
                return None
        pending = {}
        for split in SPLITS:
            with np.load(out / f".pending-{split}-{seq:06d}.npz", allow_pickle=False) as saved:
                pending[split] = (saved["images"], saved["labels"])
        state = _State(examples, tuple(raw["shape"]), shards, {s: list(raw["counts"][s]) for s in SPLITS}, pending)
    except (KeyError, TypeError, ValueError, EOFError, OSError, UserError):
        return None
    return state, seq


def _is_ours(path: Path) -> bool:
    return path.is_file() and (path.suffix == ".arrow" or path.name.startswith((".pending-", PARTIAL_STATE))
                               or (path.name.startswith(".") and path.name.endswith(".tmp")))


def _foreign(out: Path) -> bool:
    """A non-empty directory holding no preparation, finished or not: not ours to write into."""
    return (out.is_dir() and not (out / PARTIAL_STATE).exists() and not (out / MANIFEST_NAME).exists()
            and any(p.name != LOCK and not (p.name.startswith(".") and p.name.endswith(".tmp")) for p in out.iterdir()))


def _check_output(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory: choose another --out")
    if (out / MANIFEST_NAME).is_file():
        return
    if _foreign(out):
        raise UserError(f"{out} is not empty and holds no preparation: choose another --out or delete it")
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"--out {out} lies under {existing}, which is a file: choose another --out")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise UserError(f"--out {out} is not writable (cannot create a file in {existing}: {err.strerror}): "
                        "choose another --out") from None


def _finished(out: Path, key: str) -> ImageManifest | None:
    if not (out / MANIFEST_NAME).is_file():
        return None
    existing = read_image_manifest(out)
    if existing.preparation_key == key:
        return existing
    raise UserError(f"{out} already holds a different preparation (source {existing.source!r}, shape "
                    f"{'x'.join(map(str, existing.shape))}): choose another --out or delete it")


def _lock(out: Path, what: str, wait: bool) -> ExclusiveLock:
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


def prepare_images(cfg: ImagePrepareConfig, out: str | Path, progress: bool = True, wait: bool = False
                   ) -> ImageManifest:
    """Prepare `out` from `cfg` (resuming an interrupted run), or return its manifest if already done."""
    out = Path(out)
    _check_output(out)
    source = open_image_source(cfg.source)
    key = image_preparation_key(cfg, source.key)
    if finished := _finished(out, key):
        return finished
    what = "the built-in digits" if cfg.source == "builtin" else cfg.source
    with _lock(out, what, wait):
        if finished := _finished(out, key):
            return finished
        return _prepare_locked(cfg, out, key, source, progress)


def _claim(out: Path, key: str) -> tuple[_State, int]:
    if _foreign(out):
        raise UserError(f"{out} is not empty and holds no preparation: choose another --out or delete it")
    resumed = _load_state(out, key) if (out / PARTIAL_STATE).exists() else None
    if resumed is not None:
        for stray in out.glob(".*.tmp"):
            stray.unlink()
        return resumed
    write_atomic(out / PARTIAL_STATE, json.dumps({"key": key}))  # first: a kill below still says "start over"
    for path in out.iterdir():
        if path.name != PARTIAL_STATE and _is_ours(path):
            path.unlink()
    return _State(), 0


def _prepare_locked(cfg: ImagePrepareConfig, out: Path, key: str, source: ImageSource, progress: bool
                    ) -> ImageManifest:
    state, seq = _claim(out, key)
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
        sha = write_image_shard(out / name, images, labels)
        shards[split].append(ImageShardInfo(name, len(images), sha, int(labels.max()) if len(labels) else -1))
        pending_images[split], pending_labels[split] = [], []

    def snapshot() -> _State:
        return _State(state.examples, shape, shards, counts,
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
                seq += 1
                _save_state(out, key, seq, snapshot())
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
    manifest = ImageManifest(shape=shape, classes=classes, splits=splits, source=cfg.source, preparation_key=key,
                             extra={"examples": state.examples, "config": asdict(cfg)})
    manifest.write(out)
    for leftover in [out / PARTIAL_STATE, *out.glob(".pending-*.npz")]:
        leftover.unlink()
    return manifest


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
