"""Tracking that loses nothing (issue 15), against SQLite stores: the modes, the offline stores and their sync
(parent and child, params, tags, metric steps and timestamps, artifacts; idempotent, resumable), a write that
fails mid-run, eight processes starting at once on a new database, system metrics per node; a server refusing
the login is an error, not an outage, and credentials in tracking.uri are refused without being echoed. The faults
with real servers (killed mid-run, no route, MLflow's basic-auth app) are in tests/test_mlflow_server.py."""

from __future__ import annotations

import http.server
import multiprocessing
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.tracking import (
    OFFLINE_DIR,
    LoginRefused,
    RunTarget,
    TrackingError,
    check_login,
    redact_uri,
    stage_run,
    sync,
)
from tests.conftest import REPO, free_port

KEYS, STEPS = 4, 25


def _uri(tmp: Path) -> str:
    return f"sqlite:///{tmp / 'results' / 'mlflow.db'}"


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _offline_client(exp_dir: Path) -> Any:
    return _client(f"sqlite:///{exp_dir / OFFLINE_DIR / socket.gethostname() / 'mlflow.db'}")


def _children(client: Any, experiment: str, parent: str) -> list[Any]:
    exp = client.get_experiment_by_name(experiment)
    return [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("mlflow.parentRunId") == parent]


def _history(client: Any, run_id: str, key: str) -> list[tuple[int, int, float]]:
    return sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key))


def _log_steps(run: Any, steps: range) -> None:
    for step in steps:
        run.log_metrics({f"m{k}": k + step / 10 for k in range(KEYS)}, step=step)


def test_mode_is_checked_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tracking\.mode"):
        load_config([REPO / "config" / "config.yaml", {"tracking": {"mode": "sometimes"}}])
    cfg = load_config([REPO / "config" / "config.yaml"])
    assert cfg.tracking.mode == "auto" and cfg.tracking.system_metrics == 10.0
    with (
        pytest.raises(ValueError, match=r"tracking\.mode = 'sometimes'"),
        stage_run(RunTarget("", "e", tmp_path, mode="sometimes"), "x"),
    ):
        pass


