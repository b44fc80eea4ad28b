"""Configuration helpers every model kind shares, and `TrainConfig`, the loop's own configuration.

Configs are frozen dataclasses that check themselves on construction (`require`), so an invalid
value fails where it is written with a message that says how to fix it. Fields that only observe a
run (how often it is evaluated, logged or checkpointed) are declared with `observed(...)`: they change
what is recorded, not what is trained, so run identity (`blueberry.core.identity`) leaves them out.
`apply_overrides` sets dotted paths (`train.muon_lr`, `model.n_layers`) through any nested config.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from blueberry.errors import ConfigError

OptimizerKind = Literal["muon", "adamw"]
ScheduleKind = Literal["constant", "cosine", "wsd"]
PrecisionKind = Literal["auto", "bf16", "fp32"]

OPTIMIZER_KINDS: tuple[str, ...] = ("muon", "adamw")
SCHEDULE_KINDS: tuple[str, ...] = ("constant", "cosine", "wsd")
PRECISION_KINDS: tuple[str, ...] = ("auto", "bf16", "fp32")

OBSERVES = "blueberry.observes"  # field metadata key: the field does not change what is trained


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def require_positive(**values: float) -> None:
    for name, value in values.items():
        require(value > 0, f"{name} must be positive, got {value}")


def require_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    require(value in choices, f"{name} must be one of {', '.join(choices)}; got {value!r}")


def observed(default: Any) -> Any:
    """A dataclass field that only observes the run (evaluation, logging, checkpoint cadence)."""
    return dataclasses.field(default=default, metadata={OBSERVES: True})


ConfigT = TypeVar("ConfigT")


def replace(config: ConfigT, **overrides: Any) -> ConfigT:
    """A copy with some fields changed; unknown field names are a `ConfigError`, not a TypeError."""
    known = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown {type(config).__name__} field(s): {', '.join(unknown)}")
    return dataclasses.replace(config, **overrides)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls: type[ConfigT], values: Mapping[str, Any]) -> ConfigT:
    """Rebuild a flat config from `to_dict` output (JSON turns tuples into lists; this turns them back)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def determining(config: Any) -> dict[str, Any]:
    """`to_dict` without the observed fields, recursively: what determines a run's result."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        if f.metadata.get(OBSERVES):
            continue
        value = getattr(config, f.name)
        out[f.name] = determining(value) if dataclasses.is_dataclass(value) else value
    return out


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key/value pairs of a nested config (`model.d_model`, `train.muon_lr`): what MLflow and
    Tune record. Tuples become lists, as JSON would write them."""
    flat: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            flat |= flatten(value, f"{prefix}{f.name}.")
        else:
            flat[f"{prefix}{f.name}"] = list(value) if isinstance(value, tuple) else value
    return flat


def apply_overrides(config: ConfigT, overrides: Mapping[str, Any]) -> ConfigT:
    """`config` with dotted paths set: {"train.muon_lr": 0.01, "model.n_layers": 8}. Every level is
    a dataclass; each is rebuilt (and so validated) once with all of its changes."""
    return _apply(config, overrides, "")


def _apply(config: ConfigT, overrides: Mapping[str, Any], prefix: str) -> ConfigT:
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    fields = {f.name for f in dataclasses.fields(config)}
    for path, value in overrides.items():
        head, dot, rest = path.partition(".")
        where = f"{prefix}{path}"
        if head not in fields or (dot and not rest):
            raise ConfigError(f"{where!r} names no field of {type(config).__name__}: use "
                              f"{_field_paths(config, prefix)}")
        if dot:
            if not dataclasses.is_dataclass(getattr(config, head)):
                raise ConfigError(f"{where!r}: {prefix}{head} is a value, not a section")
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    for head, inner in nested.items():
        direct[head] = _apply(getattr(config, head), inner, f"{prefix}{head}.")
    return dataclasses.replace(config, **direct)


def _field_paths(config: Any, prefix: str) -> str:
    """How to name `config`'s fields in an override: "model.<field> or train.<field>", "train.seed"."""
    names = [f"{prefix}{f.name}" + (".<field>" if dataclasses.is_dataclass(getattr(config, f.name)) else "")
             for f in dataclasses.fields(config)]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


