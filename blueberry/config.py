"""Typed, validated, immutable configuration for a model and a training run.

A run is fully described by a `ModelConfig` and a `TrainConfig`. Both are frozen dataclasses that
check themselves on construction, so an invalid value fails where it is written, with a message
that says how to fix it. `flatten()` turns them into the flat key/value params that MLflow and Tune
record; `from_dict()` rebuilds them from JSON.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from blueberry.errors import ConfigError

MlpKind = Literal["relu2", "swiglu"]
OptimizerKind = Literal["muon", "adamw"]
ScheduleKind = Literal["constant", "cosine", "wsd"]
PrecisionKind = Literal["auto", "bf16", "fp32"]

MLP_KINDS: tuple[str, ...] = ("relu2", "swiglu")
OPTIMIZER_KINDS: tuple[str, ...] = ("muon", "adamw")
SCHEDULE_KINDS: tuple[str, ...] = ("constant", "cosine", "wsd")
PRECISION_KINDS: tuple[str, ...] = ("auto", "bf16", "fp32")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _require_positive(**values: float) -> None:
    for name, value in values.items():
        _require(value > 0, f"{name} must be positive, got {value}")


def _require_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    _require(value in choices, f"{name} must be one of {', '.join(choices)}; got {value!r}")


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
        _require_positive(
            vocab_size=self.vocab_size, d_model=self.d_model, n_layers=self.n_layers,
            n_heads=self.n_heads, n_kv_heads=self.n_kv_heads, d_ff=self.d_ff,
            seq_len=self.seq_len, rope_base=self.rope_base, norm_eps=self.norm_eps,
        )
        _require(self.d_model % self.n_heads == 0,
                 f"n_heads ({self.n_heads}) must divide d_model ({self.d_model})")
        _require(self.n_heads % self.n_kv_heads == 0,
                 f"n_kv_heads ({self.n_kv_heads}) must divide n_heads ({self.n_heads}) for grouped-query attention")
        _require(self.head_dim % 2 == 0,
                 f"head_dim d_model/n_heads = {self.head_dim} must be even for rotary embeddings")
        _require_choice("mlp", self.mlp, MLP_KINDS)
        _require(self.n_experts >= 0, f"n_experts must be >= 0, got {self.n_experts}")
        if self.n_experts:
            _require(1 <= self.experts_top_k <= self.n_experts,
                     f"experts_top_k must be in [1, n_experts={self.n_experts}], got {self.experts_top_k}")
            _require(self.moe_aux_loss_weight >= 0, "moe_aux_loss_weight must be >= 0")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0


@dataclass(frozen=True)
class TrainConfig:
    """How to train: token budget, batch, optimizer, schedule, evaluation. Defaults are the record run."""

    train_tokens: int = 8_011_776
    batch_size: int = 8  # sequences per micro-batch
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    optimizer: OptimizerKind = "muon"
    muon_lr: float = 0.024
    muon_momentum: float = 0.95
    adamw_lr: float = 0.006
    adamw_betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.2  # AdamW's decoupled decay on >=2-D parameters; norms are never decayed
    grad_clip: float = 1.0  # 0 turns clipping off
    schedule: ScheduleKind = "cosine"
    warmup_frac: float = 0.05
    decay_frac: float = 0.2  # warmup-stable-decay: the final fraction of steps spent decaying
    min_lr_frac: float = 0.1  # the schedule's floor as a fraction of the peak LR
    eval_every: int = 100  # optimizer steps between validations; 0 validates only at the end
    eval_at_tokens: tuple[int, ...] = ()  # also validate at the first step past each of these token counts
    eval_tokens: int = 262_144  # validation tokens per evaluation
    log_every: int = 10
    target_train_loss: float | None = None  # stop once the smoothed train loss reaches this
    loss_smoothing: float = 0.9  # EMA factor for the smoothed train loss
    divergence_factor: float = 3.0  # diverged when the loss exceeds this multiple of its first value
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: PrecisionKind = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False
    compile_warmup_steps: int = 3  # untimed steps that trigger compilation before the clock starts
    checkpoint_every: int = 0  # optimizer steps between checkpoints; 0 saves only at the end

    def __post_init__(self) -> None:
        _require_positive(
            train_tokens=self.train_tokens, batch_size=self.batch_size,
            grad_accum_steps=self.grad_accum_steps, eval_tokens=self.eval_tokens,
            log_every=self.log_every, divergence_factor=self.divergence_factor,
        )
        _require_choice("optimizer", self.optimizer, OPTIMIZER_KINDS)
        _require_choice("schedule", self.schedule, SCHEDULE_KINDS)
        _require_choice("precision", self.precision, PRECISION_KINDS)
        for name in ("muon_lr", "adamw_lr"):
            _require(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        _require(0 <= self.muon_momentum < 1, f"muon_momentum must be in [0, 1), got {self.muon_momentum}")
        _require(len(self.adamw_betas) == 2 and all(0 <= b < 1 for b in self.adamw_betas),
                 f"adamw_betas must be two values in [0, 1), got {self.adamw_betas}")
        _require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _require(self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip}")
        for name in ("warmup_frac", "decay_frac", "min_lr_frac"):
            value = getattr(self, name)
            _require(0 <= value <= 1, f"{name} must be in [0, 1], got {value}")
        _require(self.warmup_frac + (self.decay_frac if self.schedule == "wsd" else 0) <= 1,
                 "warmup_frac + decay_frac must not exceed 1")
        _require(self.eval_every >= 0, f"eval_every must be >= 0, got {self.eval_every}")
        _require(all(t > 0 for t in self.eval_at_tokens), "eval_at_tokens must be positive token counts")
        _require(self.checkpoint_every >= 0, f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        _require(0 <= self.loss_smoothing < 1, f"loss_smoothing must be in [0, 1), got {self.loss_smoothing}")
        _require(self.compile_warmup_steps >= 0, "compile_warmup_steps must be >= 0")
        if self.target_train_loss is not None:
            _require_positive(target_train_loss=self.target_train_loss)

    def tokens_per_step(self, seq_len: int, world_size: int = 1) -> int:
        """Tokens (prediction targets) one optimizer step consumes across `world_size` data-parallel ranks."""
        return self.batch_size * self.grad_accum_steps * seq_len * world_size

    def total_steps(self, seq_len: int, world_size: int = 1) -> int:
        """Optimizer steps in the budget, rounded down: the last partial step is not taken."""
        per_step = self.tokens_per_step(seq_len, world_size)
        steps = self.train_tokens // per_step
        _require(steps >= 1, f"train_tokens={self.train_tokens} is smaller than one step ({per_step} tokens): "
                             "raise it or shrink the batch")
        return steps

    def budget_tokens(self, seq_len: int, world_size: int = 1) -> int:
        """Tokens the run trains on: `train_tokens` rounded down to whole optimizer steps."""
        return self.total_steps(seq_len, world_size) * self.tokens_per_step(seq_len, world_size)


# Presets: named, zero-argument functions so each is a readable literal, not a dict of overrides.

def nano_88m() -> ModelConfig:
    """Blueberry-Nano 88M: the speedrun record architecture."""
    return ModelConfig()


def nano_151m() -> ModelConfig:
    """Blueberry 151M: the 1B-token milestone architecture (32 layers, SwiGLU)."""
    return ModelConfig(n_layers=32, mlp="swiglu")


BUILTIN_VOCAB_SIZE = 8192  # the built-in byte-level BPE tokenizer's vocabulary


def tiny() -> ModelConfig:
    """About 1.8M parameters: trains on a 2-core CPU in minutes; the tests' and smoke runs' model."""
    return ModelConfig(vocab_size=BUILTIN_VOCAB_SIZE, d_model=128, n_layers=4, n_heads=4,
                       n_kv_heads=2, d_ff=512, seq_len=256)


def small() -> ModelConfig:
    """About 6.4M parameters: the largest model a laptop CPU trains in a coffee break."""
    return ModelConfig(vocab_size=BUILTIN_VOCAB_SIZE, d_model=256, n_layers=6, n_heads=8,
                       n_kv_heads=4, d_ff=1024, seq_len=512)


PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "tiny": tiny,
    "small": small,
    "nano-88m": nano_88m,
    "nano-151m": nano_151m,
}


def preset(name: str) -> ModelConfig:
    """The model config of a named preset."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()


