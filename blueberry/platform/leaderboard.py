"""The speedrun board's MLflow side: tagging a study's runs, reading the submitted ones back as
`blueberry.speedrun.runs.Run`s, and publishing the leaderboard as a file and as an artifact.

The judging and the Markdown are `blueberry.speedrun.board`'s, which knows nothing of MLflow. The
leaderboard artifact (`LEADERBOARD.md`) lives on one run of the experiment tagged
`blueberry.kind = leaderboard`, found again each time, so publishing twice replaces it.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from blueberry.errors import UserError
from blueberry.files import write_atomic
from blueberry.models.run import RunConfig
from blueberry.platform.search import apply_params
from blueberry.platform.tracking import HARDWARE_TAG, KIND_TAG, client, find_run, git_commit
from blueberry.speedrun import runs as tags
from blueberry.speedrun.ab import SEED
from blueberry.speedrun.board import Claim, TrackBoard, Verdict, build, judge, render
from blueberry.speedrun.runs import BASELINE, CANDIDATE, SUBMITTED_TAG, TRACK_TAG, Hardware, Run, run_tags
from blueberry.speedrun.tracks import TRACKS, Track, track

BOARD_KIND = "leaderboard"
ARTIFACT = "LEADERBOARD.md"


def code_version(cwd: Path | None = None) -> str:
    """The git commit of the code the driver runs (the checkout holding this package, wherever the
    command was started), with `+dirty` when tracked files differ from it; "" outside a checkout."""
    cwd = cwd or Path(__file__).resolve().parent
    commit = git_commit(cwd)
    if commit is None:
        return ""
    try:
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return commit
    return commit + ("+dirty" if status.returncode == 0 and status.stdout.strip() else "")


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def tag_runs(mlflow_client: Any, tags_by_run: dict[str, dict[str, str]]) -> None:
    """Set each run's tags (one batch per run). A submission time already there is kept, so
    submitting the same claim again does not move it on the board."""
    from mlflow.entities import RunTag

    for run_id, wanted in tags_by_run.items():
        if SUBMITTED_TAG in wanted and SUBMITTED_TAG in mlflow_client.get_run(run_id).data.tags:
            wanted = {k: v for k, v in wanted.items() if k != SUBMITTED_TAG}
        mlflow_client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in wanted.items()])


def _number(text: str | None, kind: type = float) -> Any:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return kind(value) if math.isfinite(value) else None


def to_run(mlflow_run: Any) -> Run:
    """A speedrun `Run` from an MLflow run's tags, params and final metrics."""
    found, params, metrics = mlflow_run.data.tags, mlflow_run.data.params, mlflow_run.data.metrics
    device = found.get("device")  # runs tracked before the hardware tags existed still say cpu or the GPU
    hardware = Hardware(**{key: found.get(HARDWARE_TAG + key) or
                           (("none" if device == "cpu" else device) if key == "gpu" and device else "unknown")
                           for key in ("gpu", "cpu", "torch", "cuda")})
    return Run(
        run_id=mlflow_run.info.run_id, track=found.get(TRACK_TAG, ""), claim=found.get(tags.CLAIM_TAG, ""),
        arm=found.get(tags.ARM_TAG, tags.CANDIDATE), submitted=found.get(SUBMITTED_TAG),
        author=found.get(tags.AUTHOR_TAG, ""), notes=found.get(tags.NOTES_TAG, ""),
        commit=found.get(tags.COMMIT_TAG) or found.get("git_commit", ""), hardware=hardware,
        metrics={key[len("final/"):]: value for key, value in metrics.items() if key.startswith("final/")},
        target_train_loss=_number(params.get("train.target_train_loss")),
        batch_tokens=_number(params.get("batch_tokens"), int), flops_per_token=_number(found.get(tags.FLOPS_TAG)),
        seed=_number(params.get("train.seed"), int), name=mlflow_run.info.run_name or "")


def read_runs(mlflow_client: Any, experiment_id: str, run_ids: Sequence[str] | None = None) -> list[Run]:
    """The given runs, or every run of the experiment that carries a speedrun track."""
    if run_ids is not None:
        return [to_run(mlflow_client.get_run(run_id)) for run_id in run_ids]
    found, token = [], None
    while True:
        page = mlflow_client.search_runs([experiment_id], filter_string=f"tags.`{TRACK_TAG}` LIKE '%'",
                                         max_results=1000, page_token=token)
        found += [to_run(run) for run in page]
        token = page.token
        if not token:
            return found


