"""`blueberry-scale`: fit scaling laws to finished runs and turn them into a costed plan.

    blueberry-scale fit --csv runs.csv --flops-col "Training FLOP" --params-col "Model Size" --exclude-top 5
    blueberry-scale fit --experiment scaling-grid --bootstrap 1000 --json law.json --plot law.png
    blueberry-scale hparams --csv sweeps.csv --json hparams.json
    blueberry-scale plan --law law.json --params 8e9 --gpu h100 --mfu 0.4 --price-per-gpu-hour 2.5
    blueberry-scale plan --law chinchilla --params 8e9 --tokens 15e12 --gpu h100 --mfu 0.4 --dataset fineweb
    blueberry-scale backtest --csv chinchilla --exclude-top 5 --holdout N --holdout-min 1e9
    blueberry-scale downstream --experiment scaling_grid --metric val/hellaswag/acc_norm --chance 0.25 --json ds.json
    blueberry-scale plan --law law.json --params 1e9 --downstream ds.json --accuracy-goal 0.2945

Each subcommand imports what it uses (SciPy, matplotlib, MLflow) inside its own function, so `--help`
and a flag error do not wait for them. Output paths are checked before any fit, and files are written
(atomically) only once everything has succeeded.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from blueberry.cli.common import ArgumentParser, positive_float, positive_int, run_command
from blueberry.core.hardware import GPU_ALIASES
from blueberry.errors import UserError
from blueberry.files import write_atomic
from blueberry.models.lm.config import PRESETS
from blueberry.scaling.datasets import CORPORA

PROG = "blueberry-scale"
# Besiroglu et al. 2024 (Epoch AI), "Chinchilla Scaling: A replication attempt", Table 1.
CHINCHILLA = {"E": (1.8172, 0.03), "A": (482.01, 124.58), "B": (2085.43, 1293.23), "alpha": (0.3478, 0.02),
              "beta": (0.3658, 0.02)}


def add_source_flags(parser: ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--csv", help="finished runs as a CSV file, or 'chinchilla' for the Chinchilla paper's runs "
                                      "(shipped with Blueberry)")
    source.add_argument("--experiment", help="an MLflow experiment of finished runs")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Scaling-law fits and plans.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    fit = commands.add_parser("fit", help="fit L(N, D) = E + A/N^alpha + B/D^beta")
    add_source_flags(fit)
    add_column_flags(fit)
    fit.add_argument("--bootstrap", type=int, default=200, metavar="N", help="bootstrap refits (default 200)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--json", nargs="?", const="-", metavar="FILE", help="write the fit as JSON (stdout if no FILE)")
    fit.add_argument("--plot", type=Path, metavar="FILE.png", help="draw the data, the law and the frontier")

    hp = commands.add_parser("hparams", help="fit the optimal LR and batch size against compute")
    add_source_flags(hp)
    hp.add_argument("--compute-col", help="column of training FLOPs (default: C, else 6 x params x tokens)")
    hp.add_argument("--params-col", default="N")
    hp.add_argument("--tokens-col", help="default: D (final/tokens for MLflow)")
    hp.add_argument("--lr-col", help="default: lr (train.muon_lr for MLflow)")
    hp.add_argument("--batch-col", help="batch size in tokens (default: batch_tokens)")
    hp.add_argument("--loss-col", help="default: loss (final/val_loss for MLflow)")
    hp.add_argument("--bootstrap", type=int, default=1000)
    hp.add_argument("--seed", type=int, default=0)
    hp.add_argument("--json", nargs="?", const="-", metavar="FILE")

    plan = commands.add_parser("plan", help="size, tokens, loss, hyperparameters, GPU-hours and cost for a target")
    plan.add_argument("--law", help="a `fit --json` file, or 'chinchilla' for Epoch AI's published fit")
    add_source_flags(plan)
    plan.add_argument("--exclude-top", type=int, default=0, help="with --csv/--experiment: as for fit")
    target = plan.add_mutually_exclusive_group(required=True)
    target.add_argument("--params", type=positive_float, help="model size N")
    target.add_argument("--flops", type=positive_float, help="training compute C")
    target.add_argument("--gpu-hours", type=positive_float, help="a GPU-hour budget")
    target.add_argument("--preset", choices=list(PRESETS), help="an existing preset's size")
    plan.add_argument("--tokens", type=positive_float, help="with --params/--preset: train on exactly D tokens")
    plan.add_argument("--gpu", default="h100", help=f"one of {', '.join(GPU_ALIASES)} (default h100)")
    plan.add_argument("--mfu", type=positive_float, default=0.4, help="model FLOPs utilisation (default 0.4)")
    plan.add_argument("--price-per-gpu-hour", type=positive_float, help="to turn GPU-hours into money")
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
    plan.add_argument("--vocab", type=int, default=49152, help="vocabulary of the planned model (default 49152)")
    plan.add_argument("--json", nargs="?", const="-", metavar="FILE")
    plan.add_argument("--plot", type=Path, metavar="FILE.png",
                      help="draw the plan on the law's loss-compute plane (with --csv/--experiment: and the runs)")

    bt = commands.add_parser("backtest", help="fit the smaller runs, predict the larger: error and interval coverage")
    add_source_flags(bt)
    add_column_flags(bt)
    bt.add_argument("--holdout", choices=("compute", "N"), default="compute", help="hold out the largest runs by this")
    held = bt.add_mutually_exclusive_group()
    held.add_argument("--holdout-min", type=positive_float, metavar="X",
                      help="hold out runs whose compute (or N) is at least X")
    held.add_argument("--holdout-fraction", type=float, metavar="F",
                      help="hold out the largest fraction F of the runs (default 0.2 when --holdout-min is not given)")
    bt.add_argument("--level", type=float, default=0.8, help="nominal coverage of the prediction intervals")
    bt.add_argument("--bootstrap", type=int, default=200, metavar="N", help="bootstrap refits for the intervals")
    bt.add_argument("--seed", type=int, default=0)
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
    ds.add_argument("--seed", type=int, default=0)
    ds.add_argument("--json", nargs="?", const="-", metavar="FILE",
                    help="write the fit as JSON (for plan --downstream)")
    ds.add_argument("--plot", type=Path, metavar="FILE.png", help="draw the runs and the fitted curve")
    return parser


def add_column_flags(parser: ArgumentParser) -> None:
    parser.add_argument("--params-col", default="N", help="column of parameter counts N (default: N)")
    tokens = parser.add_mutually_exclusive_group()
    tokens.add_argument("--tokens-col", help="column of training tokens D (default: D; final/tokens for MLflow)")
    tokens.add_argument("--flops-col", help="column of training FLOPs C instead of tokens: D = C / 6N")
    parser.add_argument("--loss-col", help="column of final losses (default: loss; final/val_loss for MLflow)")
    parser.add_argument("--exclude-top", type=int, default=0, metavar="K", help="drop the K highest-loss points")


def _rows(args):
    from blueberry.scaling.datasets import named
    from blueberry.scaling.runs import read_csv, read_mlflow

    if dataset := named(args.csv):
        return read_csv(dataset.path), f"{args.csv} ({dataset.description})", False
    if args.csv:
        return read_csv(args.csv), str(args.csv), False
    if args.experiment:
        return read_mlflow(args.experiment, args.tracking_uri), f"experiment {args.experiment!r}", True
    if args.command == "plan":
        raise UserError("plan needs a law: --law chinchilla (Epoch AI's published fit), --law FILE (from "
                        "`blueberry-scale fit --json FILE`), or --csv FILE / --experiment NAME to fit one now")
    raise UserError("give the runs to fit: --csv FILE (or --csv chinchilla) or --experiment NAME")


def _named_columns(args) -> None:
    """A shipped dataset's columns, where the flags left them at their defaults."""
    from blueberry.scaling.datasets import named

    dataset = named(args.csv)
    if dataset is None:
        return
    if args.params_col == "N":
        args.params_col = dataset.params_col
    if getattr(args, "flops_col", None) is None and getattr(args, "tokens_col", None) is None:
        args.flops_col, args.tokens_col = dataset.flops_col, dataset.tokens_col
    args.loss_col = args.loss_col or dataset.loss_col


