"""`blueberry-scale`: fit scaling laws to finished runs and turn them into a costed plan.

    blueberry-scale fit --csv chinchilla --exclude-top 5 --json law.json --plot law.png
    blueberry-scale fit --experiment scaling_grid --bootstrap 1000 --plot-selection selection.png
    blueberry-scale fit --csv runs.csv --flops-col "Training FLOP" --params-col "Model Size" --form shared
    blueberry-scale backtest --csv chinchilla --exclude-top 5 --holdout N --holdout-min 1e9
    blueberry-scale plan --law chinchilla --params 8e9 --tokens 15e12 --gpu h100 --mfu 0.4 --dataset fineweb
    blueberry-scale plan --law law.json --params 8e9 --gpu h100 --mfu 0.4 --price-per-gpu-hour 2.5
    blueberry-scale hparams --csv sweeps.csv --json hparams.json
    blueberry-scale downstream --experiment scaling_grid --metric val/hellaswag/acc_norm --chance 0.25 --json ds.json
    blueberry-scale plan --law law.json --params 1e9 --downstream ds.json --accuracy-goal 0.2945

The command parses flags and prints; the work is `blueberry.scaling`'s. Each subcommand imports what it
uses (SciPy, matplotlib, MLflow, torch for `plan`'s architecture) inside its own function, so `--help`,
a flag error and `fit` do not wait for them. Output paths are checked before any fit, and files are written (atomically) only once everything
has succeeded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from blueberry.cli.common import (ArgumentParser, non_negative_int, positive_float, positive_int, run_command,
                                  seed)
from blueberry.errors import UserError
from blueberry.files import write_atomic
from blueberry.models.lm.config import PRESETS
from blueberry.scaling.datasets import CORPORA, GPU_PRICES
from blueberry.scaling.forms import FORMS

PROG = "blueberry-scale"
LEVEL_HELP = "nominal coverage of the calibrated prediction intervals (default 0.8)"


def level(text: str) -> float:
    value = positive_float(text)
    if not value < 1:
        raise argparse.ArgumentTypeError(f"expected a level in (0, 1), got {text!r}")
    return value


def bootstrap_count(text: str) -> int:
    """0 (no bootstrap) or at least 2 refits: one refit has no spread."""
    value = non_negative_int(text)
    if value == 1:
        raise argparse.ArgumentTypeError("expected 0 (no bootstrap) or at least 2 refits, got '1'")
    return value


def add_source_flags(parser: ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--csv", help="finished runs as a CSV file, or 'chinchilla' for the Chinchilla paper's runs "
                                      "(shipped with Blueberry)")
    source.add_argument("--experiment", help="an MLflow experiment of finished runs")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")


def add_column_flags(parser: ArgumentParser) -> None:
    parser.add_argument("--params-col", help="column of parameter counts N (default: N, or the shipped data's)")
    tokens = parser.add_mutually_exclusive_group()
    tokens.add_argument("--tokens-col", help="column of training tokens D (default: D; final/tokens for MLflow)")
    tokens.add_argument("--flops-col", help="column of training FLOPs C instead of tokens: D = C / 6N")
    parser.add_argument("--loss-col", help="column of final losses (default: loss; final/val_loss for MLflow)")
    parser.add_argument("--exclude-top", type=non_negative_int, default=0, metavar="K",
                        help="drop the K highest-loss points")


def add_choice_flags(parser: ArgumentParser, cut: bool = True) -> None:
    parser.add_argument("--form", choices=list(FORMS),
                        help="force one law form (default: weight the forms by how they extrapolate)")
    if cut:
        parser.add_argument("--cut-by", choices=("N", "compute"), default="N",
                            help="the rolling origins cut the runs by N or by compute C")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Scaling-law fits and plans.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    fit = commands.add_parser("fit", help="fit the law forms, weight them by how they extrapolate, calibrate intervals")
    add_source_flags(fit)
    add_column_flags(fit)
    add_choice_flags(fit)
    fit.add_argument("--level", type=level, default=0.8, help=LEVEL_HELP)
    fit.add_argument("--bootstrap", type=bootstrap_count, default=200, metavar="N",
                     help="bootstrap refits of the chosen forms (default 200)")
    fit.add_argument("--seed", type=seed, default=0)
    fit.add_argument("--json", nargs="?", const="-", metavar="FILE", help="write the fit as JSON (stdout if no FILE)")
    fit.add_argument("--plot", type=Path, metavar="FILE.png", help="draw the data, the law and the frontier")
    fit.add_argument("--plot-selection", type=Path, metavar="FILE.png",
                     help="draw each form's nested errors against distance and the calibrated interval")

    hp = commands.add_parser("hparams", help="fit the optimal LR and batch size against compute")
    add_source_flags(hp)
    hp.add_argument("--compute-col", help="column of training FLOPs (default: C, else 6 x params x tokens)")
    hp.add_argument("--params-col", default="N")
    hp.add_argument("--tokens-col", help="default: D (final/tokens for MLflow)")
    hp.add_argument("--lr-col", help="default: lr (train.muon_lr for MLflow)")
    hp.add_argument("--batch-col", help="batch size in tokens (default: batch_tokens)")
    hp.add_argument("--loss-col", help="default: loss (final/val_loss for MLflow)")
    hp.add_argument("--bootstrap", type=non_negative_int, default=1000)
    hp.add_argument("--seed", type=seed, default=0)
    hp.add_argument("--json", nargs="?", const="-", metavar="FILE")

    plan = commands.add_parser("plan", help="size, tokens, loss, hyperparameters, GPU-hours and cost for a target")
    plan.add_argument("--law", help="a `fit --json` file, or 'chinchilla' for Epoch AI's published fit")
    add_source_flags(plan)
    plan.add_argument("--exclude-top", type=non_negative_int, default=0, help="with --csv/--experiment: as for fit")
    add_choice_flags(plan)
    plan.add_argument("--level", type=level, default=0.8, help=LEVEL_HELP)
    target = plan.add_mutually_exclusive_group(required=True)
    target.add_argument("--params", type=positive_float, help="model size N")
    target.add_argument("--flops", type=positive_float, help="training compute C")
    target.add_argument("--gpu-hours", type=positive_float, help="a GPU-hour budget")
    target.add_argument("--preset", choices=list(PRESETS), help="an existing preset's size")
    plan.add_argument("--tokens", type=positive_float, help="with --params/--preset: train on exactly D tokens")
    # Not listed from blueberry.core.hardware here: importing it imports torch, seconds `fit` need not wait.
    plan.add_argument("--gpu", default="h100", help="the GPU to cost on, by short name: h100, h200, b200, a100, "
                                                    "4090, ... (default h100; an unknown name lists them all)")
    plan.add_argument("--mfu", type=positive_float, default=0.4, help="model FLOPs utilisation (default 0.4)")
    plan.add_argument("--price-per-gpu-hour", type=positive_float,
                      help="dollars per GPU-hour (default: an on-demand list price for "
                           + ", ".join(f"{g} ${p.dollars:.2f}" for g, p in GPU_PRICES.items())
                           + "; see docs/scaling.md)")
    plan.add_argument("--estimate-gpu-hours", type=positive_float, metavar="HOURS",
                      help="an estimate to check: the MFU it needs for this plan")
    plan.add_argument("--gpus", type=positive_int, default=1024, help="wall-clock time on this many GPUs")
    plan.add_argument("--deadline-days", type=positive_float, default=90.0,
                      help="and the GPUs needed to finish within this many days")
    data = plan.add_mutually_exclusive_group()
    data.add_argument("--dataset", choices=list(CORPORA), help="the corpus to train on: how many epochs D is")
    data.add_argument("--dataset-tokens", type=positive_float, help="or the tokens another corpus holds")
    plan.add_argument("--downstream", type=Path, metavar="FILE",
                      help="a `downstream --json` file: predict the planned model's accuracy")
    plan.add_argument("--accuracy-goal", type=float, metavar="ACC",
                      help="with --downstream: the compute at which a compute-optimal model reaches this accuracy "
                           "(e.g. 0.2945, GPT-2 124M's HellaSwag acc_norm)")
    plan.add_argument("--hparams", type=Path, help="an `hparams --json` file (default: DeepSeek's AdamW laws)")
    plan.add_argument("--vocab", type=positive_int, default=49152, help="vocabulary of the planned model (default 49152)")
    plan.add_argument("--json", nargs="?", const="-", metavar="FILE")
    plan.add_argument("--plot", type=Path, metavar="FILE.png",
                      help="draw the plan on the law's loss-compute plane (with --csv/--experiment: and the runs)")

    bt = commands.add_parser("backtest", help="choose the law on the smaller runs, predict the larger: error and "
                                              "interval coverage")
    add_source_flags(bt)
    add_column_flags(bt)
    add_choice_flags(bt, cut=False)
    bt.add_argument("--holdout", choices=("compute", "N"), default="compute",
                    help="hold out the largest runs by this (the rolling origins inside cut by it too)")
    held = bt.add_mutually_exclusive_group()
    held.add_argument("--holdout-min", type=positive_float, metavar="X",
                      help="hold out runs whose compute (or N) is at least X")
    held.add_argument("--holdout-fraction", type=float, metavar="F",
                      help="hold out the largest fraction F of the runs (default 0.2 when --holdout-min is not given)")
    bt.add_argument("--level", type=float, default=0.8, help=LEVEL_HELP)
    bt.add_argument("--bootstrap", type=int, default=200, metavar="N",
                    help="bootstrap refits for the uncalibrated intervals shown beside")
    bt.add_argument("--seed", type=seed, default=0)
    bt.add_argument("--json", nargs="?", const="-", metavar="FILE", help="write the backtest, run by run, as JSON")
    bt.add_argument("--plot", type=Path, metavar="FILE.png", help="draw each run's error and the intervals")

    ds = commands.add_parser("downstream", help="fit downstream accuracy against loss with a sigmoid")
    add_source_flags(ds)
    ds.add_argument("--metric", default="val/core",
                    help="column of the accuracy (default val/core; e.g. val/hellaswag/acc_norm)")
    ds.add_argument("--loss-col", help="column of the loss (default: loss; final/val_loss for MLflow)")
    ds.add_argument("--chance", type=float,
                    help="fix the floor at chance accuracy (0.25 for four choices; default 0 for a CORE metric, "
                         "fitted otherwise)")
    ds.add_argument("--bootstrap", type=int, default=200, metavar="N", help="bootstrap refits")
    ds.add_argument("--seed", type=seed, default=0)
    ds.add_argument("--json", nargs="?", const="-", metavar="FILE",
                    help="write the fit as JSON (for plan --downstream)")
    ds.add_argument("--plot", type=Path, metavar="FILE.png", help="draw the runs and the fitted curve")
    return parser


def run_source(args):
    from blueberry.scaling.runs import RunSource

    return RunSource(csv=args.csv, experiment=args.experiment, tracking_uri=args.tracking_uri)


def columns(args):
    from blueberry.scaling.runs import Columns

    return Columns(params=args.params_col, tokens=args.tokens_col, flops=args.flops_col, loss=args.loss_col)


def check_output(where: str | Path | None, flag: str) -> None:
    """Refuse an output path that cannot become a file, before any work is done ("-" is stdout)."""
    if where is None or str(where) == "-":
        return
    path = Path(where)
    if path.is_dir() or str(where).endswith(os.sep):
        raise UserError(f"{flag} {where} is a directory: give a file name in it")
    if path.exists() and not path.is_file():
        raise UserError(f"{flag} {where} exists and is not a regular file: give a file name")
    if not path.parent.is_dir():
        state = "is not a directory" if path.parent.exists() else "does not exist"
        raise UserError(f"{flag} {where}: {path.parent} {state}; create the directory first or write elsewhere")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {where}: directory {path.parent} is not writable; write elsewhere")


def plot_format(path: Path | None, flag: str = "--plot") -> str | None:
    """Check a plot's path and extension before any work; the format matplotlib writes for it."""
    check_output(path, flag)
    if path is None:
        return None
    from blueberry.scaling.plots import image_format

    return image_format(path)


