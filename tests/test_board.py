"""The speedrun leaderboard: claims judged in submission order into records (each test's p-value equal
to SciPy's Welch test on the runs) and refusals that say why (too few valid runs, not clearly better,
other hardware on a time track); the Markdown it writes; and `blueberry-board` reading tagged runs from
a SQLite MLflow store, writing the file and the artifact, and refusing bad input in one line with exit
status 2."""

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from scipy import stats

from blueberry.cli import board as board_cli
from blueberry.core.config import TrainConfig
from blueberry.models.lm.config import tiny
from blueberry.models.run import RunConfig
from blueberry.platform.leaderboard import ARTIFACT, BOARD_KIND, read_runs, record_claim
from blueberry.platform.tracking import KIND_TAG
from blueberry.speedrun import runs as tags
from blueberry.speedrun.board import build, claims, format_seconds, judge, render
from blueberry.speedrun.runs import BASELINE, CANDIDATE, Hardware, Run, invalid_reason
from blueberry.speedrun.tracks import TRACKS

RTX = Hardware("NVIDIA GeForce RTX 4090", "Intel(R) Xeon(R) Platinum 8473C", "2.5.1", "12.4")
H100 = Hardware("NVIDIA H100 80GB HBM3", "Intel(R) Xeon(R) Platinum 8480+", "2.5.1", "12.4")
EIGHT_M = TRACKS["8m"]


def runs_of(claim, times, submitted="2026-01-01T00:00:00Z", hardware=RTX, arm=CANDIDATE, tokens=8_011_776,
            **metrics):
    """Runs of an 8m-track claim with these active times."""
    return [Run(run_id=f"{claim}-{arm}-{i}", track="8m", claim=claim, arm=arm, submitted=submitted,
                author="ada", notes=f"notes of {claim}", commit="0123456789abcdef", hardware=hardware,
                metrics={"active_time_s": t, "tokens": tokens, "train_loss": 4.74, "val_loss": 4.84, "diverged": 0.0,
                         **metrics},
                batch_tokens=16_384, flops_per_token=6 * 88e6, seed=i, name=f"{claim}-{i}")
            for i, t in enumerate(times)]


def scipy_p(candidate, baseline):
    return stats.ttest_ind(candidate, baseline, equal_var=False, alternative="less").pvalue


RECORD = [88.664, 88.312, 88.175, 88.546, 88.458]  # the lab's repeatability list for its 8M record, in seconds
FASTER = [86.10, 86.31, 85.95, 86.22, 86.02]
SAME = [88.70, 88.20, 88.40, 88.55, 88.30]


def test_claims_become_records_in_submission_order_with_scipys_p_values():
    runs = (runs_of("faster", FASTER, "2026-01-03T00:00:00Z") + runs_of("first", RECORD, "2026-01-01T00:00:00Z")
            + runs_of("same", SAME, "2026-01-04T00:00:00Z") + runs_of("few", [80.0, 80.1], "2026-01-02T00:00:00Z"))
    (board,), unknown = build(runs, only=["8m"])
    assert unknown == {}
    assert [(v.claim.id, v.accepted, v.number) for v in board.verdicts] == [
        ("first", True, 1), ("few", False, None), ("faster", True, 2), ("same", False, None)]
    first, few, faster, same = board.verdicts
    assert first.reason == "the track's first record" and first.test is None
    assert few.reason.startswith("2 valid runs; the track needs 5 (mean 1m 20s 50ms against 1m 28s 431ms)")
    assert faster.against == "record #1"
    assert faster.test.p == pytest.approx(scipy_p(FASTER, RECORD), rel=1e-12) and faster.test.p < 0.01
    # The fourth is judged against the second record, not the first, and refused with its p-value.
    assert same.against == "record #2" and same.test.p == pytest.approx(scipy_p(SAME, FASTER), rel=1e-12)
    assert same.reason.startswith("not clearly lower: p = 1 >= 0.01 (mean 1m 28s 430ms against 1m 26s 120ms)")