def load_points(args):
    from blueberry.scaling.fit import ScalingPoints
    from blueberry.scaling.runs import column

    _named_columns(args)
    rows, source, from_mlflow = _rows(args)
    N = column(rows, args.params_col, source)
    loss = column(rows, args.loss_col or ("final/val_loss" if from_mlflow else "loss"), source)
    if getattr(args, "flops_col", None):
        points = ScalingPoints.from_compute(N, column(rows, args.flops_col, source), loss)
    else:
        points = ScalingPoints(np.array(N), np.array(column(rows, args.tokens_col or (
            "final/tokens" if from_mlflow else "D"), source)), np.array(loss))
    return points.exclude_top(args.exclude_top) if args.exclude_top else points, source


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


def _write(where: str | Path, content: str | bytes) -> None:
    try:
        write_atomic(where, content)
    except OSError as err:  # checked beforehand; what is left is the disk (full, gone read-only)
        raise UserError(f"cannot write {where}: {err.strerror or err}") from None


def _emit_json(payload: dict, where: str) -> None:
    text = json.dumps(payload, indent=2)
    if where == "-":
        print(text)
    else:
        _write(where, text + "\n")


def fit_payload(points, fit, boot, isoflop, source: str | None = None) -> dict:
    from blueberry.scaling.law import DataRange

    payload: dict[str, object] = {}
    for name in ("E", "A", "B", "alpha", "beta"):
        payload[name] = boot.summary(name, getattr(fit.law, name)) if boot else {"estimate": getattr(fit.law, name),
                                                                                 "se": None, "ci": None}
    for name, value in fit.law.derived().items():
        payload[name] = boot.summary(name, value) if boot else {"estimate": value, "se": None, "ci": None}
    payload["fit"] = {"points": len(points), "objective": fit.objective, "converged": fit.converged,
                      "method": "Chinchilla approach 3: Huber(delta=1e-3) on log loss, L-BFGS"}
    payload["source"] = source
    payload["data_range"] = DataRange.of(points.N, points.D).to_dict()  # for plan's extrapolation warnings
    if boot:
        payload["bootstrap_samples"] = {k: v.tolist() for k, v in boot.samples.items()}
    if isoflop is not None:
        payload["isoflop"] = {"N_opt": {"coefficient": isoflop.N_coefficient, "exponent": isoflop.N_exponent},
                              "D_opt": {"coefficient": isoflop.D_coefficient, "exponent": isoflop.D_exponent},
                              "profiles": [p.__dict__ for p in isoflop.profiles]}
    return payload


