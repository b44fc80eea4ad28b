"""Finished runs as tables: from a CSV file or an MLflow experiment, with clear errors for bad input."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from blueberry.errors import UserError

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
            rows = list(csv.DictReader(f))
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
