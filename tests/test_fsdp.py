"""FSDP2 against DDP on two CPU processes over gloo (torch.multiprocessing, no Ray).

What it proves, against references:
- an FSDP run (fully_shard per block + root) follows the DDP run of the same config step for step
  (losses within 1e-5 over 20 steps), with Muon and with AdamW, and activation checkpointing changes
  nothing;
- each FSDP rank holds half of DDP's parameter and optimizer-state bytes (counted tensor by
  tensor), and each rank orthogonalises about half of Muon's matrices and FLOPs, which together
  are exactly the single-process count;
- an FSDP checkpoint is whole: an FSDP run killed after a checkpoint resumes bit for bit (with Muon
  exchanging one round of matrices at a time, where the uninterrupted run exchanged all at once), and
  the same checkpoint resumes under DDP and in one process with the double batch (another worker
  count) to 1e-5, and `load_weights` reads it for inference.
Muon split over three ranks with uneven shards equals one process's Muon bit for bit; the split of its work
and the memory layout decision (and the scaling grid's use of it) are checked with numbers.
Ray Train's FSDP run (a killed worker resumes) is in tests/test_distributed.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from interrupts import Interrupt, InterruptAt

from blueberry.core.checkpoint import Checkpointer, checkpoint_path, checksum_path, load_weights
from blueberry.core.config import TrainConfig
from blueberry.core.hooks import Hook
from blueberry.core.loop import train
from blueberry.core import optim
from blueberry.core.optim import orthogonalisation_plan, polar_express_flops
from blueberry.core.parallel import DataParallel, layout_for, shard_rows, state_bytes
from blueberry.data.tokens import TokenShards
from blueberry.errors import UserError
from blueberry.models.lm.config import preset, tiny
from blueberry.models.lm.task import LMTask
from blueberry.models.run import RunConfig

REPO = Path(__file__).resolve().parents[1]
WORLD = 2
STEPS = 20
BATCH = 2  # per rank


def config(optimizer: str = "muon", batch: int = BATCH, world: int = WORLD, **changes) -> TrainConfig:
    return TrainConfig(train_tokens=STEPS * batch * world * 256, batch_size=batch, optimizer=optimizer,
                       eval_every=0, eval_tokens=9 * 256, device="cpu", log_every=1, warmup_frac=0.1, **changes)


class Probe(Hook):
    """Records each step's loss, the bytes a rank holds after the last step and Muon's work."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_step(self, info, state):
        self.losses.append(info.loss)
        if info.step == info.total_steps:  # between steps: what a rank holds all along
            self.memory = state.memory()

    def on_end(self, result, state):
        muon = [o for o in state.optimizer.optimizers if type(o).__name__ == "Muon"]
        self.work = {"matrices": muon[0].work.matrices, "flops": muon[0].work.flops} if muon else None
        self.val = result.val.loss


def run(task, cfg, data, parallel, hooks=()):
    probe = Probe()
    train(task, cfg, data, [*hooks, probe], parallel)
    return {"losses": probe.losses, "memory": probe.memory, "work": probe.work, "val": probe.val}


def worker(rank: int, store: str, data_dir: str, out: str) -> None:
    """Every two-process run of this module, in one process group (starting one costs seconds)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    data, task, out = TokenShards.open(data_dir), LMTask(tiny()), Path(out)
    ddp, fsdp = DataParallel(rank, WORLD, "ddp"), DataParallel(rank, WORLD, "fsdp")
    results = {
        "ddp-muon": run(task, config(), data, ddp),
        "fsdp-muon": run(task, config(), data, fsdp),
        "ddp-adamw": run(task, config("adamw"), data, ddp),
        "fsdp-adamw": run(task, config("adamw"), data, fsdp),
        "fsdp-muon-recompute": run(task, config(), data, DataParallel(rank, WORLD, "fsdp", True)),
    }
    # From here Muon exchanges one round of matrices at a time instead of all at once: the same numbers.
    optim.EXCHANGE_ELEMENTS = 1
    # Killed after step 12; the checkpoint of step 10 is kept aside before the resumed run rotates it.
    killed = out / "killed"
    try:
        run(task, config(), data, fsdp, [Checkpointer(killed, every=5), InterruptAt(12)])
    except Interrupt:
        pass
    if rank == 0:
        for directory in (out / "for-ddp", out / "for-one-process"):
            directory.mkdir()
            for path in (checkpoint_path(killed, 10), checksum_path(checkpoint_path(killed, 10))):
                shutil.copy(path, directory)
    dist.barrier()
    results["fsdp-resumed"] = run(task, config(), data, fsdp, [Checkpointer(killed, every=5)])
    results["ddp-from-fsdp"] = run(task, config(), data, ddp, [Checkpointer(out / "for-ddp", every=5)])
    (out / f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(builtin_dir, tmp_path_factory):
    """The two ranks' records of every run, and the directory they wrote checkpoints to."""
    out = tmp_path_factory.mktemp("fsdp")
    mp.spawn(worker, args=(str(out / "store"), str(builtin_dir), str(out)), nprocs=WORLD, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)], out