def fit_table(payload: dict, source: str) -> str:
    lines = [f"Chinchilla approach 3 on {payload['fit']['points']} runs from {source}",
             f"{'':8}{'estimate':>12}{'s.e.':>12}   95% interval"]
    for name in ("E", "A", "B", "alpha", "beta", "a", "b"):
        entry = payload[name]
        se = f"{entry['se']:12.4g}" if entry["se"] is not None else f"{'-':>12}"
        ci = f"[{entry['ci'][0]:.4g}, {entry['ci'][1]:.4g}]" if entry["ci"] else "-"
        lines.append(f"{name:8}{entry['estimate']:12.4g}{se}   {ci}")
    lines.append("a = beta/(alpha+beta) and b = alpha/(alpha+beta): N_opt grows as C^a, D_opt as C^b")
    if "isoflop" in payload:
        iso = payload["isoflop"]
        lines.append(f"IsoFLOP (approach 2, {len(iso['profiles'])} budgets): N_opt = {iso['N_opt']['coefficient']:.3g} "
                     f"C^{iso['N_opt']['exponent']:.3f}, D_opt = {iso['D_opt']['coefficient']:.3g} "
                     f"C^{iso['D_opt']['exponent']:.3f}")
    return "\n".join(lines)


def cmd_fit(args) -> None:
    from blueberry.scaling.fit import bootstrap_law, fit_isoflop, fit_law

    if args.bootstrap < 0:
        raise UserError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    check_output(args.json, "--json")
    check_output(args.plot, "--plot")
    if args.plot:
        from blueberry.scaling.plots import image_format, render_law

        plot_format = image_format(args.plot)
    points, source = load_points(args)
    fit = fit_law(points)
    if not fit.converged:
        raise UserError("the fit did not converge: check the data (units of N, D and loss) or drop outliers")
    boot = bootstrap_law(points, fit, args.bootstrap, seed=args.seed) if args.bootstrap else None
    try:
        isoflop = fit_isoflop(points)
    except UserError:
        isoflop = None  # approach 2 needs several sizes per budget; many datasets do not have them
    payload = fit_payload(points, fit, boot, isoflop, source)
    image = render_law(points, fit.law, plot_format) if args.plot else None
    if args.json != "-":
        print(fit_table(payload, source))
    if args.json:
        _emit_json(payload, args.json)
    if image is not None:
        _write(args.plot, image)


