"""MLflow for a team: `mlflow server` on a real PostgreSQL with proxied artifacts; stages log to it over
HTTP exactly as they log to the default SQLite file. And tracking that loses nothing (issue 15) against real
servers, on SQLite and on PostgreSQL: a server killed mid-run, a stage without a route to the server; after
mlflow-sync every value logged is there, once."""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, free_port, pipeline_cli, require

pytestmark = pytest.mark.slow
PG_BIN = next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin"))), None)


def _as_postgres(cmd: str) -> None:
    subprocess.run(["su", "postgres", "-s", "/bin/bash", "-c", cmd], check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A throw-away PostgreSQL cluster (Debian's postgresql; .ci/run installs it), one database."""
    require(os.geteuid() == 0, "the PostgreSQL test cluster is started as the postgres user, which needs root")
    require(PG_BIN is not None, "PostgreSQL is not installed (apt-get install postgresql; .ci/run does)")
    root = Path(tempfile.mkdtemp(prefix="pipeline-pg-"))
    shutil.chown(root, "postgres")
    port = free_port()
    data = root / "data"
    _as_postgres(f"{PG_BIN}/initdb -D {data} -A trust -U postgres")
    _as_postgres(
        f"{PG_BIN}/pg_ctl -D {data} -l {root}/log -w start -o '-p {port} -k {root} -c listen_addresses=127.0.0.1'"
    )
    try:
        _as_postgres(f"{PG_BIN}/createdb -h 127.0.0.1 -p {port} -U postgres mlflow")
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        _as_postgres(f"{PG_BIN}/pg_ctl -D {data} -m fast stop")
        shutil.rmtree(root, ignore_errors=True)


class Server:
    """A real ``mlflow server`` on ``backend`` with proxied artifacts, on a fixed port, that a test can kill
    (SIGKILL to its process group: a crash) and start again on the same port and store. ``app`` and ``env``: an
    ``--app-name`` (basic-auth) and the environment it needs."""

    def __init__(self, backend: str, artifacts: Path, log: Path, app: str | None = None, env: dict | None = None):
        self.backend, self.artifacts, self.log = backend, artifacts, log
        self.app, self.env = app, env or {}
        self.url = f"http://127.0.0.1:{free_port()}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        if self.proc is not None:
            return
        port = self.url.rsplit(":", 1)[1]
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", port]
        cmd += ["--backend-store-uri", self.backend, "--artifacts-destination", str(self.artifacts), "--workers", "1"]
        cmd += ["--app-name", self.app] if self.app else []
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **self.env}  # no job runner: starts faster
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, start_new_session=True)
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                pytest.fail(f"mlflow server did not come up: {self.log.read_text()[-3000:]}")
            time.sleep(1)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        self.proc.wait(timeout=60)
        self.proc = None


@pytest.fixture(scope="module")
def server(postgres: str, tmp_path_factory) -> Iterator[Server]:
    """A server on the PostgreSQL database, running at the start of each test that uses it."""
    tmp = tmp_path_factory.mktemp("pg-server")
    s = Server(postgres, tmp / "artifacts", tmp / "server.log")
    try:
        s.start()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory) -> Iterator[Server]:
    """A server on a SQLite database, started by the tests that use it (one needs its port closed first)."""
    tmp = tmp_path_factory.mktemp("sqlite-server")
    s = Server(f"sqlite:///{tmp / 'server.db'}", tmp / "artifacts", tmp / "server.log")
    try:
        yield s
    finally:
        s.stop()


def _config(tmp: Path, experiment: str, uri: str) -> Path:
    c = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    c.update({"results_dir": str(tmp / "results"), "experiment": experiment})
    c["tracking"] = {"uri": uri, "enabled": True}
    p = tmp / f"{experiment}.yaml"
    p.write_text(yaml.safe_dump(c))
    return p