def steps(record):
    return record["losses"]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_fsdp_follows_ddp_step_for_step(runs, optimizer):
    (rank0, rank1), _ = runs
    ddp, fsdp = rank0[f"ddp-{optimizer}"], rank0[f"fsdp-{optimizer}"]
    assert len(fsdp["losses"]) == STEPS
    assert fsdp["losses"] == pytest.approx(ddp["losses"], abs=1e-5, rel=0)
    assert fsdp["val"] == pytest.approx(ddp["val"], abs=1e-5, rel=0)
    assert fsdp["losses"][-1] < fsdp["losses"][0] - 0.5  # it trained
    assert rank1[f"fsdp-{optimizer}"]["losses"] == fsdp["losses"]  # every rank sees the global mean


@pytest.mark.slow
def test_activation_checkpointing_changes_nothing(runs):
    (rank0, _), _ = runs
    assert rank0["fsdp-muon-recompute"]["losses"] == rank0["fsdp-muon"]["losses"]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_each_fsdp_rank_holds_half_of_what_a_ddp_rank_holds(runs, optimizer):
    (rank0, rank1), _ = runs
    ddp = rank0[f"ddp-{optimizer}"]["memory"]
    for rank in (rank0, rank1):
        fsdp = rank[f"fsdp-{optimizer}"]["memory"]
        assert fsdp["params"] / ddp["params"] == pytest.approx(1 / WORLD, abs=0.002)
        # AdamW's step counts are scalars on every rank: a few bytes over half.
        assert fsdp["optimizer"] / ddp["optimizer"] == pytest.approx(1 / WORLD, abs=0.002)
    # Both ranks' shards make the whole, byte for byte, when the step counts are left aside.
    total = sum(r[f"fsdp-{optimizer}"]["memory"]["params"] for r in (rank0, rank1))
    assert total == ddp["params"]


@pytest.mark.slow
def test_each_rank_orthogonalises_half_of_muons_matrices(runs):
    (rank0, rank1), _ = runs
    task = LMTask(tiny())
    model = task.build_model()
    shapes = [tuple(p.shape) for p in task.hidden_matrices(model)]
    per_step = {"matrices": len(shapes), "flops": sum(polar_express_flops(s) for s in shapes)}
    for strategy in ("ddp", "fsdp"):
        work = [r[f"{strategy}-muon"]["work"] for r in (rank0, rank1)]
        for key in ("matrices", "flops"):
            assert sum(w[key] for w in work) == STEPS * per_step[key]  # each matrix once, by one rank
            for w in work:
                assert w[key] / (STEPS * per_step[key]) == pytest.approx(1 / WORLD, abs=0.02)


@pytest.mark.slow
def test_a_killed_fsdp_run_resumes_bit_for_bit(runs):
    (rank0, rank1), _ = runs
    # Steps 11-20 after resuming from step 10, against the uninterrupted run's.
    assert steps(rank0["fsdp-resumed"]) == steps(rank0["fsdp-muon"])[10:]
    assert rank0["fsdp-resumed"]["val"] == rank0["fsdp-muon"]["val"]


@pytest.mark.slow
def test_an_fsdp_checkpoint_resumes_under_ddp_and_on_one_process(runs, builtin_data):
    (rank0, _), out = runs
    assert steps(rank0["ddp-from-fsdp"]) == pytest.approx(steps(rank0["ddp-muon"])[10:], abs=1e-5, rel=0)
    shutil.copytree(out / "for-one-process", out / "per-rank-batch")
    # One process with the double batch: the same global batch, so the same run. (One thread, as the
    # spawned ranks have: on a busy 2-core machine two threads spin against each other.)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = run(LMTask(tiny()), config(batch=BATCH * WORLD, world=1), builtin_data, DataParallel(),
                    [Checkpointer(out / "for-one-process", every=5)])
    finally:
        torch.set_num_threads(threads)
    assert steps(alone) == pytest.approx(steps(rank0["fsdp-muon"])[10:], abs=1e-5, rel=0)
    # Keeping the per-rank batch instead would change the run: refused, saying what to keep.
    with pytest.raises(UserError, match="keep the global batch"):
        run(LMTask(tiny()), config(), builtin_data, DataParallel(), [Checkpointer(out / "per-rank-batch", every=5)])