def cmd_hparams(args) -> None:
    from blueberry.scaling.hparams import Trial, fit_hparam_laws
    from blueberry.scaling.runs import column

    check_output(args.json, "--json")
    rows, source, from_mlflow = _rows(args)
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
        print(f"Hyperparameter laws from {source} ({len(laws.budgets)} compute budgets)")
        for name, law in (("lr", laws.lr), ("batch (tokens)", laws.batch_tokens)):
            ci = (f" (exponent 95% interval [{law.exponent_ci[0]:.3f}, {law.exponent_ci[1]:.3f}])"
                  if law.exponent_ci else "")
            print(f"  {name:15} = {law.coefficient:.4g} C^{law.exponent:.4f}{ci}")
        print(f"  {'C':>10}  {'best lr':>10} {'law':>10} {'ratio':>6}   {'best batch':>10} {'law':>10} {'ratio':>6}")
        for b in laws.budgets:
            print(f"  {b.compute:10.3g}  {b.lr:10.3g} {laws.lr(b.compute):10.3g} {b.lr / laws.lr(b.compute):6.2f}   "
                  f"{b.batch_tokens:10.3g} {laws.batch_tokens(b.compute):10.3g} "
                  f"{b.batch_tokens / laws.batch_tokens(b.compute):6.2f}")
    if args.json:
        _emit_json(laws.to_dict(), args.json)


def chinchilla_range():
    """The runs Epoch AI's refit used: the shipped Chinchilla runs less the 5 highest-loss ones."""
    from blueberry.scaling.datasets import NAMED
    from blueberry.scaling.fit import ScalingPoints
    from blueberry.scaling.law import DataRange
    from blueberry.scaling.runs import column, read_csv

    dataset = NAMED["chinchilla"]
    rows = read_csv(dataset.path)
    points = ScalingPoints.from_compute(column(rows, dataset.params_col, "chinchilla"),
                                        column(rows, dataset.flops_col, "chinchilla"),
                                        column(rows, dataset.loss_col, "chinchilla")).exclude_top(5)
    return DataRange.of(points.N, points.D)


def load_law(args):
    """(law, bootstrap samples or None, where it comes from, the fitted points or None, the range of the runs it
    was fitted on or None) from --law or a fit of --csv/--experiment."""
    from blueberry.scaling.fit import bootstrap_law, fit_law
    from blueberry.scaling.law import DataRange, Law, read_law_file

    if args.law == "chinchilla":
        return (Law(**{k: v[0] for k, v in CHINCHILLA.items()}), None,
                "Chinchilla's law (Hoffmann et al. 2022 runs, Epoch AI 2024 refit), not fitted to the lab's runs",
                None, chinchilla_range())
    if args.law:
        read = read_law_file(Path(args.law))
        return (read.law, read.samples, f"the fit in {args.law} (of {read.source or 'runs it does not record'})", None,
                read.data_range)
    args.params_col, args.tokens_col, args.flops_col, args.loss_col = "N", None, None, None
    points, source = load_points(args)
    fit = fit_law(points)
    return (fit.law, bootstrap_law(points, fit, 200).samples, f"a fit of {source}, done now", points,
            DataRange.of(points.N, points.D))


