"""cluster/: a real Ray head with token auth and a real MLflow server, both started by the project's
scripts on loopback. A study submitted with `ray job submit` lands in MLflow with every trial; requests
without the Ray token or an MLflow login are refused; every port the head opens is on loopback or in
the one pinned range the documented firewall rule closes; the MLflow UI, rendered by headless
Chromium, shows the trial runs; `stop` ends every process its `start` started and nothing else, even
processes that name the head's directory; a shared temp dir or a password file others can read is
refused before anything starts."""

import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
RAY_RANGE = 200  # ray-head.sh puts every port but the dashboard in RAY_PORT .. RAY_PORT+199


def starts_ray(test):
    return pytest.mark.ray(pytest.mark.slow(test))


def free_port_block(size: int, start: int = 31000) -> int:
    """A base port with `size` consecutive free ports above it."""
    for base in range(start, 60000, 997):
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


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def clean_env(**settings: str) -> dict[str, str]:
    """This environment with the venv's scripts first, no ambient Ray or MLflow settings, and `settings`."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for var in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_URI",
                "MLFLOW_AUTH", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD_FILE",
                "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(var, None)
    return env | settings


def script(name: str, action: str, env: dict, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "cluster" / name), action], env=env, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def private_ray_tmpdir() -> Path:
    """A RAY_TMPDIR that does not exist yet (the script creates it), short enough for Ray's socket paths."""
    return Path(tempfile.mkdtemp(prefix="bb-", dir="/tmp")) / "r"


