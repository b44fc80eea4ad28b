"""Where a plan's law comes from (`law_for_plan`): a `blueberry-scale fit --json` file, Epoch AI's published
Chinchilla fit (`--law chinchilla`), or a fit of runs done on the spot; each as what a plan needs of it
(`Predictor`).

`--law chinchilla` is Besiroglu et al.'s published parameters for the Chinchilla form, with the intervals
calibrated by rolling-origin backtests of that form on the same runs they fitted (the shipped runs less
the 5 highest losses), and no bootstrap (the paper gives standard errors, not draws).

A `fit --json` file is read in one of two layouts: the current one (`chosen_payload`: every form, the weights, the calibration) and
the one `fit --json` wrote before law forms existed (the Chinchilla law's E, A, B, alpha, beta at the top
level, with `bootstrap_samples`), which plans as the Chinchilla form with uncalibrated intervals. Either
way, anything a plan cannot use is refused with one line naming the entry: an estimate that is missing or
not a finite number, coefficients or exponents <= 0 (the loss would not fall with N and D), bootstrap
draws that are not flat lists of finite numbers of one length, weights that are not a distribution over
known forms, a data range that is not positive numbers, a calibration that is not numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from blueberry.errors import UserError
from blueberry.scaling.calibrate import Calibration
from blueberry.scaling.choice import Predictor, choose_law
from blueberry.scaling.fit import ScalingPoints
from blueberry.scaling.forms import FORMS
from blueberry.scaling.law import EPOCH_CHINCHILLA, PARAMETER_NAMES, DataRange, StackedLaw, law_of
from blueberry.scaling.runs import Columns, RunSource, chinchilla_points, load_points

REFIT = "write it again with `blueberry-scale fit --json`"
NON_NEGATIVE = ("E",)  # the irreducible loss may be 0; every other parameter must be > 0


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _estimates(entries: object, names: tuple[str, ...], where: str, path: Path) -> dict[str, float]:
    values = {}
    for name in names:
        entry = entries.get(name) if isinstance(entries, dict) else None
        value = entry.get("estimate") if isinstance(entry, dict) else None
        if not _is_number(value) or not math.isfinite(value):
            raise UserError(f"{path}: {where}{name} has no finite number as its estimate (got {entry!r:.60}): {REFIT}")
        if value < 0 or (value == 0 and name not in NON_NEGATIVE):
            bound = ">= 0" if name in NON_NEGATIVE else "> 0"
            raise UserError(f"{path}: {where}{name} must be {bound} for a law whose loss falls with N and D, got "
                            f"{value}: {REFIT}")
        values[name] = float(value)
    return values


def _draws(samples: object, names: tuple[str, ...], where: str, path: Path) -> dict[str, np.ndarray] | None:
    if samples is None:
        return None
    if not isinstance(samples, dict):
        raise UserError(f"{path}: {where}bootstrap_samples must be an object of lists, one per parameter: {REFIT}")
    arrays = {}
    for name in names:
        draws = samples.get(name)
        if not isinstance(draws, list) or not draws or not all(_is_number(v) for v in draws):
            raise UserError(f"{path}: {where}bootstrap_samples[{name!r}] must be a flat list of numbers, one per refit "
                            f"(got {draws!r:.60}): {REFIT}")
        arrays[name] = np.array(draws, dtype=np.float64)
        if not np.all(np.isfinite(arrays[name])):
            raise UserError(f"{path}: {where}bootstrap_samples[{name!r}] holds NaN or infinity: {REFIT}")
    if len({len(draws) for draws in arrays.values()}) > 1:
        raise UserError(f"{path}: {where}bootstrap_samples lists differ in length "
                        f"({', '.join(f'{k} {len(v)}' for k, v in arrays.items())}): {REFIT}")
    return arrays


def _data_range(entry: object, path: Path) -> DataRange | None:
    if entry is None:
        return None
    names = ("N_max", "D_max", "C_max", "tokens_per_param_max")
    if not isinstance(entry, dict) or not all(_is_number(entry.get(k)) and math.isfinite(entry[k]) and entry[k] > 0
                                              for k in (*names, "runs")):
        raise UserError(f"{path}: data_range must hold positive numbers runs, {', '.join(names)} "
                        f"(got {entry!r:.60}): {REFIT}")
    return DataRange(runs=int(entry["runs"]), **{k: float(entry[k]) for k in names})


def _calibration(entry: object, path: Path) -> Calibration | None:
    if entry is None:
        return None
    ok = isinstance(entry, dict) and all(_is_number(entry.get(k)) and math.isfinite(entry[k]) and entry[k] >= 0
                                         for k in ("sigma", "kappa"))
    lists = [entry.get(k) for k in ("scores", "distances")] if isinstance(entry, dict) else [None, None]
    ok = ok and entry["sigma"] > 0 and all(isinstance(v, list) and v and all(_is_number(x) and math.isfinite(x)
                                                                              for x in v) for v in lists)
    if not ok or len(lists[0]) != len(lists[1]):
        raise UserError(f"{path}: calibration must hold sigma > 0, kappa >= 0 and equally long lists of finite "
                        f"scores and distances (got {entry!r:.60}): {REFIT}")
    return Calibration(float(entry["sigma"]), float(entry["kappa"]), np.array(lists[0], np.float64),
                       np.array(lists[1], np.float64))


def _weights(raw: dict, path: Path) -> dict[str, float]:
    stack = raw.get("stack")
    weights = stack.get("weights") if isinstance(stack, dict) else None
    if (not isinstance(weights, dict) or not weights or not all(k in FORMS for k in weights)
            or not all(_is_number(v) and 0 < v <= 1 for v in weights.values())
            or abs(sum(weights.values()) - 1) > 1e-6):
        raise UserError(f"{path}: stack.weights must give forms among {', '.join(FORMS)} weights in (0, 1] summing "
                        f"to 1 (got {weights!r:.60}): {REFIT}")
    return {k: float(v) for k, v in weights.items()}


def read_law_file(path: Path) -> Predictor:
    """The law of a `fit --json` file as a plan uses it (see the module's docstring)."""
    if path.is_dir():
        raise UserError(f"law file {path} is a directory: give the `blueberry-scale fit --json` file in it")
    if not path.is_file():
        raise UserError(f"law file {path} does not exist: write one with `blueberry-scale fit --json {path}`")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):  # ValueError covers bytes that are not UTF-8 and text that is not JSON
        raise UserError(f"{path} is not a `blueberry-scale fit --json` file (not JSON text): {REFIT}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path} is not a `blueberry-scale fit --json` file (expected a JSON object): {REFIT}")
    data_range = _data_range(raw.get("data_range"), path)
    source = raw.get("source") if isinstance(raw.get("source"), str) else "runs it does not record"
    if "forms" not in raw:  # written before law forms: the Chinchilla law at the top level
        law = law_of("chinchilla", _estimates(raw, PARAMETER_NAMES, "", path))
        samples = _draws(raw.get("bootstrap_samples"), PARAMETER_NAMES, "", path)
        draws = None if samples is None else StackedLaw((law_of("chinchilla", {k: v[:, None] for k, v in
                                                                             samples.items()}),), (1.0,))
        return Predictor(StackedLaw((law,), (1.0,)), draws, None, data_range, f"the fit in {path} (of {source})",
                         "chinchilla 1.00 (a file from before law forms: no selection, intervals uncalibrated)",
                         {"chinchilla": 1.0})
    weights = _weights(raw, path)
    forms = raw.get("forms")
    laws, draw_laws, lengths = [], [], set()
    for name in weights:
        entry = forms.get(name) if isinstance(forms, dict) else None
        if not isinstance(entry, dict):
            raise UserError(f"{path}: forms[{name!r}] is missing though it has weight: {REFIT}")
        names = FORMS[name].parameters
        laws.append(law_of(name, _estimates(entry.get("parameters"), names, f"forms[{name!r}] ", path)))
        samples = _draws(entry.get("bootstrap_samples"), names, f"forms[{name!r}] ", path)
        draw_laws.append(None if samples is None else law_of(name, {k: v[:, None] for k, v in samples.items()}))
        lengths |= {len(v) for v in samples.values()} if samples is not None else set()
    if len(lengths) > 1:
        raise UserError(f"{path}: the forms' bootstrap_samples differ in length: {REFIT}")
    draws = None if any(d is None for d in draw_laws) else StackedLaw(tuple(draw_laws), tuple(weights.values()))
    choice = ", ".join(f"{k} {v:.2f}" for k, v in weights.items())
    stack = raw["stack"]
    method = stack.get("method") if isinstance(stack.get("method"), str) else "as recorded"
    residuals = stack.get("residuals")
    if residuals is not None and not (isinstance(residuals, list) and residuals
                                      and all(_is_number(r) and math.isfinite(r) for r in residuals)):
        raise UserError(f"{path}: stack.residuals must be a list of finite numbers (got {residuals!r:.60}): {REFIT}")
    return Predictor(StackedLaw(tuple(laws), tuple(weights.values())), draws, _calibration(raw.get("calibration"), path),
                     data_range, f"the fit in {path} (of {source})", f"{choice} ({method})", weights,
                     None if residuals is None else np.array(residuals, np.float64))