def test_stages_log_to_a_postgres_backed_server(postgres: str, server: Server, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    server.start()
    url, artifacts = server.url, server.artifacts
    cfg = _config(tmp_path, "team-server", url)
    for stage in ("prepare", "normalise"):
        r = pipeline_cli(stage, "--config", str(cfg), cwd=tmp_path, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "MLflow tracking unavailable" not in r.stderr
    client = MlflowClient(tracking_uri=url)
    exp = client.get_experiment_by_name("team-server")
    assert exp is not None and exp.artifact_location.startswith("mlflow-artifacts:")  # the server's store
    parent = (tmp_path / "results" / "team-server" / "mlflow_parent_run_id").read_text().strip()
    runs = client.search_runs([exp.experiment_id])
    children = {r.data.tags["pipeline.stage"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent}
    assert set(children) == {"prepare", "normalise"}
    prep = children["prepare"]
    assert prep.info.status == "FINISHED" and prep.data.params["data.grid.resolution"] == "5.0"
    assert prep.data.metrics["bytes_written"] > 0
    names = {a.path for a in client.list_artifacts(prep.info.run_id)}
    assert {"config.json", "quicklook_regrid.png"} <= names
    # artifacts went through the server into its destination, not into the client's results folder
    assert list(artifacts.rglob("quicklook_regrid.png"))
    assert not (tmp_path / "results" / "mlartifacts").exists()
    # the runs are rows of the PostgreSQL database: parent + two stages. Asked with psql, not psycopg2:
    # psycopg2-binary's bundled OpenSSL, loaded beside the system one in this process, crashed the
    # interpreter at exit (segfault after all tests passed).
    r = subprocess.run(
        [
            f"{PG_BIN}/psql",
            postgres,
            "-tAc",
            f"select count(*) from runs where experiment_id = {int(exp.experiment_id)}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and r.stdout.strip() == "3", r.stdout + r.stderr


def _offline_client(exp_dir: Path) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{exp_dir / 'mlflow-offline' / socket.gethostname() / 'mlflow.db'}")


def _values(client: Any, run_id: str) -> dict[str, list[tuple[int, int, float]]]:
    """Every metric value of a run: key -> sorted (step, timestamp, value)."""
    keys = client.get_run(run_id).data.metrics
    return {k: sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


def test_auto_stage_without_a_route_is_complete_after_a_sync(sqlite_server: Server, tmp_path: Path) -> None:
    """The server's port is closed while the stage runs (a compute node without a route to it): the stage
    logs offline; mlflow-sync, once the server answers, makes the run complete under the experiment's parent."""
    from mlflow.tracking import MlflowClient

    sqlite_server.stop()
    cfg = _config(tmp_path, "no-route", sqlite_server.url)
    exp_dir = tmp_path / "results" / "no-route"
    r = pipeline_cli("prepare", "--config", str(cfg), cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mode auto -> offline" in r.stderr
    assert not (exp_dir / "mlflow_parent_run_id").exists()
    off = _offline_client(exp_dir)
    (logged,) = [r for r in off.search_runs([off.get_experiment_by_name("no-route").experiment_id]) if r.data.params]
    logged_values = _values(off, logged.info.run_id)

    sqlite_server.start()
    r = pipeline_cli("mlflow-sync", "--config", str(cfg), cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    client = MlflowClient(tracking_uri=sqlite_server.url)
    parent = (exp_dir / "mlflow_parent_run_id").read_text().strip()
    exp = client.get_experiment_by_name("no-route")
    (run,) = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("mlflow.parentRunId") == parent]
    assert run.data.tags["pipeline.stage"] == "prepare" and run.info.status == "FINISHED"
    assert run.info.start_time == logged.info.start_time and run.info.end_time == logged.info.end_time
    assert run.data.params == logged.data.params and run.data.params["data.grid.resolution"] == "5.0"
    found = _values(client, run.info.run_id)
    assert found == logged_values and found["bytes_written"][0][2] > 0
    print(
        f"no route: metric values logged {sum(map(len, logged_values.values()))}, found {sum(map(len, found.values()))}"
    )
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"config.json", "quicklook_regrid.png"}
    assert list(sqlite_server.artifacts.rglob("quicklook_regrid.png"))  # uploaded through the server


STEPS, PAUSE, KEYS = 60, 20, ("loss", "lr", "grad_norm")


def _train_like(uri: str, experiment: str, exp_dir: str) -> None:
    """A stage that logs metrics step by step, as training does, with system metrics, in its own process. It
    prints where its run logs, waits at step PAUSE for a line on stdin (the test kills the server meanwhile),
    and prints where its run logs at the end."""
    import logging

    from pipeline.tracking import RunTarget, stage_run

    logging.basicConfig(level=logging.INFO)
    with stage_run(RunTarget(uri, experiment, Path(exp_dir), system_metrics=0.5), "train") as run:
        print(json.dumps([run.mode, run.run_id]), flush=True)
        for step in range(1, STEPS + 1):
            run.log_metrics({"loss": 1 / step, "lr": 1e-3 * step, "grad_norm": 0.1 * step}, step=step)
            if step == PAUSE:
                print("paused", flush=True)
                sys.stdin.readline()
        print(json.dumps([run.mode, run.run_id]), flush=True)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_server_killed_mid_run_loses_nothing_after_a_sync(backend: str, request, tmp_path: Path) -> None:
    """The server crashes at step PAUSE of STEPS; the stage goes on, buffering the rest offline; the server comes
    back after the stage ended; after mlflow-sync every step of every metric is in the one run, and a second
    sync adds nothing."""
    from mlflow.tracking import MlflowClient

    server: Server = request.getfixturevalue("sqlite_server" if backend == "sqlite" else "server")
    server.start()
    experiment = f"killed-{backend}"
    cfg, exp_dir, log = _config(tmp_path, experiment, server.url), tmp_path / "results" / experiment, tmp_path / "log"
    code = "import json, sys; from tests.test_mlflow_server import _train_like; _train_like(*json.loads(sys.argv[1]))"
    args = json.dumps([server.url, experiment, str(exp_dir)])
    with log.open("w") as err:
        stage = subprocess.Popen(
            [sys.executable, "-c", code, args],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        mode, run_id = json.loads(stage.stdout.readline())
        assert mode == "online" and stage.stdout.readline().strip() == "paused", log.read_text()[-3000:]
        server.stop(signal.SIGKILL)
        out, _ = stage.communicate("go\n", timeout=300)
    finally:
        if stage.poll() is None:
            stage.kill()
            stage.wait()
    assert stage.returncode == 0, log.read_text()[-3000:]
    assert json.loads(out.splitlines()[-1])[0] == "buffered"
    assert "'python -m pipeline mlflow-sync' pushes run" in log.read_text()  # the server was still down

    server.start()
    r = pipeline_cli("mlflow-sync", "--config", str(cfg), cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    client = MlflowClient(tracking_uri=server.url)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == (exp_dir / "mlflow_parent_run_id").read_text().strip()
    found = _values(client, run_id)
    for key in KEYS:
        assert [s for s, _, _ in found[key]] == list(range(1, STEPS + 1)), key
    system = [s for s, _, _ in found["system/cpu_utilization_percentage"]]
    assert system == list(range(len(system))) and len(system) > 1  # no system-metrics window lost either
    print(f"{backend}: metric values logged {len(KEYS) * STEPS}, found {sum(len(found[k]) for k in KEYS)}")

    again = pipeline_cli("mlflow-sync", "--config", str(cfg), cwd=tmp_path, timeout=300)
    assert again.returncode == 0 and "created 0" in again.stdout and "metrics 0" in again.stdout, again.stdout
    assert _values(client, run_id) == found
    exp = client.get_experiment_by_name(experiment)
    assert len(client.search_runs([exp.experiment_id])) == 2  # the parent and the stage's run, nothing duplicated


LOGIN = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory) -> Iterator[tuple[Server, dict[str, str]]]:
    """The README's team server: MLflow's basic-auth app, its users in their own database and its admin from an
    auth ini named by MLFLOW_AUTH_CONFIG_PATH; the admin creates user alice. -> (server, user -> password)."""
    from mlflow.server import get_app_client

    require(importlib.util.find_spec("flask_wtf") is not None, "mlflow[auth] is not installed (pip install -e .[test])")
    tmp = tmp_path_factory.mktemp("auth-server")
    users = {"admin": secrets.token_urlsafe(16), "alice": secrets.token_urlsafe(16)}
    ini = tmp / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{tmp / 'auth.db'}\n"
        f"admin_username = admin\nadmin_password = {users['admin']}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
    s = Server(f"sqlite:///{tmp / 'server.db'}", tmp / "artifacts", tmp / "server.log", app="basic-auth", env=env)
    try:
        s.start()
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_USERNAME", "admin")
            mp.setenv("MLFLOW_TRACKING_PASSWORD", users["admin"])
            get_app_client("basic-auth", tracking_uri=s.url).create_user("alice", users["alice"])
        yield s, users
    finally:
        s.stop()


def _login(mp: pytest.MonkeyPatch, user: str | None = None, password: str | None = None) -> dict[str, str]:
    """This process logs in as ``user`` (None: as nobody); returns the environment for a stage that does."""
    for k in LOGIN:
        mp.delenv(k, raising=False)
    if user is not None:
        mp.setenv("MLFLOW_TRACKING_USERNAME", user)
        mp.setenv("MLFLOW_TRACKING_PASSWORD", password)
    return dict(os.environ)


def _holding(root: Path, secret: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_a_team_server_with_basic_auth_records_a_stage_and_refuses_everyone_else(
    auth_server: tuple[Server, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """alice's stage, logged in from the environment, is recorded; a client without credentials can neither read
    nor delete; wrong credentials fail the stage before it works, with the message saying how to log in; a
    ~/.mlflow/credentials file logs in too."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import LoginRefused, RunTarget, stage_run, sync

    server, users = auth_server
    server.start()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.mlflow/credentials of whoever runs the tests
    cfg = _config(tmp_path, "team-auth", server.url)
    alice = {**_login(monkeypatch, "alice", users["alice"]), "HOME": os.environ.get("HOME", "")}
    t0 = time.perf_counter()
    r = pipeline_cli("prepare", "--config", str(cfg), cwd=tmp_path, env=alice, timeout=300)
    print(f"prepare logged in as alice: {time.perf_counter() - t0:.1f} s")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "MLflow (mode auto -> online)" in r.stderr and "MLflow tracking unavailable" not in r.stderr

    _login(monkeypatch, "admin", users["admin"])
    client = MlflowClient(tracking_uri=server.url)
    exp = client.get_experiment_by_name("team-auth")
    parent = (tmp_path / "results" / "team-auth" / "mlflow_parent_run_id").read_text().strip()
    (run,) = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("mlflow.parentRunId") == parent]
    assert run.info.status == "FINISHED" and run.data.tags["pipeline.stage"] == "prepare"
    assert run.data.params["data.grid.resolution"] == "5.0" and run.data.metrics["bytes_written"] > 0
    assert {"config.json", "quicklook_regrid.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}

    _login(monkeypatch)  # nobody: a plain HTTP request and MLflow's client are both refused, reading and deleting
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{server.url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=team-auth")
    assert e.value.code == 401
    anonymous = MlflowClient(tracking_uri=server.url)
    for call in (lambda: anonymous.get_experiment_by_name("team-auth"), lambda: anonymous.delete_run(run.info.run_id)):
        with pytest.raises(MlflowException) as e:
            call()
        assert e.value.get_http_status_code() == 401
    _login(monkeypatch, "admin", users["admin"])
    assert client.get_run(run.info.run_id).info.lifecycle_stage == "active"

    wrong = {**_login(monkeypatch, "alice", "not-" + users["alice"]), "HOME": alice["HOME"]}
    cfg = _config(tmp_path, "team-auth-wrong", server.url)
    r = pipeline_cli("prepare", "--config", str(cfg), cwd=tmp_path, env=wrong, timeout=300)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "error: tracking.uri = " in r.stderr and "refused the login, with user 'alice'" in r.stderr
    assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in r.stderr and "~/.mlflow/credentials" in r.stderr
    assert not (tmp_path / "results" / "team-auth-wrong" / "data").exists()  # refused before any work
    exp_dir = tmp_path / "results" / "team-auth-modes"
    for mode in ("online", "auto"):
        with (
            pytest.raises(LoginRefused, match="HTTP 401"),
            stage_run(RunTarget(server.url, "m", exp_dir, mode=mode), "x"),
        ):
            pytest.fail("the stage's body ran")
    with stage_run(RunTarget(server.url, "m", exp_dir, mode="offline"), "x") as offline:
        offline.log_metrics({"m": 1.0})
    with pytest.raises(LoginRefused, match="HTTP 401"):
        sync(server.url, "m", exp_dir)

    _login(monkeypatch)  # alice from ~/.mlflow/credentials: the stage logs online, and the sync goes through
    (tmp_path / "home" / ".mlflow").mkdir(parents=True)
    (tmp_path / "home" / ".mlflow" / "credentials").write_text(
        f"[mlflow]\nmlflow_tracking_username = alice\nmlflow_tracking_password = {users['alice']}\n"
    )
    with stage_run(RunTarget(server.url, "m", exp_dir), "x") as online:
        assert online.mode == "online"
    assert sync(server.url, "m", exp_dir).completed == 1
    for secret in users.values():
        assert not _holding(tmp_path / "results", secret)
        assert secret not in r.stdout + r.stderr


def test_credentials_in_the_uri_are_refused_before_anything_is_written(
    auth_server: tuple[Server, dict[str, str]], tmp_path: Path
) -> None:
    """tracking.uri = http://alice:<password>@host is a config error that names where credentials go instead and
    does not echo the password; the stage writes nothing (no results folder, no config.resolved.yaml)."""
    server, users = auth_server
    uri = server.url.replace("http://", f"http://alice:{users['alice']}@")
    cfg = _config(tmp_path, "team-auth-uri", uri)
    for command in ("check-config", "prepare"):
        r = pipeline_cli(command, "--config", str(cfg), cwd=tmp_path, timeout=300)
        assert r.returncode == 2, r.stderr[-3000:]
        assert "tracking.uri = 'http://alice:***@127.0.0.1:" in r.stderr and "must not hold credentials" in r.stderr
        assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in r.stderr
        assert users["alice"] not in r.stdout + r.stderr
    assert not (tmp_path / "results").exists()
    assert _holding(tmp_path, users["alice"]) == [cfg]  # only the file the user wrote
