"""What one rank holds under DDP and under FSDP, and how Muon's orthogonalisation is split: two
processes over gloo on this machine's CPUs.

    python -m blueberry.bench.fsdp_memory --preset nano-88m

For each strategy: one training step of the preset (random tokens, a batch of one sequence a rank),
then the bytes this rank holds of the parameters, of their gradients (after backward, before the
step) and of the optimizer state (after it), each tensor counted by its local shard; and the matrices
and Polar Express FLOPs this rank's Muon orthogonalised. Structural figures: they do not depend on the
machine, only on the model, the optimizer and the worker count.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from blueberry.core.config import TrainConfig
from blueberry.core.optim import build_optimizer
from blueberry.core.parallel import DataParallel, local_bytes
from blueberry.models.registry import preset
from blueberry.models.run import RunConfig


def measure(rank: int, world: int, preset_name: str, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    task = RunConfig(preset(preset_name)).task()
    cfg = TrainConfig(device="cpu")
    device = torch.device("cpu")
    rows = {}
    for strategy in ("ddp", "fsdp"):
        parallel = DataParallel(rank, world, strategy)
        torch.manual_seed(0)
        model = task.build_model()
        model = parallel.prepare(model, device, task.blocks(model))
        optimizer = build_optimizer(model, cfg, device, task.hidden_matrices(model), parallel)
        step_model = parallel.wrap(model, device)
        batch = torch.randint(0, task.config.vocab_size, (1, task.units_per_sample + 1),
                              generator=torch.Generator().manual_seed(rank))
        loss = task.loss(step_model, batch)
        (loss.value + loss.aux).backward()
        params = list(model.parameters())
        grads = local_bytes(p.grad for p in params)
        optimizer.step()
        muon = next((o for o in optimizer.optimizers if type(o).__name__ == "Muon"), None)
        rows[strategy] = {"params": local_bytes(params), "grads": grads,
                          "optimizer": local_bytes(optimizer.state_tensors()),
                          "matrices": muon.work.matrices if muon else 0, "flops": muon.work.flops if muon else 0.0}
        del step_model, model, optimizer
    Path(out, f"rank{rank}.json").write_text(json.dumps(rows))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(measure, args=(args.workers, args.preset, f"{tmp}/store", tmp), nprocs=args.workers, join=True)
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(args.workers)]
    mb = 1e6
    print(f"{args.preset}, {args.workers} ranks (gloo, CPU): bytes one rank holds, MB")
    print(f"{'':18}{'params':>10}{'grads':>10}{'optimizer':>11}{'p+g+opt':>10}{'Muon matrices':>15}{'GFLOP':>9}")
    for strategy in ("ddp", "fsdp"):
        for rank, rows in enumerate(ranks):
            row = rows[strategy]
            total = row["params"] + row["grads"] + row["optimizer"]
            label = f"{strategy} rank {rank}"
            print(f"{label:<18}{row['params'] / mb:10.2f}{row['grads'] / mb:10.2f}"
                  f"{row['optimizer'] / mb:11.2f}{total / mb:10.2f}{row['matrices']:15d}{row['flops'] / 1e9:9.3f}")
    ddp, fsdp = ranks[0]["ddp"], ranks[0]["fsdp"]
    share = (fsdp["params"] + fsdp["optimizer"]) / (ddp["params"] + ddp["optimizer"])
    print(f"FSDP / DDP, parameters + optimizer state on rank 0: {share:.4f} (1/W = {1 / args.workers:.4f})")


if __name__ == "__main__":
    main()