@pytest.mark.slow
def test_an_fsdp_checkpoint_serves_inference(runs):
    _, out = runs
    saved = load_weights(out / "killed")  # the resumed run's final checkpoint, written from shards
    model = LMTask(tiny()).build_model()
    model.load_state_dict(saved.weights)  # whole tensors under the plain model's names
    assert saved.step == STEPS and saved.task == "lm"


def test_the_orthogonalisation_plan_balances_flops():
    shapes = [(512, 512)] * 4 + [(2048, 512)] * 2 + [(256, 512)] * 2
    plan = orthogonalisation_plan(shapes, 3)
    owners = {i: r for round_ in plan for r, i in enumerate(round_) if i is not None}
    assert sorted(owners) == list(range(len(shapes)))  # every matrix once
    load = [sum(polar_express_flops(shapes[i]) for i, r in owners.items() if r == rank) for rank in range(3)]
    assert max(load) / min(load) < 1.3
    assert plan[0] == [4, 5, 0]  # the two largest first, each on its own rank
    assert orthogonalisation_plan([(8, 8)], 4) == [[0, None, None, None]]


def test_shard_rows_follow_fsdps_chunks():
    for rows in range(1, 20):
        for world in (1, 2, 3, 4, 8):
            expected = [len(c) for c in torch.arange(rows).chunk(world)]
            assert shard_rows(rows, world) == expected + [0] * (world - len(expected))


GiB = 2**30


def test_the_layout_follows_the_memory_estimate():
    def activations(per_device: int, checkpointing: bool) -> float:  # 1 GiB a sample, a quarter recomputed
        return per_device * GiB * (0.25 if checkpointing else 1.0)

    n, muon = 100_000_000, 80_000_000  # 100M parameters, 80M of them Muon's
    assert state_bytes(n, muon) == n * 8 + muon * 4 + (n - muon) * 8  # 1.28 GB
    assert state_bytes(n, muon, "ddp") == state_bytes(n, muon) + n * 4
    assert state_bytes(n, muon, "fsdp", 4, largest_unit=1_000_000) == state_bytes(n, muon) / 4 + 12e6
    # 1.2 GiB of state + 8 GiB of activations fit 24 GiB: one device.
    one = layout_for(n, muon, 1_000_000, activations, batch=8, device_bytes=24 * GiB, max_workers=8)
    assert (one.strategy, one.workers, one.activation_checkpointing) == ("single", 1, False)
    # 8 GiB of activations do not fit 6 GiB; half of them beside DDP's 1.6 GiB of state do.
    two = layout_for(n, muon, 1_000_000, activations, batch=8, device_bytes=6 * GiB, max_workers=8)
    assert (two.strategy, two.workers) == ("ddp", 2) and two.bytes_per_device <= 6 * GiB
    # 3B parameters: 35 GiB of state (38 GB) never fit one device. Over 2 ranks: 18.3 GiB + 4 GiB.
    big, big_muon, block = 3_000_000_000, 2_500_000_000, 50_000_000
    fsdp = layout_for(big, big_muon, block, activations, batch=8, device_bytes=24 * GiB, max_workers=8)
    assert (fsdp.strategy, fsdp.workers, fsdp.activation_checkpointing) == ("fsdp", 2, False)
    # 16 GiB devices: over 4 ranks, 9.4 GiB + 2 GiB.
    four = layout_for(big, big_muon, block, activations, batch=8, device_bytes=16 * GiB, max_workers=8)
    assert (four.strategy, four.workers, four.activation_checkpointing) == ("fsdp", 4, False)
    # With only 2 workers allowed, recomputing activations makes it fit: 18.3 GiB + 1 GiB.
    tight = layout_for(big, big_muon, block, activations, batch=8, device_bytes=20 * GiB, max_workers=2)
    assert (tight.strategy, tight.workers, tight.activation_checkpointing) == ("fsdp", 2, True)
    with pytest.raises(UserError, match=r"needs about 19\.3 GiB a device even sharded over 2 .* than 16 GiB"):
        layout_for(big, big_muon, block, activations, batch=8, device_bytes=16 * GiB, max_workers=2)


def test_fsdp_asks_for_a_strategy_it_knows():
    with pytest.raises(ValueError, match="strategy must be one of ddp, fsdp"):
        DataParallel(0, 2, "zero3")


