"""How good generated images are, judged against a dataset: the share the judge (`judge.py`, a classifier trained
on the data) recognises as the class they were meant to show, and the FID of their features (the judge's,
or InceptionV3's) against those of the data's training images. The DiT's evaluations, `blueberry-generate
--score` for every image-drawing kind, and the language model over image codes all judge with `ImageScorer`."""

from __future__ import annotations

from typing import Any

import torch

from blueberry.data.images import ImageShards
from blueberry.vision.fid import FeatureStats, InceptionFeatures, check_inception, frechet_distance
from blueberry.vision.judge import load_or_train_judge
from blueberry.vision.pixels import to_model_units


class ImageScorer:
    """The judge of a dataset and the reference statistics of its training images' features."""

    def __init__(self, data: ImageShards, device: torch.device, features: str) -> None:
        self.device = device
        self.judge, self.record = load_or_train_judge(data, device)
        self.inception = InceptionFeatures(check_inception(), device) if features == "inception" else None
        images, _ = data.split_arrays("train")
        reference = self._stats_dim()
        for start in range(0, len(images), 512):
            reference.add(self.features(torch.from_numpy(images[start:start + 512]).to(device)))
        self.mu, self.sigma = reference.mean(), reference.covariance()

    def _stats_dim(self) -> FeatureStats:
        dim = self.inception.dim if self.inception is not None else self.judge.embed.out_features
        return FeatureStats.zeros(dim, self.device)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """FID features of uint8 images."""
        if self.inception is not None:
            return self.inception(images)
        return self.judge.features(to_model_units(images)).double()

    @torch.no_grad()
    def score(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[FeatureStats, torch.Tensor]:
        """(feature sums, number the judge recognises as their label) of uint8 images."""
        stats = self._stats_dim()
        correct = torch.zeros((), dtype=torch.float64, device=self.device)
        for start in range(0, len(images), 512):
            chunk = images[start:start + 512].to(self.device)
            stats.add(self.features(chunk))
            predicted = self.judge(to_model_units(chunk)).argmax(1)
            correct += (predicted == labels[start:start + 512].to(self.device)).sum()
        return stats, correct

    def fid(self, stats: FeatureStats) -> float:
        return frechet_distance(stats.mean(), stats.covariance(), self.mu, self.sigma)

    def judge_images(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        """What the judge makes of uint8 `images` meant to show `labels`: the share it recognises, their FID,
        and the judge's own record (where it was trained, its accuracy on held-out images)."""
        stats, correct = self.score(images, labels)
        return {"class_accuracy": correct.item() / len(labels), "fid": self.fid(stats),
                "judge_trained_on": self.record["trained_on"], "judge_val_accuracy": self.record["val_accuracy"]}


def judged_line(score: dict[str, Any], samples: int) -> str:
    """`judge_images`'s verdict as the line `blueberry-generate --score` prints."""
    return (f"judged       {score['class_accuracy']:.1%} recognised as their class; FID {score['fid']:.2f} "
            f"({samples} samples, {score['judge_trained_on']}-trained judge, "
            f"{score['judge_val_accuracy']:.1%} on held-out images)")
