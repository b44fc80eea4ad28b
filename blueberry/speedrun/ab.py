"""An A/B's two arms, read from JSON files, and their runs interleaved.

An arm file holds either dotted overrides of the study's base config,

    {"train.muon_lr": 0.015, "train.adamw_lr": 0.001}

the same nested by section, `{"train": {"muon_lr": 0.015}}`, or a whole run configuration as
`blueberry-train` records it (`config.json`, with `task`, `model` and `train`), which is read as
overrides of the fields that decide what is trained (not its seed, budget, device or cadences,
which the study and its track set). The arms' runs alternate (baseline, candidate, baseline, ...), so
on a shared pool machine noise falls on both, and each run has its own seed: the arms are
independent samples, as Welch's test assumes, and a claim holds over seeds, not for one seed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from blueberry.errors import UserError
from blueberry.speedrun.runs import BASELINE, CANDIDATE

SECTIONS = ("model", "train")
SEED, TARGET, BUDGET = "train.seed", "train.target_train_loss", "train.train_tokens"
# What a whole config.json records of how its run was made, not what it trained: left to the A/B.
RECORDED = (SEED, TARGET, BUDGET, "train.device", "train.eval_every", "train.eval_at_tokens", "train.log_every",
            "train.checkpoint_every")


def read_arm(path: str | Path) -> dict[str, Any]:
    """The dotted overrides an arm file describes (see the module docstring); one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"A/B arm {path}: no such file (a JSON object of overrides, or a config.json)")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"A/B arm {path} is not JSON: {err}") from None
    if not isinstance(raw, dict):
        raise UserError(f"A/B arm {path} must hold a JSON object, not {type(raw).__name__}")
    overrides: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "task":
            continue  # a whole config's kind; the study checks it against its own
        if key in SECTIONS and isinstance(value, dict):
            overrides |= {f"{key}.{name}": v for name, v in value.items()}
        elif "." in key and key.split(".", 1)[0] in SECTIONS:
            overrides[key] = value
        else:
            raise UserError(f"A/B arm {path}: {key!r} is not a config field: use dotted names such as "
                            "train.muon_lr or model.n_layers, or sections model and train")
    if "task" in raw:  # a whole config also records how it was run; the study and its track decide that
        overrides = {k: v for k, v in overrides.items() if k not in RECORDED}
    for key in (SEED, TARGET):
        if key in overrides:
            raise UserError(f"A/B arm {path} sets {key}: the A/B gives every run its own seed, and the track "
                            "its target; leave it out")
    return overrides


def arm_kind(path: str | Path) -> str | None:
    """The task kind a whole-config arm file names (`task`), if it names one."""
    raw = json.loads(Path(path).read_text())
    return raw.get("task") if isinstance(raw.get("task"), str) else None


def interleave(baseline: dict[str, Any], candidate: dict[str, Any], runs: int, first_seed: int = 0,
               defaults: dict[str, Any] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """[(arm, overrides with its seed)], `runs` of each arm alternating, baseline first, seeds
    `first_seed`, `first_seed + 1`, ... in that order. Both arms name the same fields (a field only
    one arm sets takes its value in `defaults` in the other), so their runs are named alike."""
    defaults = defaults or {}
    keys = list(dict.fromkeys([*baseline, *candidate]))

    def full(arm: dict[str, Any]) -> dict[str, Any]:
        return {key: arm[key] if key in arm else defaults.get(key) for key in keys}

    points = []
    for i in range(runs):
        for j, (name, arm) in enumerate(((BASELINE, baseline), (CANDIDATE, candidate))):
            points.append((name, {**full(arm), SEED: first_seed + 2 * i + j}))
    return points