def experiment_id(mlflow_client: Any, name: str, uri: str) -> str:
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        raise UserError(f"MLflow experiment {name!r} does not exist in {uri}: pass the experiment your speedrun "
                        "study recorded into (--experiment; studies/speedrun.py records into 'speedrun')")
    return experiment.experiment_id


def publish(uri: str, experiment: str, out: Path | None, tracks: Sequence[str] = (), artifact: bool = True
            ) -> tuple[str, list[TrackBoard]]:
    """Read the experiment's submitted speedrun runs, judge them, and write the leaderboard to `out`
    (None: nowhere) and, with `artifact`, to the experiment's leaderboard run. (Markdown, boards)."""
    for name in tracks:
        track(name)  # an unknown name fails before MLflow is opened
    if out is not None and out.is_dir():
        raise UserError(f"--out {out} is a directory: name the Markdown file to write, e.g. {out / ARTIFACT}")
    if out is not None and not out.parent.is_dir():
        raise UserError(f"--out {out}: directory {out.parent} does not exist; create it or choose another path")
    mlflow_client = client(uri)
    exp_id = experiment_id(mlflow_client, experiment, uri)
    runs = read_runs(mlflow_client, exp_id)
    submitted = [run for run in runs if run.submitted]
    if not submitted:
        what = (f"{len(runs)} speedrun runs but none submitted" if runs else "no runs tagged with a speedrun track")
        raise UserError(f"MLflow experiment {experiment!r} in {uri} has {what}: submit a claim with "
                        "python studies/speedrun.py --submit (or --ab BASELINE.json CANDIDATE.json --submit)")
    boards, unknown = build(submitted, TRACKS, tracks)
    markdown = render(boards, f"MLflow experiment `{experiment}`", now_iso()[:10], unknown)
    if out is not None:
        write_atomic(out, markdown)
    if artifact:
        run_id = find_run(mlflow_client, exp_id, {KIND_TAG: BOARD_KIND})
        if run_id is None:
            run_id = mlflow_client.create_run(exp_id, run_name="leaderboard", tags={KIND_TAG: BOARD_KIND}).info.run_id
        mlflow_client.log_text(run_id, markdown, ARTIFACT)
        mlflow_client.set_terminated(run_id, status="FINISHED")
    return markdown, boards


@dataclasses.dataclass(frozen=True)
class ClaimResult:
    verdict: Verdict  # the board's judgement of the claim (an A/B against its baseline arm)
    arms: dict[str, list[Run]]  # baseline, candidate
    submitted: bool


def record_claim(mlflow_client: Any, experiment_id: str, rows: Sequence[dict[str, Any]], base: RunConfig,
                 chosen: Track, points: Sequence[tuple[str, dict[str, Any]]], claim: str, author: str,
                 notes: dict[str, str], submit: bool) -> ClaimResult:
    """Tag a speedrun study's runs (the sweep's `rows`; `points`: each run's arm and overrides, told
    apart by seed) as one claim, judge it as the board will, and submit it to the board if `submit`
    (the board lists a refused claim with its reason). `notes` by arm."""
    arm_of = {point[SEED]: (arm, point) for arm, point in points}
    rows = [row for row in rows if row.get("mlflow_run_id") and row.get(SEED) in arm_of]
    runs = read_runs(mlflow_client, experiment_id, [row["mlflow_run_id"] for row in rows])
    commit = code_version()
    arms: dict[str, list[Run]] = {BASELINE: [], CANDIDATE: []}
    tags_by_run: dict[str, dict[str, str]] = {}
    for row, run in zip(rows, runs):
        arm, point = arm_of[row[SEED]]
        overrides = {k: v for k, v in point.items() if k != SEED}
        flops = apply_params(base, point).task().flops_per_unit()
        arms[arm].append(dataclasses.replace(run, track=chosen.name, claim=claim, arm=arm, flops_per_token=flops))
        tags_by_run[run.run_id] = run_tags(chosen.name, claim, arm, author, notes.get(arm, ""), commit, overrides,
                                           flops)
    verdict = judge(chosen, [Claim(claim, chosen.name, "", tuple(arms[CANDIDATE]), tuple(arms[BASELINE]))]).verdicts[0]
    if submit:
        when = now_iso()
        for wanted in tags_by_run.values():
            wanted[SUBMITTED_TAG] = when
    tag_runs(mlflow_client, tags_by_run)
    return ClaimResult(verdict, arms, submit)
