"""The language model's configuration and its named presets.

`ModelConfig` is a frozen dataclass that checks itself on construction, so an invalid shape fails
where it is written, with a message that says how to fix it. A preset is a zero-argument function
returning one, so each reads as a literal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from blueberry.core.config import require, require_choice, require_positive
from blueberry.errors import ConfigError

MlpKind = Literal["relu2", "swiglu"]
MLP_KINDS: tuple[str, ...] = ("relu2", "swiglu")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a Blueberry transformer. Defaults are Blueberry-Nano 88M."""

    vocab_size: int = 49152
    d_model: int = 512
    n_layers: int = 22
    n_heads: int = 8
    n_kv_heads: int = 4
    d_ff: int = 2048
    mlp: MlpKind = "relu2"
    seq_len: int = 2048
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    # Mixture of experts: 0 experts means a dense MLP in every block.
    n_experts: int = 0
    experts_top_k: int = 2
    moe_aux_loss_weight: float = 0.01

    def __post_init__(self) -> None:
        require_positive(
            vocab_size=self.vocab_size, d_model=self.d_model, n_layers=self.n_layers,
            n_heads=self.n_heads, n_kv_heads=self.n_kv_heads, d_ff=self.d_ff,
            seq_len=self.seq_len, rope_base=self.rope_base, norm_eps=self.norm_eps,
        )
        require(self.d_model % self.n_heads == 0,
                f"n_heads ({self.n_heads}) must divide d_model ({self.d_model})")
        require(self.n_heads % self.n_kv_heads == 0,
                f"n_kv_heads ({self.n_kv_heads}) must divide n_heads ({self.n_heads}) for grouped-query attention")
        require(self.head_dim % 2 == 0,
                f"head_dim d_model/n_heads = {self.head_dim} must be even for rotary embeddings")
        require_choice("mlp", self.mlp, MLP_KINDS)
        require(self.n_experts >= 0, f"n_experts must be >= 0, got {self.n_experts}")
        if self.n_experts:
            require(1 <= self.experts_top_k <= self.n_experts,
                    f"experts_top_k must be in [1, n_experts={self.n_experts}], got {self.experts_top_k}")
            require(self.moe_aux_loss_weight >= 0, "moe_aux_loss_weight must be >= 0")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0


# Presets: named, zero-argument functions so each is a readable literal, not a dict of overrides.

def nano_88m() -> ModelConfig:
    """Blueberry-Nano 88M: the speedrun record architecture."""
    return ModelConfig()


def nano_151m() -> ModelConfig:
    """Blueberry 151M: the 1B-token milestone architecture (32 layers, SwiGLU)."""
    return ModelConfig(n_layers=32, mlp="swiglu")


# The built-in byte-level BPE tokenizer's vocabulary (`blueberry.data.tokenizer.BUILTIN_VOCAB_SIZE`, which
# tests/test_config.py checks against this): the small presets train on the built-in corpus.
BUILTIN_VOCAB_SIZE = 8192


def tiny() -> ModelConfig:
    """About 1.8M parameters: trains on a 2-core CPU in minutes; the tests' and smoke runs' model."""
    return ModelConfig(vocab_size=BUILTIN_VOCAB_SIZE, d_model=128, n_layers=4, n_heads=4,
                       n_kv_heads=2, d_ff=512, seq_len=256)


def small() -> ModelConfig:
    """About 6.4M parameters: the largest model a laptop CPU trains in a coffee break."""
    return ModelConfig(vocab_size=BUILTIN_VOCAB_SIZE, d_model=256, n_layers=6, n_heads=8,
                       n_kv_heads=4, d_ff=1024, seq_len=512)


# Multimodal data from the digits (`blueberry-data prepare --source vq:RUN`, `blueberry.models.lm.multimodal`):
# the built-in text vocabulary, then <seg_start> and <seg_end>, then vqvae-tiny's 64 codes.
MM_TINY_VOCAB_SIZE = BUILTIN_VOCAB_SIZE + 2 + 64


def mm_tiny() -> ModelConfig:
    """`tiny` over text and image tokens: captions and vqvae-tiny's 4x4 code grids of the built-in digits
    (about 22 tokens an image, three a row of 64)."""
    return ModelConfig(vocab_size=MM_TINY_VOCAB_SIZE, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=512,
                       seq_len=64)


PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "tiny": tiny,
    "small": small,
    "nano-88m": nano_88m,
    "nano-151m": nano_151m,
    "mm-tiny": mm_tiny,
}


def preset(name: str) -> ModelConfig:
    """The model config of a named preset."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()