EPOCH_SOURCE = "Chinchilla's law (Hoffmann et al. 2022 runs, Epoch AI 2024 refit), not fitted to the lab's runs"


def epoch_chinchilla() -> Predictor:
    """Epoch AI's published Chinchilla law, calibrated by backtests of its form on the runs it was fitted to."""
    points = chinchilla_points()
    chosen = choose_law(points, force="chinchilla", forms=("chinchilla",), bootstrap=0)
    law = StackedLaw((law_of("chinchilla", {k: v[0] for k, v in EPOCH_CHINCHILLA.items()}),), (1.0,))
    return Predictor(law, None, chosen.calibration, chosen.data_range, EPOCH_SOURCE,
                     "chinchilla 1.00 (Epoch AI's published parameters; intervals from rolling-origin backtests of "
                     f"the form on the same {chosen.data_range.runs} runs)", {"chinchilla": 1.0})


def law_for_plan(law: str | None, source: RunSource, *, exclude_top: int = 0, force: str | None = None,
                 cut_by: str = "N", bootstrap: int = 200, seed: int = 0) -> tuple[Predictor, ScalingPoints | None]:
    """The plan's law and, when fitted now, the runs it was fitted to: `law` is 'chinchilla' or a `fit
    --json` file; without it the runs of `source` are fitted on the spot as `fit` would (N, D, loss
    columns: the source's defaults)."""
    if law == "chinchilla":
        return epoch_chinchilla(), None
    if law is not None:
        return read_law_file(Path(law)), None
    if not source.given:
        raise UserError("plan needs a law: --law chinchilla (Epoch AI's published fit), --law FILE (from "
                        "`blueberry-scale fit --json FILE`), or --csv FILE / --experiment NAME to fit one now")
    points, label = load_points(source, Columns(), exclude_top)
    chosen = choose_law(points, force=force, cut_by=cut_by, bootstrap=bootstrap, seed=seed)
    return chosen.predictor(f"a fit of {label}, done now"), points