def write(where: str | Path, content: str | bytes) -> None:
    try:
        write_atomic(where, content)
    except OSError as err:  # checked beforehand; what is left is the disk (full, gone read-only)
        raise UserError(f"cannot write {where}: {err.strerror or err}") from None


def emit_json(payload: dict, where: str) -> None:
    text = json.dumps(payload, indent=2)
    if where == "-":
        print(text)
    else:
        write(where, text + "\n")


def cmd_fit(args) -> None:
    from blueberry.scaling.choice import choose_law, chosen_payload, chosen_text
    from blueberry.scaling.fit import fit_isoflop, isoflop_payload
    from blueberry.scaling.runs import load_points

    check_output(args.json, "--json")
    law_format = plot_format(args.plot)
    selection_format = plot_format(args.plot_selection, "--plot-selection")
    points, source = load_points(run_source(args), columns(args), args.exclude_top)
    chosen = choose_law(points, force=args.form, cut_by=args.cut_by, bootstrap=args.bootstrap, seed=args.seed)
    payload = chosen_payload(chosen, source) | {"level": args.level}
    try:
        payload["isoflop"] = isoflop_payload(fit_isoflop(points))
    except UserError:
        pass  # approach 2 needs several sizes per budget; many datasets do not have them
    images = []
    if args.plot:
        from blueberry.scaling.plots import render_law

        images.append((args.plot, render_law(points, chosen.law, law_format)))
    if args.plot_selection:
        from blueberry.scaling.plots import selection_figure_bytes

        images.append((args.plot_selection, selection_figure_bytes(
            chosen, args.level, f"Rolling-origin backtests of the law forms on {len(points)} runs of {source}",
            selection_format)))
    if args.json != "-":
        print(chosen_text(chosen, source, args.level))
        if "isoflop" in payload:
            iso = payload["isoflop"]
            print(f"  IsoFLOP (approach 2, {len(iso['profiles'])} budgets): N_opt = {iso['N_opt']['coefficient']:.3g} "
                  f"C^{iso['N_opt']['exponent']:.3f}, D_opt = {iso['D_opt']['coefficient']:.3g} "
                  f"C^{iso['D_opt']['exponent']:.3f}")
    if args.json:
        emit_json(payload, args.json)
    for path, image in images:
        write(path, image)


