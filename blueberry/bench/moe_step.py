"""The MoE's training step before and after issue #27, against the dense step of equal active parameters,
side by side in one process:

    python -m blueberry.bench.moe_step --threads 1

Variants, each a whole training step (forward, backward, gradient clipping, Muon + AdamW) of `tiny` on the
built-in corpus, batch 8 x 256, fp32, from the same initial weights and on the same batches:
- MoE, 4 experts top-2 (`--experts`, `--top-k`), grouped dispatch (static shapes), compiled and eager;
- the same MoE with the looped dispatch it replaced (`dispatch_looped`, one expert at a time), eager (what the
  MoE step was before) and compiled (its routing-dependent shapes split the graph; compiled last, with dynamic
  shapes, as a run of its own would);
- dense, with d_ff = top-k x the experts' d_ff: the same matmul parameters per token (the router's
  d_model x experts weights aside), eager and compiled.
After a warm-up of each (compilation included), `--rounds` rounds time one step of every variant in turn;
it prints each variant's median step time, tokens/s and the compiled graphs and graph breaks it needed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch._dynamo.utils import counters

from blueberry.core.config import TrainConfig, replace
from blueberry.core.optim import build_optimizer
from blueberry.models.lm.config import ModelConfig, tiny
from blueberry.models.lm.model import dispatch_looped
from blueberry.models.lm.task import LMTask


@dataclass
class Variant:
    name: str
    step: Callable[[torch.Tensor], float]
    graphs: int = 0
    graph_breaks: int = 0
    seconds: list[float] = field(default_factory=list)


def training_step(cfg: ModelConfig, train_cfg: TrainConfig, compiled: bool, looped: bool = False
                  ) -> Callable[[torch.Tensor], float]:
    """One optimizer step of a fresh model on a batch, as the training loop takes it; returns the loss."""
    task = LMTask(cfg)
    torch.manual_seed(train_cfg.seed)
    model = task.build_model()
    if looped:
        for block in model.blocks:
            block.mlp.dispatch = dispatch_looped
    optimizer = build_optimizer(model, train_cfg, torch.device("cpu"), task.hidden_matrices(model))
    # Static shapes (dynamic=False) for a whole-graph model: several models compiled in one process would
    # otherwise make the later ones' differing dimensions symbolic. The looped dispatch needs dynamic shapes (its
    # experts see a different number of tokens each step), as it would in a run of its own.
    step_model = torch.compile(model, dynamic=None if looped else False) if compiled else model

    def step(batch: torch.Tensor) -> float:
        loss = task.loss(step_model, batch)
        (loss.value + loss.aux).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad()
        return loss.value.item()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from blueberry.platform.data import open_data

    base = tiny()
    moe = replace(base, n_experts=args.experts, experts_top_k=args.top_k)
    dense = replace(base, d_ff=args.top_k * base.d_ff)
    data = open_data("builtin", base.seq_len, progress=False)
    train_cfg = TrainConfig(batch_size=args.batch, device="cpu")
    stream = data.train_stream(args.batch, train_cfg.seed)
    batches = [stream.next() for _ in range(args.warmup + args.rounds)]
    specs = [("MoE grouped, compiled", moe, True, False), ("MoE grouped, eager", moe, False, False),
             ("MoE looped (before), eager", moe, False, True), ("dense equal active, eager", dense, False, False),
             ("dense equal active, compiled", dense, True, False), ("MoE looped (before), compiled", moe, True, True)]
    variants = []
    for name, cfg, compiled, looped in specs:
        graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
        variant = Variant(name, training_step(cfg, train_cfg, compiled, looped))
        for batch in batches[:args.warmup]:
            variant.step(batch)
        variant.graphs = counters["stats"]["unique_graphs"] - graphs
        variant.graph_breaks = sum(counters["graph_break"].values()) - breaks
        variants.append(variant)
    for batch in batches[args.warmup:]:
        for variant in variants:
            start = time.perf_counter()
            variant.step(batch)
            variant.seconds.append(time.perf_counter() - start)
    tokens = args.batch * base.seq_len
    print(f"tiny, {args.experts} experts top-{args.top_k} (d_ff {base.d_ff}) vs dense d_ff {dense.d_ff}; batch "
          f"{args.batch} x {base.seq_len}, fp32, Muon + AdamW; {args.threads} thread(s); median of {args.rounds} "
          "interleaved rounds")
    print(f"{'variant':<32} {'step ms':>8} {'tokens/s':>9} {'graphs':>7} {'breaks':>7}")
    for v in variants:
        median = statistics.median(v.seconds)
        graphs = f"{v.graphs:>7} {v.graph_breaks:>7}" if "compiled" in v.name else f"{'-':>7} {'-':>7}"
        print(f"{v.name:<32} {median * 1000:>8.1f} {tokens / median:>9,.0f} {graphs}")


if __name__ == "__main__":
    main()
