"""cluster/: a real Ray head with token auth and a real MLflow server, both started by the project's
scripts on loopback. A study submitted with `ray job submit` lands in MLflow with every trial; requests
without the token are refused; the MLflow UI, rendered by headless Chromium, shows the trial runs;
nothing is left running afterwards, even when a test fails."""

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient

pytestmark = [pytest.mark.ray, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"


def free_port_block(size: int) -> int:
    """A base port with `size` consecutive free ports above it."""
    for base in range(31000, 60000, 997):
        ports = range(base, base + size)
        try:
            sockets = [socket.create_server(("0.0.0.0", p)) for p in ports]
        except OSError:
            continue
        for s in sockets:
            s.close()
        return base
    raise RuntimeError("no free port block")


def non_loopback_ip() -> str | None:
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return a.address
    return None


def processes_mentioning(text: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if text in " ".join(p.info["cmdline"] or [])]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    ray_base = free_port_block(200)
    env = {**os.environ, "PATH": f"{Path(os.sys.executable).parent}:{os.environ['PATH']}",
           "BLUEBERRY_RAY_DIR": str(root / "ray-state"), "RAY_PORT": str(ray_base),
           "RAY_DASHBOARD_PORT": str(ray_base + 300), "RAY_NUM_CPUS": "2", "RAY_TMPDIR": f"/tmp/bb-test-{ray_base}",
           "MLFLOW_DIR": str(root / "mlflow"), "MLFLOW_PORT": str(ray_base + 301)}
    for var in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_URI"):
        env.pop(var, None)
    try:
        subprocess.run([str(REPO / "cluster" / "ray-head.sh"), "start"], env=env, check=True, capture_output=True,
                       timeout=120)
        subprocess.run([str(REPO / "cluster" / "mlflow-server.sh"), "start"], env=env, check=True,
                       capture_output=True, timeout=120)
        yield env
    finally:
        subprocess.run([str(REPO / "cluster" / "mlflow-server.sh"), "stop"], env=env, capture_output=True, timeout=60)
        subprocess.run([str(REPO / "cluster" / "ray-head.sh"), "stop"], env=env, capture_output=True, timeout=60)
    # Cleanup is part of the contract: nothing of either server may survive the stop commands.
    time.sleep(2)
    assert not processes_mentioning(env["RAY_TMPDIR"]), "Ray processes left running"
    assert not processes_mentioning(env["MLFLOW_DIR"]), "MLflow processes left running"


def token_env(env):
    token = Path(env["BLUEBERRY_RAY_DIR"]) / "auth_token"
    return {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


def dashboard(env):
    return f"http://127.0.0.1:{env['RAY_DASHBOARD_PORT']}"


def mlflow_uri(env):
    return f"http://127.0.0.1:{env['MLFLOW_PORT']}"


def test_token_file_is_owner_only(servers):
    token = Path(servers["BLUEBERRY_RAY_DIR"]) / "auth_token"
    assert oct(token.stat().st_mode & 0o777) == "0o600" and len(token.read_text().strip()) == 64


def test_dashboard_and_mlflow_listen_on_loopback_only(servers):
    ip = non_loopback_ip()
    if ip is None:
        pytest.skip("this machine has no non-loopback address to probe")
    for port in (servers["RAY_DASHBOARD_PORT"], servers["MLFLOW_PORT"]):
        with pytest.raises(OSError):
            socket.create_connection((ip, int(port)), timeout=2).close()
        socket.create_connection(("127.0.0.1", int(port)), timeout=2).close()


def test_requests_without_the_token_are_refused(servers):
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{dashboard(servers)}/api/jobs/", timeout=10)
    assert refused.value.code == 401
    token = (Path(servers["BLUEBERRY_RAY_DIR"]) / "auth_token").read_text().strip()
    request = urllib.request.Request(f"{dashboard(servers)}/api/jobs/", headers={"Authorization": f"Bearer {token}"})
    assert urllib.request.urlopen(request, timeout=10).status == 200
    no_token = {k: v for k, v in servers.items() if not k.startswith("RAY_AUTH")}
    submit = subprocess.run(["ray", "job", "submit", "--address", dashboard(servers), "--", "echo", "hello"],
                            env={**no_token, "RAY_AUTH_MODE": "disabled", "HOME": "/nonexistent"},
                            capture_output=True, text=True, timeout=60)
    assert submit.returncode != 0 and "hello" not in submit.stdout
    # The core services the dashboard does not front refuse an unauthenticated driver too.
    probe = subprocess.run([os.sys.executable, "-c", f"import ray; ray.init(address='127.0.0.1:{servers['RAY_PORT']}')"],
                           env={**no_token, "RAY_AUTH_MODE": "disabled", "HOME": "/nonexistent"},
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode != 0 and "Authentication token is missing or incorrect" in probe.stderr


def submit_study(env, storage):
    argv = ["ray", "job", "submit", "--address", dashboard(env), "--working-dir", str(REPO), "--",
            "python", "studies/lr_sweep.py", "--smoke", "--name", "cluster-smoke", "--storage", str(storage),
            "--tracking-uri", mlflow_uri(env)]
    for _ in range(30):  # the job agent takes a few seconds to come up after the head
        done = subprocess.run(argv, env=token_env(env), capture_output=True, text=True, timeout=600)
        if "No available agent" not in done.stdout + done.stderr:
            return done
        time.sleep(2)
    return done


@pytest.fixture(scope="module")
def study(servers, tmp_path_factory):
    done = submit_study(servers, tmp_path_factory.mktemp("storage"))
    assert done.returncode == 0 and "succeeded" in done.stdout, (done.stdout[-3000:], done.stderr[-3000:])
    return done


def test_submitted_study_lands_in_the_tracking_server(servers, study):
    client = MlflowClient(mlflow_uri(servers))
    experiment = client.get_experiment_by_name("lr_sweep")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`blueberry.study` = 'cluster-smoke'")
    parents = [r for r in runs if r.data.tags["blueberry.kind"] == "study"]
    trials = [r for r in runs if r.data.tags["blueberry.kind"] == "trial"]
    assert len(parents) == 1 and len(trials) == 4
    assert {a.path for a in client.list_artifacts(parents[0].info.run_id)} >= {"trials.csv", "best_config.json"}
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert "train.muon_lr" in run.data.params and "val/loss" in run.data.metrics


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    return path


def render(url: str, screenshot: Path, expect: str) -> str:
    """The page's visible text once it contains `expect` (three tries: the UI fetches its data after
    loading), with a screenshot and the DOM kept beside each other in test-artifacts/."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={screenshot.parent / ('.chromium-' + screenshot.stem)}", "--virtual-time-budget=30000",
             "--window-size=1600,1000"]
    text = ""
    for _ in range(3):
        subprocess.run([chromium(), *flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=120)
        dom = subprocess.run([chromium(), *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
        screenshot.with_suffix(".html").write_text(dom)
        text = " ".join(re.sub(r"<!--.*?-->|<[^>]+>", " ", dom).split())
        if expect in text:
            break
    return text


def test_mlflow_ui_shows_the_study_runs(servers, study):
    client = MlflowClient(mlflow_uri(servers))
    experiment = client.get_experiment_by_name("lr_sweep")
    trials = client.search_runs([experiment.experiment_id], filter_string="tags.`blueberry.kind` = 'trial'")
    ARTIFACTS.mkdir(exist_ok=True)
    # MLflow 3 opens experiments in its GenAI view unless asked for the model-training one.
    page = render(f"{mlflow_uri(servers)}/#/experiments/{experiment.experiment_id}?workflowType=machine_learning",
                  ARTIFACTS / "mlflow-experiment.png", expect="cluster-smoke")
    assert (ARTIFACTS / "mlflow-experiment.png").stat().st_size > 10_000
    # The runs table: the study's parent run, with its four trials nested under it (five runs in all).
    assert "cluster-smoke" in page and "5 matching runs" in page, "the experiment page lists no runs"
    run_ids = json.dumps([r.info.run_id for r in trials])
    compare = render(f"{mlflow_uri(servers)}/#/compare-runs?runs={run_ids}&experiments=[\"{experiment.experiment_id}\"]",
                     ARTIFACTS / "mlflow-compare-runs.png", expect="Comparing 4 Runs")
    assert "Comparing 4 Runs" in compare
    assert all(r.info.run_name in compare for r in trials), "the comparison does not show every trial"
