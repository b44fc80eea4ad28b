"""The one door from `blueberry` into `pipelines/`: open what `--data` names, share it through Ray's
object store, and what `blueberry-data` drives (preparation, recipes). Tokenizers are the data layer's
(`blueberry.data.tokenizer`). Nothing else in
`blueberry` imports `pipelines`, which in turn reads only `blueberry.data` and `blueberry.errors`.

A `--data` string names token shards (the language model's data) or, for a task whose `data_format` is
"images" (a diffusion model), image shards: `builtin` (scikit-learn's digits), `local:DIR` or `hf:DATASET`
(prepared into the cache on first use) or a prepared image directory. A task with data of another form
passes its own handle (an object with `open()`) wherever the platform takes data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from blueberry.core.task import Task
from blueberry.data.format import Manifest, read_manifest
from blueberry.data.images import ImageShards, SharedImages, read_image_manifest
from blueberry.data.tokens import TokenShards
from pipelines.builtin import builtin_data_dir
from pipelines.images.prepare import ImagePrepareConfig, prepare_images, prepared_image_dir  # noqa: F401
from pipelines.multimodal import documents_key, prepare_documents  # noqa: F401  (multimodal data)
from pipelines.prepare import PrepareConfig, prepare  # noqa: F401  (blueberry-data's, through this door)
from pipelines.recipes import HUB_TOKENIZER, recipe  # noqa: F401
from pipelines.share import SharedShards, share


def _directory(spec: str, seq_len: int, progress: bool) -> Path:
    return builtin_data_dir(seq_len, progress=progress) if spec == "builtin" else Path(spec)


def open_data(spec: str, seq_len: int, progress: bool = True) -> TokenShards:
    """`builtin` (the built-in corpus, prepared at `seq_len` on first use and cached) or a prepared directory."""
    return TokenShards.open(_directory(spec, seq_len, progress))


def _image_directory(spec: str, progress: bool) -> Path:
    """An image source prepared into the cache on first use, or a prepared image directory."""
    if spec == "builtin" or spec.startswith(("local:", "hf:")):
        return prepared_image_dir(spec, progress=progress)
    return Path(spec)


def open_images(spec: str, progress: bool = True) -> ImageShards:
    """`builtin` (the digits), `local:DIR`, `hf:DATASET` (each prepared once, in the cache) or a prepared image
    directory."""
    return ImageShards.open(_image_directory(spec, progress))


def open_for(task: Task, spec: str, progress: bool = True) -> TokenShards | ImageShards:
    """The data `spec` names, checked against `task` (a one-line error when it cannot train it)."""
    if task.data_format == "images":
        data = open_images(spec, progress=progress)
    else:
        data = open_data(spec, task.units_per_sample, progress=progress)
    task.check_data(data)
    return data


def open_shared(task: Task, spec: str) -> SharedShards | SharedImages:
    """The data `spec` names, checked against `task` and put into the object store once: a small
    handle whose `open()` reads it zero-copy in any trial or worker on the node. (Image data travels
    inside its handle, which Tune puts into the object store once.)"""
    data = open_for(task, spec, progress=False)
    return SharedImages(data) if isinstance(data, ImageShards) else share(data)


def data_key(data: Any) -> str:
    """What a run's identity records of its data: the preparation key of token data (the same
    corpus, tokenizer and format give the same key, wherever the directory is), else the handle's type."""
    if isinstance(data, SharedShards):
        return Manifest.from_json(data.manifest_json).preparation_key
    if isinstance(data, (TokenShards, ImageShards)):
        return data.manifest.preparation_key
    if isinstance(data, SharedImages):
        return data.data.manifest.preparation_key
    return type(data).__name__


def spec_key(task: Task, spec: str) -> str:
    """`data_key` of what `spec` names, read from its manifest alone (no shard is read or verified;
    the built-in corpus is prepared on first use)."""
    if task.data_format == "images":
        return read_image_manifest(_image_directory(spec, progress=False)).preparation_key
    return read_manifest(_directory(spec, task.units_per_sample, progress=False)).preparation_key
