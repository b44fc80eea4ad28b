"""Finished runs: from a CSV file, the shipped Chinchilla runs or an MLflow experiment, as tables and as
`ScalingPoints`, with one-line errors for bad input.

`RunSource` says where the runs are and `Columns` which columns hold N, D (or C) and the loss; the defaults
depend on the source (`Columns.for_source`): a shipped dataset knows its own, an MLflow experiment's are
the ones Blueberry's runs log (`N`, `final/tokens`, `final/val_loss`), a CSV's are `N`, `D`, `loss`.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from blueberry.errors import UserError
from blueberry.scaling.datasets import named
from blueberry.scaling.fit import ScalingPoints

Row = dict[str, str | float]


GZIP_MAGIC = b"\x1f\x8b"


def read_csv(path: str | Path) -> list[Row]:
    """Rows of a UTF-8 CSV file (a spreadsheet's byte-order mark is allowed), keyed by its header."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory: give the CSV file itself")
    if not path.is_file():
        raise UserError(f"CSV file {path} does not exist")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            twice = sorted({name for name in header if header.count(name) > 1})
            if twice:  # DictReader would keep the last and drop the rest without a word
                raise UserError(f"{path} names column {twice[0]!r} more than once: rename or remove the copies")
            rows = list(reader)
    except UnicodeDecodeError:
        with open(path, "rb") as f:
            if f.read(2) == GZIP_MAGIC:
                raise UserError(f"{path} is gzip-compressed: decompress it (gunzip) and give the .csv") from None
        raise UserError(f"{path} is not UTF-8 text (a binary file, or another encoding): "
                        "give the CSV, saved as UTF-8") from None
    except csv.Error as err:
        raise UserError(f"{path} is not a readable CSV file ({err}): give the CSV itself") from None
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    if not rows:
        raise UserError(f"{path} has no rows")
    return rows


def read_mlflow(experiment: str, uri: str | None = None) -> list[Row]:
    """Params and metrics of an experiment's finished training runs, one flat row per run. A study's
    parent run (a summary, not a training run) and diverged or stopped-early trials (no final loss:
    ASHA ends a stopped trial as FINISHED, tagged `status` stopped_early) are left out."""
    from blueberry.platform.tracking import client  # here: `blueberry-scale` on CSV files needs no torch or MLflow
    from blueberry.platform.tracking import tracking_uri

    _refuse_missing_store(tracking_uri(uri))
    mlflow_client = client(uri)
    found = mlflow_client.get_experiment_by_name(experiment)
    if found is None:
        raise UserError(f"MLflow experiment {experiment!r} does not exist at {mlflow_client.tracking_uri}")
    runs = mlflow_client.search_runs([found.experiment_id], filter_string="attributes.status = 'FINISHED'",
                                     max_results=50000)
    runs = [r for r in runs if r.data.tags.get("blueberry.kind") != "study"
            and r.data.tags.get("status") not in ("diverged", "stopped_early")
            and r.data.tags.get("outcome") != "diverged"]
    if not runs:
        raise UserError(f"MLflow experiment {experiment!r} has no finished runs")
    return [{**r.data.params, **r.data.metrics, "run_id": r.info.run_id} for r in runs]


def _refuse_missing_store(uri: str) -> None:
    """Reading from a store that does not exist would create it (MLflow makes an empty SQLite file, or a
    file store's directory): refuse, so a mistyped URI leaves nothing behind."""
    scheme, sep, rest = uri.partition("://")
    if sep and scheme.split("+")[0] == "sqlite":
        path = Path(rest[1:] if rest.startswith("/") else rest)
    elif sep and scheme == "file":
        path = Path(rest)
    elif not sep:
        path = Path(uri)
    else:
        return  # a server or a database: nothing is created by reading it
    if str(path) not in ("", ":memory:") and not path.expanduser().exists():
        raise UserError(f"no MLflow store at {uri} ({path} does not exist): give the --tracking-uri of the store "
                        "the runs were tracked in")


def column(rows: list[Row], name: str, source: str) -> list[float]:
    """A numeric column; a missing column or a non-numeric cell is a one-line error naming it."""
    if name not in rows[0] and not any(name in r for r in rows):
        available = ", ".join(sorted(rows[0]))[:300]
        raise UserError(f"{source} has no column {name!r} (columns: {available}); choose one with the column options")
    values = []
    for i, row in enumerate(rows, start=1):
        try:
            value = float(row[name])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{source}: row {i} has no number in column {name!r} (got {row.get(name)!r})") from None
        if not math.isfinite(value):
            raise UserError(f"{source}: row {i} has a non-finite {name!r}")
        values.append(value)
    return values


@dataclass(frozen=True)
class RunSource:
    """Where finished runs are: a CSV file (or a shipped dataset's name, `--csv chinchilla`) or an MLflow
    experiment."""

    csv: str | None = None
    experiment: str | None = None
    tracking_uri: str | None = None

    @property
    def given(self) -> bool:
        return self.csv is not None or self.experiment is not None

    def read(self) -> tuple[list[Row], str, bool]:
        """(rows, a label for messages, whether they came from MLflow)."""
        if dataset := named(self.csv):
            return read_csv(dataset.path), f"{self.csv} ({dataset.description})", False
        if self.csv is not None:
            return read_csv(self.csv), str(self.csv), False
        if self.experiment is not None:
            return read_mlflow(self.experiment, self.tracking_uri), f"experiment {self.experiment!r}", True
        raise UserError("give the runs to fit: --csv FILE (or --csv chinchilla) or --experiment NAME")


@dataclass(frozen=True)
class Columns:
    """Which columns hold N, D (or training FLOPs C, then D = C / 6N) and the final loss; None: the source's
    default."""

    params: str | None = None
    tokens: str | None = None
    flops: str | None = None
    loss: str | None = None

    def __post_init__(self) -> None:
        if self.tokens is not None and self.flops is not None:
            raise UserError("give one of --tokens-col and --flops-col")

    def for_source(self, source: RunSource, from_mlflow: bool) -> Columns:
        """These columns with the source's defaults filled in."""
        dataset = named(source.csv)
        if dataset is not None:
            given_d = self.tokens is not None or self.flops is not None
            return Columns(params=self.params or dataset.params_col,
                           tokens=self.tokens if given_d else dataset.tokens_col,
                           flops=self.flops if given_d else dataset.flops_col, loss=self.loss or dataset.loss_col)
        tokens = self.tokens if self.flops is not None or self.tokens is not None else (
            "final/tokens" if from_mlflow else "D")
        return replace(self, params=self.params or "N", tokens=tokens,
                       loss=self.loss or ("final/val_loss" if from_mlflow else "loss"))


def load_points(source: RunSource, columns: Columns = Columns(), exclude_top: int = 0) -> tuple[ScalingPoints, str]:
    """The runs of `source` as points (less the `exclude_top` highest losses), and a label for them."""
    rows, label, from_mlflow = source.read()
    cols = columns.for_source(source, from_mlflow)
    N = column(rows, cols.params, label)
    loss = column(rows, cols.loss, label)
    if cols.flops is not None:
        points = ScalingPoints.from_compute(N, column(rows, cols.flops, label), loss)
    else:
        points = ScalingPoints(np.array(N), np.array(column(rows, cols.tokens, label)), np.array(loss))
    return (points.exclude_top(exclude_top) if exclude_top else points), label


EPOCH_EXCLUDED = 5  # Besiroglu et al. drop the 5 highest-loss runs of the extracted data


def chinchilla_points() -> ScalingPoints:
    """The runs Epoch AI's refit used: the shipped Chinchilla runs less the 5 highest-loss ones."""
    return load_points(RunSource(csv="chinchilla"), exclude_top=EPOCH_EXCLUDED)[0]

