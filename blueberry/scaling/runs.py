"""Finished runs as tables: from a CSV file or an MLflow experiment, with clear errors for bad input."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from blueberry.errors import UserError

Row = dict[str, str | float]


def read_csv(path: str | Path) -> list[Row]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"CSV file {path} does not exist")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise UserError(f"{path} has no rows")
    return rows


def read_mlflow(experiment: str, uri: str | None = None) -> list[Row]:
    """Params and metrics of an experiment's finished training runs, one flat row per run. A study's
    parent run (a summary, not a training run) and diverged trials (no final loss) are left out."""
    from blueberry.platform.tracking import client  # here: `blueberry-scale` on CSV files needs no torch or MLflow

    mlflow_client = client(uri)
    found = mlflow_client.get_experiment_by_name(experiment)
    if found is None:
        raise UserError(f"MLflow experiment {experiment!r} does not exist at {mlflow_client.tracking_uri}")
    runs = mlflow_client.search_runs([found.experiment_id], filter_string="attributes.status = 'FINISHED'",
                                     max_results=50000)
    runs = [r for r in runs if r.data.tags.get("blueberry.kind") != "study"
            and r.data.tags.get("status") != "diverged" and r.data.tags.get("outcome") != "diverged"]
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