def test_a_claim_only_slightly_faster_is_refused_and_says_its_p_value():
    slightly = [t - 0.1 for t in RECORD]  # 0.1% faster, inside the run-to-run noise
    board = judge(EIGHT_M, claims(runs_of("rec", RECORD, "2026-01-01") + runs_of("slight", slightly, "2026-01-02")))
    verdict = board.verdicts[1]
    p = scipy_p(slightly, RECORD)
    assert not verdict.accepted and 0.01 < p < 0.5
    assert verdict.reason.startswith(f"not clearly lower: p = {p:.2g} >= 0.01")


def test_invalid_runs_do_not_count_and_are_named():
    runs = runs_of("rec", RECORD, "2026-01-01")
    bad = runs_of("bad", FASTER, "2026-01-02")
    bad[0] = Run(**{**bad[0].__dict__, "metrics": {**bad[0].metrics, "diverged": 1.0}})
    bad[1] = Run(**{**bad[1].__dict__, "metrics": {**bad[1].metrics, "tokens": 4_005_888}})
    board = judge(EIGHT_M, claims(runs + bad))
    verdict = board.verdicts[1]
    assert not verdict.accepted and len(verdict.valid) == 3
    assert verdict.reason.startswith("3 valid runs; the track needs 5")
    assert verdict.invalid == ("bad-0: diverged", "bad-1: trained 4,005,888 tokens of the track's 8,011,776")
    # A budget counts to the last whole step of the run's batch, not past it.
    short_step = Run(**{**bad[2].__dict__, "metrics": {**bad[2].metrics, "tokens": 8_011_776 - 16_383}})
    assert invalid_reason(EIGHT_M, short_step) is None
    one_step_short = Run(**{**bad[2].__dict__, "metrics": {**bad[2].metrics, "tokens": 8_011_776 - 16_384}})
    assert invalid_reason(EIGHT_M, one_step_short).startswith("trained 7,995,392 tokens")


def test_target_tracks_count_only_runs_that_reached_their_target():
    loss45 = TRACKS["loss-4.5"]
    reached = Run("a", "loss-4.5", "c", metrics={"target_time_s": 120.0, "target_tokens": 12e6}, target_train_loss=4.5,
                  flops_per_token=1e9)
    assert invalid_reason(loss45, reached) is None and reached.model_flops == 1e9 * 12e6
    missed = Run("b", "loss-4.5", "c", metrics={"tokens": 20e6}, target_train_loss=4.5)
    assert invalid_reason(loss45, missed) == "did not reach train loss 4.5"
    other = Run("c", "loss-4.5", "c", metrics={"target_time_s": 60.0}, target_train_loss=5.0)
    assert invalid_reason(loss45, other) == "its target train loss was 5.0, not 4.5"
    stopped = Run("d", "8m", "c", metrics={"active_time_s": 60.0, "tokens": 4e6}, target_train_loss=4.5)
    assert "stopped at a target train loss" in invalid_reason(EIGHT_M, stopped)


def test_times_compare_only_on_the_same_hardware_unless_the_claim_brings_its_baseline():
    record = runs_of("rec", RECORD, "2026-01-01", hardware=RTX)
    elsewhere = runs_of("h100", [t / 2 for t in RECORD], "2026-01-02", hardware=H100)
    board = judge(EIGHT_M, claims(record + elsewhere))
    assert not board.verdicts[1].accepted
    assert board.verdicts[1].reason.startswith("ran on NVIDIA H100 80GB HBM3 but record #1 on NVIDIA GeForce RTX 4090")
    assert "--ab" in board.verdicts[1].reason

    # An A/B on the H100: the candidate against its own baseline arm, measured on the same pool.
    baseline = runs_of("ab", [44.30, 44.21, 44.35, 44.28, 44.25], "2026-01-03", hardware=H100, arm=BASELINE)
    candidate = runs_of("ab", [43.20, 43.31, 43.12, 43.25, 43.18], "2026-01-03", hardware=H100)
    board = judge(EIGHT_M, claims(record + elsewhere + baseline + candidate))
    ab = board.verdicts[2]
    assert ab.accepted and ab.number == 2 and ab.against == "its baseline arm (5 runs on the same pool)"
    assert ab.test.p == pytest.approx(scipy_p([r.value("active_time_s") for r in candidate],
                                              [r.value("active_time_s") for r in baseline]), rel=1e-12)
    # A loss is not a time: a claim on a loss track compares across hardware.
    assert not TRACKS["1b"].hardware_bound and EIGHT_M.hardware_bound


