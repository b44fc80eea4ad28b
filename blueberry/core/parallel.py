"""Data parallelism for the training loop, in plain `torch.distributed` terms: DDP or FSDP2.

`train()` takes a `DataParallel` describing this process's place (rank, world size) and how the
model is spread over the processes (`strategy`). With one process it is a no-op; with several (set up
by Ray Train, torchrun or anything that initialises the default process group) each rank reads its
own slice of every global batch, and the numbers that drive decisions (the step's loss, validation
sums) are all-reduced, so every rank stops, evaluates and checkpoints at the same step.

- `ddp`: every rank holds the whole model, its gradients and the optimizer state; backward
  all-reduces the gradients (`DistributedDataParallel`).
- `fsdp`: FSDP2 (`torch.distributed.fsdp.fully_shard`) on each of the repeated layers the task declares
  (`Task.blocks`: a transformer's blocks) and on the root (embeddings, final norm). Every parameter is a `DTensor` sharded on dim 0: a rank holds 1/W of
  the parameters, gradients and optimizer state. Forward and backward all-gather one block's
  parameters at a time; backward reduce-scatters its gradients.
- `activation_checkpointing`: each block keeps only its input for backward and recomputes the rest
  (`torch.utils.checkpoint`, non-reentrant), under either strategy.

Evaluation under FSDP: every forward all-gathers parameters, so every rank must run the same
forwards. The validation rows are split across ranks for DDP; under FSDP every rank evaluates all
of them (`DataParallel.evaluation`), which costs W times the evaluation compute and keeps the
parameters sharded.

Checkpoints are whole: `gather_full` collects the shards (on every rank, a collective) and the main
rank writes the same file DDP and single-process runs write; `shard_like` cuts a whole tensor back
into this rank's shard. So any strategy and any worker count resumes any checkpoint.

`layout_for` decides, from a memory estimate, whether a training run fits one device, needs DDP
(the batch's activations split across workers) or FSDP (the model's state split too), with or
without activation checkpointing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

from blueberry.errors import ConfigError, UserError

STRATEGIES: tuple[str, ...] = ("ddp", "fsdp")


@dataclass(frozen=True)
class DataParallel:
    rank: int = 0
    world_size: int = 1
    strategy: str = "ddp"  # ddp | fsdp: how the model is spread over the processes
    activation_checkpointing: bool = False  # recompute each block's activations in backward

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; got {self.strategy!r}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside a world of {self.world_size}")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """Whether parameters are split across ranks (FSDP with more than one process)."""
        return self.strategy == "fsdp" and self.world_size > 1

    @property
    def evaluation(self) -> DataParallel:
        """How evaluation splits its rows: as training does, except under FSDP, where every rank must
        run the same forwards (each all-gathers parameters), so every rank evaluates every row."""
        return SINGLE_PROCESS if self.sharded else self

    def prepare(self, model: nn.Module, device: torch.device, blocks: Sequence[nn.Module] = ()) -> nn.Module:
        """The model placed for training, before the optimizer sees its parameters: on `device`, or
        (FSDP) sharded across the ranks, one of its `blocks` (`Task.blocks`) at a time, with only this
        rank's shards moved to `device`; with activation checkpointing, each block recomputes its
        activations in backward. A model without blocks cannot do either: refused in one line."""
        if (self.activation_checkpointing or self.sharded) and not blocks:
            what = "activation checkpointing" if self.activation_checkpointing else "FSDP"
            raise ConfigError(f"{what} works block by block, and this model kind declares no blocks (Task.blocks): "
                              "train it without --activation-checkpointing, with --strategy ddp")
        if self.activation_checkpointing:
            for block in blocks:
                checkpoint_activations(block)
        if not self.sharded:
            return model.to(device)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        if device.type == "cuda":
            torch.cuda.set_device(device)
        mesh = init_device_mesh(device.type, (self.world_size,))
        for block in blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module that steps: DDP when there is more than one process (gradients are averaged
        across ranks in backward); the model itself under FSDP (already sharded by `prepare`) or alone."""
        if self.world_size == 1 or self.strategy == "fsdp":
            return model
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def clip_grad_norm_(self, parameters: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
        """Scale the gradients so their global L2 norm is at most `max_norm`, as
        `torch.nn.utils.clip_grad_norm_` does; the norm (float64) is returned. The squares are summed in
        float64, over this rank's shards and then across ranks under FSDP, so every strategy gets the same
        clipping factor in float32 (torch's float32 norms of shards and of whole gradients differ in
        the last bits, which chaotic training grows to 1e-4 in the loss within 20 steps)."""
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return torch.zeros((), dtype=torch.float64)
        squares = torch.stack([local(g).double().square().sum() for g in grads]).sum()
        if self.sharded:
            dist.all_reduce(squares, op=dist.ReduceOp.SUM)
        norm = squares.sqrt()
        factor = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        for g in grads:
            local(g).mul_(factor.to(g.dtype))
        return norm

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value /= self.world_size
        return value

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value


SINGLE_PROCESS = DataParallel()


def checkpoint_activations(module: nn.Module) -> None:
    """Make `module` keep only its inputs for backward and recompute its forward there. The module's
    structure and parameter names are unchanged (its `forward` is wrapped in place), so FSDP can shard
    it afterwards and checkpoints keep their keys; FSDP's hooks run around the wrapped forward and
    unshard the parameters before the recomputation, as torchtitan's checkpoint wrapper does."""
    forward = module.forward

    @functools.wraps(forward)
    def recomputed(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    module.forward = recomputed


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of `tensor`: the local shard of a DTensor (sharing its storage), else the tensor."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def gather_full(value: Any, keep: bool = True) -> Any:
    """`value` (a tensor, or dicts and lists of them) with every DTensor gathered whole, on the CPU.
    A collective under FSDP: every rank calls it, in the same order. Ranks that do not write the
    result pass `keep=False`: they take part in the gathering and drop what it gives (None)."""
    if isinstance(value, DTensor):
        whole = value.full_tensor()
        return whole.cpu() if keep else None
    if isinstance(value, dict):
        return {k: gather_full(v, keep) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(gather_full(v, keep) for v in value)
    return value


def shard_like(whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`whole` cut to this rank's shard of `like` when `like` is a DTensor (every rank holds `whole`,
    so no communication), else `whole` itself."""
    if not isinstance(like, DTensor):
        return whole
    return distribute_tensor(whole.to(like.device), like.device_mesh, like.placements,
                             src_data_rank=None)


def local_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
    """Bytes this rank holds of `tensors` (a DTensor counts its local shard)."""
    return sum(local(t).numel() * t.element_size() for t in tensors if t is not None)


# A layout for a training run that does not fit one device: decided from a memory estimate.

PARAM_BYTES = 4  # fp32 master weights (autocast computes in bf16; the parameters stay fp32)
GRAD_BYTES = 4
MUON_STATE_BYTES = 4  # the momentum buffer
ADAMW_STATE_BYTES = 8  # first and second moments
DDP_BUCKET_BYTES = 4  # DDP's gradient buckets (a copy of the gradients; gradient_as_bucket_view is off)


@dataclass(frozen=True)
class Layout:
    """How to run one training job: on one device, or on `workers` devices with `strategy`."""

    strategy: str  # single | ddp | fsdp
    workers: int
    activation_checkpointing: bool
    bytes_per_device: float  # the estimate this layout was chosen by

    @property
    def distributed(self) -> bool:
        return self.strategy != "single"


def state_bytes(n_params: int, n_muon: int, strategy: str = "single", workers: int = 1,
                largest_unit: int = 0) -> float:
    """Bytes of parameters, gradients and optimizer state per device, in fp32: 4 + 4 bytes a
    parameter, plus 4 (Muon's momentum) for the `n_muon` matrix parameters and 8 (AdamW's moments) for
    the rest. DDP adds its gradient buckets (4 a parameter). FSDP divides all of it by `workers` and
    adds the units being computed unsharded: `largest_unit` parameters gathered, the next one
    prefetched, and their gradients before the reduce-scatter (12 bytes a parameter of the unit)."""
    whole = (n_params * (PARAM_BYTES + GRAD_BYTES) + n_muon * MUON_STATE_BYTES
             + (n_params - n_muon) * ADAMW_STATE_BYTES)
    if strategy == "single":
        return float(whole)
    if strategy == "ddp":
        return float(whole + n_params * DDP_BUCKET_BYTES)
    if strategy == "fsdp":
        return whole / workers + largest_unit * (2 * PARAM_BYTES + GRAD_BYTES)
    raise ValueError(f"unknown strategy {strategy!r}")


def layout_for(n_params: int, n_muon: int, largest_unit: int, activation_bytes: Callable[[int, bool], float],
               batch: int, device_bytes: float, max_workers: int) -> Layout:
    """The layout whose estimated memory fits `device_bytes` a device on the fewest devices: one
    device; else, for 2, 3, ... workers, DDP (each worker keeps the whole model and a share of the
    batch's activations) before FSDP (the model's state is split too, at the price of all-gathering
    the parameters in forward and backward); activation checkpointing (a third more compute) only when
    nothing fits without it. Workers divide `batch` (samples a step) so every rank gets whole samples.
    `activation_bytes(samples, checkpointing)` is the model kind's estimate for one device's share.
    A job that fits nowhere within `max_workers` is a `UserError`."""
    def fits(strategy: str, workers: int, checkpointing: bool) -> Layout | None:
        used = (state_bytes(n_params, n_muon, strategy, workers, largest_unit)
                + activation_bytes(batch // workers, checkpointing))
        return Layout(strategy, workers, checkpointing, used) if used <= device_bytes else None

    splits = [w for w in range(2, max_workers + 1) if batch % w == 0]
    candidates = [("single", 1, False)]
    candidates += [(strategy, w, False) for w in splits for strategy in ("ddp", "fsdp")]
    candidates += [(strategy, w, True) for w in splits for strategy in ("ddp", "fsdp")]
    for candidate in candidates:
        layout = fits(*candidate)
        if layout is not None:
            return layout
    most = max(splits, default=1)
    need = state_bytes(n_params, n_muon, "fsdp", most, largest_unit) + activation_bytes(batch // most, True)
    size = f"{n_params / 1e6:,.0f}M" if n_params >= 1e7 else f"{n_params / 1e6:.2g}M"
    raise UserError(f"a run of {size} parameters with batch {batch} needs about "
                    f"{need / 2**30:.3g} GiB a device even sharded over {most} (FSDP, activation "
                    f"checkpointing), more than {device_bytes / 2**30:.3g} GiB: allow more workers, or use "
                    "devices with more memory")


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def shard_rows(rows: int, world_size: int) -> list[int]:
    """How many rows of a dim-0 sharded tensor each rank holds: FSDP2's `torch.chunk` split, ceil(rows / W)
    a rank, the last ranks fewer or none."""
    chunk = ceil_div(rows, world_size)
    return [max(0, min(chunk, rows - r * chunk)) for r in range(world_size)]


def is_row_sharded(tensor: torch.Tensor) -> bool:
    """Whether `tensor` is a DTensor sharded on dim 0 over a one-dimensional mesh (what FSDP2 makes)."""
    return (isinstance(tensor, DTensor) and tensor.device_mesh.ndim == 1
            and tuple(tensor.placements) == (Shard(0),))