def cmd_plan(args) -> None:
    from blueberry.models.lm.config import preset
    from blueberry.models.lm.model import count_params
    from blueberry.scaling.downstream import read_downstream_json
    from blueberry.scaling.hparams import read_hparams_json
    from blueberry.scaling.plan import Target, make_plan, plan_text

    check_output(args.json, "--json")
    check_output(args.plot, "--plot")
    if args.plot:
        from blueberry.scaling.plots import image_format, render_law

        plot_format = image_format(args.plot)
    architecture = None
    params = args.params
    if args.preset:
        architecture = preset(args.preset)
        params = float(count_params(architecture).total)
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
    law, samples, law_source, points, data_range = load_law(args)  # last: with --csv/--experiment it fits
    plan = make_plan(law, target, samples, hparams, vocab_size=args.vocab, architecture=architecture,
                     law_source=law_source, data_range=data_range, downstream=downstream,
                     accuracy_goal=args.accuracy_goal)
    image = render_law(points, law, plot_format, plan) if args.plot else None
    if args.json != "-":
        print(plan_text(plan))
    if args.json:
        _emit_json(plan.to_dict(), args.json)
    if image is not None:
        _write(args.plot, image)


def cmd_backtest(args) -> None:
    from blueberry.scaling.backtest import Holdout, backtest_text, run_backtest

    check_output(args.json, "--json")
    check_output(args.plot, "--plot")
    fraction = args.holdout_fraction if args.holdout_fraction is not None or args.holdout_min is not None else 0.2
    holdout = Holdout(by=args.holdout, threshold=args.holdout_min, fraction=fraction)
    if not 0 < args.level < 1:
        raise UserError(f"--level must be in (0, 1), got {args.level}")
    if args.plot:
        from blueberry.scaling.plots import backtest_figure_bytes, image_format

        plot_format = image_format(args.plot)
    points, source = load_points(args)
    result = run_backtest(points, holdout, level=args.level, bootstrap=args.bootstrap, seed=args.seed)
    image = backtest_figure_bytes(result, plot_format) if args.plot else None
    if args.json != "-":
        print(backtest_text(result, source))
    if args.json:
        _emit_json({**result.to_dict(), "source": source}, args.json)
    if image is not None:
        _write(args.plot, image)


def cmd_downstream(args) -> None:
    from blueberry.scaling.downstream import downstream_text, fit_downstream, payload
    from blueberry.scaling.runs import column

    check_output(args.json, "--json")
    check_output(args.plot, "--plot")
    if args.bootstrap < 0 or args.bootstrap == 1:
        raise UserError(f"--bootstrap must be 0 (no intervals) or at least 2, got {args.bootstrap}")
    if args.plot:
        from blueberry.scaling.plots import downstream_figure_bytes, image_format

        plot_format = image_format(args.plot)
    rows, source, from_mlflow = _rows(args)
    loss_col = args.loss_col or ("final/val_loss" if from_mlflow else "loss")
    evaluated = [r for r in rows if r.get(args.metric) not in (None, "") and r.get(loss_col) not in (None, "")]
    if not evaluated:
        metrics = sorted({k for r in rows for k in r if k.startswith("val/") or k.endswith(("acc", "acc_norm"))})
        raise UserError(f"no run of {source} has both {args.metric!r} and {loss_col!r} (accuracy-like columns: "
                        f"{', '.join(metrics)[:200] or 'none'}); choose them with --metric and --loss-col")
    floor = args.chance if args.chance is not None else (0.0 if args.metric.split("/")[-1] == "core" else None)
    fit = fit_downstream(np.array(column(evaluated, loss_col, source)),
                         np.array(column(evaluated, args.metric, source)), floor=floor, bootstrap=args.bootstrap,
                         seed=args.seed)
    skipped = len(rows) - len(evaluated)
    labels = {"metric": args.metric, "loss_col": loss_col,
              "source": source + (f" ({skipped} runs without the metric left out)" if skipped else "")}
    image = downstream_figure_bytes(fit, labels, plot_format) if args.plot else None
    if args.json != "-":
        print(downstream_text(fit, labels))
    if args.json:
        _emit_json(payload(fit, **labels), args.json)
    if image is not None:
        _write(args.plot, image)


def main_body(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    {"fit": cmd_fit, "hparams": cmd_hparams, "plan": cmd_plan, "backtest": cmd_backtest,
     "downstream": cmd_downstream}[args.command](args)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(PROG, main_body, argv)


if __name__ == "__main__":
    sys.exit(main())
