"""Image shards: every source (the built-in digits, a folder of class folders, MNIST's IDX files, a Hugging
Face dataset in the hub's layout and in save_to_disk's) round-trips pixel for pixel with its labels and class
names; the manifest's counts and checksums catch a damaged or edited directory in one line; an interrupted
preparation resumes to byte-identical shards; the training stream is a seeded, resumable permutation."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import numpy as np
import pytest

from blueberry.data.format import MANIFEST_NAME
from blueberry.data.images import ImageShards, read_image_manifest
from blueberry.errors import DataError, UserError
from pipelines.images.prepare import ImagePrepareConfig, prepare_images
from pipelines.images.sources import read_idx
from pipelines.preparation import PARTIAL_STATE

CLASSES = ("cat", "dog", "owl")


def make_folder(root, per_class=7, size=6, seed=0, mode="RGB"):
    """A folder of class folders holding random PNGs; returns {(class index, file index): pixels (C, H, W)}."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = {}
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            shape = (size, size, 3) if mode == "RGB" else (size, size)
            image = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(image).save(root / name / f"{i:03d}.png")
            pixels[(label, i)] = image.transpose(2, 0, 1) if mode == "RGB" else image[None]
    return pixels


def all_images(data: ImageShards) -> list[tuple[bytes, int]]:
    out = []
    for split in ("train", "val"):
        images, labels = data.split_arrays(split)
        out += [(image.tobytes(), int(label)) for image, label in zip(images, labels)]
    return sorted(out)


def shard_bytes(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.arrow"))}


def test_a_folder_of_class_folders_round_trips(tmp_path):
    pixels = make_folder(tmp_path / "src")
    manifest = prepare_images(ImagePrepareConfig(source=f"local:{tmp_path / 'src'}", val_fraction=0.3),
                              tmp_path / "out", progress=False)
    data = ImageShards.open(tmp_path / "out")
    assert manifest.classes == CLASSES and manifest.shape == (3, 6, 6)
    assert manifest.splits["train"].images + manifest.splits["val"].images == 21 and manifest.splits["val"].images > 0
    assert all_images(data) == sorted((p.tobytes(), label) for (label, _), p in pixels.items())
    counts = [a + b for a, b in zip(manifest.splits["train"].class_counts, manifest.splits["val"].class_counts)]
    assert counts == [7, 7, 7]


def test_grey_images_resized_and_own_splits(tmp_path):
    from PIL import Image

    make_folder(tmp_path / "src" / "train", mode="L", size=10)
    make_folder(tmp_path / "src" / "test", per_class=2, mode="L", size=10, seed=1)
    cfg = ImagePrepareConfig(source=f"local:{tmp_path / 'src'}", image_size=5)
    manifest = prepare_images(cfg, tmp_path / "out", progress=False)
    assert manifest.shape == (1, 5, 5)
    assert manifest.splits["train"].class_counts == (7, 7, 7) and manifest.splits["val"].class_counts == (2, 2, 2)
    images, labels = ImageShards.open(tmp_path / "out").split_arrays("val")
    first = np.asarray(Image.open(tmp_path / "src" / "test" / "cat" / "000.png").resize((5, 5), Image.BICUBIC))
    assert np.array_equal(images[0, 0], first) and labels[0] == 0


def write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def test_mnist_idx_files_round_trip_with_their_test_split_and_class_names(tmp_path):
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 256, (30, 4, 4), dtype=np.uint8), rng.integers(0, 256, (10, 4, 4), dtype=np.uint8)
    train_labels, test_labels = rng.integers(0, 10, 30), rng.integers(0, 10, 10)
    src = tmp_path / "fashion"
    src.mkdir()
    write_idx(src / "train-images-idx3-ubyte.gz", train)
    write_idx(src / "train-labels-idx1-ubyte.gz", train_labels)
    write_idx(src / "t10k-images-idx3-ubyte", test)
    write_idx(src / "t10k-labels-idx1-ubyte", test_labels)
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    (src / "classes.txt").write_text("\n".join(names) + "\n")
    manifest = prepare_images(ImagePrepareConfig(source=f"local:{src}"), tmp_path / "out", progress=False)
    data = ImageShards.open(tmp_path / "out")
    assert manifest.classes == tuple(names) and manifest.shape == (1, 4, 4)
    images, labels = data.split_arrays("train")
    assert np.array_equal(images[:, 0], train) and np.array_equal(labels, train_labels)
    images, labels = data.split_arrays("val")
    assert np.array_equal(images[:, 0], test) and np.array_equal(labels, test_labels)


