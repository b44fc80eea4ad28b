"""The judge: a small CNN classifier trained on a dataset's training images, which says what class a generated
image shows (class accuracy) and whose penultimate features FID compares (where InceptionV3 is not used).

It is trained once per dataset and cached: `$BLUEBERRY_CACHE/judges/<preparation key>-v<version>.pt`
(a dataset is named by its preparation key, so the same images give the same judge wherever their directory
is). Training is deterministic on a CPU: a fixed seed, its own RNG (the training run's RNG state is left
untouched, so a run resumes bit for bit however often it evaluates), a fixed number of steps and augmentation
draws. A GPU may train a slightly different one: runs compare FIDs judged by the same cached file, which
records the device it was trained on. One process trains it while others wait (a lock beside the file);
it loads with `weights_only=True`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from blueberry.data.cache import cache_dir
from blueberry.data.images import ImageShards
from blueberry.files import ExclusiveLock, LockHeld, atomic_file
from blueberry.vision.pixels import to_model_units

JUDGE_VERSION = 1
FEATURES = 128
BATCH = 128
LR = 1e-3
EPOCHS = 30
MAX_STEPS = 4000
SEED = 0


class Judge(nn.Module):
    """Conv stages (two 3x3 convs + GELU, then 2x2 average pooling, width doubling) down to at most 4x4,
    then a linear layer to `FEATURES` (the FID features, after GELU) and the class head."""

    def __init__(self, channels: int, image_size: int, num_classes: int, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size, c_in = image_size, channels
        while size > 4:
            layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.GELU(), nn.Conv2d(width, width, 3, padding=1),
                       nn.GELU(), nn.AvgPool2d(2)]
            c_in, width, size = width, width * 2, size // 2
        self.convs = nn.Sequential(*layers)
        self.embed = nn.Linear(c_in * size * size, FEATURES)
        self.head = nn.Linear(FEATURES, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, FEATURES) for images in [-1, 1]."""
        return F.gelu(self.embed(self.convs(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def judge_path(data: ImageShards) -> Path:
    return cache_dir() / "judges" / f"{data.manifest.preparation_key[:24]}-v{JUDGE_VERSION}.pt"


def train_judge(data: ImageShards, device: torch.device) -> tuple[Judge, float]:
    """A judge trained on `data`'s training images, and its accuracy on the held-out images."""
    manifest = data.manifest
    images, labels = data.split_arrays("train")
    x, y = to_model_units(images).to(device), torch.as_tensor(labels).to(device)
    steps = min(MAX_STEPS, math.ceil(EPOCHS * len(x) / BATCH))
    shift = max(1, manifest.image_size // 16)  # random translations of up to this many pixels
    # Its own RNG stream (the run's is restored afterwards) and gradients even inside an evaluation.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.enable_grad():
        torch.manual_seed(SEED)
        judge = Judge(manifest.channels, manifest.image_size, manifest.num_classes).to(device)
        generator = torch.Generator().manual_seed(SEED)
        optimizer = torch.optim.AdamW(judge.parameters(), lr=LR, weight_decay=1e-4)
        for step in range(steps):
            rows = torch.randint(len(x), (BATCH,), generator=generator)
            dx, dy = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=generator))
            batch = torch.roll(F.pad(x[rows.to(device)], [shift] * 4, value=-1.0), (dy, dx), dims=(2, 3))
            batch = batch[:, :, shift:shift + manifest.image_size, shift:shift + manifest.image_size]
            for group in optimizer.param_groups:  # cosine decay to zero
                group["lr"] = LR * 0.5 * (1 + math.cos(math.pi * step / steps))
            loss = F.cross_entropy(judge(batch), y[rows.to(device)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    judge.eval()
    val_images, val_labels = data.split_arrays("val")
    accuracy = float("nan")
    if len(val_images):
        with torch.no_grad():
            predicted = torch.cat([judge(to_model_units(val_images[i:i + 512]).to(device)).argmax(1).cpu()
                                   for i in range(0, len(val_images), 512)])
        accuracy = float((predicted == torch.as_tensor(val_labels)).double().mean())
    return judge, accuracy


def load_or_train_judge(data: ImageShards, device: torch.device) -> tuple[Judge, dict[str, Any]]:
    """The cached judge of `data` (trained and saved first if there is none), on `device`, and its record
    (accuracy on the held-out images, the device it was trained on, training time)."""
    path = judge_path(data)
    loaded = _load(path, data, device)
    if loaded is not None:
        return loaded
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = ExclusiveLock(path.with_suffix(".lock"), f"the judge of {data.manifest.source}")
    while True:
        try:
            lock.acquire()
            break
        except LockHeld:  # another process is training it: use its result
            time.sleep(0.5)
    try:
        loaded = _load(path, data, device)
        if loaded is not None:
            return loaded
        started = time.perf_counter()
        judge, accuracy = train_judge(data, device)
        record = {"val_accuracy": accuracy, "trained_on": device.type, "train_time_s": time.perf_counter() - started,
                  "preparation_key": data.manifest.preparation_key, "version": JUDGE_VERSION}
        with atomic_file(path) as out:
            torch.save({"record": record, "weights": judge.state_dict()}, out)
        return judge, record
    finally:
        lock.release()


def _load(path: Path, data: ImageShards, device: torch.device) -> tuple[Judge, dict[str, Any]] | None:
    """The judge saved at `path`, if it is whole and made for `data`; None means train it (again)."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
        record = payload["record"]
        if record["preparation_key"] != data.manifest.preparation_key or record["version"] != JUDGE_VERSION:
            return None
        manifest = data.manifest
        with torch.random.fork_rng(devices=[]):  # its initialisation, overwritten at once, draws nothing of the run's
            judge = Judge(manifest.channels, manifest.image_size, manifest.num_classes)
        judge.to(device).load_state_dict(payload["weights"])
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, EOFError):
        return None
    return judge.eval(), record
