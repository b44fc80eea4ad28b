"""The command line every study script shares.

A study script subclasses `Study`: its docstring states the question, and it declares what differs
(a search `space` or a `grid`, a `baseline`, extra flags, a report). `Study.main()` does the rest:
common flags in, a `SweepConfig` out, the sweep run, a summary printed.

    class LrSweep(Study):
        \"\"\"Which learning rates train Blueberry best under Muon + AdamW?\"\"\"

        experiment = "lr_sweep"

        def space(self, trial, base):
            trial.suggest_float("train.muon_lr", 3e-3, 1e-1, log=True)

With no flags, a study sizes itself to the machine: on a cluster with GPUs, the `gpu` scale (the
record `nano-88m` speedrun, 8,011,776 tokens a trial); without GPUs, the `cpu` scale (a small but
meaningful version on the built-in corpus with the `tiny` preset). `--smoke` is the quick check (about
a minute on two CPU cores; docs/benchmarks.md has the measured time). Building a config (`Study.sweep_config`) never
starts Ray: only choosing the scale by asking the cluster does, when no `--scale` (or `--smoke`) is
given and the study's cpu and gpu scales differ.
"""

from __future__ import annotations

import functools
import json
import sys
from argparse import Namespace
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from blueberry.cli.common import (ArgumentParser, non_empty, non_negative_float, positive_float, positive_int,
                                  run_command, seed)
from blueberry.evals.downstream import TrialDownstream
from blueberry.core.config import TrainConfig
from blueberry.errors import UserError
from blueberry.models.registry import preset, preset_names
from blueberry.models.run import RunConfig
from blueberry.platform.cluster import has_gpus
from blueberry.platform.search import is_config_key
from blueberry.platform.tracking import absolute_uri, tracking_uri, ui_link, ui_path

if TYPE_CHECKING:
    from blueberry.platform.sweep import SweepConfig, SweepResult


@dataclass(frozen=True)
class StudyScale:
    """How big a study's runs are at one scale."""

    name: str  # smoke | cpu | gpu
    preset: str
    train_tokens: int
    trials: int
    batch_size: int


@dataclass(frozen=True)
class Scales:
    smoke: StudyScale
    cpu: StudyScale
    gpu: StudyScale

    def named(self, name: str) -> StudyScale:
        return {"smoke": self.smoke, "cpu": self.cpu, "gpu": self.gpu}[name]


SWEEP_SCALES = Scales(
    smoke=StudyScale("smoke", "tiny", 40_960, 4, 4),  # about a minute on two cores
    cpu=StudyScale("cpu", "tiny", 409_600, 8, 8),  # CPUs only: about 50 steps of 8 x 256 per trial
    gpu=StudyScale("gpu", "nano-88m", 8_011_776, 16, 8),  # a GPU cluster: the speedrun record's budget
)