def test_offline_runs_resume_online_and_sync_completely_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline: nothing reaches the store at tracking.uri until the sync; a training resumed online continues
    its offline run in one server run; the sync sends the rest, a second sync nothing."""
    monkeypatch.chdir(tmp_path)
    uri, exp_dir = _uri(tmp_path), tmp_path / "results" / "off"
    with stage_run(
        RunTarget(uri, "off", exp_dir, mode="offline", system_metrics=0.2), "train", tags={"input": "x"}
    ) as run:
        assert run.mode == "offline"
        run.log_params({"train": {"lr": 0.001, "steps": 50}})
        _log_steps(run, range(STEPS))
        run.log_dict({"zero_stage": 2}, "deepspeed_config.json")
        run.log_to_parent(REPO / "config" / "config.yaml", "tables")
        offline_id = run.run_id
    assert not (tmp_path / "results" / "mlflow.db").exists()  # nothing online yet
    assert not (tmp_path / "mlflow.db").exists()  # nor in MLflow's default store
    off = _offline_client(exp_dir)
    offline = {f"m{k}": _history(off, offline_id, f"m{k}") for k in range(KEYS)}
    assert all(len(h) == STEPS for h in offline.values())

    # resumed with the checkpoint's run id, online: the server run is created for the offline run
    with stage_run(RunTarget(uri, "off", exp_dir, mode="online"), "train", run_id=offline_id) as run:
        assert run.mode == "online" and run.run_id != offline_id
        _log_steps(run, range(STEPS, 2 * STEPS))
        server_id = run.run_id
    parent = (exp_dir / "mlflow_parent_run_id").read_text().strip()
    report = sync(uri, "off", exp_dir)
    assert (report.created, report.completed, report.params) == (0, 1, 2)
    logged = sum(len(off.get_metric_history(offline_id, k)) for k in off.get_run(offline_id).data.metrics)
    assert report.metrics == logged  # the offline values, system metrics too
    assert report.artifacts == 2  # deepspeed_config.json, and the parent's tables/config.yaml

    client = _client(uri)
    (child,) = _children(client, "off", parent)
    assert child.info.run_id == server_id and child.info.status == "FINISHED"
    assert child.data.params == {"train.lr": "0.001", "train.steps": "50"}
    assert child.data.tags["input"] == "x" and child.data.tags["pipeline.offline_run_id"] == offline_id
    for key, values in offline.items():
        found = _history(client, server_id, key)
        assert found[:STEPS] == values  # steps, timestamps and values as logged offline
        assert [s for s, _, _ in found] == list(range(2 * STEPS))
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(child.data.metrics)
    assert [a.path for a in client.list_artifacts(server_id)] == ["deepspeed_config.json"]
    assert [a.path for a in client.list_artifacts(parent, "tables")] == ["tables/config.yaml"]
    assert (exp_dir / "mlflow_parent_run_id").read_text().strip() == parent  # the offline parent merged into it

    again = sync(uri, "off", exp_dir)
    assert (again.created, again.skipped, again.params, again.tags, again.metrics, again.artifacts) == (
        0,
        1,
        0,
        0,
        0,
        0,
    )
    assert len(_children(client, "off", parent)) == 1
    assert all(len(client.get_metric_history(server_id, k)) == 2 * STEPS for k in offline)


def test_a_sync_killed_midway_finishes_on_the_next_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    uri, exp_dir = _uri(tmp_path), tmp_path / "results" / "resume"
    with stage_run(RunTarget(uri, "resume", exp_dir, mode="offline"), "evaluate") as run:
        _log_steps(run, range(STEPS))
        for name in ("a.json", "b.json", "c.json"):
            run.log_dict({"name": name}, name)

    def failing_after(method: str, n: int) -> None:
        real, calls = getattr(MlflowClient, method), []

        def fail(self: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            if len(calls) > n:
                raise ConnectionError("killed")
            return real(self, *args, **kwargs)

        monkeypatch.setattr(MlflowClient, method, fail)

    failing_after("log_batch", 2)  # killed among the metrics
    with pytest.raises(ConnectionError):
        sync(uri, "resume", exp_dir)
    monkeypatch.undo()
    failing_after("log_artifact", 1)  # killed among the artifacts
    with pytest.raises(ConnectionError):
        sync(uri, "resume", exp_dir)
    monkeypatch.undo()
    last = sync(uri, "resume", exp_dir)
    assert last.created == 0 and last.completed == 1 and last.artifacts == 2

    client = _client(uri)
    (child,) = _children(client, "resume", (exp_dir / "mlflow_parent_run_id").read_text().strip())
    assert child.info.status == "FINISHED"
    assert {f"m{k}": len(client.get_metric_history(child.info.run_id, f"m{k}")) for k in range(KEYS)} == {
        f"m{k}": STEPS for k in range(KEYS)
    }
    assert sorted(a.path for a in client.list_artifacts(child.info.run_id)) == ["a.json", "b.json", "c.json"]


def test_a_write_failing_mid_run_is_buffered_and_pushed_at_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """auto: the store refuses a write for an outage (here the SQLite store's own 'temporarily unavailable'),
    the rest goes to an offline continuation, pushed into the same run as the stage ends."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri, exp_dir = _uri(tmp_path), tmp_path / "results" / "buffer"
    real = MlflowClient.log_batch

    def outage(self: Any, run_id: str, *args: Any, **kwargs: Any) -> Any:
        if run_id == online_id and kwargs.get("metrics") and kwargs["metrics"][0].step >= 10:
            raise MlflowException("database is locked", error_code="TEMPORARILY_UNAVAILABLE")
        return real(self, run_id, *args, **kwargs)

    with stage_run(RunTarget(uri, "buffer", exp_dir), "train") as run:
        online_id = run.run_id
        monkeypatch.setattr(MlflowClient, "log_batch", outage)
        _log_steps(run, range(STEPS))
        assert run.mode == "buffered" and run.run_id != online_id
        monkeypatch.undo()
    client = _client(uri)
    online = client.get_run(online_id)
    assert online.info.status == "FINISHED"
    assert all(len(client.get_metric_history(online_id, f"m{k}")) == STEPS for k in range(KEYS))
    assert _offline_client(exp_dir).get_run(run.run_id).data.tags["pipeline.sync.done"] == online_id


def test_auto_without_a_server_goes_offline(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # a port nobody listens on
    t0 = time.perf_counter()
    with stage_run(RunTarget(closed, "noroute", tmp_path / "noroute"), "prepare") as run:
        assert run.mode == "offline" and run.active
    with stage_run(RunTarget(closed, "noroute", tmp_path / "noroute", mode="online"), "prepare") as run:
        assert run.mode == "off" and not run.active
    assert time.perf_counter() - t0 < 60
    with pytest.raises(TrackingError, match=r"tracking\.uri = 'http://127\.0\.0\.1:\d+': no MLflow server answers"):
        sync(closed, "noroute", tmp_path / "noroute")


class _Refusing(http.server.BaseHTTPRequestHandler):
    """A server that answers every request, /health included, with 401 (an authenticating proxy in front of
    MLflow, say)."""

    def do_GET(self) -> None:
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PATCH = do_GET

    def log_message(self, *args: Any) -> None:
        pass


def test_a_server_refusing_the_login_is_an_error_in_every_mode_not_an_outage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It answers, so it is no outage: modes online and auto fail as the stage starts (the stage's body never
    runs), the CLI's check fails, mode offline (which never asks the server) logs offline, and its sync fails."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-her-password")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    uri, exp_dir = f"http://127.0.0.1:{httpd.server_address[1]}", tmp_path / "refused"
    refused = r"refused the login, with user 'alice' from MLFLOW_TRACKING_USERNAME.*HTTP 401.*MLFLOW_TRACKING_PASSWORD"
    try:
        for mode in ("online", "auto"):
            target = RunTarget(uri, "refused", exp_dir, mode=mode)
            with pytest.raises(LoginRefused, match=refused), stage_run(target, "prepare"):
                pytest.fail("the stage's body ran")
            with pytest.raises(LoginRefused, match=refused):
                check_login(target)
        with stage_run(RunTarget(uri, "refused", exp_dir, mode="offline"), "prepare") as run:
            assert run.mode == "offline"
            run.log_metrics({"m": 1.0})
        with pytest.raises(LoginRefused, match=refused):
            sync(uri, "refused", exp_dir)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert not (exp_dir / "mlflow_parent_run_id").exists()


@pytest.mark.parametrize(
    "uri",
    ["http://alice:s3cret-pw@host:5000", "https://alice@host", "postgresql://bob:s3cret-pw@db/mlflow"],
)
def test_credentials_in_the_uri_are_refused_without_echoing_them(uri: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tracking\.uri = '\w+://\w+(:\*\*\*)?@.*: must not hold") as e:
        load_config([REPO / "config" / "config.yaml", {"tracking": {"uri": uri}}])
    hint = "PGPASSWORD" if uri.startswith("postgresql") else "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    assert hint in str(e.value) and "s3cret" not in str(e.value)
    with (
        pytest.raises(TrackingError, match="credentials do not belong in the URI") as e,
        stage_run(RunTarget(uri, "e", tmp_path), "prepare"),
    ):
        pass
    assert "s3cret" not in str(e.value)
    ok = "postgresql://bob@db/mlflow"  # a database user without the password: the driver finds it (~/.pgpass)
    assert load_config([REPO / "config" / "config.yaml", {"tracking": {"uri": ok}}]).tracking.uri == ok
    assert redact_uri(f"failed: {uri}/api/2.0 and http://host:5000/x") == (
        f"failed: {uri.replace(':s3cret-pw@', ':***@')}/api/2.0 and http://host:5000/x"
    )


def _evaluation_like(uri: str, exp_dir: Path, i: int, barrier: Any, out: Any) -> None:
    barrier.wait(timeout=120)  # all open the new database at once
    with stage_run(
        RunTarget(uri, "concurrent", exp_dir), "evaluate", run_name=f"evaluate {i}", tags={"point": i}
    ) as run:
        run.log_params({"point": i, "sampler": "ddim"})
        _log_steps(run, range(STEPS))
        run.log_dict({"point": i}, "result.json")
    out.put((i, run.mode, run.run_id))


def test_eight_processes_log_at_once_to_a_new_sqlite_store(tmp_path: Path) -> None:
    """The default store (SQLite) as an evaluation array uses it: every run and metric value arrives, no write
    fails (a failed one would have switched its run to 'buffered')."""
    uri, exp_dir = _uri(tmp_path), tmp_path / "results" / "concurrent"
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_evaluation_like, args=(uri, exp_dir, i, barrier, out)) for i in range(8)]
    for p in procs:
        p.start()
    done = sorted(out.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * 8
    assert [(i, mode) for i, mode, _ in done] == [(i, "online") for i in range(8)]
    assert not (exp_dir / OFFLINE_DIR).exists()
    client = _client(uri)
    runs = {
        r.info.run_id: r
        for r in _children(client, "concurrent", (exp_dir / "mlflow_parent_run_id").read_text().strip())
    }
    assert sorted(runs) == sorted(run_id for _, _, run_id in done)
    found = 0
    for i, _, run_id in done:
        assert runs[run_id].data.params == {"point": str(i), "sampler": "ddim"}
        assert [a.path for a in client.list_artifacts(run_id)] == ["result.json"]
        for k in range(KEYS):
            history = _history(client, run_id, f"m{k}")
            assert [s for s, _, _ in history] == list(range(STEPS))
            found += len(history)
    assert found == 8 * KEYS * STEPS


def _rank(rank: int, uri: str, exp_dir: Path, rendezvous: Path, out: Any) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")  # two "nodes"
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=rendezvous.as_uri(), rank=rank, world_size=2)
    with stage_run(RunTarget(uri, "nodes", exp_dir, system_metrics=0.2), "train", rank=rank) as run:
        dist.barrier()
    dist.destroy_process_group()
    out.put((rank, run.run_id))


def test_system_metrics_from_local_rank_0_of_every_node(tmp_path: Path) -> None:
    uri, exp_dir = _uri(tmp_path), tmp_path / "results" / "nodes"
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, uri, exp_dir, tmp_path / "rdzv", out)) for r in range(2)]
    for p in procs:
        p.start()
    ids = dict(out.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert ids[1] is None and ids[0] is not None  # rank 1 does not track ...
    metrics = set(_client(uri).get_run(ids[0]).data.metrics)  # ... but logs its node into rank 0's run
    for node in ("node0", "node1"):
        assert {f"system/{node}/cpu_utilization_percentage", f"system/{node}/system_memory_usage_megabytes"} <= metrics