def test_the_scaling_grid_sends_points_too_large_for_one_gpu_to_ray_train():
    from studies.scaling_grid import activation_bytes, point_layout, shaped

    base = preset("nano-88m")
    # nano-88m, 8 x 2048 tokens in bf16: 22 layers x (15 x 512 + 19 x 2048 / 4) bytes + 49152 x 10 for the
    # logits, a token.
    assert activation_bytes(base, 8, False) == 8 * 2048 * (22 * (15 * 512 + 19 * 2048 / 4) + 49152 * 10)
    assert activation_bytes(base, 8, True) == 8 * 2048 * (22 * 4 * 512 + 15 * 512 + 19 * 2048 / 4 + 49152 * 10)

    def layout(d_model, n_layers, workers=8):
        found = point_layout(RunConfig(shaped(base, d_model, n_layers), TrainConfig(batch_size=8)), 24 * GiB, workers)
        return found.strategy, found.workers, found.activation_checkpointing

    assert layout(640, 24) == ("single", 1, False)  # 140M: 1.7 GiB of state + 15.5 GiB of activations
    assert layout(1024, 24) == ("ddp", 2, False)  # 327M: 20 GiB of activations, half on each of two
    assert layout(1536, 24) == ("fsdp", 2, False)  # 698M: DDP's 10.7 GiB of state + 13.3 would not fit
    assert layout(4096, 32) == ("fsdp", 8, False)  # 6.1B: 69 GiB of state
    assert layout(4096, 32, workers=4) == ("fsdp", 4, True)
    with pytest.raises(UserError, match="allow more workers"):
        layout(4096, 32, workers=2)


@pytest.mark.parametrize("flags, message", [
    (["--strategy", "fsdp", "--workers", "1"], "marathon: error: --strategy fsdp shards the model across workers and "
                                               "needs at least 2, got --workers 1: add workers, or use --strategy ddp"),
    (["--strategy", "zero3"], "marathon.py: error: argument --strategy: invalid choice: 'zero3' (choose from 'ddp', "
                              "'fsdp') (see marathon.py --help)"),
])
def test_a_strategy_the_marathon_cannot_run_is_one_line(flags, message, tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "studies" / "marathon.py"), "--smoke", *flags,
                           "--storage", str(tmp_path / "ray"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert (done.returncode, done.stdout, done.stderr) == (2, "", message + "\n")
    assert not (tmp_path / "ray").exists()  # refused before Ray started


SHAPES = [(7, 5), (12, 9), (5, 13), (16, 16), (2, 8), (9, 4)]  # uneven rows over 3 ranks; (2, 8): one rank has none


def muon_on_three_ranks(rank: int, store: str, out: str) -> None:
    """Three Muon steps on the same gradients: one process's Muon, and Muon split over 3 ranks with whole
    matrices (DDP) and with FSDP's shards, exchanging all rounds at once and one round at a time."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=3)
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import distribute_tensor

    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(shape, generator=generator) for shape in SHAPES]
    grads = [[torch.randn(shape, generator=generator) for shape in SHAPES] for _ in range(3)]

    def stepped(world: int, sharded: bool, exchange: int | None) -> tuple[list[torch.Tensor], int]:
        layers = torch.nn.ModuleList(torch.nn.Linear(s[1], s[0], bias=False) for s in SHAPES)
        with torch.no_grad():
            for layer, w in zip(layers, weights):
                layer.weight.copy_(w)
        if sharded:
            for layer in layers:
                fully_shard(layer)
        params = [layer.weight for layer in layers]
        muon = optim.Muon(params, lr=0.1, ortho_dtype=torch.float32, rank=rank if world > 1 else 0,
                          world_size=world, exchange_elements=exchange)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = distribute_tensor(g, p.device_mesh, p.placements, src_data_rank=None) if sharded else g.clone()
            muon.step()
        whole = [p.full_tensor() if sharded else p.detach() for p in params]
        return whole, muon.work.matrices

    reference, _ = stepped(1, False, None)
    results = {}
    for name, sharded, exchange in (("ddp", False, None), ("ddp-by-round", False, 1), ("fsdp", True, None),
                                    ("fsdp-by-round", True, 1)):
        whole, matrices = stepped(3, sharded, exchange)
        results[name] = {"equal": all(torch.equal(a, b) for a, b in zip(whole, reference)), "matrices": matrices}
    Path(out, f"muon{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


@pytest.mark.slow
def test_muon_split_over_three_uneven_ranks_equals_one_process(tmp_path):
    mp.spawn(muon_on_three_ranks, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=3, join=True)
    ranks = [json.loads((tmp_path / f"muon{r}.json").read_text()) for r in range(3)]
    for name in ("ddp", "ddp-by-round", "fsdp", "fsdp-by-round"):
        assert all(r[name]["equal"] for r in ranks), name  # bit for bit, on every rank
        assert sum(r[name]["matrices"] for r in ranks) == 3 * len(SHAPES)  # each matrix once a step
