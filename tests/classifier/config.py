"""The classifier's config and its named presets."""

from __future__ import annotations

from dataclasses import dataclass

from blueberry.core.config import TrainConfig, require_positive


@dataclass(frozen=True)
class ClassifierConfig:
    """Images cut into `patch` x `patch` patches, each a token; `depth` residual token-mixing layers; a class head."""

    image_size: int = 8
    channels: int = 1
    num_classes: int = 10
    patch: int = 2
    width: int = 32
    depth: int = 2

    def __post_init__(self) -> None:
        require_positive(image_size=self.image_size, channels=self.channels, num_classes=self.num_classes,
                         patch=self.patch, width=self.width, depth=self.depth)

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch) ** 2


PRESETS = {"classifier-tiny": ClassifierConfig}


def classifier_train() -> TrainConfig:
    """A few seconds on two cores: images counted as the unit, AdamW and Muon rates for a small MLP."""
    return TrainConfig(train_tokens=64 * 80, batch_size=64, eval_every=20, eval_tokens=256, muon_lr=0.05,
                       adamw_lr=1e-2, weight_decay=0.0, warmup_frac=0.05, device="cpu", log_every=5)


TRAIN_PRESETS = {"classifier-tiny": classifier_train}
