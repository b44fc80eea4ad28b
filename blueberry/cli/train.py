"""`blueberry-train`: train one model, track it in MLflow, resume it by name.

    blueberry-train --preset tiny --data builtin --train-tokens 500000
    blueberry-train --preset nano-88m --data DIR --train-tokens 8000000 --target-train-loss 4.5 --compile

A run lives in `--runs-dir/NAME` (checkpoints, MLflow run id, result). The default name is the
preset plus the run's identity (`RunConfig.key`: what determines the result, and the data's
preparation key), so running the same command again continues an interrupted run, and reports a
finished one instead of training it twice. Changing only how a run is observed (`--eval-every`,
`--checkpoint-every`) continues the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from blueberry.cli.common import (ArgumentParser, non_empty, non_negative_float, non_negative_int, positive_float,
                                  positive_int, run_command, seed)
from blueberry.core.config import OPTIMIZER_KINDS, PRECISION_KINDS, SCHEDULE_KINDS, TrainConfig, replace
from blueberry.core.events import RunResult
from blueberry.core.hardware import resolve_device
from blueberry.errors import ConfigError, UserError
from blueberry.files import ExclusiveLock, confined, read_json_object, write_atomic
from blueberry.models.registry import preset as preset_config
from blueberry.models.registry import preset_names, train_preset
from blueberry.models.run import RunConfig

PROG = "blueberry-train"

# Flags that map one-to-one onto TrainConfig fields (flag name with dashes -> field name).
TRAIN_FLAGS: dict[str, dict] = {
    "train-tokens": dict(type=positive_int, help="token budget (default: the 8M-token speedrun)"),
    "batch-size": dict(type=positive_int, help="sequences per micro-batch"),
    "grad-accum-steps": dict(type=positive_int, help="micro-batches per optimizer step"),
    "optimizer": dict(choices=OPTIMIZER_KINDS, help="muon (Muon + AdamW) or adamw (AdamW alone)"),
    "muon-lr": dict(type=positive_float, help="Muon's learning rate (the hidden weight matrices)"),
    "adamw-lr": dict(type=positive_float, help="AdamW's learning rate (embeddings, head, norms)"),
    "weight-decay": dict(type=non_negative_float, help="decoupled weight decay"),
    "schedule": dict(choices=SCHEDULE_KINDS, help="learning-rate schedule"),
    "warmup-frac": dict(type=float, help="fraction of the steps spent warming the learning rate up"),
    "eval-every": dict(type=int, help="optimizer steps between validations (0: only at the end)"),
    "eval-tokens": dict(type=positive_int, help="validation tokens per evaluation"),
    "target-train-loss": dict(type=positive_float, help="stop when the smoothed train loss reaches this"),
    "seed": dict(type=seed, help="seeds the weights and the data order"),
    "device": dict(help="auto, cpu, cuda or cuda:N"),
    "precision": dict(choices=PRECISION_KINDS, help="auto: bf16 autocast on CUDA, fp32 elsewhere"),
    "checkpoint-every": dict(type=int, help="optimizer steps between checkpoints (default: every "
                                            "--checkpoint-minutes instead)"),
}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Train a Blueberry model.")
    parser.add_argument("--preset", default="tiny", help=f"model preset: {', '.join(preset_names())} (default: tiny). "
                                                        "A diffusion preset (dit-*) trains on images, counts "
                                                        "images where the flags say tokens, and brings its own "
                                                        "training defaults (dit-tiny's are sized for a CPU)")
    parser.add_argument("--data", default="builtin",
                        help="a prepared data directory, or 'builtin' for the built-in corpus (default)")
    parser.add_argument("--seq-len", type=positive_int, help="override the preset's sequence length")
    parser.add_argument("--model", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a model field, e.g. --model n_layers=12 (repeatable)")
    defaults = TrainConfig()
    for flag, options in TRAIN_FLAGS.items():
        # The flag's own default stays None (TrainConfig's applies); its help says what that is.
        default = getattr(defaults, flag.replace("-", "_"))
        text = options.get("help", "")
        help_text = text if "default" in text else f"{text} (default: {default})".lstrip()
        parser.add_argument(f"--{flag}", **{**options, "help": help_text})
    parser.add_argument("--checkpoint-minutes", type=positive_float, default=10.0,
                        help="without --checkpoint-every: minutes of training between checkpoints (default: 10). "
                             "Ctrl-C or SIGTERM also saves one after the current step")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (untimed warm-up)")
    parser.add_argument("--run-name", help="the resume key (default: preset + hash of the settings)")
    parser.add_argument("--runs-dir", default="runs", type=Path, help="where runs keep checkpoints (default: runs)")
    parser.add_argument("--experiment", default="blueberry-train", type=non_empty,
                        help="MLflow experiment name (default: blueberry-train)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
                                               "sqlite:///mlflow.db)")
    parser.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--sample-prompt", action="append", type=non_empty, metavar="TEXT",
                        help="a prompt whose greedy continuation is logged to MLflow at each evaluation "
                             "(repeatable; default: three built-in prompts)")
    parser.add_argument("--sample-tokens", type=non_negative_int, default=48,
                        help="tokens generated per sample prompt (0: no samples)")
    parser.add_argument("--eval-tasks", metavar="LIST",
                        help="downstream tasks scored during training, as blueberry-eval's --tasks (e.g. cloze or "
                             "cloze,hellaswag=FILE): logged as val/<task>/<metric>")
    parser.add_argument("--eval-tasks-every", type=positive_int, default=500,
                        help="optimizer steps between downstream evaluations (and after the last step)")
    parser.add_argument("--eval-tasks-limit", type=positive_int, help="questions per task (default: all)")
    return parser


def parse_overrides(items: list[str], cls: type) -> dict[str, object]:
    """`FIELD=VALUE` strings into typed overrides for a config dataclass."""
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    overrides: dict[str, object] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or name not in types:
            raise ConfigError(f"bad override {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(types)}")
        type_name = str(types[name])
        try:
            if type_name == "bool":
                if text.lower() not in ("1", "0", "true", "false"):
                    raise ValueError(text)
                overrides[name] = text.lower() in ("1", "true")
            else:
                overrides[name] = int(text) if type_name == "int" else float(text) if type_name == "float" else text
        except ValueError:
            raise ConfigError(f"bad override {item!r}: {name} takes a {type_name}") from None
    return overrides


def run_params(run: RunConfig, preset_name: str, data: str) -> dict[str, object]:
    """The flattened config plus the quantities scaling fits read (`Task.scale_params`)."""
    return {**run.flatten(), "preset": preset_name, "data": data, **run.task().scale_params(run.train)}


def summary(name: str, run_dir: Path, result: RunResult, uri: str | None, unit: str = "tokens") -> str:
    embedding = (f" ({result.params['non_embedding'] / 1e6:.2f}M non-embedding)"
                 if "non_embedding" in result.params else "")
    lines = [f"run          {name}  ({run_dir})",
             f"parameters   {result.params['total'] / 1e6:.2f}M{embedding}",
             f"trained      {result.tokens:,} {unit} in {result.steps} steps, {result.active_time_s:.1f} s active "
             f"({result.tokens_per_s:,.0f} {unit}/s" + (f", MFU {result.mfu:.1%})" if result.mfu else ")"),
             f"train loss   {result.train_loss:.4f} (smoothed)"]
    if result.val is not None and {"accuracy", "perplexity"} <= set(result.val.metrics):
        lines.append(f"val loss     {result.val.loss:.4f}  accuracy {result.val.accuracy:.1%}  "
                     f"perplexity {result.val.perplexity:.1f}")
    elif result.val is not None:
        lines.append("val          " + "  ".join(f"{k} {v:.4g}" for k, v in result.val.metrics.items()))
    if result.reached_target:
        lines.append(f"target       reached after {result.target_tokens:,} tokens, {result.target_time_s:.1f} s")
    if result.diverged:
        lines.append("outcome      DIVERGED: the loss blew up; try a lower learning rate (under a new --run-name: "
                     "rerunning this one continues from its last checkpoint before the blow-up)")
    if uri:
        lines.append(f"tracked in   {uri}  (see it: mlflow ui --backend-store-uri {uri})")
    return "\n".join(lines)


def main_body(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    base = preset_config(args.preset)
    model_overrides = parse_overrides(args.model, type(base))
    if args.seq_len:
        model_overrides["seq_len"] = args.seq_len
    model_cfg = replace(base, **model_overrides)
    overrides = {flag.replace("-", "_"): getattr(args, flag.replace("-", "_")) for flag in TRAIN_FLAGS}
    train_cfg = replace(train_preset(args.preset), compile=args.compile,
                        **{k: v for k, v in overrides.items() if v is not None})
    run = RunConfig(model_cfg, train_cfg)
    task = run.task()
    # Imported here, not at the top: the data pipeline, MLflow and the loop take seconds to import,
    # and a flag error should answer at once.
    from blueberry.platform.data import data_key, open_for
    from blueberry.platform.tracking import check_uri, tracking_uri

    resolve_device(train_cfg.device)  # before a run directory exists: a machine without the device has no run
    if args.runs_dir.exists() and not args.runs_dir.is_dir():
        raise UserError(f"--runs-dir {args.runs_dir} is a file: pass a directory")
    if args.run_name:
        confined(args.runs_dir, args.run_name, "--run-name")
    uri = None if args.no_track else tracking_uri(args.tracking_uri)
    if uri is not None:
        check_uri(uri)
    if args.eval_tasks:  # a task name or file that is wrong, or a kind without tasks: answered before any training
        from blueberry.evals.downstream import downstream_metrics

        downstream_metrics(task, args.eval_tasks)
    data = open_for(task, args.data, progress=not args.no_progress)
    name = args.run_name or f"{args.preset}-{run.key(data=data_key(data))}"
    run_dir = confined(args.runs_dir, name, "--run-name")
    try:
        lock = ExclusiveLock(run_dir / ".lock", f"run {name}").acquire()
    except OSError as err:
        raise UserError(f"cannot write run {name} in --runs-dir {args.runs_dir} ({err.strerror}): "
                        "choose a directory you can write") from None
    with lock:
        return train_run(args, run, data, name, run_dir, uri)


def train_run(args: argparse.Namespace, run: RunConfig, data: Any, name: str, run_dir: Path, uri: str | None) -> int:
    """Train (or continue) the run in `run_dir`, holding its lock; report a finished one instead."""
    from blueberry.core.checkpoint import Checkpointer, StopOnSignal
    from blueberry.core.hooks import Hooks
    from blueberry.core.loop import train
    from blueberry.core.progress import ProgressBar
    from blueberry.platform.tracking import MlflowTracker, NullTracker

    train_cfg = run.train
    result_file = run_dir / "result.json"
    finished = read_json_object(result_file)
    if finished is not None:
        print(f"{name} already finished; its result is in {result_file} (use --run-name to train a new run)")
        print(json.dumps(finished, indent=2))
        return 0

    if train_cfg.checkpoint_every > 0:
        checkpointer = Checkpointer(run_dir / "checkpoints", every=train_cfg.checkpoint_every)
    else:
        checkpointer = Checkpointer(run_dir / "checkpoints", every=1, every_s=60 * args.checkpoint_minutes)
    tracker = NullTracker() if uri is None else MlflowTracker(
        args.experiment, name, params=run_params(run, args.preset, args.data), tags={"preset": args.preset,
                                                                                   "data": args.data},
        uri=uri, log_every=train_cfg.log_every, run_id_file=run_dir / "mlflow_run_id",
        reference_loss=run.task().reference_loss(data))
    # StopOnSignal last: on Ctrl-C every other hook has seen the step it saves.
    progress = [] if args.no_progress else [ProgressBar()]
    samples = sample_logger(args, run, data, tracker)
    downstream = [downstream_eval(args, run, data, tracker)] if args.eval_tasks else []
    hooks = Hooks([checkpointer, tracker, *samples, *downstream, *progress, StopOnSignal(checkpointer)])
    result = train(run.task(), train_cfg, data, hooks)
    if checkpointer.resumed_from is not None:
        print(f"resumed from {checkpointer.resumed_from}", file=sys.stderr)
    # result.json is what makes the next run of this command report instead of train: written whole
    # or not at all, and not for a diverged run, which a rerun continues from its last good checkpoint.
    if not result.diverged:
        write_atomic(result_file, json.dumps({"name": name, **result.metrics()}, indent=2))
    print(summary(name, run_dir, result, uri, run.task().unit))
    return 0


def sample_logger(args: argparse.Namespace, run: RunConfig, data: Any, tracker: Any) -> list[Any]:
    """The hook that logs samples at evaluations, for a tracked run whose kind draws some (its `Generate`
    capability); a language model whose tokenizer does not load here (a hub tokenizer offline) trains
    without samples and says so."""
    if args.no_track or run.task().capabilities.generate is None:
        return []
    from blueberry.core.capabilities import SampleSettings

    task = run.task()
    settings = SampleSettings(prompts=tuple(args.sample_prompt or ()), max_new_tokens=args.sample_tokens)
    try:
        hook = task.capabilities.generate().evaluation_samples(task, data, tracker, settings)
    except UserError as err:
        print(f"{PROG}: no samples at evaluations: {err}", file=sys.stderr)
        return []
    return [hook] if hook is not None else []


def downstream_eval(args: argparse.Namespace, run: RunConfig, data: Any, tracker: Any) -> Any:
    """The hook that scores `--eval-tasks` on the model being trained and hands them to the tracker."""
    from blueberry.evals.downstream import downstream_hook

    return downstream_hook(run, data, args.eval_tasks, tracker, every=args.eval_tasks_every,
                           limit=args.eval_tasks_limit)


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(PROG, main_body, argv)


if __name__ == "__main__":
    sys.exit(main())