def test_a_damaged_idx_file_is_one_clear_error(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    write_idx(path, np.zeros((3, 4, 4), np.uint8))
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(UserError, match="cut short"):
        read_idx(path, 3)
    path.write_bytes(b"\x00\x00\x08\x01" + b"\x00" * 8)
    with pytest.raises(UserError, match="not an IDX file of 3-dimensional"):
        read_idx(path, 3)


@pytest.mark.slow
def test_the_builtin_digits_are_scikit_learns(tmp_path):
    from sklearn.datasets import load_digits

    manifest = prepare_images(ImagePrepareConfig(), tmp_path / "digits", progress=False)
    digits = load_digits()
    expected = sorted((np.rint(image * 255 / 16).astype(np.uint8)[None].tobytes(), int(label))
                      for image, label in zip(digits.images, digits.target))
    assert all_images(ImageShards.open(tmp_path / "digits")) == expected
    assert manifest.classes == tuple("0123456789") and manifest.shape == (1, 8, 8)
    assert 0.07 < manifest.splits["val"].images / 1797 < 0.13  # val_fraction 0.1, by hash


@pytest.mark.slow
def test_a_hugging_face_image_dataset_in_the_hubs_layout_and_save_to_disk(tmp_path):
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASSES))})
    arrays = {split: rng.integers(0, 256, (n, 5, 5, 3), dtype=np.uint8) for split, n in (("train", 12), ("test", 6))}
    splits = {}
    for split, array in arrays.items():
        splits[split] = datasets.Dataset.from_dict({"img": [Image.fromarray(a) for a in array],
                                                    "label": [i % 3 for i in range(len(array))]}, features=features)
        (tmp_path / "hub" / "plain_text").mkdir(parents=True, exist_ok=True)
        splits[split].to_parquet(str(tmp_path / "hub" / "plain_text" / f"{split}-00000-of-00001.parquet"))
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "saved"))
    for layout in ("hub", "saved"):
        manifest = prepare_images(ImagePrepareConfig(source=f"hf:{tmp_path / layout}"), tmp_path / f"out-{layout}",
                                  progress=False)
        data = ImageShards.open(tmp_path / f"out-{layout}")
        assert manifest.classes == CLASSES and manifest.shape == (3, 5, 5)
        images, labels = data.split_arrays("train")
        assert np.array_equal(images, arrays["train"].transpose(0, 3, 1, 2)) and list(labels) == [0, 1, 2] * 4
        images, _ = data.split_arrays("val")
        assert np.array_equal(images, arrays["test"].transpose(0, 3, 1, 2))
    no_labels = datasets.Dataset.from_dict({"img": [Image.fromarray(a) for a in arrays["test"]]},
                                           features=datasets.Features({"img": datasets.Image()}))
    no_labels.save_to_disk(str(tmp_path / "unlabelled"))
    with pytest.raises(UserError, match="no class-label column"):
        prepare_images(ImagePrepareConfig(source=f"hf:{tmp_path / 'unlabelled'}"), tmp_path / "x", progress=False)


@pytest.fixture
def prepared(tmp_path):
    make_folder(tmp_path / "src", per_class=10)
    prepare_images(ImagePrepareConfig(source=f"local:{tmp_path / 'src'}", val_fraction=0.2, shard_images=8),
                   tmp_path / "out", progress=False)
    return tmp_path / "out"


def test_a_damaged_shard_is_refused_by_its_checksum(prepared):
    shard = prepared / "train-00000.arrow"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="fails its sha256 check"):
        ImageShards.open(prepared)


def test_a_missing_shard_is_refused(prepared):
    (prepared / "train-00001.arrow").unlink()
    with pytest.raises(DataError, match="is missing"):
        ImageShards.open(prepared)


def shrink_first_shard(split):
    """Claim one image fewer in the first shard, its counts kept consistent (so only the shard disagrees)."""
    split["files"][0]["images"] -= 1
    counts = split["class_counts"]
    counts[next(i for i, c in enumerate(counts) if c)] -= 1


def edit_manifest(directory, change):
    raw = json.loads((directory / MANIFEST_NAME).read_text())
    change(raw)
    (directory / MANIFEST_NAME).write_text(json.dumps(raw))


@pytest.mark.parametrize("change, message", [
    (lambda m: m["splits"]["train"]["class_counts"].__setitem__(0, 99), "class_counts add up to"),
    (lambda m: m.__setitem__("shape", [3, 6, 7]), "not square"),
    (lambda m: m.__setitem__("shape", "6x6"), "shape is"),
    (lambda m: m["splits"]["train"]["files"][0].__setitem__("max_label", 3), "labels up to 3, beyond its 3 classes"),
    (lambda m: m["splits"]["train"]["files"][0].__setitem__("name", "../elsewhere.arrow"), "not a file inside"),
    (lambda m: m["splits"]["train"]["files"][0].__setitem__("name", "train-00000.arrow\x00"), "not a file inside"),
    (lambda m: shrink_first_shard(m["splits"]["train"]), "holds 8 images, the manifest says 7"),
    (lambda m: m.__setitem__("kind", "tokens"), "describes tokens data, not images"),
    (lambda m: m.pop("splits"), "splits is missing"),
])
def test_an_edited_manifest_is_one_clear_error(prepared, change, message):
    edit_manifest(prepared, change)
    with pytest.raises(DataError, match=message):
        ImageShards.open(prepared)


