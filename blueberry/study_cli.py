"""The command line every study script shares: common flags in, a `SweepConfig` out, a summary printed.

With no flags, a study sizes itself to the machine: on a cluster with GPUs, the record `nano-88m`
speedrun (8,011,776 tokens a trial); without GPUs, a small but meaningful version on the built-in
corpus with the `tiny` preset. `--smoke` is the two-minute check on two CPU cores.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from blueberry.cli.common import ArgumentParser, positive_float, positive_int, run_command
from blueberry.config import PRESETS, RunConfig, TrainConfig, preset


@dataclass(frozen=True)
class StudyScale:
    preset: str
    train_tokens: int
    trials: int
    batch_size: int


RECORD = StudyScale("nano-88m", 8_011_776, 16, 8)  # a GPU cluster: the speedrun record's budget
LAPTOP = StudyScale("tiny", 409_600, 8, 8)  # CPUs only: about 50 steps of 8 x 256 per trial
SMOKE = StudyScale("tiny", 40_960, 4, 4)  # two minutes on two cores


def study_parser(description: str, default_trials: int | None = None) -> ArgumentParser:
    parser = ArgumentParser(prog=sys.argv[0].rsplit("/", 1)[-1], description=description)
    parser.add_argument("--preset", choices=list(PRESETS), help="model preset (default: nano-88m with GPUs, else tiny)")
    parser.add_argument("--data", default="builtin", help="a prepared data directory, or builtin (default)")
    parser.add_argument("--train-tokens", type=positive_int, help="token budget per trial")
    parser.add_argument("--batch-size", type=positive_int, help="sequences per step for every trial")
    parser.add_argument("--trials", type=positive_int, default=default_trials, help="number of trials")
    parser.add_argument("--name", help="the resume key (default: the study, preset and a hash of the settings)")
    parser.add_argument("--storage", help="Ray storage path or URI (shared across nodes on multi-node clusters)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    parser.add_argument("--gpus-per-trial", type=float, help="default: 1 on a GPU cluster, else 0")
    parser.add_argument("--cpus-per-trial", type=positive_float, help="default: CPUs per GPU, or 1 without GPUs")
    parser.add_argument("--max-concurrent", type=positive_int, help="default: as many trials as the cluster holds")
    parser.add_argument("--seed", type=int, default=0, help="seeds the search (TPE)")
    parser.add_argument("--smoke", action="store_true", help="tiny preset and budget: about two minutes on 2 CPU cores")
    return parser


def _has_gpus() -> bool:
    import os

    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False, configure_logging=False)
    return ray.cluster_resources().get("GPU", 0) >= 1


def base_config(args: Any, train_overrides: dict[str, Any] | None = None) -> tuple[str, RunConfig, int]:
    """(preset name, base run config, trials) from the flags and the machine."""
    scale = SMOKE if args.smoke else (RECORD if _has_gpus() else LAPTOP)
    preset_name = args.preset or scale.preset
    train = TrainConfig(train_tokens=args.train_tokens or scale.train_tokens,
                        batch_size=args.batch_size or scale.batch_size, **(train_overrides or {}))
    return preset_name, RunConfig(preset(preset_name), train), args.trials or scale.trials


def default_name(experiment: str, preset_name: str, base: RunConfig, extra: dict[str, Any]) -> str:
    digest = hashlib.sha256((base.to_json() + json.dumps(extra, sort_keys=True, default=str)).encode()).hexdigest()
    return f"{experiment}-{preset_name}-{digest[:8]}"


def run_study(experiment: str, description: str, argv: Sequence[str] | None,
              space: Callable[[Any], dict[str, Any] | None] | None = None, baseline: dict[str, Any] | None = None,
              grid: Callable[[Any], dict[str, list[Any]]] | None = None, metric: str = "val_loss",
              train_overrides: Callable[[Any], dict[str, Any]] | None = None,
              add_flags: Callable[[ArgumentParser], None] | None = None,
              report: Callable[[Any, Any], str] | None = None,
              space_from_base: Callable[[RunConfig], Callable[[Any], Any]] | None = None,
              baseline_from_base: Callable[[RunConfig], dict[str, Any]] | None = None) -> int:
    """Parse the common flags, run the study, print where its results are. `space_from_base` and
    `baseline_from_base` build the space and baseline from the base config when they depend on it."""

    def body(argv: Sequence[str] | None) -> int:
        from blueberry.sweep import SweepConfig, run_sweep

        parser = study_parser(description)
        if add_flags is not None:
            add_flags(parser)
        args = parser.parse_args(argv)
        preset_name, base, trials = base_config(args, train_overrides(args) if train_overrides else None)
        grid_values = grid(args) if grid is not None else None
        study_space = space_from_base(base) if space_from_base is not None else space
        study_baseline = baseline_from_base(base) if baseline_from_base is not None else baseline
        from blueberry.tracking import absolute_uri, tracking_uri

        # The tracking store is part of a study's identity: the same settings recorded elsewhere are
        # another study, not one to restore from Ray storage that the new store has never seen.
        settings = {"trials": trials, "seed": args.seed, "grid": grid_values, "data": args.data,
                    "tracking": absolute_uri(tracking_uri(args.tracking_uri))}
        cfg = SweepConfig(experiment=experiment, name=args.name or default_name(experiment, preset_name, base, settings),
                          preset=preset_name, base=base, space=study_space, baseline=study_baseline or {},
                          grid=grid_values,
                          metric=metric, trials=trials, data=args.data, storage=args.storage,
                          tracking_uri=args.tracking_uri, gpus_per_trial=args.gpus_per_trial,
                          cpus_per_trial=args.cpus_per_trial, max_concurrent_trials=args.max_concurrent,
                          seed=args.seed)
        result = run_sweep(cfg)
        print(summary(cfg, result))
        if report is not None:
            print(report(cfg, result))
        return 0

    return run_command(experiment, body, argv)


def summary(cfg: Any, result: Any) -> str:
    from blueberry.tracking import ui_link

    counts: dict[str, int] = {}
    for row in result.trials:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    lines = [f"study        {cfg.experiment} / {cfg.name}: {len(result.trials)} trials "
             f"({', '.join(f'{n} {s.replace(chr(95), chr(32))}' for s, n in sorted(counts.items()))})"]
    if result.best is not None:
        params = {k: v for k, v in result.best.items() if k.startswith(("model.", "train."))}
        lines.append(f"best         {cfg.metric} {result.best[cfg.metric]:.4f}  {json.dumps(params, default=str)}")
    lines.append(f"Ray results  {result.storage_path}  (run the same command again to resume)")
    lines.append(f"MLflow       {result.tracking_uri}, experiment {cfg.experiment!r}, parent run {result.parent_run_id}")
    link = ui_link(result.tracking_uri, result.experiment_id)
    if link:
        lines.append(f"see it:      {link}")
    elif result.tracking_uri.startswith("sqlite:"):
        lines.append(f"see it:      mlflow ui --backend-store-uri {result.tracking_uri}, then open the experiment "
                     "(choose 'Model training' at the top left)")
    return "\n".join(lines)