def test_an_ab_of_a_config_against_itself_is_refused_even_as_a_first_record():
    same = [88.40, 88.52, 88.31, 88.47, 88.36]
    board = judge(EIGHT_M, claims(runs_of("aa", RECORD, arm=BASELINE) + runs_of("aa", same)))
    assert not board.verdicts[0].accepted and board.records == []
    assert board.verdicts[0].reason.startswith(f"not clearly lower: p = {scipy_p(same, RECORD):.2g}")


def test_unsubmitted_runs_and_unknown_tracks_stay_off_the_board():
    runs = runs_of("rec", RECORD) + runs_of("draft", FASTER, submitted=None)
    runs += [Run("x", "loss-6", "other", submitted="2026-01-01", metrics={"target_time_s": 1.0})]
    boards, unknown = build(runs)
    assert [b.track.name for b in boards][:6] == ["8m", "20m", "100m", "loss-4.5", "loss-3.5", "1b"]
    assert [v.claim.id for v in boards[0].verdicts] == ["rec"] and unknown == {"loss-6": 1}


def test_markdown_lists_records_with_their_repeatability_and_refusals_with_reasons():
    runs = runs_of("first", RECORD, "2026-01-01T10:00:00Z") + runs_of("faster", FASTER, "2026-01-03T10:00:00Z")
    runs += runs_of("slower", [90.0, 90.2, 90.1, 89.9, 90.3], "2026-01-04T10:00:00Z")
    runs[5:10] = [Run(**{**r.__dict__, "notes": "a | b"}) for r in runs[5:10]]
    boards, unknown = build(runs, only=["8m"])
    text = render(boards, "MLflow experiment `speedrun`", "2026-01-05", unknown)
    assert text.startswith("# Speedrun leaderboard\n")
    rows = [line for line in text.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(rows) == 2
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[:6] == ["1", "2026-01-01", "4.7400", "4.8400", format_seconds(float(np.mean(RECORD))), "8,011,776"]
    assert cells[6] == f"{6 * 88e6 * 8_011_776:.3e}" and cells[7:9] == ["ada", "notes of first"]
    assert cells[9] == "NVIDIA GeForce RTX 4090, torch 2.5.1, CUDA 12.4" and cells[10] == "0123456789"
    assert cells[11] == (f"n = 5, mean {format_seconds(np.mean(RECORD))}, std {format_seconds(np.std(RECORD, ddof=1))}")
    assert "a \\| b" in rows[1]  # a pipe in the notes does not break the table
    assert f"one-sided Welch p = {scipy_p(FASTER, RECORD):.2g}" in text
    refused = text.split("Refused claims:")[1]
    assert "`slower`" in refused and "not clearly lower" in refused


def test_times_are_written_as_the_lab_writes_them():
    assert format_seconds(88.664) == "1m 28s 664ms"
    assert format_seconds(12.3456) == "12s 346ms"
    assert format_seconds(2 * 3600 + 43 * 60 + 5.4) == "2h 43m 5s"
    assert format_seconds(59.9996) == "1m 0s 0ms"


# MLflow: a SQLite store in tmp_path, written the way the speedrun study and its tracker write it.

def log_run(client, experiment_id, run_tags, final, params, name):
    run = client.create_run(experiment_id, run_name=name)
    now = 0
    client.log_batch(run.info.run_id, metrics=[Metric(f"final/{k}", v, now, 0) for k, v in final.items()],
                     params=[Param(k, str(v)) for k, v in params.items()],
                     tags=[RunTag(k, v) for k, v in run_tags.items()])
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def hardware_tags(gpu="none", cpu="AMD EPYC 7B13"):
    return {"hardware.gpu": gpu, "hardware.cpu": cpu, "hardware.torch": "2.5.1", "hardware.cuda": "none",
            "device": "cpu"}


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    return uri, client, client.create_experiment("speedrun")


def submit_claim(client, experiment_id, claim, losses, arm=CANDIDATE, submitted="2026-01-01T00:00:00Z"):
    for seed, loss in enumerate(losses):
        run_tags = {tags.TRACK_TAG: "cpu-loss", tags.CLAIM_TAG: claim, tags.ARM_TAG: arm, tags.AUTHOR_TAG: "ada",
                    tags.NOTES_TAG: f"{claim} notes", tags.COMMIT_TAG: "abc1234", tags.FLOPS_TAG: "12198144.0",
                    **hardware_tags()}
        if submitted:
            run_tags[tags.SUBMITTED_TAG] = submitted
        log_run(client, experiment_id, run_tags,
                {"val_loss": loss, "train_loss": loss + 0.05, "tokens": 409_600, "active_time_s": 100.0 + seed,
                 "diverged": 0.0},
                {"train.seed": seed, "train.target_train_loss": None, "batch_tokens": 2048}, f"{claim}-{seed}")


def test_blueberry_board_reads_tagged_runs_and_writes_markdown_and_an_artifact(store, tmp_path, capsys):
    uri, client, experiment_id = store
    first = [5.30, 5.31, 5.29, 5.32, 5.30]
    better = [5.10, 5.12, 5.11, 5.09, 5.10]
    submit_claim(client, experiment_id, "first", first, submitted="2026-01-01T00:00:00Z")
    submit_claim(client, experiment_id, "better", better, submitted="2026-01-02T00:00:00Z")
    submit_claim(client, experiment_id, "draft", [4.0] * 5, submitted=None)  # tagged, never submitted
    out = tmp_path / "docs" / "LEADERBOARD.md"
    out.parent.mkdir()
    assert board_cli.main(["--tracking-uri", uri, "--experiment", "speedrun", "--out", str(out)]) == 0
    assert "cpu-loss 2" in capsys.readouterr().out
    text = out.read_text()
    section = text.split("## cpu-loss")[1]
    assert "| 1 | 2026-01-01 | 5.3540 | 5.3040 |" in section and "| 2 | 2026-01-02 | 5.1540 | 5.1040 |" in section
    assert f"p = {stats.ttest_ind(better, first, equal_var=False, alternative='less').pvalue:.2g}" in section
    assert "CPU AMD EPYC 7B13, torch 2.5.1" in section and "`draft`" not in text

    board_runs = client.search_runs([experiment_id], filter_string=f"tags.`{KIND_TAG}` = '{BOARD_KIND}'")
    assert len(board_runs) == 1
    artifact = client.download_artifacts(board_runs[0].info.run_id, ARTIFACT, str(tmp_path))
    assert open(artifact).read() == text
    # Published again: the same leaderboard run, its artifact replaced.
    assert board_cli.main(["--tracking-uri", uri, "--out", "-", "--track", "cpu-loss"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# Speedrun leaderboard") and "## 8m" not in printed
    assert len(client.search_runs([experiment_id], filter_string=f"tags.`{KIND_TAG}` = '{BOARD_KIND}'")) == 1


def test_runs_read_back_with_their_hardware_even_from_before_the_hardware_tags(store):
    uri, client, experiment_id = store
    old = log_run(client, experiment_id, {tags.TRACK_TAG: "8m", tags.CLAIM_TAG: "c", "device": "NVIDIA RTX A6000",
                                          "git_commit": "feedbeef"},
                  {"active_time_s": 90.0, "tokens": 8_011_776, "diverged": 0.0},
                  {"train.seed": 3, "train.target_train_loss": 4.5, "batch_tokens": 16384}, "old")
    (run,) = read_runs(client, experiment_id)
    assert run.run_id == old and run.hardware.gpu == "NVIDIA RTX A6000" and run.hardware.cpu == "unknown"
    assert run.commit == "feedbeef" and run.seed == 3 and run.target_train_loss == 4.5 and run.batch_tokens == 16384
    assert run.metrics["active_time_s"] == 90.0 and run.submitted is None


def test_record_claim_tags_each_run_by_arm_and_keeps_the_first_submission_time(store):
    uri, client, experiment_id = store
    base = RunConfig(tiny(), TrainConfig(train_tokens=409_600, batch_size=8))
    points = [(arm, {"train.muon_lr": lr, "train.seed": seed})
              for seed, (arm, lr) in enumerate([(BASELINE, 0.015), (CANDIDATE, 0.024)] * 2)]
    rows = []
    for (arm, point), loss in zip(points, [5.3, 5.1, 5.31, 5.12]):
        run_id = log_run(client, experiment_id, hardware_tags(), {"val_loss": loss, "tokens": 409_600, "diverged": 0.0},
                         {"train.seed": point["train.seed"], "batch_tokens": 2048}, str(point))
        rows.append({"mlflow_run_id": run_id, **point})
    track = TRACKS["cpu-loss"]
    result = record_claim(client, experiment_id, rows, base, track, points, "claim-1", "ada",
                          {CANDIDATE: "higher lr"}, submit=True)
    assert [r.value("val_loss") for r in result.arms[BASELINE]] == [5.3, 5.31]
    assert [r.value("val_loss") for r in result.arms[CANDIDATE]] == [5.1, 5.12]
    assert not result.verdict.accepted and result.verdict.reason.startswith("2 valid runs; the track needs 5")
    tagged = {r.info.run_id: r.data.tags for r in client.search_runs([experiment_id])}
    first_times = {run_id: t[tags.SUBMITTED_TAG] for run_id, t in tagged.items()}
    for row, (arm, point) in zip(rows, points):
        run_tags = tagged[row["mlflow_run_id"]]
        assert run_tags[tags.ARM_TAG] == arm and run_tags[tags.CLAIM_TAG] == "claim-1"
        assert run_tags[tags.TRACK_TAG] == "cpu-loss" and run_tags[tags.AUTHOR_TAG] == "ada"
        assert run_tags[tags.NOTES_TAG] == ("higher lr" if arm == CANDIDATE else "")
        assert float(run_tags[tags.FLOPS_TAG]) == pytest.approx(12_198_144)  # tiny's 6N + attention per token
        assert run_tags[tags.OVERRIDES_TAG] == f'{{"train.muon_lr": {point["train.muon_lr"]}}}'
    record_claim(client, experiment_id, rows, base, track, points, "claim-1", "ada", {}, submit=True)
    again = {r.info.run_id: r.data.tags[tags.SUBMITTED_TAG] for r in client.search_runs([experiment_id])}
    assert again == first_times  # submitting the same claim again does not move it on the board


def refused(argv, capsys) -> str:
    assert board_cli.main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("blueberry-board: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert captured.out == ""
    return err


def test_bad_input_is_one_line_with_exit_status_2(store, tmp_path, capsys):
    uri, client, experiment_id = store
    base = ["--tracking-uri", uri]
    assert "experiment 'nope' does not exist" in refused([*base, "--experiment", "nope", "--out", "-"], capsys)
    assert "has no runs tagged with a speedrun track" in refused([*base, "--out", "-"], capsys)
    submit_claim(client, experiment_id, "draft", [5.0, 5.1], submitted=None)
    assert "has 2 speedrun runs but none submitted" in refused([*base, "--out", "-"], capsys)
    assert "unknown track 'fastest'" in refused([*base, "--track", "fastest"], capsys)
    assert "directory missing does not exist" in refused([*base, "--out", "missing/LEADERBOARD.md"], capsys)
    (tmp_path / "adir").mkdir()
    assert "is a directory" in refused([*base, "--out", "adir"], capsys)
    assert "unknown scheme 'bogus'" in refused(["--tracking-uri", "bogus://x", "--out", "-"], capsys)
    assert "expected a non-empty name" in refused([*base, "--experiment", " "], capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "mlflow.db"]  # nothing written by a refusal
