"""Patches -> tokens -> residual mixing layers (`mixers`) -> mean over tokens -> class logits."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from classifier.config import ClassifierConfig


class Mixer(nn.Module):
    """x + W2 gelu(W1 norm(x)) over each token, then x + mixing across tokens."""

    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(cfg.width)
        self.up = nn.Linear(cfg.width, 2 * cfg.width)
        self.down = nn.Linear(2 * cfg.width, cfg.width)
        self.across = nn.Linear(cfg.tokens, cfg.tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, W)
        x = x + self.down(F.gelu(self.up(self.norm(x))))
        return x + self.across(x.transpose(1, 2)).transpose(1, 2)


class Classifier(nn.Module):
    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Linear(cfg.channels * cfg.patch * cfg.patch, cfg.width)
        self.mixers = nn.ModuleList(Mixer(cfg) for _ in range(cfg.depth))
        self.head = nn.Linear(cfg.width, cfg.num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) in [-1, 1] -> (B, classes)
        p = self.cfg.patch
        patches = F.unfold(images, kernel_size=p, stride=p).transpose(1, 2)  # (B, T, C p p)
        x = self.embed(patches)
        for mixer in self.mixers:
            x = mixer(x)
        return self.head(x.mean(dim=1))


def count_params(cfg: ClassifierConfig) -> int:
    return sum(p.numel() for p in Classifier(cfg).parameters())
