"""How the best learning rate and batch size move with compute: power laws fitted to sweep results.

DeepSeek LLM (2024) fitted eta_opt = 0.3118 C^-0.1250 and B_opt = 0.2920 C^0.3271 (batch in tokens)
for AdamW. Muon's laws may differ, so `fit_hparam_laws` fits ours from a study's trials: per compute
budget, the lowest-loss trial's LR and batch; then log y = log k + p log C by least squares, with
bootstrap intervals over budgets.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blueberry.errors import UserError

DEEPSEEK_LR = (0.3118, -0.1250)  # (coefficient, exponent), AdamW
DEEPSEEK_BATCH_TOKENS = (0.2920, 0.3271)


@dataclass(frozen=True)
class PowerLaw:
    coefficient: float
    exponent: float
    exponent_ci: tuple[float, float] | None = None
    coefficient_ci: tuple[float, float] | None = None

    def __call__(self, C: float | np.ndarray) -> float | np.ndarray:
        return self.coefficient * np.power(C, self.exponent)

    def to_dict(self) -> dict[str, object]:
        return {"coefficient": self.coefficient, "exponent": self.exponent,
                "exponent_ci": self.exponent_ci, "coefficient_ci": self.coefficient_ci}

    @classmethod
    def from_dict(cls, raw: dict) -> PowerLaw:
        ci = (lambda v: tuple(v) if v is not None else None)
        return cls(raw["coefficient"], raw["exponent"], ci(raw.get("exponent_ci")), ci(raw.get("coefficient_ci")))


@dataclass(frozen=True)
class Trial:
    compute: float  # training FLOPs, 6 N D
    lr: float
    batch_tokens: float
    loss: float


@dataclass(frozen=True)
class BudgetBest:
    compute: float
    lr: float
    batch_tokens: float
    loss: float
    trials: int


def best_per_budget(trials: list[Trial], tolerance_dex: float = 0.05) -> list[BudgetBest]:
    """The lowest-loss trial of each compute budget (budgets within `tolerance_dex` in log10 C are one)."""
    if not trials:
        raise UserError("no finished trials to fit hyperparameter laws to")
    ordered = sorted(trials, key=lambda t: t.compute)
    groups: list[list[Trial]] = [[ordered[0]]]
    for trial in ordered[1:]:
        if np.log10(trial.compute) - np.log10(groups[-1][-1].compute) > tolerance_dex:
            groups.append([])
        groups[-1].append(trial)
    out = []
    for group in groups:
        best = min(group, key=lambda t: t.loss)
        out.append(BudgetBest(best.compute, best.lr, best.batch_tokens, best.loss, len(group)))
    return out


def fit_power_law(C: np.ndarray, y: np.ndarray, bootstrap: int = 1000, seed: int = 0) -> PowerLaw:
    """y = k C^p by least squares in log-log, with percentile intervals from resampling the points."""
    logC, logy = np.log(C), np.log(y)
    p, logk = np.polyfit(logC, logy, 1)
    if len(C) < 3 or bootstrap == 0:
        return PowerLaw(float(np.exp(logk)), float(p))
    rng = np.random.default_rng(seed)
    fits = []
    for _ in range(bootstrap):
        idx = rng.integers(0, len(C), len(C))
        if len(np.unique(logC[idx])) >= 2:
            fits.append(np.polyfit(logC[idx], logy[idx], 1))
    ps, logks = np.array(fits).T
    return PowerLaw(float(np.exp(logk)), float(p), (float(np.percentile(ps, 2.5)), float(np.percentile(ps, 97.5))),
                    (float(np.exp(np.percentile(logks, 2.5))), float(np.exp(np.percentile(logks, 97.5)))))


@dataclass(frozen=True)
class HparamLaws:
    lr: PowerLaw
    batch_tokens: PowerLaw
    budgets: list[BudgetBest]
    source: str | None = None  # the runs the laws were fitted to (and the LR column), for a plan to cite

    def to_dict(self) -> dict[str, object]:
        return {"lr": self.lr.to_dict(), "batch_tokens": self.batch_tokens.to_dict(),
                "budgets": [b.__dict__ for b in self.budgets], "source": self.source}

    @classmethod
    def from_dict(cls, raw: dict) -> HparamLaws:
        return cls(PowerLaw.from_dict(raw["lr"]), PowerLaw.from_dict(raw["batch_tokens"]),
                   [BudgetBest(**b) for b in raw.get("budgets", [])], raw.get("source"))


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_hparams_json(path: Path) -> HparamLaws:
    """Laws from a `blueberry-scale hparams --json` file, each value checked: a coefficient that is not a
    positive finite number, an exponent that is not finite, an interval that is not two numbers, or a
    budget row that is not numbers is a one-line `UserError` naming the entry."""
    redo = "write it again with `blueberry-scale hparams --json`"
    if path.is_dir():
        raise UserError(f"--hparams {path} is a directory: give the `blueberry-scale hparams --json` file in it")
    if not path.is_file():
        raise UserError(f"--hparams {path} does not exist: write one with `blueberry-scale hparams --json {path}`")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):  # ValueError: bytes that are not UTF-8, text that is not JSON
        raise UserError(f"--hparams {path} is not a `blueberry-scale hparams --json` file (not JSON text): "
                        f"{redo}") from None
    if not isinstance(raw, dict):
        raise UserError(f"--hparams {path}: expected a JSON object with lr and batch_tokens: {redo}")
    for name in ("lr", "batch_tokens"):
        entry = raw.get(name)
        if not isinstance(entry, dict):
            raise UserError(f"--hparams {path}: {name} must be an object with coefficient and exponent "
                            f"(got {entry!r:.60}): {redo}")
        coefficient, exponent = entry.get("coefficient"), entry.get("exponent")
        if not _finite(coefficient) or coefficient <= 0:
            raise UserError(f"--hparams {path}: {name}.coefficient must be a positive finite number "
                            f"(got {coefficient!r:.60}): {redo}")
        if not _finite(exponent):
            raise UserError(f"--hparams {path}: {name}.exponent must be a finite number (got {exponent!r:.60}): "
                            f"{redo}")
        for ci in ("exponent_ci", "coefficient_ci"):
            value = entry.get(ci)
            if value is not None and not (isinstance(value, list) and len(value) == 2 and all(map(_finite, value))):
                raise UserError(f"--hparams {path}: {name}.{ci} must be null or two numbers (got {value!r:.60}): "
                                f"{redo}")
    budgets = raw.get("budgets", [])
    fields = ("compute", "lr", "batch_tokens", "loss", "trials")
    if not isinstance(budgets, list) or not all(isinstance(b, dict) and set(b) == set(fields)
                                                and all(_finite(b[k]) for k in fields) for b in budgets):
        raise UserError(f"--hparams {path}: budgets must be a list of objects of numbers {', '.join(fields)}: "
                        f"{redo}")
    source = raw.get("source")
    if source is not None and not isinstance(source, str):
        raise UserError(f"--hparams {path}: source must be text (got {source!r:.60}): {redo}")
    return HparamLaws.from_dict(raw)


def fit_hparam_laws(trials: list[Trial], bootstrap: int = 1000, seed: int = 0, source: str | None = None) -> HparamLaws:
    budgets = best_per_budget(trials)
    if len(budgets) < 2:
        raise UserError(f"hyperparameter laws need sweeps at two or more compute budgets; found {len(budgets)}")
    C = np.array([b.compute for b in budgets])
    return HparamLaws(lr=fit_power_law(C, np.array([b.lr for b in budgets]), bootstrap, seed),
                      batch_tokens=fit_power_law(C, np.array([b.batch_tokens for b in budgets]), bootstrap, seed),
                      budgets=budgets, source=source)


def deepseek_laws() -> HparamLaws:
    """DeepSeek LLM's published AdamW laws, the reference when no sweep of ours covers the budget."""
    return HparamLaws(PowerLaw(*DEEPSEEK_LR), PowerLaw(*DEEPSEEK_BATCH_TOKENS), [],
                      "DeepSeek LLM (2024) AdamW laws, not fitted for Muon")


def hparams_text(laws: HparamLaws, source: str) -> str:
    """The fitted laws and, per budget, the best trial's LR and batch against the laws'."""
    lines = [f"Hyperparameter laws from {source} ({len(laws.budgets)} compute budgets)"]
    for name, law in (("lr", laws.lr), ("batch (tokens)", laws.batch_tokens)):
        ci = (f" (exponent 95% interval [{law.exponent_ci[0]:.3f}, {law.exponent_ci[1]:.3f}])"
              if law.exponent_ci else "")
        lines.append(f"  {name:15} = {law.coefficient:.4g} C^{law.exponent:.4f}{ci}")
    lines.append(f"  {'C':>10}  {'best lr':>10} {'law':>10} {'ratio':>6}   {'best batch':>10} {'law':>10} {'ratio':>6}")
    for b in laws.budgets:
        lines.append(f"  {b.compute:10.3g}  {b.lr:10.3g} {laws.lr(b.compute):10.3g} {b.lr / laws.lr(b.compute):6.2f}   "
                     f"{b.batch_tokens:10.3g} {laws.batch_tokens(b.compute):10.3g} "
                     f"{b.batch_tokens / laws.batch_tokens(b.compute):6.2f}")
    return "\n".join(lines)

