"""MLflow for a team: `mlflow server` on a real PostgreSQL with proxied artifacts; stages log to it over
HTTP exactly as they log to the default SQLite file."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, pipeline_cli, require

pytestmark = pytest.mark.slow
PG_BIN = next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin"))), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(cmd: str) -> None:
    subprocess.run(["su", "postgres", "-s", "/bin/bash", "-c", cmd], check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A throw-away PostgreSQL cluster (Debian's postgresql; .ci/run installs it), one database."""
    require(os.geteuid() == 0, "the PostgreSQL test cluster is started as the postgres user, which needs root")
    require(PG_BIN is not None, "PostgreSQL is not installed (apt-get install postgresql; .ci/run does)")
    root = Path(tempfile.mkdtemp(prefix="pipeline-pg-"))
    shutil.chown(root, "postgres")
    port = _free_port()
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


@pytest.fixture(scope="module")
def server(postgres: str, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    artifacts = tmp_path_factory.mktemp("server-artifacts")
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            postgres,
            "--artifacts-destination",
            str(artifacts),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"mlflow server did not come up: {proc.stderr.read()[-3000:] if proc.stderr else ''}")
            time.sleep(1)
        yield url, artifacts
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def test_stages_log_to_a_postgres_backed_server(postgres: str, server: tuple[str, Path], tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    url, artifacts = server
    c = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    c.update({"results_dir": str(tmp_path / "results"), "experiment": "team-server"})
    c["tracking"] = {"uri": url, "enabled": True}
    (tmp_path / "team.yaml").write_text(yaml.safe_dump(c))
    for stage in ("prepare", "normalise"):
        r = pipeline_cli(stage, "--config", "team.yaml", cwd=tmp_path, timeout=300)
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
