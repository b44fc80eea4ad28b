"""Scaling data that ships with Blueberry, named on the command line (`--csv chinchilla`).

`chinchilla`: the 245 training runs of Hoffmann et al. (2022), Figure 4, as Epoch AI extracted them
from the paper's SVG for their replication (Besiroglu et al., 2024, "Chinchilla Scaling: A
replication attempt"): model size, training FLOPs and final loss per run. It is what
`blueberry-scale fit` is checked against (`tests/test_scaling.py` reproduces Epoch AI's refit).
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
}


def named(name: str | Path | None) -> NamedDataset | None:
    """The shipped dataset `name` stands for, or None for a file path."""
    return NAMED.get(str(name)) if name is not None else None
