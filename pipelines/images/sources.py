"""Image sources: where labelled images come from, named by a spec string.

- `builtin`: scikit-learn's bundled handwritten digits (1,797 images, 8x8, 10 classes, 17 grey levels),
  shipped inside the scikit-learn wheel, so it needs no network and no download;
- `local:<dir>`: a folder of images, one sub-folder per class (`DIR/<class>/*.png`), or `DIR/train/<class>`
  and `DIR/test/<class>` (or `val/`) for a split of its own; or the IDX files of MNIST and Fashion-MNIST
  (`train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`, `t10k-*`), with class names from a
  `classes.txt` beside them (one per line) when there is one;
- `hf:<dataset>[:<config>][@<split>]`: a Hugging Face image dataset with an image column and a class-label
  column (`uoft-cs/cifar10`: `img`, `label`), its `train` split for training and its `test` (or
  `validation`) split held out; a local directory in a hub dataset's layout, or one written by
  `save_to_disk`, works the same way.

A source yields `Example`s in a fixed order, says its class names (None: "0".."N-1" from the labels seen),
and has a `key` that changes when its contents would, so a preparation can tell whether a directory is its
own. An example's `split` is the source's own ("train" or "val") or None, when the preparation decides.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from blueberry.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
SCHEMES = ("builtin", "local:<folder of class folders, or of IDX files>", "hf:<dataset>[:<config>][@<split>]")


class Example(NamedTuple):
    image: Any  # a PIL image, or a uint8 array (H, W) or (H, W, C)
    label: int
    split: str | None  # "train" / "val" when the source has its own split; None: the preparation decides
    where: str  # for error messages: a file, or a dataset and row


class ImageSource(Protocol):
    spec: str

    @property
    def key(self) -> str: ...

    @property
    def classes(self) -> tuple[str, ...] | None: ...

    def examples(self) -> Iterator[Example]: ...


@dataclass(frozen=True)
class DigitsSource:
    """scikit-learn's 8x8 digits, grey levels 0-16 scaled to 0-255."""

    spec: str = "builtin"

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
        return images, digits.target.astype(np.int64)

    @property
    def key(self) -> str:
        images, labels = self._load()
        return "digits:" + hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(str(i) for i in range(10))

    def examples(self) -> Iterator[Example]:
        images, labels = self._load()
        for index, (image, label) in enumerate(zip(images, labels)):
            yield Example(image, int(label), None, f"digit {index}")


# IDX (LeCun's MNIST format): big-endian magic 0x0000 | type 0x08 (ubyte) | number of dimensions, the
# dimensions as big-endian int32, then the bytes.
IDX_PREFIXES = {"train": "train", "val": "t10k"}