def test_labels_that_disagree_with_the_manifests_counts_are_refused(prepared):
    def swap(m):
        counts = m["splits"]["train"]["class_counts"]
        counts[0], counts[1] = counts[0] - 1, counts[1] + 1
    edit_manifest(prepared, swap)
    with pytest.raises(DataError, match="not the class counts its manifest records"):
        ImageShards.open(prepared)


def test_token_data_is_not_image_data(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"format_version": 1, "seq_len": 256, "dtype": "uint16"}))
    with pytest.raises(DataError, match="describes token data, not images"):
        ImageShards.open(tmp_path)


class StopAfter:
    def __init__(self, inner, n):
        self.inner, self.n = inner, n

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def examples(self):
        for i, example in enumerate(self.inner.examples()):
            if i == self.n:
                raise KeyboardInterrupt
            yield example


def test_an_interrupted_preparation_resumes_to_identical_shards(tmp_path, monkeypatch):
    make_folder(tmp_path / "src", per_class=12)
    cfg = ImagePrepareConfig(source=f"local:{tmp_path / 'src'}", val_fraction=0.25, shard_images=5)
    prepare_images(cfg, tmp_path / "reference", progress=False)

    import pipelines.images.prepare as prepare_module

    original = prepare_module.open_image_source
    monkeypatch.setattr(prepare_module, "open_image_source", lambda spec: StopAfter(original(spec), 23))
    with pytest.raises(KeyboardInterrupt):
        prepare_images(cfg, tmp_path / "resumed", progress=False)
    partial = json.loads((tmp_path / "resumed" / PARTIAL_STATE).read_text())
    assert 0 < partial["examples"] < 23 and not (tmp_path / "resumed" / MANIFEST_NAME).exists()
    with pytest.raises(DataError, match="never finished"):
        ImageShards.open(tmp_path / "resumed")

    monkeypatch.setattr(prepare_module, "open_image_source", original)
    kept = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "resumed").glob("*.arrow")}
    prepare_images(cfg, tmp_path / "resumed", progress=False)
    assert shard_bytes(tmp_path / "resumed") == shard_bytes(tmp_path / "reference")
    assert all((tmp_path / "resumed" / n).stat().st_mtime_ns == t for n, t in kept.items())  # not rewritten
    assert sorted(p.name for p in (tmp_path / "resumed").glob(".*")) == [".lock"]
    again = prepare_images(cfg, tmp_path / "resumed", progress=False)  # finished: returns at once
    assert again == read_image_manifest(tmp_path / "resumed")
    with pytest.raises(UserError, match="different preparation"):
        prepare_images(ImagePrepareConfig(source=cfg.source, val_fraction=0.5), tmp_path / "resumed", progress=False)


@pytest.mark.slow
def test_bad_sources_are_one_line(tmp_path):
    make_folder(tmp_path / "src", per_class=2)
    (tmp_path / "src" / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="broken.png is not a readable image"):
        prepare_images(ImagePrepareConfig(source=f"local:{tmp_path / 'src'}"), tmp_path / "a", progress=False)
    from PIL import Image

    (tmp_path / "wide" / "x").mkdir(parents=True)
    Image.new("L", (6, 4)).save(tmp_path / "wide" / "x" / "a.png")
    with pytest.raises(UserError, match="not square"):
        prepare_images(ImagePrepareConfig(source=f"local:{tmp_path / 'wide'}"), tmp_path / "b", progress=False)
    with pytest.raises(UserError, match="unknown image source"):
        prepare_images(ImagePrepareConfig(source="s3://bucket"), tmp_path / "c", progress=False)
    out = subprocess.run([sys.executable, "-m", "pipelines.images", "--source", f"local:{tmp_path / 'nowhere'}",
                          "--out", str(tmp_path / "d")], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "is not a directory" in out.stderr


def test_the_train_stream_is_a_seeded_resumable_permutation(prepared):
    data = ImageShards.open(prepared)
    images, labels = data.split_arrays("train")
    one = data.train_stream(batch_size=1, seed=3)
    epoch = [one.next() for _ in range(len(images))]
    assert sorted((b.images.numpy().tobytes(), int(b.labels)) for b in epoch) == \
        sorted((image.tobytes(), int(label)) for image, label in zip(images, labels))  # each image once
    four = data.train_stream(batch_size=4, seed=3)
    assert np.array_equal(four.next().images.numpy(), np.concatenate([b.images.numpy() for b in epoch[:4]]))
    resumed = data.train_stream(batch_size=4, seed=3, position=8)  # the stream's whole state
    assert np.array_equal(resumed.next().images.numpy(), np.concatenate([b.images.numpy() for b in epoch[8:12]]))
    ranks = [data.train_stream(batch_size=2, seed=3, rank=r, world_size=2).next() for r in (0, 1)]
    assert np.array_equal(np.concatenate([b.images.numpy() for b in ranks]),
                          np.concatenate([b.images.numpy() for b in epoch[:4]]))  # two ranks of 2 = one of 4