def service_processes(port: int) -> list[psutil.Process]:
    """Every process of the service listening on `port`, found without the scripts' records: the
    listener's session (the scripts start each service in one) and the descendants of its members."""
    pids = {c.pid for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    assert pids, f"nothing listens on {port}"
    sid = os.getsid(pids.pop())
    procs = {}
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid:
                procs[p.pid] = p
                procs |= {c.pid: c for c in p.children(recursive=True)}
        except (psutil.Error, ProcessLookupError):
            pass
    return list(procs.values())


def listening(procs: list[psutil.Process]) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket and bound UDP socket of `procs`."""
    names = {}
    for p in procs:
        try:
            names[p.pid] = p.name()
        except psutil.Error:
            pass
    return [(names[c.pid], c.laddr.ip, c.laddr.port) for c in psutil.net_connections("inet")
            if c.pid in names and (c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and not c.raddr))]


def wait_listening(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in psutil.net_connections("inet")):
        assert time.monotonic() < deadline, f"nothing listens on {port} after {timeout} s"
        time.sleep(0.5)


def still_running(procs: list[psutil.Process]) -> list[int]:
    """The PIDs of `procs` still running (is_running compares start times: a reused PID is not ours)."""
    left = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    return left


def ray_env(root: Path, base: int, temp_dir: Path) -> dict[str, str]:
    return clean_env(BLUEBERRY_RAY_DIR=str(root / "ray-state"), RAY_PORT=str(base), RAY_DASHBOARD_PORT=str(base + 300),
                     RAY_NUM_CPUS="2", RAY_TMPDIR=str(temp_dir))


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    ray_base = free_port_block(RAY_RANGE)
    env = ray_env(root, ray_base, private_ray_tmpdir())
    env |= {"MLFLOW_DIR": str(root / "mlflow"), "MLFLOW_PORT": str(ray_base + 301)}
    ray_procs, mlflow_procs = [], []
    try:
        script("ray-head.sh", "start", env).check_returncode()
        script("mlflow-server.sh", "start", env).check_returncode()
        yield env
    finally:
        for port, procs in ((ray_base, ray_procs), (ray_base + 301, mlflow_procs)):
            try:
                procs += service_processes(port)
            except AssertionError:
                pass
        script("mlflow-server.sh", "stop", env, timeout=60)
        script("ray-head.sh", "stop", env, timeout=60)
        shutil.rmtree(Path(env["RAY_TMPDIR"]).parent, ignore_errors=True)
    # Cleanup is part of the contract: nothing of either server may survive the stop commands.
    assert not still_running(ray_procs), "Ray processes left running"
    assert not still_running(mlflow_procs), "MLflow processes left running"


def token_env(env):
    token = Path(env["BLUEBERRY_RAY_DIR"]) / "auth_token"
    return {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


def dashboard(env):
    return f"http://127.0.0.1:{env['RAY_DASHBOARD_PORT']}"


def mlflow_uri(env):
    return f"http://127.0.0.1:{env['MLFLOW_PORT']}"


@starts_ray
def test_token_file_is_owner_only(servers):
    token = Path(servers["BLUEBERRY_RAY_DIR"]) / "auth_token"
    assert oct(token.stat().st_mode & 0o777) == "0o600" and len(token.read_text().strip()) == 64


@starts_ray
def test_dashboard_and_mlflow_listen_on_loopback_only(servers):
    ip = non_loopback_ip()
    if ip is None:
        pytest.skip("this machine has no non-loopback address to probe")
    for port in (servers["RAY_DASHBOARD_PORT"], servers["MLFLOW_PORT"]):
        with pytest.raises(OSError):
            socket.create_connection((ip, int(port)), timeout=2).close()
        socket.create_connection(("127.0.0.1", int(port)), timeout=2).close()


@starts_ray
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
    probe = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address='127.0.0.1:{servers['RAY_PORT']}')"],
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


@starts_ray
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


@starts_ray
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


# Every port the head opens: reachable from other machines only inside the pinned range.


@starts_ray
def test_every_port_the_head_opens_is_loopback_or_in_the_pinned_range(servers):
    base = int(servers["RAY_PORT"])
    for port in (base + 3, base + 5, base + 8, base + 9):  # agents and metrics servers come up after `ray start`
        wait_listening(port, timeout=30)
    sockets = listening(service_processes(base))
    outside = [s for s in sockets if not is_loopback(s[1]) and not base <= s[2] < base + RAY_RANGE]
    assert len(sockets) >= 10 and not outside, f"open to other machines outside {base}-{base + RAY_RANGE - 1}: {outside}"


# The head's temp dir: private, and a shared one is refused.


@starts_ray
def test_ray_temp_dir_is_created_private(servers):
    temp_dir = Path(servers["RAY_TMPDIR"]).stat()
    assert temp_dir.st_uid == os.getuid() and oct(temp_dir.st_mode & 0o777) == "0o700"


@pytest.mark.parametrize("kind", ["world-writable", "another user's"])
def test_ray_head_refuses_a_temp_dir_others_control(tmp_path, kind):
    if kind == "world-writable":
        temp_dir = tmp_path / "shared"
        temp_dir.mkdir()
        temp_dir.chmod(0o1777)
    elif os.geteuid() == 0:
        temp_dir = tmp_path / "theirs"
        temp_dir.mkdir(mode=0o700)
        os.chown(temp_dir, 65534, 65534)
    else:
        temp_dir = Path("/")  # root's
    env = ray_env(tmp_path, free_port_block(RAY_RANGE, 41000), temp_dir)
    record = Path(env["BLUEBERRY_RAY_DIR"]) / "head.pids"
    try:
        done = script("ray-head.sh", "start", env)
    finally:
        if record.exists():
            script("ray-head.sh", "stop", env)
    assert done.returncode == 2 and not record.exists()
    assert done.stdout == "" and len(done.stderr.splitlines()) == 1 and str(temp_dir) in done.stderr


# `stop`: every process the head started, and no other.


def stat_start_ticks(pid: int) -> int:
    """Field 22 of /proc/PID/stat: the process's start time, in clock ticks since boot."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def sleeper(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *argv])


def test_stop_signals_no_process_it_did_not_start(tmp_path):
    env = ray_env(tmp_path, free_port_block(RAY_RANGE, 41000), tmp_path / "ray-tmp")
    state = Path(env["BLUEBERRY_RAY_DIR"])
    state.mkdir(mode=0o700)
    # A process naming the head's temp dir, whose PID the record holds with another start time: as when
    # the head has ended and the kernel has given its PID to someone else.
    decoy = sleeper(env["RAY_TMPDIR"])
    try:
        (state / "head.pids").write_text(f"{decoy.pid} {stat_start_ticks(decoy.pid) + 1} gcs_server\n")
        done = script("ray-head.sh", "stop", env)
        time.sleep(0.5)
        assert decoy.poll() is None, "stop signalled a process the head did not start"
    finally:
        decoy.kill()
        decoy.wait()
    assert done.returncode == 0 and "nothing to stop" in done.stdout


@starts_ray
def test_stop_ends_every_process_of_the_head_and_no_other(tmp_path):
    base = free_port_block(RAY_RANGE, 41000)
    env = ray_env(tmp_path, base, private_ray_tmpdir()) | {"RAY_NUM_CPUS": "1"}
    decoy = None
    try:
        script("ray-head.sh", "start", env).check_returncode()
        # The agents and the Ray Client server are still starting when `ray start` returns.
        for port in (base + 3, base + 5, base + 7):
            wait_listening(port, timeout=30)
        head = service_processes(base)
        decoy = sleeper(env["RAY_TMPDIR"])
        stopped = script("ray-head.sh", "stop", env, timeout=60)
        again = script("ray-head.sh", "stop", env, timeout=60)
        assert decoy.poll() is None, "stop killed a process that merely names the head's temp dir"
    finally:
        if decoy is not None:
            decoy.kill()
            decoy.wait()
        script("ray-head.sh", "stop", env, timeout=60)
        shutil.rmtree(Path(env["RAY_TMPDIR"]).parent, ignore_errors=True)
    assert stopped.returncode == 0 and stopped.stdout.startswith("Ray head stopped: "), stopped.stdout + stopped.stderr
    assert all(str(p.pid) in stopped.stdout for p in head), "stop does not list what it stopped"
    assert not still_running(head), "head processes left running"
    head_ports = {*range(base, base + RAY_RANGE), base + 300}
    open_ports = [c.laddr for c in psutil.net_connections("inet")
                  if c.status == psutil.CONN_LISTEN and c.laddr.port in head_ports]
    assert not open_ports, f"still listening after stop: {open_ports}"
    assert again.returncode == 0 and "nothing to stop" in again.stdout


# MLflow with a login (MLFLOW_AUTH=1).


def basic_auth(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + b64encode(f"{user}:{password}".encode()).decode()}


def http_status(url: str, headers: dict | None = None, body: dict | None = None) -> int:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        return urllib.request.urlopen(request, timeout=30).status
    except urllib.error.HTTPError as refused:
        return refused.code


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-auth")
    elsewhere = root / "cwd"  # the server starts here; its state must not land here
    elsewhere.mkdir()
    env = clean_env(MLFLOW_DIR=str(root / "mlflow"), MLFLOW_PORT=str(free_port_block(1, 42000)), MLFLOW_AUTH="1")
    procs = []
    try:
        started = script("mlflow-server.sh", "start", env, cwd=elsewhere)
        assert started.returncode == 0, started.stdout + started.stderr
        yield env | {"CWD": str(elsewhere)}
    finally:
        try:
            procs = service_processes(int(env["MLFLOW_PORT"]))
        except AssertionError:
            pass
        script("mlflow-server.sh", "stop", env, timeout=60)
    assert not still_running(procs), "MLflow processes left running"


def admin_password(env) -> str:
    return (Path(env["MLFLOW_DIR"]) / "admin_password").read_text().strip()


@pytest.mark.slow
def test_mlflow_login_refuses_anonymous_and_wrong_passwords(auth_server):
    uri = mlflow_uri(auth_server)
    api = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert http_status(api) == 401
    assert http_status(f"{uri}/") == 401  # the UI as well
    assert http_status(api, basic_auth("admin", admin_password(auth_server) + "x")) == 401
    assert http_status(api, basic_auth("admin", admin_password(auth_server))) == 200


@pytest.mark.slow
def test_a_user_with_a_password_logs_runs(auth_server, monkeypatch):
    uri = mlflow_uri(auth_server)
    admin = basic_auth("admin", admin_password(auth_server))
    user = {"username": "trainer", "password": "a-long-trainer-password"}
    assert http_status(f"{uri}/api/2.0/mlflow/users/create", admin, user) == 200
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user["username"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", user["password"])
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("login-check"))
    client.log_metric(run.info.run_id, "val/loss", 1.5)
    assert client.get_run(run.info.run_id).data.metrics == {"val/loss": 1.5}
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    with pytest.raises(MlflowException, match="401"):
        MlflowClient(uri).get_run(run.info.run_id)


@pytest.mark.slow
def test_mlflow_login_state_lives_beside_the_server_on_loopback(auth_server):
    state = Path(auth_server["MLFLOW_DIR"])
    assert (state / "basic_auth.db").stat().st_size > 0
    assert not list(Path(auth_server["CWD"]).iterdir()), "MLflow wrote state into the working directory"
    for secret in ("admin_password", "flask_secret_key"):
        assert oct((state / secret).stat().st_mode & 0o777) == "0o600"
    ip = non_loopback_ip()
    if ip is not None:
        with pytest.raises(OSError):
            socket.create_connection((ip, int(auth_server["MLFLOW_PORT"])), timeout=2).close()


def test_mlflow_refuses_an_admin_password_file_others_can_read(tmp_path):
    password = tmp_path / "password"
    password.write_text("a-long-enough-password\n")
    password.chmod(0o644)
    env = clean_env(MLFLOW_DIR=str(tmp_path / "mlflow"), MLFLOW_PORT=str(free_port_block(1, 43000)), MLFLOW_AUTH="1",
                    MLFLOW_AUTH_ADMIN_PASSWORD_FILE=str(password))
    try:
        done = script("mlflow-server.sh", "start", env)
    finally:
        script("mlflow-server.sh", "stop", env)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
    assert str(password) in done.stderr and "readable by others" in done.stderr