@dataclass(frozen=True)
class TrainConfig:
    """How to train: budget, batch, optimizer, schedule, evaluation. Defaults are the speedrun record.

    Progress is counted in the task's unit (`Task.unit`: tokens for the language model); the
    budget and evaluation fields keep the language model's names (`train_tokens`, `eval_tokens`),
    which are also the names MLflow histories and scaling fits already read."""

    train_tokens: int = 8_011_776  # the budget, in the task's units
    batch_size: int = 8  # samples (sequences) per micro-batch
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
    eval_every: int = observed(100)  # optimizer steps between validations; 0 validates only at the end
    eval_at_tokens: tuple[int, ...] = observed(())  # also validate at the first step past each of these
    eval_tokens: int = 262_144  # validation units per evaluation
    log_every: int = observed(10)
    target_train_loss: float | None = None  # stop once the smoothed train loss reaches this
    loss_smoothing: float = 0.9  # EMA factor for the smoothed train loss
    divergence_factor: float = 3.0  # diverged when the loss exceeds this multiple of its first value
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: PrecisionKind = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False
    compile_warmup_steps: int = 3  # untimed steps that trigger compilation before the clock starts
    checkpoint_every: int = observed(0)  # optimizer steps between checkpoints; 0 saves only at the end

    def __post_init__(self) -> None:
        require_positive(
            train_tokens=self.train_tokens, batch_size=self.batch_size,
            grad_accum_steps=self.grad_accum_steps, eval_tokens=self.eval_tokens,
            log_every=self.log_every, divergence_factor=self.divergence_factor,
        )
        require_choice("optimizer", self.optimizer, OPTIMIZER_KINDS)
        require_choice("schedule", self.schedule, SCHEDULE_KINDS)
        require_choice("precision", self.precision, PRECISION_KINDS)
        for name in ("muon_lr", "adamw_lr"):
            value = getattr(self, name)
            require(0 < value < math.inf, f"{name} must be a positive finite number, got {value}")
        # numpy's generators (the data order) take seeds in [0, 2**63); torch's take up to 2**64.
        require(0 <= self.seed < 2**63, f"seed must be an integer in [0, 2**63), got {self.seed}")
        require(0 <= self.muon_momentum < 1, f"muon_momentum must be in [0, 1), got {self.muon_momentum}")
        require(len(self.adamw_betas) == 2 and all(0 <= b < 1 for b in self.adamw_betas),
                f"adamw_betas must be two values in [0, 1), got {self.adamw_betas}")
        require(0 <= self.weight_decay < math.inf, f"weight_decay must be >= 0 and finite, got {self.weight_decay}")
        require(0 <= self.grad_clip < math.inf, f"grad_clip must be >= 0 and finite, got {self.grad_clip}")
        for name in ("warmup_frac", "decay_frac", "min_lr_frac"):
            value = getattr(self, name)
            require(0 <= value <= 1, f"{name} must be in [0, 1], got {value}")
        require(self.warmup_frac + (self.decay_frac if self.schedule == "wsd" else 0) <= 1,
                "warmup_frac + decay_frac must not exceed 1")
        require(self.eval_every >= 0, f"eval_every must be >= 0, got {self.eval_every}")
        require(all(t > 0 for t in self.eval_at_tokens), "eval_at_tokens must be positive unit counts")
        require(self.checkpoint_every >= 0, f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        require(0 <= self.loss_smoothing < 1, f"loss_smoothing must be in [0, 1), got {self.loss_smoothing}")
        require(self.compile_warmup_steps >= 0, "compile_warmup_steps must be >= 0")
        if self.target_train_loss is not None:
            require_positive(target_train_loss=self.target_train_loss)

    def tokens_per_step(self, units_per_sample: int, world_size: int = 1) -> int:
        """Units (for the language model: prediction targets) one optimizer step consumes across
        `world_size` data-parallel ranks."""
        return self.batch_size * self.grad_accum_steps * units_per_sample * world_size

    def total_steps(self, units_per_sample: int, world_size: int = 1) -> int:
        """Optimizer steps in the budget, rounded down: the last partial step is not taken."""
        per_step = self.tokens_per_step(units_per_sample, world_size)
        steps = self.train_tokens // per_step
        require(steps >= 1, f"train_tokens={self.train_tokens} is smaller than one step ({per_step} units): "
                            "raise it or shrink the batch")
        return steps

    def budget_tokens(self, units_per_sample: int, world_size: int = 1) -> int:
        """Units the run trains on: `train_tokens` rounded down to whole optimizer steps."""
        return self.total_steps(units_per_sample, world_size) * self.tokens_per_step(units_per_sample, world_size)