def cmd_hparams(args) -> None:
    from blueberry.scaling.hparams import Trial, fit_hparam_laws, hparams_text
    from blueberry.scaling.runs import column

    check_output(args.json, "--json")
    rows, source, from_mlflow = run_source(args).read()
    if args.compute_col or "C" in rows[0]:
        compute = column(rows, args.compute_col or "C", source)
    else:
        N = column(rows, args.params_col, source)
        D = column(rows, args.tokens_col or ("final/tokens" if from_mlflow else "D"), source)
        compute = [6 * n * d for n, d in zip(N, D)]
    lr_col = args.lr_col or ("train.muon_lr" if from_mlflow else "lr")  # a study's Muon LR by default
    lr = column(rows, lr_col, source)
    batch = column(rows, args.batch_col or "batch_tokens", source)
    loss = column(rows, args.loss_col or ("final/val_loss" if from_mlflow else "loss"), source)
    laws = fit_hparam_laws([Trial(*t) for t in zip(compute, lr, batch, loss)], args.bootstrap, args.seed,
                           source=f"{source}, LR column {lr_col}")
    if args.json != "-":
        print(hparams_text(laws, source))
    if args.json:
        emit_json(laws.to_dict(), args.json)


def cmd_plan(args) -> None:
    from blueberry.models.lm.config import preset
    from blueberry.models.lm.model import count_params
    from blueberry.scaling.downstream import read_downstream_json
    from blueberry.scaling.hparams import read_hparams_json
    from blueberry.scaling.lawsource import law_for_plan
    from blueberry.scaling.plan import Target, make_plan, plan_text

    check_output(args.json, "--json")
    law_format = plot_format(args.plot)
    architecture = preset(args.preset) if args.preset else None
    params = float(count_params(architecture).total) if architecture is not None else args.params
    target = Target(params=params, tokens=args.tokens, flops=args.flops, gpu_hours=args.gpu_hours, gpu=args.gpu,
                    mfu=args.mfu, price_per_gpu_hour=args.price_per_gpu_hour, gpus=args.gpus,
                    deadline_days=args.deadline_days, dataset=args.dataset, dataset_tokens=args.dataset_tokens,
                    estimate_gpu_hours=args.estimate_gpu_hours)
    hparams = read_hparams_json(args.hparams) if args.hparams else None
    if args.accuracy_goal is not None and not -1 <= args.accuracy_goal <= 1:
        raise UserError(f"--accuracy-goal must be an accuracy in [-1, 1] (a fraction, or a centred CORE score), "
                        f"got {args.accuracy_goal}")
    if args.accuracy_goal is not None and args.downstream is None:
        raise UserError("--accuracy-goal needs --downstream FILE (from `blueberry-scale downstream --json FILE`)")
    downstream = read_downstream_json(args.downstream) if args.downstream else None
    if downstream is not None and args.law == "chinchilla":
        raise UserError("--downstream maps the lab's validation loss to accuracy, but --law chinchilla predicts loss "
                        "on Chinchilla's data and tokenizer: plan with a law fitted to the same runs (--law FILE, "
                        "--csv, --experiment)")
    if args.law is not None and args.form is not None:
        raise UserError("--form chooses the form of a fit done now (--csv/--experiment); a --law file carries its own")
    # Last: with --csv/--experiment it fits.
    predictor, points = law_for_plan(args.law, run_source(args), exclude_top=args.exclude_top, force=args.form,
                                     cut_by=args.cut_by)
    plan = make_plan(predictor.law, target, predictor.draws, hparams, vocab_size=args.vocab, architecture=architecture,
                     law_source=predictor.source, data_range=predictor.data_range, downstream=downstream,
                     accuracy_goal=args.accuracy_goal, calibration=predictor.calibration,
                     residuals=predictor.residuals, level=args.level, choice=predictor.choice)
    image = None
    if args.plot:
        from blueberry.scaling.plots import render_law

        image = render_law(points, predictor.law, law_format, plan)
    if args.json != "-":
        print(plan_text(plan))
    if args.json:
        emit_json(plan.to_dict(), args.json)
    if image is not None:
        write(args.plot, image)


