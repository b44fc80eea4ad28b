"""From a fitted law to a plan a lab can fund: size, tokens, predicted loss, hyperparameters, GPU-hours,
cost, and a concrete Blueberry architecture."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from blueberry.core.hardware import gpu_peak_flops
from blueberry.errors import UserError
from blueberry.models.lm.config import ModelConfig
from blueberry.models.lm.model import count_params
from blueberry.scaling.hparams import HparamLaws, deepseek_laws
from blueberry.scaling.law import Law

DEFAULT_VOCAB = 49152  # the SmolLM2 tokenizer the Blueberry family uses
# Width-to-depth ratio d_model / n_layers: about 23 for nano-88m, 128 for Llama-3-8B-like models;
# interpolated as a power of N in between (and beyond).
ASPECT_ANCHORS = ((88e6, 23.0), (8e9, 128.0))
# The largest plan worth computing. Today's largest training runs are near 1e12 parameters and under
# 1e27 FLOP; these sit a thousand times and more beyond them (a Chinchilla-optimal 1e15-parameter model
# needs about 1e32 FLOP), far past anything a fitted law predicts, and keep powers of N and C finite.
MAX_PARAMS = 1e15
MAX_FLOPS = 1e33


@dataclass(frozen=True)
class Target:
    """What the plan is for: exactly one of params / flops / gpu_hours (tokens only with params)."""

    params: float | None = None
    tokens: float | None = None
    flops: float | None = None
    gpu_hours: float | None = None
    gpu: str = "h100"
    mfu: float = 0.4
    price_per_gpu_hour: float | None = None

    @property
    def flags(self) -> str:
        """The target as the flags that asked for it, for messages."""
        return " ".join(f"--{name.replace('_', '-')} {getattr(self, name):g}"
                        for name in ("params", "tokens", "flops", "gpu_hours") if getattr(self, name) is not None)

    def __post_init__(self) -> None:
        given = [name for name in ("params", "flops", "gpu_hours") if getattr(self, name) is not None]
        if len(given) != 1:
            raise UserError("give exactly one of --params, --flops, --gpu-hours (or --preset)")
        if self.tokens is not None and self.params is None:
            raise UserError("--tokens needs --params (or --preset): it fixes D for a given N")
        for name in ("params", "tokens", "flops", "gpu_hours", "price_per_gpu_hour"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise UserError(f"--{name.replace('_', '-')} must be a positive finite number, got {value}")
        if self.params is not None and self.params > MAX_PARAMS:
            raise UserError(f"--params {self.params:g} is beyond any plan: give a size up to {MAX_PARAMS:g} parameters")
        if self.flops is not None and self.flops > MAX_FLOPS:
            raise UserError(f"--flops {self.flops:g} is beyond any plan: give a compute up to {MAX_FLOPS:g} FLOP")
        if not 0 < self.mfu <= 1:
            raise UserError(f"--mfu must be in (0, 1], got {self.mfu}")


@dataclass(frozen=True)
class Plan:
    N: float
    D: float
    C: float
    loss: float
    loss_ci: tuple[float, float] | None
    optimal_N: float  # compute-optimal size at the same compute
    optimal_D: float
    optimal_loss: float
    optimal_compute_for_same_loss: float  # the compute a compute-optimal model needs to reach `loss`
    gpu: str
    mfu: float
    gpu_hours: float
    cost: float | None
    lr: float
    batch_tokens: float
    hparams_source: str
    architecture: ModelConfig
    architecture_params: int

    @property
    def tokens_per_param(self) -> float:
        return self.D / self.N

    def to_dict(self) -> dict[str, object]:
        out = {k: v for k, v in self.__dict__.items() if k != "architecture"}
        out["tokens_per_param"] = self.tokens_per_param
        out["architecture"] = self.architecture.__dict__
        return out


def _target_aspect(N: float) -> float:
    (n0, r0), (n1, r1) = ASPECT_ANCHORS
    return r0 * (N / n0) ** (math.log(r1 / r0) / math.log(n1 / n0))


def _kv_heads(n_heads: int) -> int:
    """Grouped-query attention with about four query heads per KV head."""
    return max(k for k in range(1, max(1, n_heads // 4) + 1) if n_heads % k == 0)


def architecture_for(N: float, vocab_size: int = DEFAULT_VOCAB, seq_len: int = 2048,
                     tolerance: float = 0.02) -> ModelConfig:
    """A Blueberry config with `count_params(...).total` within `tolerance` of N, shaped like the family:
    squared-ReLU and 64-dim heads below 1B parameters, SwiGLU and 128-dim heads above, width-to-depth
    ratio following `ASPECT_ANCHORS`, widths in multiples of 128, d_ff tuned in multiples of 64."""
    mlp, head_dim = ("swiglu", 128) if N >= 1e9 else ("relu2", 64)
    ff_matrices = 3 if mlp == "swiglu" else 2
    aspect = _target_aspect(N)
    best: tuple[float, ModelConfig] | None = None
    for d_model in range(128, 32768 + 1, 128):
        n_heads = d_model // head_dim
        if n_heads == 0:
            continue
        base = ModelConfig(vocab_size=vocab_size, d_model=d_model, n_layers=1, n_heads=n_heads,
                           n_kv_heads=_kv_heads(n_heads), d_ff=64, mlp=mlp, seq_len=seq_len)
        fixed = count_params(base)
        per_layer_without_ff = fixed.non_embedding - d_model - ff_matrices * d_model * 64
        default_ff = 4 * d_model if mlp == "relu2" else 8 * d_model // 3
        layers = round((N - vocab_size * d_model - d_model) / (per_layer_without_ff + ff_matrices * d_model * default_ff))
        if layers < 1:
            continue
        # With depth fixed, pick the d_ff (multiple of 64) that lands closest to N.
        remaining = (N - vocab_size * d_model - d_model) / layers - per_layer_without_ff
        d_ff = max(64, int(round(remaining / (ff_matrices * d_model) / 64)) * 64)
        cfg = ModelConfig(**{**base.__dict__, "n_layers": layers, "d_ff": d_ff})
        error = abs(count_params(cfg).total / N - 1)
        ff_ratio = d_ff / default_ff
        if error > tolerance or not 0.75 <= ff_ratio <= 1.33:
            continue
        score = abs(math.log(d_model / layers / aspect)) + abs(math.log(ff_ratio)) + 10 * error
        if best is None or score < best[0]:
            best = (score, cfg)
    if best is None:
        raise UserError(f"no Blueberry architecture within {tolerance:.0%} of {N:.3g} parameters "
                        f"(vocab {vocab_size}): is the target smaller than the embedding alone?")
    return best[1]


def _loss_interval(samples: dict[str, np.ndarray] | None, N: float, D: float) -> tuple[float, float] | None:
    if not samples:
        return None
    losses = samples["E"] + samples["A"] / N ** samples["alpha"] + samples["B"] / D ** samples["beta"]
    return float(np.percentile(losses, 2.5)), float(np.percentile(losses, 97.5))


def _compute_for_loss(law: Law, loss: float) -> float:
    """The compute at which the compute-optimal model reaches `loss` (bisection in log C)."""
    if loss <= law.E:
        return math.inf
    lo, hi = 1e6, 1e40
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if law.loss(*law.compute_optimal(mid)) > loss:
            lo = mid
        else:
            hi = mid
    return hi


def make_plan(law: Law, target: Target, samples: dict[str, np.ndarray] | None = None,
              hparams: HparamLaws | None = None, vocab_size: int = DEFAULT_VOCAB,
              architecture: ModelConfig | None = None) -> Plan:
    """The plan for `target` under `law`; `samples` (bootstrap draws of the law) give the loss interval."""
    peak = gpu_peak_flops(target.gpu)
    try:
        if target.params is not None:
            N = target.params
            D = target.tokens if target.tokens is not None else law.compute_optimal_tokens(N)
            C = 6 * N * D
        else:
            C = target.flops if target.flops is not None else target.gpu_hours * 3600 * peak * target.mfu
            N, D = law.compute_optimal(C)
        optimal_N, optimal_D = law.compute_optimal(C)
    except ArithmeticError:  # exponents near 0 send G = (...)^(1/(alpha+beta)) or (N/G)^(1/a) out of float range
        raise UserError(f"{target.flags}: the law (alpha {law.alpha:g}, beta {law.beta:g}) puts this plan beyond "
                        "floating-point range; check the law's exponents") from None
    if not C <= MAX_FLOPS:
        raise UserError(f"{target.flags} means training compute C = {C:.3g} FLOP, beyond the "
                        f"{MAX_FLOPS:g} FLOP a plan can mean: ask for less")
    if not N <= MAX_PARAMS:
        raise UserError(f"{target.flags} means a model of N = {N:.3g} parameters under this law, beyond the "
                        f"{MAX_PARAMS:g} a plan can mean: ask for less")
    loss = float(law.loss(N, D))
    gpu_hours = C / (peak * target.mfu) / 3600
    laws, source = (hparams, "fitted") if hparams is not None else (deepseek_laws(), "DeepSeek LLM AdamW law")
    arch = architecture if architecture is not None else architecture_for(N, vocab_size)
    return Plan(
        N=N, D=D, C=C, loss=loss, loss_ci=_loss_interval(samples, N, D), optimal_N=optimal_N, optimal_D=optimal_D,
        optimal_loss=float(law.loss(optimal_N, optimal_D)), optimal_compute_for_same_loss=_compute_for_loss(law, loss),
        gpu=target.gpu, mfu=target.mfu, gpu_hours=gpu_hours,
        cost=gpu_hours * target.price_per_gpu_hour if target.price_per_gpu_hour is not None else None,
        lr=float(laws.lr(C)), batch_tokens=float(laws.batch_tokens(C)), hparams_source=source,
        architecture=arch, architecture_params=count_params(arch).total,
    )
