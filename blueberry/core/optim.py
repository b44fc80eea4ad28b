"""Optimizers and learning-rate schedules.

- `Muon` (Jordan et al. 2024, "Muon: MomentUm Orthogonalized by Newton-schulz") updates each 2-D hidden
  matrix with the orthogonalised Nesterov momentum, scaled by sqrt(max(1, rows/cols)). The
  orthogonaliser is Polar Express (Amsel et al. 2025, arXiv:2505.16932): five fixed odd quintic
  polynomial steps, minimax-optimal for the polar factor, in bf16 on GPUs. Across data-parallel
  ranks each rank orthogonalises its share of the matrices and the results are exchanged (DDP:
  all-gather; FSDP: all-to-all of shards to the owner and back); see `Muon`.
- AdamW takes everything else: embeddings, norm gains, the MoE router.
- `build_optimizer` returns one `OptimizerSet` that steps, zeroes, schedules and checkpoints both,
  or plain AdamW over every parameter (the alternative that sweeps compare against).
- Schedules: constant, warmup + cosine, warmup-stable-decay; each a multiplier on every group's peak LR.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from blueberry.core.config import TrainConfig
from blueberry.core.parallel import SINGLE_PROCESS, DataParallel, is_row_sharded, local, shard_like, shard_rows
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


def polar_express_flops(shape: tuple[int, ...], steps: int = 5) -> float:
    """Matmul FLOPs of `polar_express` on an (m, n) matrix, m the smaller side: per step X X^T (2 m^2 n),
    A A (2 m^3) and (b A + c A^2) X (2 m^2 n)."""
    m, n = sorted(shape[-2:])
    return float(steps * (4 * m * m * n + 2 * m**3))


def orthogonalisation_plan(shapes: list[tuple[int, ...]], world_size: int) -> list[list[int | None]]:
    """Which rank orthogonalises which matrix, as rounds: round k lists, for every rank, the index of its
    k-th matrix (None when it has no more). The costliest matrices go first, each to the rank with the
    least work so far (longest-processing-time-first: within 4/3 of the best balance of FLOPs), so a
    round holds matrices of similar size. Every rank computes the same plan from the shapes alone."""
    load = [0.0] * world_size
    owned: list[list[int]] = [[] for _ in range(world_size)]
    for i in sorted(range(len(shapes)), key=lambda i: -polar_express_flops(shapes[i])):
        rank = min(range(world_size), key=load.__getitem__)
        owned[rank].append(i)
        load[rank] += polar_express_flops(shapes[i])
    rounds = max((len(mine) for mine in owned), default=0)
    return [[mine[k] if k < len(mine) else None for mine in owned] for k in range(rounds)]


# Whole-matrix elements a rank takes part in per exchange (128 MB in bf16): every round in one exchange
# for small models (two collectives a step), about a round at a time for billion-parameter ones.
EXCHANGE_ELEMENTS = 2**26


@dataclass
class OrthoWork:
    """What one rank's Muon has orthogonalised since it was built: matrices and matmul FLOPs."""

    matrices: int = 0
    flops: float = 0.0