def cmd_backtest(args) -> None:
    from blueberry.scaling.backtest import Holdout, backtest_text, run_backtest
    from blueberry.scaling.runs import load_points

    check_output(args.json, "--json")
    fraction = args.holdout_fraction if args.holdout_fraction is not None or args.holdout_min is not None else 0.2
    holdout = Holdout(by=args.holdout, threshold=args.holdout_min, fraction=fraction)
    if not 0 < args.level < 1:
        raise UserError(f"--level must be in (0, 1), got {args.level}")
    if args.bootstrap == 1 or args.bootstrap < 0:
        raise UserError(f"--bootstrap must be 0 (no bootstrap intervals) or at least 2, got {args.bootstrap}")
    fmt = plot_format(args.plot)
    points, source = load_points(run_source(args), columns(args), args.exclude_top)
    result = run_backtest(points, holdout, level=args.level, bootstrap=args.bootstrap, seed=args.seed,
                          force=args.form)
    image = None
    if args.plot:
        from blueberry.scaling.plots import backtest_figure_bytes

        image = backtest_figure_bytes(result, fmt)
    if args.json != "-":
        print(backtest_text(result, source))
    if args.json:
        emit_json({**result.to_dict(), "source": source}, args.json)
    if image is not None:
        write(args.plot, image)


