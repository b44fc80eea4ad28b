"""The Chinchilla loss law L(N, D) = E + A / N^alpha + B / D^beta and what follows from it.

N is the total parameter count (embeddings included, as in Hoffmann et al. 2022), D the training
tokens, and training compute C = 6 N D. Minimising L at fixed C gives (Hoffmann et al., eq. 4)

    N_opt(C) = G (C/6)^a,   D_opt(C) = G^-1 (C/6)^b,
    G = (alpha A / (beta B))^(1 / (alpha + beta)),  a = beta / (alpha + beta),  b = alpha / (alpha + beta).

`read_law_json` reads a law back from `blueberry-scale fit --json` and refuses one these formulas cannot use;
`DataRange` is what the law was fitted on, so a plan can say how far beyond it it goes.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from blueberry.errors import UserError

PARAMETER_NAMES = ("E", "A", "B", "alpha", "beta")


@dataclass(frozen=True)
class Law:
    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, N: np.ndarray | float, D: np.ndarray | float) -> np.ndarray | float:
        return self.E + self.A / np.power(N, self.alpha) + self.B / np.power(D, self.beta)

    @property
    def a(self) -> float:
        """Exponent of N_opt in compute."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """Exponent of D_opt in compute."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def G(self) -> float:
        return (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))

    def compute_optimal(self, C: float) -> tuple[float, float]:
        """(N, D) minimising the loss at compute C = 6 N D."""
        return self.G * (C / 6) ** self.a, (C / 6) ** self.b / self.G

    def compute_optimal_tokens(self, N: float) -> float:
        """The D at which N is the compute-optimal size: the budget that N should be trained with."""
        return (N / self.G) ** (1 / self.a) / N

    def derived(self) -> dict[str, float]:
        return {"a": self.a, "b": self.b, "G": self.G}

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class DataRange:
    """The runs a law was fitted on, by their extremes: a plan past any of them is an extrapolation."""

    runs: int
    N_max: float
    D_max: float
    C_max: float
    tokens_per_param_max: float

    @classmethod
    def of(cls, N: np.ndarray, D: np.ndarray) -> DataRange:
        N, D = np.asarray(N, np.float64), np.asarray(D, np.float64)
        return cls(runs=len(N), N_max=float(N.max()), D_max=float(D.max()), C_max=float((6 * N * D).max()),
                   tokens_per_param_max=float((D / N).max()))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def beyond(self, N: float, D: float) -> list[str]:
        """What of (N, D) lies past the runs, each with its factor: empty inside the data's range."""
        out = []
        for what, value, largest in (("parameters N", N, self.N_max), ("tokens D", D, self.D_max),
                                     ("compute C", 6 * N * D, self.C_max),
                                     ("tokens per parameter", D / N, self.tokens_per_param_max)):
            if value > largest * (1 + 1e-9):
                out.append(f"{what} {value:.3g} is {value / largest:.3g}x the largest of the fit's runs "
                           f"({largest:.3g})")
        return out


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class LawFile:
    """What a `fit --json` file holds for a plan. `data_range` and `source` are None in files written
    before `fit --json` recorded them."""

    law: Law
    samples: dict[str, np.ndarray] | None  # bootstrap draws, one array per parameter
    data_range: DataRange | None
    source: str | None


def read_law_json(path: Path) -> tuple[Law, dict[str, np.ndarray] | None]:
    """The law and its bootstrap samples (one array per parameter, or None) from a `fit --json` file
    (`read_law_file` for the rest)."""
    read = read_law_file(path)
    return read.law, read.samples


def read_law_file(path: Path) -> LawFile:
    """The law, its bootstrap samples, the range of the runs it was fitted on and their source, from a
    `fit --json` file.

    Refused with a one-line `UserError`: a file that is not a JSON object, an estimate that is missing
    or not a finite number, E < 0, or A, B, alpha, beta <= 0 (the loss would not fall with N and D, and
    G, a, b divide by zero or go complex); samples that are not one flat list of finite numbers per
    parameter, all of one length; a data range that is not positive numbers.
    """
    if path.is_dir():
        raise UserError(f"law file {path} is a directory: give the `blueberry-scale fit --json` file in it")
    if not path.is_file():
        raise UserError(f"law file {path} does not exist: write one with `blueberry-scale fit --json {path}`")
    refit = "write it again with `blueberry-scale fit --json`"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):  # ValueError covers bytes that are not UTF-8 and text that is not JSON
        raise UserError(f"{path} is not a `blueberry-scale fit --json` file (not JSON text): {refit}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path} is not a `blueberry-scale fit --json` file (expected a JSON object with "
                        f"{', '.join(PARAMETER_NAMES)}): {refit}")
    values = {}
    for name in PARAMETER_NAMES:
        entry = raw.get(name)
        value = entry.get("estimate") if isinstance(entry, dict) else None
        if not _is_number(value) or not math.isfinite(value):
            raise UserError(f"{path}: {name} has no finite number as its estimate (got {entry!r:.60}): {refit}")
        if value < 0 or (value == 0 and name != "E"):
            bound = ">= 0" if name == "E" else "> 0"
            raise UserError(f"{path}: {name} must be {bound} for a law whose loss falls with N and D, got {value}: "
                            f"{refit}")
        values[name] = float(value)
    data_range = _data_range(raw.get("data_range"), path, refit)
    source = raw.get("source") if isinstance(raw.get("source"), str) else None
    samples = raw.get("bootstrap_samples")
    if samples is None:
        return LawFile(Law(**values), None, data_range, source)
    if not isinstance(samples, dict):
        raise UserError(f"{path}: bootstrap_samples must be an object of lists, one per parameter: {refit}")
    arrays = {}
    for name in PARAMETER_NAMES:
        draws = samples.get(name)
        if not isinstance(draws, list) or not draws or not all(_is_number(v) for v in draws):
            raise UserError(f"{path}: bootstrap_samples[{name!r}] must be a flat list of numbers, one per refit "
                            f"(got {draws!r:.60}): {refit}")
        arrays[name] = np.array(draws, dtype=np.float64)
        if not np.all(np.isfinite(arrays[name])):
            raise UserError(f"{path}: bootstrap_samples[{name!r}] holds NaN or infinity: {refit}")
    if len({len(draws) for draws in arrays.values()}) > 1:
        raise UserError(f"{path}: bootstrap_samples lists differ in length "
                        f"({', '.join(f'{k} {len(v)}' for k, v in arrays.items())}): {refit}")
    return LawFile(Law(**values), arrays, data_range, source)


def _data_range(entry: object, path: Path, refit: str) -> DataRange | None:
    if entry is None:
        return None
    names = ("N_max", "D_max", "C_max", "tokens_per_param_max")
    if not isinstance(entry, dict) or not all(_is_number(entry.get(k)) and math.isfinite(entry[k]) and entry[k] > 0
                                              for k in (*names, "runs")):
        raise UserError(f"{path}: data_range must hold positive numbers runs, {', '.join(names)} "
                        f"(got {entry!r:.60}): {refit}")
    return DataRange(runs=int(entry["runs"]), **{k: float(entry[k]) for k in names})