class Study:
    """A question answered by a sweep. Subclasses set `experiment`, state the question in their
    docstring, and override what they need; `main()` runs them."""

    experiment: ClassVar[str]
    metric: ClassVar[str] = "val_loss"  # or "target_tokens" for speedrun studies
    scales: ClassVar[Scales] = SWEEP_SCALES
    evals_per_trial: ClassVar[int] = 8
    # Optuna define-by-run over dotted fields, as a method `space(self, trial, base)`; None: a grid study.
    space: Any = None

    def baseline(self, base: RunConfig) -> dict[str, Any]:
        """The record point, evaluated first (dotted overrides of `base`)."""
        return {}

    def grid(self, args: Namespace, base: RunConfig, scale: StudyScale) -> dict[str, list[Any]] | None:
        """Instead of a search: every combination of these values, no early stopping."""
        return None

    def add_flags(self, parser: ArgumentParser) -> None:
        """Flags of this study beyond the common ones."""

    def train_overrides(self, args: Namespace, scale: StudyScale) -> dict[str, Any]:
        """`TrainConfig` fields this study sets from its flags."""
        return {}

    def report(self, cfg: SweepConfig, result: SweepResult) -> str:
        """Lines printed after the summary."""
        return ""

    # The machinery: flags, scale, configs, running.

    @property
    def question(self) -> str:
        return (type(self).__doc__ or self.experiment).strip().splitlines()[0]

    def parser(self) -> ArgumentParser:
        parser = ArgumentParser(prog=sys.argv[0].rsplit("/", 1)[-1], description=self.question)
        parser.add_argument("--preset", choices=preset_names(), help="model preset (default: the scale's)")
        parser.add_argument("--data", default="builtin", help="a prepared data directory, or builtin (default)")
        parser.add_argument("--train-tokens", type=positive_int,
                            help="budget per trial, in the task's units (tokens for the language model)")
        parser.add_argument("--batch-size", type=positive_int, help="samples (sequences) per step for every trial")
        parser.add_argument("--trials", type=positive_int, help="number of trials (default: the scale's); asking a "
                                                                "study for more continues it with the new ones only")
        parser.add_argument("--name", type=non_empty,
                            help="the resume key (default: the study, preset and the settings' key)")
        parser.add_argument("--storage", help="Ray storage path or URI, shared by every node (default: ray_results "
                                              "beside the SQLite tracking file, else ~/ray_results)")
        parser.add_argument("--tracking-uri",
                            help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
        parser.add_argument("--gpus-per-trial", type=non_negative_float, help="default: 1 on a GPU cluster, else 0")
        parser.add_argument("--cpus-per-trial", type=positive_float, help="default: CPUs per GPU, or 1 without GPUs")
        parser.add_argument("--max-concurrent", type=positive_int, help="default: as many trials as the cluster holds")
        parser.add_argument("--seed", type=seed, default=0, help="seeds the search (TPE) (default: 0)")
        parser.add_argument("--scale", choices=("smoke", "cpu", "gpu"),
                            help="size the runs for a smoke test, CPUs or GPUs (default: gpu when the cluster has "
                                 "GPUs, else cpu)")
        parser.add_argument("--smoke", action="store_true", help="the same as --scale smoke: a quick check, "
                                                                 "about a minute on 2 CPU cores")
        parser.add_argument("--eval-tasks", metavar="LIST", type=non_empty,
                            help="downstream tasks every trial scores at each evaluation, as blueberry-eval's "
                                 "--tasks (e.g. cloze or cloze,hellaswag=FILE; files must be readable by every "
                                 "node): logged as val/<task>/acc, val/<task>/acc_norm and val/core")
        parser.add_argument("--eval-tasks-limit", type=positive_int, metavar="N",
                            help="questions per downstream task (default: all)")
        parser.add_argument("--metric", metavar="NAME",
                            help=f"what TPE and ASHA judge trials by (default: {self.metric}): val_loss, or a "
                                 "metric trials report, such as val/core or val/cloze/acc_norm with --eval-tasks "
                                 "(accuracies are maximised)")
        self.add_flags(parser)
        return parser

    def scale(self, args: Namespace) -> StudyScale:
        """The scale the flags name; with none named, gpu or cpu, by asking the cluster (this starts
        Ray) where the two differ."""
        if args.smoke:
            return self.scales.smoke
        if args.scale:
            return self.scales.named(args.scale)
        if self.scales.cpu == self.scales.gpu:
            return self.scales.gpu
        return self.scales.gpu if has_gpus() else self.scales.cpu

    def base(self, args: Namespace, scale: StudyScale) -> tuple[str, RunConfig]:
        """(preset name, the base run config) from the flags at `scale`."""
        preset_name = args.preset or scale.preset
        train = TrainConfig(train_tokens=args.train_tokens or scale.train_tokens,
                            batch_size=args.batch_size or scale.batch_size, **self.train_overrides(args, scale))
        return preset_name, RunConfig(preset(preset_name), train)

    def default_name(self, preset_name: str, base: RunConfig, settings: dict[str, Any]) -> str:
        """`experiment-preset-key`: the same study of the same settings has the same name, so it resumes."""
        return f"{self.experiment}-{preset_name}-{base.key(**settings)}"

    def storage(self, args: Namespace) -> str | None:
        """`--storage`, else a `ray_results` directory beside a SQLite tracking file, so a study's Ray
        results sit next to its records; else None (Ray's ~/ray_results)."""
        if args.storage:
            return args.storage
        uri = absolute_uri(tracking_uri(args.tracking_uri))
        prefix = "sqlite:///"
        return str(Path(uri[len(prefix):]).parent / "ray_results") if uri.startswith(prefix) else None

    def sweep_config(self, args: Namespace, scale: StudyScale) -> SweepConfig:
        """The `SweepConfig` the flags describe at `scale`. Starts nothing."""
        # The sweep machinery (the pipelines, the study report's matplotlib) loads only once a study
        # runs: `--help` and a flag error answer without it.
        from blueberry.platform.sweep import SweepConfig, metric_mode

        preset_name, base = self.base(args, scale)
        trials = args.trials or scale.trials
        grid = self.grid(args, base, scale)
        metric = args.metric or self.metric
        downstream = self.downstream(args, base)
        mode = metric_mode(base, metric, downstream)
        # The tracking store is part of a study's identity: the same settings recorded elsewhere are
        # another study, not one to restore from Ray storage that the new store has never seen.
        # --trials is not part of it: asking a study for more trials continues it (the new ones only).
        settings = {"study": self.experiment, "seed": args.seed, "grid": grid, "data": args.data,
                    "tracking": absolute_uri(tracking_uri(args.tracking_uri))}
        if args.eval_tasks or metric != self.metric:  # judged otherwise: another study (older names unchanged)
            settings |= {"metric": metric, "eval_tasks": args.eval_tasks, "eval_tasks_limit": args.eval_tasks_limit}
        return SweepConfig(
            experiment=self.experiment, name=args.name or self.default_name(preset_name, base, settings),
            preset=preset_name, base=base, grid=grid,
            space=None if self.space is None else functools.partial(self.space, base=base),
            baseline=self.baseline(base), metric=metric, mode=mode, trials=trials, data=args.data,
            storage=self.storage(args),
            trial_hooks=TrialDownstream(args.eval_tasks, args.eval_tasks_limit) if args.eval_tasks else None,
            tracking_uri=args.tracking_uri, gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial,
            max_concurrent_trials=args.max_concurrent, evals_per_trial=self.evals_per_trial, seed=args.seed)

    def downstream(self, args: Namespace, base: RunConfig) -> Mapping[str, str]:
        """The metric names `--eval-tasks` gives each trial, each with the way it improves (checked: unknown
        tasks, missing files and kinds without downstream tasks are refused here, before any work)."""
        if not args.eval_tasks:
            if args.eval_tasks_limit:
                raise UserError("--eval-tasks-limit needs --eval-tasks")
            return {}
        from blueberry.evals.downstream import downstream_metrics

        return downstream_metrics(base.task(), args.eval_tasks)

    def run(self, args: Namespace, scale: StudyScale) -> str:
        """Run the study; what to print."""
        cfg = self.sweep_config(args, scale)
        from blueberry.platform.sweep import run_sweep

        result = run_sweep(cfg)
        return "\n".join(part for part in (summary(cfg, result), self.report(cfg, result)) if part)

    def main(self, argv: Sequence[str] | None = None) -> int:
        def body(argv: Sequence[str] | None) -> int:
            args = self.parser().parse_args(argv)
            print(self.run(args, self.scale(args)))
            return 0

        return run_command(self.experiment, body, argv)


def summary(cfg: SweepConfig, result: SweepResult) -> str:
    counts: dict[str, int] = {}
    for row in result.trials:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    lines = [f"study        {cfg.experiment} / {cfg.name}: {len(result.trials)} trials "
             f"({', '.join(f'{n} {s.replace(chr(95), chr(32))}' for s, n in sorted(counts.items()))})"]
    if result.best is not None:
        params = {k: v for k, v in result.best.items() if is_config_key(k)}
        lines.append(f"best         {cfg.metric} {result.best[cfg.metric]:.4f}  {json.dumps(params, default=str)}")
    lines.append(f"Ray results  {result.storage_path}  (run the same command again to resume)")
    lines.append(f"MLflow       {result.tracking_uri}, experiment {cfg.experiment!r}, "
                 f"parent run {result.parent_run_id}")
    link = ui_link(result.tracking_uri, result.experiment_id, result.view)
    if link:
        lines.append(f"see it:      {link}")
    else:
        lines.append(f"see it:      mlflow ui --backend-store-uri {result.tracking_uri}, then open "
                     f"http://127.0.0.1:5000{ui_path(result.experiment_id, result.view)}")
    return "\n".join(lines)
