"""Fréchet distance between feature statistics (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update
Rule Converge to a Local Nash Equilibrium"), and the statistics themselves.

FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)). The trace of the matrix square root is taken
through a symmetric form: S1 S2 is similar to A = S1^(1/2) S2 S1^(1/2) (symmetric, positive semi-definite),
so tr((S1 S2)^(1/2)) = sum of sqrt(eigenvalues of A), in float64; no complex parts to discard, as the
general `scipy.linalg.sqrtm` route has (tests/test_dit.py checks both agree).

`FeatureStats` keeps sums (count, sum of features, sum of outer products) in float64, which add up across
batches and data-parallel ranks exactly; mean and covariance (unbiased, as `numpy.cov`) come from them.

Features come from a classifier trained on the same data (`blueberry.vision.judge`) or from InceptionV3
(`InceptionFeatures`): the TorchScript translation of TensorFlow's 2015-12-05 Inception that StyleGAN2-ADA,
clean-fid and others use (`inception-2015-12-05.pt`), when its file is on this machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from blueberry.data.cache import cache_dir
from blueberry.errors import DataError

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_ENV = "BLUEBERRY_INCEPTION"  # a path to the file, where it is not in the cache


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"mismatched statistics: means {mu1.shape} {mu2.shape}, covariances {sigma1.shape} "
                         f"{sigma2.shape}")
    values, vectors = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root1 = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T  # S1^(1/2)
    inner = root1 @ sigma2 @ root1
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


@dataclass
class FeatureStats:
    """Running sums of feature vectors: count, sum and sum of outer products, in float64."""

    count: torch.Tensor  # () float64
    total: torch.Tensor  # (d,)
    outer: torch.Tensor  # (d, d)

    @classmethod
    def zeros(cls, dim: int, device: torch.device | str = "cpu") -> FeatureStats:
        z = torch.zeros((), dtype=torch.float64, device=device)
        return cls(z, torch.zeros(dim, dtype=torch.float64, device=device),
                   torch.zeros(dim, dim, dtype=torch.float64, device=device))

    def add(self, features: torch.Tensor) -> None:
        f = features.double()
        self.count += len(f)
        self.total += f.sum(0)
        self.outer += f.T @ f

    def mean(self) -> np.ndarray:
        return (self.total / self.count).cpu().numpy()

    def covariance(self) -> np.ndarray:
        """Unbiased (divides by n - 1), as `numpy.cov`."""
        n = self.count
        mean = self.total / n
        return ((self.outer - n * torch.outer(mean, mean)) / (n - 1)).cpu().numpy()


def inception_path() -> Path:
    """Where InceptionV3's TorchScript file is looked for: $BLUEBERRY_INCEPTION, else the Blueberry cache
    (`blueberry.data.cache.cache_dir`)."""
    explicit = os.environ.get(INCEPTION_ENV)
    if explicit:
        return Path(explicit)
    return cache_dir() / INCEPTION_FILE


def check_inception() -> Path:
    """The InceptionV3 file, or a one-line error saying how to get it."""
    path = inception_path()
    if not path.is_file():
        raise DataError(f"fid_features inception needs InceptionV3's weights at {path} (none there): on a machine "
                        f"with network, download {INCEPTION_FILE} (the TorchScript file StyleGAN2-ADA and clean-fid "
                        f"use) to that path or set ${INCEPTION_ENV}; or use --model fid_features=classifier")
    return path


class InceptionFeatures:
    """2048-d pool features of InceptionV3 (TorchScript): uint8 images in, any size (it resizes to 299)."""

    dim = 2048

    def __init__(self, path: Path, device: torch.device) -> None:
        # TorchScript runs the file's graph (unlike a checkpoint's weights_only load): use the published file.
        try:
            self.net = torch.jit.load(str(path), map_location=device).eval()
        except (RuntimeError, OSError, ValueError) as err:
            raise DataError(f"cannot load InceptionV3 from {path} ({str(err).splitlines()[0][:120]}): download "
                            f"{INCEPTION_FILE} again") from None

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.repeat(1, 3, 1, 1)
        return self.net(images, return_features=True).double()
