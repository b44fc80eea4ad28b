"""A VQ-VAE (van den Oord et al. 2017, "Neural Discrete Representation Learning", arXiv:1711.00937): a
convolutional encoder maps an image to a grid of vectors, each is replaced by its nearest entry of a
codebook, and a convolutional decoder maps the grid of codes back to the image.

Choices:
- Encoder: a 3x3 convolution to `width` channels, `downsample` stride-2 4x4 convolutions (each halves the
  side), `res_blocks` residual blocks (ReLU, 3x3, ReLU, 1x1, added back), ReLU and a 1x1 convolution to
  `code_dim`. The decoder mirrors it with stride-2 4x4 transposed convolutions. No normalisation layers.
- Quantisation: nearest code by squared Euclidean distance (computed in float32 as |z|^2 - 2 z.e + |e|^2);
  the straight-through estimator z_e + sg(z_q - z_e) passes the decoder's gradient to the encoder
  unchanged; the commitment loss |z_e - sg(z_q)|^2 (weighted by beta in the task) keeps the encoder near
  its codes.
- Codebook: not a parameter but an exponential moving average (van den Oord et al., appendix A.1;
  VQ-VAE-2): each code follows the mean of the encoder vectors assigned to it, from moving averages of
  their count and sum, updated in every training-mode forward.
- Dead codes: a code whose moving count falls below `dead_code_threshold` restarts at a random encoder
  vector of the current batch (each at a different one), with its count set to the threshold (Jukebox,
  Dhariwal et al. 2020). The counts start at zero, so the first training step initialises every code from
  the data. The draw comes from the CPU's global generator, which checkpoints record: a resumed run
  restarts what it would have.
  Under data parallelism the counts and sums are summed over ranks and rank 0's draw is used, so every
  rank keeps the same codebook.
- Images are in model units, [-1, 1] (`to_model_units`); the decoder's output is not squashed.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from blueberry.models.vqvae.config import VQVAEConfig
from blueberry.vision.pixels import to_model_units, to_uint8  # noqa: F401  (the model's units)


class Quantized(NamedTuple):
    quantized: torch.Tensor  # (B, D, h, w): straight-through, z_e + sg(z_q - z_e)
    codes: torch.Tensor  # (B, h, w) int64
    commitment: torch.Tensor  # () mean of |z_e - sg(z_q)|^2


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation against an EMA codebook, with restarts of dead codes."""

    def __init__(self, codebook_size: int, code_dim: int, decay: float = 0.99, threshold: float = 1.0) -> None:
        super().__init__()
        self.decay, self.threshold = decay, threshold
        self.register_buffer("codebook", torch.randn(codebook_size, code_dim))  # (K, D)
        self.register_buffer("counts", torch.zeros(codebook_size))  # moving count of assignments per batch
        self.register_buffer("sums", torch.zeros(codebook_size, code_dim))  # moving sum of assigned vectors

    @property
    def codebook_size(self) -> int:
        return self.codebook.shape[0]

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """(N,) index of the nearest code of each vector of `flat` (N, D)."""
        flat, codebook = flat.float(), self.codebook.float()
        distances = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codebook.T + codebook.pow(2).sum(1)  # (N, K)
        return distances.argmin(1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) codes to (B, D, h, w) vectors."""
        return self.codebook[codes].permute(0, 3, 1, 2)

    def forward(self, z: torch.Tensor) -> Quantized:
        B, D, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, D)  # (B*h*w, D)
        codes = self.nearest(flat.detach())
        quantized = self.codebook[codes].view(B, h, w, D).permute(0, 3, 1, 2).to(z.dtype)
        commitment = F.mse_loss(z.float(), quantized.detach().float())
        if self.training:
            self.update(flat.detach().float(), codes)
        return Quantized(z + (quantized - z).detach(), codes.view(B, h, w), commitment)

    @torch.no_grad()
    def update(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        """Move the codebook toward the mean of the vectors assigned to each code; restart dead codes."""
        K = self.codebook_size
        # Counted with index_add_ rather than bincount, whose output length depends on the codes' values: the
        # same counts, at shapes `torch.compile` knows in advance.
        counts = torch.zeros_like(self.counts).index_add_(0, codes, torch.ones_like(codes, dtype=self.counts.dtype))
        sums = torch.zeros_like(self.sums).index_add_(0, codes, flat)
        # The restart candidates: a different random vector of the batch for every code (used only for dead
        # ones; drawn with replacement only when the batch holds fewer vectors than the codebook).
        rows = torch.randperm(len(flat))[:K] if len(flat) >= K else torch.randint(len(flat), (K,))
        candidates = flat[rows.to(flat.device)]
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
            dist.broadcast(candidates, 0)
        self.counts.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.sums.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        assigned = self.counts > 0
        self.codebook.copy_(torch.where(assigned[:, None], self.sums / self.counts.clamp_min(1e-12)[:, None],
                                        self.codebook))
        dead = self.counts < self.threshold  # restarted where true, with `where` (static shapes), not a boolean index
        self.codebook.copy_(torch.where(dead[:, None], candidates, self.codebook))
        self.sums.copy_(torch.where(dead[:, None], candidates * self.threshold, self.sums))
        self.counts.masked_fill_(dead, self.threshold)


class ResBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class VQOutput(NamedTuple):
    reconstruction: torch.Tensor  # (B, C, H, W) in model units
    codes: torch.Tensor  # (B, h, w)
    commitment: torch.Tensor  # ()


class VQVAE(nn.Module):
    """images (B, C, H, W) in [-1, 1] -> codes (B, h, w) -> reconstructions."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        W = cfg.width
        down: list[nn.Module] = [nn.Conv2d(cfg.channels, W, 3, padding=1)]
        for _ in range(cfg.downsample):
            down += [nn.ReLU(), nn.Conv2d(W, W, 4, stride=2, padding=1)]
        down += [ResBlock(W) for _ in range(cfg.res_blocks)]
        down += [nn.ReLU(), nn.Conv2d(W, cfg.code_dim, 1)]
        self.encoder = nn.Sequential(*down)
        self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.code_dim, cfg.ema_decay, cfg.dead_code_threshold)
        up: list[nn.Module] = [nn.Conv2d(cfg.code_dim, W, 3, padding=1)]
        up += [ResBlock(W) for _ in range(cfg.res_blocks)]
        for _ in range(cfg.downsample):
            up += [nn.ReLU(), nn.ConvTranspose2d(W, W, 4, stride=2, padding=1)]
        up += [nn.ReLU(), nn.Conv2d(W, cfg.channels, 3, padding=1)]
        self.decoder = nn.Sequential(*up)

    def forward(self, x: torch.Tensor) -> VQOutput:
        q = self.quantizer(self.encoder(x))
        return VQOutput(self.decoder(q.quantized), q.codes, q.commitment)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, h, w) codes of images in model units (the codebook is left as it is)."""
        z = self.encoder(x)
        B, D, h, w = z.shape
        return self.quantizer.nearest(z.permute(0, 2, 3, 1).reshape(-1, D)).view(B, h, w)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Images in model units from (B, h, w) codes."""
        return self.decoder(self.quantizer.lookup(codes))