def cmd_downstream(args) -> None:
    from blueberry.scaling.downstream import downstream_text, evaluated_runs, fit_downstream, payload

    check_output(args.json, "--json")
    if args.bootstrap < 0 or args.bootstrap == 1:
        raise UserError(f"--bootstrap must be 0 (no intervals) or at least 2, got {args.bootstrap}")
    fmt = plot_format(args.plot)
    rows, source, from_mlflow = run_source(args).read()
    loss_col = args.loss_col or ("final/val_loss" if from_mlflow else "loss")
    loss, accuracy, skipped = evaluated_runs(rows, args.metric, loss_col, source)
    floor = args.chance if args.chance is not None else (0.0 if args.metric.split("/")[-1] == "core" else None)
    fit = fit_downstream(loss, accuracy, floor=floor, bootstrap=args.bootstrap, seed=args.seed)
    labels = {"metric": args.metric, "loss_col": loss_col,
              "source": source + (f" ({skipped} runs without the metric left out)" if skipped else "")}
    image = None
    if args.plot:
        from blueberry.scaling.plots import downstream_figure_bytes

        image = downstream_figure_bytes(fit, labels, fmt)
    if args.json != "-":
        print(downstream_text(fit, labels))
    if args.json:
        emit_json(payload(fit, **labels), args.json)
    if image is not None:
        write(args.plot, image)


def main_body(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    {"fit": cmd_fit, "hparams": cmd_hparams, "plan": cmd_plan, "backtest": cmd_backtest,
     "downstream": cmd_downstream}[args.command](args)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(PROG, main_body, argv)


if __name__ == "__main__":
    sys.exit(main())
