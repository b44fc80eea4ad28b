"""Data that ships with Blueberry or that a plan names.

Scaling runs named on the command line (`--csv chinchilla`): the 245 training runs of Hoffmann et al.
(2022), Figure 4, as Epoch AI extracted them from the paper's SVG for their replication (Besiroglu
et al., 2024, "Chinchilla Scaling: A replication attempt"): model size, training FLOPs and final loss
per run. It is what `blueberry-scale fit` is checked against (`tests/test_scaling.py` reproduces Epoch
AI's refit). `--csv cpu-grid`: the 18 runs of the project's own CPU scaling grid
(`python studies/scaling_grid.py --smoke --shapes 32x1 64x2 96x3 128x4 192x5 256x6`: six tiny-model shapes,
0.27M to 6.4M parameters, at 2e11, 5e11 and 1.2e12 FLOP), their final validation loss read from MLflow, so
the selection on them can be rerun without training them again.

GPU prices a plan costs with when `--price-per-gpu-hour` is not given (`GPU_PRICES`): on-demand list prices
for one GPU-hour from public price surveys, each with its source and date. Prices move and differ by two
to three times between providers; these are defaults to make the cost visible, not quotes.

Training corpora a plan names (`blueberry-scale plan --dataset fineweb`): how many tokens each holds, so
a plan can say how many epochs its D means. The counts are the dataset cards' headline figures, each in
the tokenizer its card counts with (where the card names one); another tokenizer of similar vocabulary
(SmolLM2's 49,152 against GPT-2's 50,257) gives a count within some percent of it, not the same count.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class NamedDataset:
    path: Path
    params_col: str
    loss_col: str
    flops_col: str | None = None
    tokens_col: str | None = None
    description: str = ""


NAMED = {
    "chinchilla": NamedDataset(DATA_DIR / "chinchilla.csv", params_col="Model Size", flops_col="Training FLOP",
                               loss_col="loss", description="Hoffmann et al. (2022) runs, extracted by Epoch AI"),
    "cpu-grid": NamedDataset(DATA_DIR / "cpu_grid.csv", params_col="N", tokens_col="D", loss_col="loss",
                             description="the project's CPU scaling grid, studies/scaling_grid.py --smoke on 6 "
                                         "shapes, 2026-12-05"),
}


def named(name: str | Path | None) -> NamedDataset | None:
    """The shipped dataset `name` stands for, or None for a file path."""
    return NAMED.get(str(name)) if name is not None else None


@dataclass(frozen=True)
class Corpus:
    """A pretraining corpus: its Hugging Face name, the tokens it holds and where that count comes from."""

    hub: str
    tokens: float
    tokenizer: str
    source: str


CORPORA = {
    "fineweb": Corpus("HuggingFaceFW/fineweb", 15e12, "GPT-2", "dataset card: 15 trillion tokens (v1.0)"),
    "fineweb-edu": Corpus("HuggingFaceFW/fineweb-edu", 1.3e12, "GPT-2", "dataset card: 1.3T tokens"),
    "dclm-baseline": Corpus("mlfoundations/dclm-baseline-1.0", 4e12, "not named on the card",
                            "dataset card: 4T tokens, 3B documents"),
    "blueberry-1b": Corpus("vukrosic/blueberry-1B-pretrain", 1e9, "SmolLM2-135M",
                           "its name: about 1B tokens (the marathon-1b recipe reads 1.012e9 training tokens from it)"),
}


@dataclass(frozen=True)
class GpuPrice:
    """The default price of one GPU-hour, and where it comes from."""

    dollars: float
    source: str


GPU_PRICES = {
    "h100": GpuPrice(2.50, "H100 SXM on-demand at specialty clouds, $2.50-3.50 (Mercatus GPU index, May 2026): the "
                           "low end"),
    "h200": GpuPrice(3.50, "H200 SXM on-demand at specialty clouds, $3.50-4.50 (Mercatus GPU index, May 2026): the "
                           "low end"),
    "a100": GpuPrice(1.10, "A100 80GB on-demand at specialty clouds, $1.10-1.50 (Mercatus GPU index, May 2026): the "
                           "low end"),
    "b200": GpuPrice(5.98, "B200 on-demand, $5.98-6.08 (deploybase.ai, March 2026): the low end"),
    "l40s": GpuPrice(0.87, "L40S on-demand (aihardwareindex.com, December 2025)"),
    "4090": GpuPrice(0.34, "RTX 4090 on-demand at RunPod (deploybase.ai, March 2026)"),
}