class Muon(torch.optim.Optimizer):
    """Nesterov momentum, orthogonalised by Polar Express, for 2-D parameters only.

    With `world_size` > 1 every data-parallel rank calls `step` once its gradients are averaged, and
    the orthogonalisation is split: each matrix has one owner rank (`orthogonalisation_plan`), which
    orthogonalises it; the others receive the result (`work` counts what this rank computed). The
    momentum is elementwise and stays where the gradients are: whole on every rank under DDP, this
    rank's shard under FSDP. The plan's rounds (one matrix a rank) are merged into exchanges of at most
    `exchange_elements` whole-matrix elements a rank; what travels per exchange:

    - DDP (whole gradients everywhere): one all-gather of the owners' results; each rank receives
      about (W-1)/W of the Muon parameters a step, in the orthogonalisation dtype.
    - FSDP (parameters are DTensors sharded on dim 0): one all-to-all sends every rank's rows of each
      matrix's update to its owner, which orthogonalises its whole matrices, and a second returns each
      rank its rows of the results. Each rank sends, and receives, about 2 (W-1)/W^2 of the Muon
      parameters a step, and holds at most `exchange_elements` elements of whole matrices at a time.
    """

    def __init__(self, params: Iterable[nn.Parameter] | Iterable[dict[str, Any]], lr: float, momentum: float = 0.95,
                 nesterov: bool = True, ortho_dtype: torch.dtype = torch.bfloat16, rank: int = 0,
                 world_size: int = 1, exchange_elements: int | None = None) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov))
        self.ortho_dtype = ortho_dtype
        self.rank, self.world_size = rank, world_size
        self.exchange_elements = EXCHANGE_ELEMENTS if exchange_elements is None else exchange_elements
        self.work = OrthoWork()
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon updates 2-D matrices only; got a parameter of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        params, groups, updates = [], [], []
        for group in self.param_groups:
            beta = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad)
                grad, buf = local(p.grad), local(self.state[p]["momentum_buffer"])
                buf.lerp_(grad, 1 - beta)
                params.append(p)
                groups.append(group)
                updates.append(grad.lerp(buf, beta) if group["nesterov"] else buf)
        for p, group, update in zip(params, groups, self._orthogonalise(params, updates)):
            scale = math.sqrt(max(1.0, p.size(0) / p.size(1)))
            local(p).add_(update.to(p.dtype), alpha=-group["lr"] * scale)

    def _polar(self, update: torch.Tensor) -> torch.Tensor:
        self.work.matrices += 1
        self.work.flops += polar_express_flops(tuple(update.shape))
        return polar_express(update, dtype=self.ortho_dtype)

    def _orthogonalise(self, params: list[nn.Parameter], updates: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each update orthogonalised, as this rank holds it (whole, or its rows under FSDP)."""
        if self.world_size == 1:
            return [self._polar(update) for update in updates]
        sharded = [is_row_sharded(p) for p in params]
        if any(sharded) and not all(sharded):
            raise NotImplementedError("Muon takes either all or none of its matrices sharded (FSDP)")
        exchange = self._exchange_shards if any(sharded) else self._exchange_whole
        out: list[torch.Tensor | None] = [None] * len(params)
        for owned in self._buckets([tuple(p.shape) for p in params]):
            exchange(owned, params, updates, out)
        return out  # type: ignore[return-value]

    def _buckets(self, shapes: list[tuple[int, ...]]) -> list[list[list[int]]]:
        """The plan's rounds merged into exchanges of at most `exchange_elements` whole-matrix elements a
        rank (at least one round each): per exchange, each rank's matrices. Fewer, larger collectives
        for small models; about one round at a time for large ones, which bounds the memory."""
        buckets: list[list[list[int]]] = []
        current: list[list[int]] = [[] for _ in range(self.world_size)]
        size = 0
        for round_ in orthogonalisation_plan(shapes, self.world_size):
            largest = max(math.prod(shapes[i]) for i in round_ if i is not None)
            if size and size + largest > self.exchange_elements:
                buckets.append(current)
                current, size = [[] for _ in range(self.world_size)], 0
            for rank, i in enumerate(round_):
                if i is not None:
                    current[rank].append(i)
            size += largest
        return buckets + ([current] if size else [])

    def _exchange_whole(self, owned: list[list[int]], params: list[nn.Parameter], updates: list[torch.Tensor],
                        out: list[torch.Tensor | None]) -> None:
        """DDP: each rank orthogonalises its matrices; one all-gather gives every rank every result."""
        sizes = [sum(params[i].numel() for i in mine) for mine in owned]
        send = torch.zeros(max(sizes), dtype=self.ortho_dtype, device=updates[0].device)
        if owned[self.rank]:
            send[:sizes[self.rank]] = torch.cat([self._polar(updates[i]).flatten() for i in owned[self.rank]])
        received = [torch.empty_like(send) for _ in owned]
        dist.all_gather(received, send)
        for mine, size, padded in zip(owned, sizes, received):
            for i, piece in zip(mine, padded[:size].split([params[i].numel() for i in mine])):
                out[i] = piece.view(params[i].shape)

    def _exchange_shards(self, owned: list[list[int]], params: list[nn.Parameter], updates: list[torch.Tensor],
                         out: list[torch.Tensor | None]) -> None:
        """FSDP: every rank's rows of each matrix go to the matrix's owner (one all-to-all), each owner
        orthogonalises its whole matrices, and every rank gets its rows of the results back (another)."""
        world, rank, device, dtype = self.world_size, self.rank, updates[0].device, self.ortho_dtype
        rows = {i: shard_rows(params[i].shape[0], world) for mine in owned for i in mine}
        cols = {i: params[i].shape[1] for i in rows}
        for i, r in rows.items():
            if updates[i].shape[0] != r[rank]:
                raise RuntimeError(f"FSDP gave rank {rank} {updates[i].shape[0]} rows of a {tuple(params[i].shape)} "
                                   f"matrix; Muon expected torch.chunk's {r[rank]}")

        def cat(tensors: list[torch.Tensor]) -> torch.Tensor:
            return torch.cat(tensors) if tensors else torch.empty(0, dtype=dtype, device=device)

        mine = owned[rank]
        # To each owner: this rank's rows of each of its matrices. From each rank: its rows of each of mine.
        sent = [sum(rows[i][rank] * cols[i] for i in theirs) for theirs in owned]
        received = [sum(rows[i][sender] * cols[i] for i in mine) for sender in range(world)]
        gathered = torch.empty(sum(received), dtype=dtype, device=device)
        dist.all_to_all_single(gathered, cat([updates[i].to(dtype).flatten() for theirs in owned for i in theirs]),
                               received, sent)
        pieces: dict[int, list[torch.Tensor]] = {i: [] for i in mine}
        for sender, chunk in enumerate(gathered.split(received)):
            for i, piece in zip(mine, chunk.split([rows[i][sender] * cols[i] for i in mine])):
                pieces[i].append(piece.view(-1, cols[i]))
        results = {i: self._polar(torch.cat(pieces[i])) for i in mine}
        # Back to each rank: its rows of each result, as it sent them.
        back = [results[i][sum(rows[i][:r]):sum(rows[i][:r + 1])].flatten() for r in range(world) for i in mine]
        returned = torch.empty(sum(sent), dtype=dtype, device=device)
        dist.all_to_all_single(returned, cat(back), sent, received)
        for theirs, chunk in zip(owned, returned.split(sent)):
            for i, piece in zip(theirs, chunk.split([rows[i][rank] * cols[i] for i in theirs])):
                out[i] = piece.view(-1, cols[i])


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
        """Each optimizer's state dict; under FSDP its tensors are this rank's shards (DTensors), which
        `blueberry.core.parallel.gather_full` makes whole for a checkpoint."""
        return [opt.state_dict() for opt in self.optimizers]

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        """Load whole states (a checkpoint's), each tensor cut to this rank's shard where its parameter
        is sharded: a checkpoint from any strategy and worker count loads."""
        if len(states) != len(self.optimizers):
            raise ValueError(f"checkpoint holds {len(states)} optimizer states, this run has {len(self.optimizers)}")
        for opt, state in zip(self.optimizers, states):
            opt.load_state_dict(_sharded_like(opt, state))

    def state_tensors(self) -> Iterator[torch.Tensor]:
        """Every tensor of every optimizer's state (momentum, moments, step counts)."""
        for opt in self.optimizers:
            for values in opt.state.values():
                yield from (v for v in values.values() if isinstance(v, torch.Tensor))


def _sharded_like(opt: torch.optim.Optimizer, saved: dict[str, Any]) -> dict[str, Any]:
    """`saved` (an optimizer state dict with whole tensors) with each tensor shaped like its parameter
    cut to that parameter's shard on this rank; unchanged where nothing is sharded."""
    params = [p for group in opt.param_groups for p in group["params"]]
    state = {}
    for index, values in saved.get("state", {}).items():
        p = params[index] if isinstance(index, int) and 0 <= index < len(params) else None
        state[index] = {k: shard_like(v, p) if p is not None and isinstance(v, torch.Tensor) and v.shape == p.shape
                        else v for k, v in values.items()}
    return {**saved, "state": state}


def split_params(model: nn.Module, hidden_matrices: Collection[nn.Parameter] = (),
                 ) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
    """(hidden matrices, other decayed >=2-D params, 1-D params that are never decayed), in the model's
    parameter order; `hidden_matrices` are those the task gives Muon (`Task.hidden_matrices`)."""
    chosen = {id(p) for p in hidden_matrices}
    hidden, decayed, no_decay = [], [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if id(p) in chosen:
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
                    hidden_matrices: Collection[nn.Parameter] = (), parallel: DataParallel = SINGLE_PROCESS,
                    ) -> OptimizerSet:
    """Muon for `hidden_matrices` (`Task.hidden_matrices`) plus AdamW for the rest, or AdamW for everything.
    With several data-parallel ranks (`parallel`), Muon splits its orthogonalisation across them."""
    hidden, decayed, no_decay = split_params(model, hidden_matrices)
    if cfg.optimizer == "adamw":
        return OptimizerSet([_adamw([{"params": hidden + decayed, "weight_decay": cfg.weight_decay, "name": "adamw"},
                                     {"params": no_decay, "weight_decay": 0.0, "name": "adamw_no_decay"}],
                                    cfg, device)])
    if not hidden:
        raise ConfigError("this model kind gives Muon no matrices (its Task declares no blocks: Task.blocks, "
                          "Task.hidden_matrices): train it with optimizer adamw")
    # bf16 matmuls are what make Polar Express cheap on GPUs; most CPUs have no fast bf16 GEMM.
    ortho_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    muon = Muon([{"params": hidden, "name": "muon"}], lr=cfg.muon_lr, momentum=cfg.muon_momentum,
                ortho_dtype=ortho_dtype, rank=parallel.rank, world_size=parallel.world_size)
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
