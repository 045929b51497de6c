"""``mlflow-sync``: the offline stores pushed to ``tracking.uri``, sending only what the server lacks, so a
second sync sends nothing and a sync killed midway is finished by the next one."""

from __future__ import annotations

import logging
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Collection
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pipeline.tracking.runs import StageRun, _offline_runs, _RunSpec, _server_run
from pipeline.tracking.server import (
    _NOT_COPIED,
    DONE_TAG,
    NODE_TAG,
    OFFLINE_DIR,
    TrackingError,
    _no_credentials,
    _reachable,
    _refusals,
    _terminal,
    redact_uri,
)
from pipeline.tracking.stores import _locked, _main_store, _offline_stores, _Store

log = logging.getLogger(__name__)


def _push(uri: str, spec: _RunSpec, run: StageRun) -> None:
    """Push a run buffered mid-run now if the server answers again; else the next sync does. The stage has
    ended: nothing here fails it (a refused login included: mlflow-sync reports that)."""
    try:
        if not _reachable(uri):
            where = redact_uri(uri)
            log.warning("MLflow: %s does not answer; 'python -m pipeline mlflow-sync' pushes run %s", where, run.run_id)
            return
        report = sync(uri, spec.experiment, spec.exp_dir, {run.run_id, run.parent_id})
        log.info("MLflow: pushed the buffered run %s to %s: %s", run.run_id, redact_uri(uri), report)
    except Exception as e:
        log.warning(
            "MLflow: pushing run %s failed (%s); 'python -m pipeline mlflow-sync' retries",
            run.run_id,
            redact_uri(f"{type(e).__name__}: {e}"),
        )


@dataclass
class SyncReport:
    """What one :func:`sync` did: server runs created, offline runs pushed complete (ended), offline runs
    skipped (pushed complete before), and the params, tags, metric values and artifact files sent."""

    created: int = 0
    completed: int = 0
    skipped: int = 0
    params: int = 0
    tags: int = 0
    metrics: int = 0
    artifacts: int = 0

    def __str__(self) -> str:
        return ", ".join(f"{f.name} {getattr(self, f.name)}" for f in fields(self))


def _metric_id(m: Any) -> tuple[str, int, int, float | str]:
    return m.key, m.step, m.timestamp, "nan" if math.isnan(m.value) else m.value


def _artifact_sizes(client: Any, run_id: str, path: str | None = None) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for f in client.list_artifacts(run_id, path):
        if f.is_dir:
            out |= _artifact_sizes(client, run_id, f.path)
        else:
            out[f.path] = f.file_size
    return out


def _copy(off: _Store, run: Any, server: _Store, target: str, report: SyncReport) -> None:
    """Send ``target`` what it lacks of the offline ``run``: params, tags, metric values, artifacts."""
    from mlflow.entities import Param, RunTag

    have = server.client.get_run(target).data
    conflicts = sorted(k for k, v in run.data.params.items() if have.params.get(k, v) != v)
    if conflicts:
        log.warning(
            "MLflow sync: %s holds other values of params %s than offline run %s: kept",
            target,
            conflicts,
            run.info.run_id,
        )
    params = [Param(k, v) for k, v in sorted(run.data.params.items()) if k not in have.params]
    tags = [RunTag(k, v) for k, v in sorted(run.data.tags.items()) if k not in _NOT_COPIED and have.tags.get(k) != v]
    for i in range(0, len(params), 100):
        server.client.log_batch(target, params=params[i : i + 100])
    for i in range(0, len(tags), 100):
        server.client.log_batch(target, tags=tags[i : i + 100])
    report.params += len(params)
    report.tags += len(tags)
    for key in sorted(run.data.metrics):
        there = {_metric_id(m) for m in server.client.get_metric_history(target, key)} if key in have.metrics else set()
        values = {_metric_id(m): m for m in off.client.get_metric_history(run.info.run_id, key)}
        missing = [m for i, m in values.items() if i not in there]
        for i in range(0, len(missing), 1000):
            server.client.log_batch(target, metrics=missing[i : i + 1000])
        report.metrics += len(missing)
    root = Path(urllib.request.url2pathname(urllib.parse.urlparse(run.info.artifact_uri).path))
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    if files:
        sizes = _artifact_sizes(server.client, target)
        for p in files:
            rel = p.relative_to(root)
            if sizes.get(rel.as_posix()) != p.stat().st_size:
                server.client.log_artifact(target, str(p), rel.parent.as_posix() if rel.parent != Path() else None)
                report.artifacts += 1


def sync(uri: str, experiment: str, exp_dir: Path, run_ids: Collection[str] | None = None) -> SyncReport:
    """Push the experiment's offline stores (all their runs, or the offline runs ``run_ids``) to ``uri``: runs
    under the server's parent run, params, tags, metrics with their steps and timestamps, artifacts, end status
    and time. Idempotent and resumable (see the module's docstring); one sync at a time per experiment. A server
    that does not answer raises :class:`TrackingError`, one that refuses the login :class:`LoginRefused`.
    """
    _no_credentials(uri)
    exp_dir = Path(exp_dir)
    report = SyncReport()
    if not _offline_stores(exp_dir):
        log.info("MLflow sync: no offline runs in %s", exp_dir / OFFLINE_DIR)
        return report
    if not _reachable(uri):
        msg = f"tracking.uri = {redact_uri(uri)!r}: no MLflow server answers there; run mlflow-sync where one does"
        raise TrackingError(msg)
    with _locked(exp_dir / OFFLINE_DIR / ".sync.lock"), _refusals(uri):
        server = _main_store(uri, experiment, exp_dir)
        runs = _offline_runs(experiment, exp_dir)
        order = sorted(runs, key=lambda i: (i != runs[i][0].parent_id, runs[i][1].info.start_time, i))
        for run_id in order:
            off, run = runs[run_id]
            if run_ids is not None and run_id not in run_ids:
                continue
            if DONE_TAG in run.data.tags and _terminal(run):
                report.skipped += 1
                continue
            target, created = _server_run(server, runs, run_id)
            report.created += created
            _copy(off, run, server, target, report)
            if not _terminal(run):
                continue
            if run_id == off.parent_id:
                server.client.update_run(target, status=run.info.status)
                continue
            if NODE_TAG not in run.data.tags:  # a node's system metrics do not end the run
                server.client.set_terminated(target, run.info.status, end_time=run.info.end_time)
            off.client.set_tag(run_id, DONE_TAG, target)
            report.completed += 1
        log.info("MLflow sync of %s to %s: %s", exp_dir / OFFLINE_DIR, redact_uri(uri), report)
        return report
