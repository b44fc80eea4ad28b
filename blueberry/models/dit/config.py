"""The Diffusion Transformer's configuration and its named presets.

`DiTConfig` is a frozen dataclass that checks itself on construction. The evaluation settings (how many
images are sampled at each evaluation, with which sampler, steps and guidance, and whose features FID
uses) are `observed`: they change what is measured, not what is trained, so they stay out of a run's
identity and may change when a run resumes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from blueberry.core.config import TrainConfig, observed, require, require_choice, require_positive
from blueberry.errors import ConfigError

SAMPLER_KINDS: tuple[str, ...] = ("euler", "heun")
FEATURE_KINDS: tuple[str, ...] = ("classifier", "inception")


@dataclass(frozen=True)
class DiTConfig:
    """Shape of a class-conditional DiT and what its training adds to the data. Defaults: `dit-cifar`."""

    image_size: int = 32  # the data's square side
    channels: int = 3
    num_classes: int = 10  # the null class used for guidance is one more, index num_classes
    patch_size: int = 2
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    mlp_ratio: float = 4.0
    class_dropout: float = 0.1  # labels replaced by the null class in training, for classifier-free guidance
    ema_decay: float = 0.9999  # the sampling weights' EMA; warmed up as min(decay, (1 + n) / (10 + n)) at step n
    hflip: bool = False  # flip half of each training batch left-right (augmentation)
    # Evaluation: images sampled (class-balanced, with the EMA weights) for FID and class accuracy.
    eval_samples: int = observed(1000)  # 0: only the validation loss
    eval_steps: int = observed(50)
    eval_sampler: str = observed("euler")
    eval_cfg_scale: float = observed(2.0)
    fid_features: str = observed("classifier")  # classifier: a small CNN trained on the data; inception: InceptionV3

    def __post_init__(self) -> None:
        require_positive(image_size=self.image_size, channels=self.channels, num_classes=self.num_classes,
                         patch_size=self.patch_size, d_model=self.d_model, n_layers=self.n_layers,
                         n_heads=self.n_heads, mlp_ratio=self.mlp_ratio, eval_steps=self.eval_steps)
        require(self.image_size % self.patch_size == 0,
                f"patch_size ({self.patch_size}) must divide image_size ({self.image_size})")
        require(self.d_model % self.n_heads == 0, f"n_heads ({self.n_heads}) must divide d_model ({self.d_model})")
        require(self.d_model % 4 == 0, f"d_model ({self.d_model}) must be a multiple of 4 for 2-D sin-cos positions")
        require(0 <= self.class_dropout < 1, f"class_dropout must be in [0, 1), got {self.class_dropout}")
        require(0 <= self.ema_decay < 1, f"ema_decay must be in [0, 1), got {self.ema_decay}")
        require(self.eval_samples >= 0, f"eval_samples must be >= 0, got {self.eval_samples}")
        require(self.eval_cfg_scale >= 0, f"eval_cfg_scale must be >= 0, got {self.eval_cfg_scale}")
        require_choice("eval_sampler", self.eval_sampler, SAMPLER_KINDS)
        require_choice("fid_features", self.fid_features, FEATURE_KINDS)

    @property
    def tokens(self) -> int:
        """Patches per image: the transformer's sequence length."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.d_model * self.mlp_ratio)


def dit_tiny() -> DiTConfig:
    """1.27M parameters on the built-in 8x8 digits (16 patches of 2x2): trains on 2 CPU cores in minutes."""
    return DiTConfig(image_size=8, channels=1, num_classes=10, patch_size=2, d_model=128, n_layers=4, n_heads=4,
                     class_dropout=0.1, ema_decay=0.999, eval_samples=500, eval_steps=20, eval_cfg_scale=2.0)


def dit_cifar() -> DiTConfig:
    """The lab's size on CIFAR-10: 768 hidden, 12 layers, 12 heads, patches of 2x2 (256 per image), flips."""
    return DiTConfig(hflip=True)


PRESETS: dict[str, Callable[[], DiTConfig]] = {"dit-tiny": dit_tiny, "dit-cifar": dit_cifar}


def dit_tiny_train() -> TrainConfig:
    """`dit-tiny`'s default training: 600 steps of 128 images (47 epochs of the digits), five evaluations;
    about 12 minutes on 2 busy CPU cores (docs/images.md)."""
    return TrainConfig(train_tokens=76_800, batch_size=128, optimizer="adamw", adamw_lr=1e-3, weight_decay=0.0,
                       warmup_frac=0.02, schedule="cosine", eval_every=120, eval_tokens=10_000, log_every=20)


def dit_cifar_train() -> TrainConfig:
    """`dit-cifar`'s default training: DiT's recipe (AdamW, no decay, batch 128 here), 100 epochs of CIFAR-10."""
    return TrainConfig(train_tokens=5_000_000, batch_size=128, optimizer="adamw", adamw_lr=1e-4, weight_decay=0.0,
                       warmup_frac=0.01, schedule="constant", eval_every=5000, eval_tokens=10_000, log_every=50)


TRAIN_PRESETS: dict[str, Callable[[], TrainConfig]] = {"dit-tiny": dit_tiny_train, "dit-cifar": dit_cifar_train}


def preset(name: str) -> DiTConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()
