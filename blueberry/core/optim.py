"""Optimizers and learning-rate schedules.

- `Muon` (Jordan et al. 2024, "Muon: MomentUm Orthogonalized by Newton-schulz") updates each 2-D hidden
  matrix with the orthogonalised Nesterov momentum, scaled by sqrt(max(1, rows/cols)). The
  orthogonaliser is Polar Express (Amsel et al. 2025, arXiv:2505.16932): five fixed odd quintic
  polynomial steps, minimax-optimal for the polar factor, in bf16 on GPUs.
- AdamW takes everything else: embeddings, norm gains, the MoE router.
- `build_optimizer` returns one `OptimizerSet` that steps, zeroes, schedules and checkpoints both,
  or plain AdamW over every parameter (the alternative that sweeps compare against).
- Schedules: constant, warmup + cosine, warmup-stable-decay; each a multiplier on every group's peak LR.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn as nn

from blueberry.core.config import TrainConfig
from blueberry.errors import ConfigError

# (a, b, c) per step for X <- a X + (b A + c A^2) X with A = X X^T: the five-step Polar Express
# schedule as modded-nanogpt's speedrun record recomputed it with a 1.02 safety factor (matching the
# 1.02 normalisation below). The paper's own published list differs.
POLAR_EXPRESS_COEFFS: tuple[tuple[float, float, float], ...] = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


def polar_express(G: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Approximate the orthogonal polar factor U V^T of G (..., m, n), computed in `dtype`.

    Singular values of the result land near 1: within [0.859, 1.141] for every normalised singular
    value in [1e-3, 1] (tests/test_optim.py checks it in float64); directions are those of G's
    singular vectors.
    """
    if steps > len(POLAR_EXPRESS_COEFFS):
        raise ValueError(f"Polar Express has {len(POLAR_EXPRESS_COEFFS)} designed steps, asked for {steps}")
    X = G.to(dtype)
    transposed = X.size(-2) > X.size(-1)
    if transposed:  # iterate on the wide side so X X^T is the smaller Gram matrix
        X = X.mT
    # Frobenius norm bounds the spectral norm; the 2% margin keeps every singular value below 1.
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.02 + 1e-6)
    for a, b, c in POLAR_EXPRESS_COEFFS[:steps]:
        A = X @ X.mT
        X = a * X + (b * A + c * (A @ A)) @ X
    return X.mT if transposed else X


class Muon(torch.optim.Optimizer):
    """Nesterov momentum, orthogonalised by Polar Express, for 2-D parameters only."""

    def __init__(self, params: Iterable[nn.Parameter] | Iterable[dict[str, Any]], lr: float, momentum: float = 0.95,
                 nesterov: bool = True, ortho_dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov))
        self.ortho_dtype = ortho_dtype
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon updates 2-D matrices only; got a parameter of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            beta = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad))
                buf.lerp_(p.grad, 1 - beta)
                update = p.grad.lerp(buf, beta) if group["nesterov"] else buf
                update = polar_express(update, dtype=self.ortho_dtype)
                scale = math.sqrt(max(1.0, p.size(0) / p.size(1)))
                p.add_(update.to(p.dtype), alpha=-group["lr"] * scale)


class OptimizerSet:
    """Several optimizers stepped, zeroed, scheduled and checkpointed as one."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers
        # Read once here: loading a checkpoint replaces the group dicts with the saved ones, and a
        # checkpoint written before groups were named would drop the names.
        self.group_names = [group["name"] for group in self.param_groups]
        for group in self.param_groups:
            group.setdefault("peak_lr", group["lr"])

    def learning_rates(self) -> dict[str, float]:
        """Each param group's current LR by the group's name: `muon`, `adamw`, `adamw_no_decay`."""
        return {name: group["lr"] for name, group in zip(self.group_names, self.param_groups)}

    @property
    def param_groups(self) -> Iterator[dict[str, Any]]:
        return (g for opt in self.optimizers for g in opt.param_groups)

    def set_lr_multiplier(self, multiplier: float) -> None:
        for group in self.param_groups:
            group["lr"] = group["peak_lr"] * multiplier

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def state_dict(self) -> list[dict[str, Any]]:
        return [opt.state_dict() for opt in self.optimizers]

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        if len(states) != len(self.optimizers):
            raise ValueError(f"checkpoint holds {len(states)} optimizer states, this run has {len(self.optimizers)}")
        for opt, state in zip(self.optimizers, states):
            opt.load_state_dict(state)


def is_hidden_matrix(name: str, param: nn.Parameter) -> bool:
    """Muon's share by default: 2-D weights inside the repeated blocks (a module list named `blocks`, as
    in Blueberry and most transformers), except an MoE router (a tiny classifier head). Embeddings and
    output heads go to AdamW. A task with another layout says its own (`Task.is_hidden_matrix`)."""
    return param.ndim == 2 and name.startswith("blocks.") and ".router." not in name


HiddenRule = Callable[[str, nn.Parameter], bool]


def split_params(model: nn.Module, is_hidden: HiddenRule = is_hidden_matrix,
                 ) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
    """(hidden matrices, other decayed >=2-D params, 1-D params that are never decayed)."""
    hidden, decayed, no_decay = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if is_hidden(name, p):
            hidden.append(p)
        elif p.ndim >= 2:
            decayed.append(p)
        else:
            no_decay.append(p)
    return hidden, decayed, no_decay


def _adamw(groups: list[dict[str, Any]], cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.adamw_lr, betas=cfg.adamw_betas,
                             fused=device.type == "cuda")


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device,
                    is_hidden: HiddenRule = is_hidden_matrix) -> OptimizerSet:
    """Muon for hidden matrices plus AdamW for the rest, or AdamW for everything."""
    hidden, decayed, no_decay = split_params(model, is_hidden)
    if cfg.optimizer == "adamw":
        return OptimizerSet([_adamw([{"params": hidden + decayed, "weight_decay": cfg.weight_decay, "name": "adamw"},
                                     {"params": no_decay, "weight_decay": 0.0, "name": "adamw_no_decay"}],
                                    cfg, device)])
    if not hidden:
        raise ConfigError("the model has no hidden matrices for Muon (see Task.is_hidden_matrix): "
                          "train it with optimizer adamw")
    # bf16 matmuls are what make Polar Express cheap on GPUs; most CPUs have no fast bf16 GEMM.
    ortho_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    muon = Muon([{"params": hidden, "name": "muon"}], lr=cfg.muon_lr, momentum=cfg.muon_momentum,
                ortho_dtype=ortho_dtype)
    adamw = _adamw([{"params": decayed, "weight_decay": cfg.weight_decay, "name": "adamw"},
                    {"params": no_decay, "weight_decay": 0.0, "name": "adamw_no_decay"}], cfg, device)
    return OptimizerSet([muon, adamw])


def lr_multiplier(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """The schedule's multiplier on the peak LR for optimizer step `step` (0-based) of `total_steps`."""
    warmup = round(cfg.warmup_frac * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    floor = cfg.min_lr_frac
    if cfg.schedule == "cosine":
        progress = (step - warmup) / max(1, total_steps - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    decay_start = total_steps - round(cfg.decay_frac * total_steps)  # warmup-stable-decay: linear decay
    if step < decay_start:
        return 1.0
    progress = (step - decay_start + 1) / max(1, total_steps - decay_start)
    return 1.0 - (1 - floor) * min(progress, 1.0)
