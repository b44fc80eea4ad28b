"""A class-conditional Diffusion Transformer (Peebles & Xie 2023, "Scalable Diffusion Models with
Transformers", arXiv:2212.09748) that predicts the velocity of a flow-matching path.

Choices:
- Patchify: a (patch x patch) convolution with stride patch turns a (C, H, W) image into (H/p)(W/p) tokens;
  the final layer maps each token back to p * p * C values and `unpatchify` reassembles the image.
- Positions: fixed 2-D sin-cos embeddings (half the channels encode the row, half the column), as DiT.
- Conditioning: the sum of a timestep embedding (sinusoidal features of 1000 t through a 2-layer MLP) and a
  class embedding with one extra row, the null class (index num_classes), which label dropout trains and
  classifier-free guidance samples with.
- adaLN-Zero: every block regresses shift, scale and gate for attention and MLP from the conditioning; the
  regressions (and the final layer) start at zero, so every block starts as the identity.
- Blocks: pre-LayerNorm without affine weights (the modulation supplies them), multi-head self-attention
  (PyTorch SDPA) and a GELU(tanh) MLP of `mlp_ratio` x width; no dropout.
- The output is a velocity with the image's shape (no learned variance: flow matching needs none).
- EMA: the model carries an exponential moving average of its parameters as buffers under `ema.`, so it is
  saved, resumed and loaded with the weights; `ema_model()` is a copy that samples with them.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from blueberry.models.dit.config import DiTConfig

TIME_FREQUENCIES = 256  # sinusoidal features of the timestep, as DiT
TIME_SCALE = 1000.0  # t in [0, 1] is embedded as 1000 t, DiT's timestep range


def sincos_2d(d_model: int, grid: int) -> torch.Tensor:
    """(grid * grid, d_model) fixed position embeddings: the first half of the channels encode the row,
    the second half the column, each as [sin(pos w_k), cos(pos w_k)] with w_k = 10000^(-k / (d/4))."""
    quarter = d_model // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega  # (T, d/4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()


def timestep_features(t: torch.Tensor, dim: int = TIME_FREQUENCIES, max_period: float = 10000.0) -> torch.Tensor:
    """(B, dim) sinusoidal features of TIME_SCALE * t."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = TIME_SCALE * t.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)  # (B, H, T, hd)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, T, D))


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.d_model, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.mlp_hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.mlp_hidden, cfg.d_model))
        self.modulation = nn.Linear(cfg.d_model, 6 * cfg.d_model)  # adaLN-Zero: zero-initialised

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(c)).chunk(6, dim=-1)  # (B, D) each
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(cfg.d_model, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Linear(cfg.d_model, 2 * cfg.d_model)
        self.linear = nn.Linear(cfg.d_model, cfg.patch_size ** 2 * cfg.channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(F.silu(c)).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


def ema_name(parameter_name: str) -> str:
    """The EMA buffer's name (under `ema.`) of a parameter: dots cannot appear in a buffer's name."""
    return parameter_name.replace(".", "__")


class DiT(nn.Module):
    """v(x_t, t, y): the velocity of the path from noise (t = 0) to data (t = 1) at x_t, for class y."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D, grid = cfg.d_model, cfg.image_size // cfg.patch_size
        self.patch_embed = nn.Conv2d(cfg.channels, D, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.register_buffer("pos_embed", sincos_2d(D, grid), persistent=False)  # (T, D)
        self.time_embed = nn.Sequential(nn.Linear(TIME_FREQUENCIES, D), nn.SiLU(), nn.Linear(D, D))
        self.class_embed = nn.Embedding(cfg.num_classes + 1, D)  # the last row is the null class
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.n_layers))
        self.final = FinalLayer(cfg)
        self._initialize()
        self.ema = nn.Module()
        for name, p in self.named_parameters():
            self.ema.register_buffer(ema_name(name), p.detach().clone())
        # The EMA is the same on every data-parallel rank (it follows the same parameters): DDP need not
        # broadcast it before each forward, which for dit-cifar would be 0.5 GB a step.
        self._ddp_params_and_buffers_to_ignore = [f"ema.{ema_name(name)}" for name, _ in self.named_parameters()]

    def _initialize(self) -> None:
        """DiT's: Xavier-uniform linears with zero bias, N(0, 0.02) class and time embeddings, and zeros for
        every adaLN regression and the output layer (adaLN-Zero)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.class_embed.weight, std=0.02)
        nn.init.normal_(self.time_embed[0].weight, std=0.02)
        nn.init.normal_(self.time_embed[2].weight, std=0.02)
        for layer in [*(block.modulation for block in self.blocks), self.final.modulation, self.final.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def null_class(self) -> int:
        return self.cfg.num_classes

    def conditioning(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B, D): timestep embedding + class embedding."""
        features = timestep_features(t).to(self.time_embed[0].weight.dtype)
        return self.time_embed(features) + self.class_embed(y)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, p*p*C) -> (B, C, H, W)."""
        p, C, grid = self.cfg.patch_size, self.cfg.channels, self.cfg.image_size // self.cfg.patch_size
        x = x.reshape(x.shape[0], grid, grid, p, p, C)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(x.shape[0], C, grid * p, grid * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) in [-1, 1] units, t (B,) in [0, 1], y (B,) class indices (num_classes: none)."""
        h = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, T, D)
        c = self.conditioning(t, y)
        for block in self.blocks:
            h = block(h, c)
        return self.unpatchify(self.final(h, c))

    def ema_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(parameters, their EMA buffers), in the same order."""
        params = [p for _, p in self.named_parameters()]
        buffers = [getattr(self.ema, ema_name(name)) for name, _ in self.named_parameters()]
        return params, buffers

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        """ema <- decay * ema + (1 - decay) * parameter, for every parameter."""
        params, buffers = self.ema_pairs()
        torch._foreach_lerp_(buffers, [p.detach() for p in params], 1.0 - decay)

    @torch.no_grad()
    def ema_model(self) -> DiT:
        """A copy, in eval mode, whose parameters are this model's EMA: the weights that sample."""
        copied = copy.deepcopy(self).eval()
        params, buffers = copied.ema_pairs()
        for p, e in zip(params, buffers):
            p.copy_(e)
        return copied


def ema_decay_at(step: int, decay: float) -> float:
    """The EMA's decay at optimizer step `step` (1 for the first): min(decay, (1 + step) / (10 + step)), so
    the average is not dominated by the random initialisation in short runs."""
    return min(decay, (1 + step) / (10 + step))


def count_params(cfg: DiTConfig) -> int:
    """Trainable parameters (the EMA buffers and position embeddings are not)."""
    D, H, p, C, L = cfg.d_model, cfg.mlp_hidden, cfg.patch_size, cfg.channels, cfg.n_layers
    block = (3 * D * D + 3 * D) + (D * D + D) + (D * H + H) + (H * D + D) + (6 * D * D + 6 * D)
    embed = (C * p * p * D + D) + (TIME_FREQUENCIES * D + D) + (D * D + D) + (cfg.num_classes + 1) * D
    final = (2 * D * D + 2 * D) + (D * p * p * C + p * p * C)
    return L * block + embed + final


def flops_per_image(cfg: DiTConfig) -> float:
    """Training FLOPs (forward and backward, 3x the forward) per image: 2 FLOPs per multiply-add of every
    matrix product a token or the image's conditioning passes through, plus attention's two T x T products."""
    D, H, p, C, L, T = cfg.d_model, cfg.mlp_hidden, cfg.patch_size, cfg.channels, cfg.n_layers, cfg.tokens
    per_token = L * (4 * D * D + 2 * D * H) + 2 * D * p * p * C  # qkv + proj + MLP; patch embedding and output
    per_image = L * 6 * D * D + 2 * D * D + TIME_FREQUENCIES * D + D * D  # adaLN regressions, time MLP
    attention = L * 2 * T * T * D  # q k^T and attention x v
    return 3 * 2 * (T * per_token + per_image + attention)