# Serialisation.

ConfigT = TypeVar("ConfigT", ModelConfig, TrainConfig)


def replace(config: ConfigT, **overrides: Any) -> ConfigT:
    """A copy with some fields changed; unknown field names are a `ConfigError`, not a TypeError."""
    known = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown {type(config).__name__} field(s): {', '.join(unknown)}")
    return dataclasses.replace(config, **overrides)


def to_dict(config: ModelConfig | TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls: type[ConfigT], values: Mapping[str, Any]) -> ConfigT:
    """Rebuild a config from `to_dict` output (JSON turns tuples into lists; this turns them back)."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    coerced = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**coerced)


@dataclass(frozen=True)
class RunConfig:
    """A model and how to train it: everything that determines a run's result."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def flatten(self) -> dict[str, Any]:
        """Flat `model.x` / `train.y` params, the form MLflow and Tune record."""
        flat: dict[str, Any] = {}
        for prefix, cfg in (("model", self.model), ("train", self.train)):
            for key, value in to_dict(cfg).items():
                flat[f"{prefix}.{key}"] = list(value) if isinstance(value, tuple) else value
        return flat

    def to_json(self) -> str:
        return json.dumps({"model": to_dict(self.model), "train": to_dict(self.train)}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        raw = json.loads(text)
        return cls(model=from_dict(ModelConfig, raw["model"]), train=from_dict(TrainConfig, raw["train"]))