def count_params(cfg: VQVAEConfig) -> int:
    """Trainable parameters (the codebook and its moving averages are buffers, not counted)."""
    C, W, D, k = cfg.channels, cfg.width, cfg.code_dim, cfg.downsample
    conv = lambda c_in, c_out, size: c_in * c_out * size * size + c_out  # noqa: E731
    res = conv(W, W, 3) + conv(W, W, 1)
    encoder = conv(C, W, 3) + k * conv(W, W, 4) + cfg.res_blocks * res + conv(W, D, 1)
    decoder = conv(D, W, 3) + cfg.res_blocks * res + k * conv(W, W, 4) + conv(W, C, 3)
    return encoder + decoder


def flops_per_image(cfg: VQVAEConfig) -> float:
    """Training FLOPs (forward and backward, 3x the forward) per image: 2 per multiply-add of every
    convolution at its output resolution, plus the distances to the codebook."""
    C, W, D, k, S = cfg.channels, cfg.width, cfg.code_dim, cfg.downsample, cfg.image_size
    macs = lambda c_in, c_out, size, side: c_in * c_out * size * size * side * side  # noqa: E731
    g = cfg.grid
    res = macs(W, W, 3, g) + macs(W, W, 1, g)
    sides = [S // 2 ** (i + 1) for i in range(k)]  # output sides of the downsamplings
    encoder = macs(C, W, 3, S) + sum(macs(W, W, 4, s) for s in sides) + cfg.res_blocks * res + macs(W, D, 1, g)
    # A transposed convolution's multiply-adds: every input position meets every kernel entry.
    decoder = (macs(D, W, 3, g) + cfg.res_blocks * res + sum(macs(W, W, 4, s) for s in sides)
               + macs(W, C, 3, S))
    distances = g * g * cfg.codebook_size * D
    return 3 * 2 * (encoder + decoder + distances)
