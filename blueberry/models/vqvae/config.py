"""The VQ-VAE's configuration and its named presets.

`VQVAEConfig` is a frozen dataclass that checks itself on construction. A preset is a zero-argument
function returning one; its default training (`TRAIN_PRESETS`) counts images, as the image data does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from blueberry.core.config import TrainConfig, require, require_positive
from blueberry.errors import ConfigError


@dataclass(frozen=True)
class VQVAEConfig:
    """Shape of a convolutional VQ-VAE with an EMA codebook. Defaults: `vqvae-cifar`."""

    image_size: int = 32  # the data's square side
    channels: int = 3
    width: int = 128  # channels of every convolution between the image and the codes
    downsample: int = 2  # stride-2 stages: the code grid's side is image_size / 2**downsample
    res_blocks: int = 2  # residual blocks at the lowest resolution, in the encoder and in the decoder
    codebook_size: int = 512
    code_dim: int = 64
    commitment: float = 0.25  # beta: weight of ||z_e - sg(e)||^2, which keeps the encoder near its codes
    ema_decay: float = 0.99  # the codebook follows the mean of the vectors assigned to each code
    # A code whose moving count of assignments per batch falls below this is dead: it restarts at an
    # encoder output of the current batch (Dhariwal et al. 2020, Jukebox, section 3.2).
    dead_code_threshold: float = 1.0

    def __post_init__(self) -> None:
        require_positive(image_size=self.image_size, channels=self.channels, width=self.width,
                         codebook_size=self.codebook_size, code_dim=self.code_dim)
        require(self.downsample >= 0, f"downsample must be >= 0, got {self.downsample}")
        require(self.res_blocks >= 0, f"res_blocks must be >= 0, got {self.res_blocks}")
        require(self.image_size % 2 ** self.downsample == 0,
                f"image_size ({self.image_size}) must be divisible by 2**downsample ({2 ** self.downsample})")
        require(self.codebook_size >= 2, f"codebook_size must be at least 2, got {self.codebook_size}")
        require(self.commitment >= 0, f"commitment must be >= 0, got {self.commitment}")
        require(0 < self.ema_decay < 1, f"ema_decay must be in (0, 1), got {self.ema_decay}")
        require(self.dead_code_threshold >= 0, f"dead_code_threshold must be >= 0, got {self.dead_code_threshold}")

    @property
    def grid(self) -> int:
        """The side of an image's code grid."""
        return self.image_size // 2 ** self.downsample

    @property
    def codes_per_image(self) -> int:
        return self.grid * self.grid


def vqvae_tiny() -> VQVAEConfig:
    """The built-in 8x8 digits as a 4x4 grid of 64 codes (0.22M parameters): trains on a CPU in minutes."""
    return VQVAEConfig(image_size=8, channels=1, width=64, downsample=1, res_blocks=1, codebook_size=64, code_dim=16)


def vqvae_cifar() -> VQVAEConfig:
    """32x32 colour images (CIFAR-10) as an 8x8 grid of 512 codes."""
    return VQVAEConfig()


PRESETS: dict[str, Callable[[], VQVAEConfig]] = {"vqvae-tiny": vqvae_tiny, "vqvae-cifar": vqvae_cifar}


def vqvae_tiny_train() -> TrainConfig:
    """`vqvae-tiny`'s default training: 500 steps of 128, about 40 epochs of the digits' 1,621 training images
    (1.4 TFLOPs; docs/multimodal.md has what it reaches)."""
    return TrainConfig(train_tokens=64_000, batch_size=128, optimizer="adamw", adamw_lr=2e-3, weight_decay=0.0,
                       warmup_frac=0.02, schedule="cosine", eval_every=100, eval_tokens=10_000, log_every=20)


def vqvae_cifar_train() -> TrainConfig:
    """`vqvae-cifar`'s default training: 40 epochs of CIFAR-10's 50,000 training images."""
    return TrainConfig(train_tokens=2_000_000, batch_size=128, optimizer="adamw", adamw_lr=5e-4, weight_decay=0.0,
                       warmup_frac=0.01, schedule="cosine", eval_every=2000, eval_tokens=10_000, log_every=50)


TRAIN_PRESETS: dict[str, Callable[[], TrainConfig]] = {"vqvae-tiny": vqvae_tiny_train,
                                                       "vqvae-cifar": vqvae_cifar_train}


def preset(name: str) -> VQVAEConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()