def _idx_file(directory: Path, prefix: str, what: str) -> Path | None:
    for name in (f"{prefix}-{what}", f"{prefix}-{what}.gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def read_idx(path: Path, dims: int) -> np.ndarray:
    """An IDX file of unsigned bytes with `dims` dimensions, as a numpy array; a clear error otherwise."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise UserError(f"cannot read IDX file {path}: {err}") from None
    if len(data) < 4 + 4 * dims or data[:2] != b"\x00\x00" or data[2] != 0x08 or data[3] != dims:
        raise UserError(f"{path} is not an IDX file of {dims}-dimensional unsigned bytes (header "
                        f"{data[:4].hex() or 'empty'}, expected 000008{dims:02x})")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise UserError(f"{path} holds {body.size} bytes after its header, its shape {shape} needs "
                        f"{int(np.prod(shape))}: the file is cut short or damaged")
    return body.reshape(shape)


def _file_key(paths: list[Path], salt: str) -> str:
    digest = hashlib.sha256(salt.encode())
    for path in paths:  # a changed file changes its size or modification time
        stat = path.stat()
        digest.update(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _class_names_file(directory: Path) -> tuple[str, ...] | None:
    path = directory / "classes.txt"
    if not path.is_file():
        return None
    names = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    if not names:
        raise UserError(f"{path} names no classes: write one class name per line, in label order")
    return names


@dataclass(frozen=True)
class IdxSource:
    """MNIST-style IDX files in one directory: train-* for training, t10k-* held out (when present)."""

    spec: str
    directory: Path

    def _pairs(self) -> list[tuple[str, Path, Path]]:
        pairs = []
        for split, prefix in IDX_PREFIXES.items():
            images = _idx_file(self.directory, prefix, "images-idx3-ubyte")
            labels = _idx_file(self.directory, prefix, "labels-idx1-ubyte")
            if (images is None) != (labels is None):
                raise UserError(f"{self.directory} has {prefix}-{'images' if images else 'labels'} but not its "
                                f"{'labels' if images else 'images'} IDX file")
            if images is not None:
                pairs.append((split, images, labels))
        return pairs

    @property
    def key(self) -> str:
        files = [p for _, images, labels in self._pairs() for p in (images, labels)]
        extra = [self.directory / "classes.txt"] if (self.directory / "classes.txt").is_file() else []
        return "idx:" + _file_key(files + extra, "idx")

    @property
    def classes(self) -> tuple[str, ...] | None:
        return _class_names_file(self.directory)

    def examples(self) -> Iterator[Example]:
        for split, images_path, labels_path in self._pairs():
            images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
            if len(images) != len(labels):
                raise UserError(f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels")
            for index, (image, label) in enumerate(zip(images, labels)):
                yield Example(image, int(label), split, f"{images_path.name} image {index}")


FOLDER_SPLITS = {"train": "train", "test": "val", "val": "val", "validation": "val"}


@dataclass(frozen=True)
class FolderSource:
    """Images in class folders, optionally under train/ and test/ (or val/) folders of their own."""

    spec: str
    directory: Path

    def _layout(self) -> list[tuple[str | None, Path]]:
        """(split or None, folder of class folders)."""
        subdirs = {p.name: p for p in self.directory.iterdir() if p.is_dir()}
        if "train" in subdirs and any(name in subdirs for name in ("test", "val", "validation")):
            return [(FOLDER_SPLITS[name], subdirs[name]) for name in ("train", "test", "val", "validation")
                    if name in subdirs]
        return [(None, self.directory)]

    def _classes(self) -> tuple[str, ...]:
        names: set[str] = set()
        for _, root in self._layout():
            names |= {p.name for p in root.iterdir() if p.is_dir()}
        if not names:
            raise UserError(f"{self.directory} holds no class folders: put each class's images in a folder named "
                            "after it (DIR/cat/*.png, DIR/dog/*.png), or IDX files")
        return tuple(sorted(names))

    def _files(self) -> list[tuple[str | None, int, Path]]:
        classes = {name: i for i, name in enumerate(self._classes())}
        files = []
        for split, root in self._layout():
            for name in sorted(p.name for p in root.iterdir() if p.is_dir()):
                for path in sorted((root / name).rglob("*")):
                    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                        files.append((split, classes[name], path))
        if not files:
            raise UserError(f"{self.directory}'s class folders hold no images ({', '.join(IMAGE_SUFFIXES)})")
        return files

    @property
    def key(self) -> str:
        return "folder:" + _file_key([path for _, _, path in self._files()], "folder")

    @property
    def classes(self) -> tuple[str, ...]:
        return self._classes()

    def examples(self) -> Iterator[Example]:
        from PIL import Image

        for split, label, path in self._files():
            try:
                with Image.open(path) as image:
                    image.load()
            except (OSError, ValueError) as err:  # PIL's UnidentifiedImageError is an OSError
                raise UserError(f"{path} is not a readable image ({str(err).splitlines()[0][:120]}): remove it or "
                                "replace it") from None
            yield Example(image, label, split, str(path))


HUB_VAL_SPLITS = ("test", "validation", "valid", "val")


@dataclass(frozen=True)
class HubImageSource:
    """A Hugging Face dataset (or a local directory in its layout) with an image and a class-label column."""

    spec: str
    dataset: str
    config: str | None = None
    split: str | None = None  # None: train, and a test/validation split held out when there is one

    @cached_property
    def _splits(self) -> dict[str, Any]:
        return self._open_all()

    def _open_all(self) -> dict[str, Any]:
        import datasets

        path = Path(self.dataset)
        try:
            if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():  # save_to_disk layout
                loaded = datasets.load_from_disk(str(path))
                found = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
            else:
                found = dict(datasets.load_dataset(self.dataset, self.config, streaming=True))
        except (FileNotFoundError, ValueError, KeyError, ConnectionError, OSError) as err:
            offline = " (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set)" if os.environ.get(
                "HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE") else ""
            raise UserError(f"cannot open image dataset {self.dataset!r}{offline}: "
                            f"{str(err).splitlines()[0][:200]}") from None
        if self.split is not None:
            if self.split not in found:
                raise UserError(f"dataset {self.dataset!r} has no split {self.split!r}; it has {', '.join(found)}")
            return {self.split: found[self.split]}
        if "train" not in found:
            raise UserError(f"dataset {self.dataset!r} has no train split (it has {', '.join(found)}): name one with "
                            f"hf:{self.dataset}@SPLIT")
        val = next((name for name in HUB_VAL_SPLITS if name in found), None)
        return {"train": found["train"], **({val: found[val]} if val else {})}

    def _columns(self, dataset: Any) -> tuple[str, str, tuple[str, ...] | None]:
        """(image column, label column, class names) from the dataset's features."""
        import datasets

        features = dataset.features or {}
        images = [name for name, f in features.items() if isinstance(f, datasets.Image)]
        labels = [name for name, f in features.items() if isinstance(f, datasets.ClassLabel)]
        if not images:
            raise UserError(f"dataset {self.dataset!r} has no image column (columns: {', '.join(features) or '?'})")
        if not labels:
            raise UserError(f"dataset {self.dataset!r} has no class-label column (columns: "
                            f"{', '.join(features) or '?'}): class-conditional training needs one")
        return images[0], labels[0], tuple(features[labels[0]].names)

    @property
    def key(self) -> str:
        parts = []
        for name, dataset in self._splits.items():
            fingerprint = getattr(dataset, "_fingerprint", None) or getattr(dataset, "config_id", None) or ""
            if not fingerprint and Path(self.dataset).is_dir():
                files = sorted(p for p in Path(self.dataset).rglob("*") if p.is_file())
                fingerprint = _file_key(files, "hub-local")
            parts.append(f"{name}={fingerprint}")
        return f"hf:{self.dataset}:{self.config}:{self.split}:{';'.join(parts)}"

    @property
    def classes(self) -> tuple[str, ...]:
        return self._columns(next(iter(self._splits.values())))[2]

    def examples(self) -> Iterator[Example]:
        for name, dataset in self._splits.items():
            image_column, label_column, _ = self._columns(dataset)
            split = None if self.split is not None else ("train" if name == "train" else "val")
            for index, record in enumerate(dataset):
                yield Example(record[image_column], int(record[label_column]), split,
                              f"{self.dataset} {name} row {index}")


def open_image_source(spec: str) -> ImageSource:
    """The source a spec names."""
    if spec == "builtin":
        return DigitsSource()
    if spec.startswith("local:") and len(spec) > len("local:"):
        directory = Path(os.path.expanduser(spec[len("local:"):]))
        if not directory.is_dir():
            raise UserError(f"{directory} is not a directory: local: takes a folder of class folders or of IDX files")
        if _idx_file(directory, "train", "images-idx3-ubyte") is not None:
            return IdxSource(spec, directory)
        return FolderSource(spec, directory)
    if spec.startswith("hf:") and len(spec) > len("hf:"):
        name, _, split = spec[len("hf:"):].partition("@")
        dataset, _, config = name.partition(":")
        return HubImageSource(spec, dataset, config or None, split or None)
    raise UserError(f"unknown image source {spec!r}: use {', '.join(SCHEMES)}")
