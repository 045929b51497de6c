"""A stage's run from start to end (:func:`stage_run`): its target (:class:`RunTarget`), the record of the run a
live process holds open (so a run left RUNNING by a killed process is marked as such), system metrics, and the
push of a buffered run when the stage ends."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pipeline.tracking.runs import StageRun, _open, _RunSpec
from pipeline.tracking.server import MODES, NOTE_TAG, STAGE_NOTES, _missing, _no_credentials, redact_uri
from pipeline.tracking.sync import _push
from pipeline.tracking.system import _node_run, _SystemMetrics

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunTarget:
    """Where and how a stage's runs are recorded: the tracking store ``uri``, the experiment (its name and results
    folder), whether at all, the mode (``tracking.mode``: online, offline, auto) and the interval (s) of system
    metrics (None: none)."""

    uri: str
    experiment: str
    exp_dir: Path
    enabled: bool = True
    mode: str = "auto"
    system_metrics: float | None = None

    @classmethod
    def of(cls, cfg: Any, *, system_metrics: bool = True) -> RunTarget:
        """The target of an experiment config (its ``tracking_uri``, ``experiment``, ``exp_dir`` and ``tracking``
        section; duck-typed: tracking and the config are one layer and do not import each other)."""
        t = cfg.tracking
        seconds = t.system_metrics if system_metrics else None
        return cls(cfg.tracking_uri, cfg.experiment, Path(cfg.exp_dir), t.enabled, t.mode, seconds)


def _monitor(run: StageRun, rank: int, target: RunTarget, spec: _RunSpec) -> tuple[StageRun, _SystemMetrics | None]:
    """The run that holds this node's system metrics (see :func:`_node_run`) and its sampler, if any."""
    if not target.system_metrics:
        return run, None
    node_run, node_id = _node_run(run, rank, target.uri, spec)
    try:
        return node_run, (_SystemMetrics(node_run, target.system_metrics, node_id) if node_run.active else None)
    except Exception as e:  # psutil missing, say: the stage goes on without them
        log.warning("MLflow system metrics unavailable (%s: %s)", type(e).__name__, e)
        return node_run, None


RUNS_DIR = ".runs"  # <exp_dir>/.runs/<stage>--<run name>.json: the run a live process has open, flock held
KILLED_BY_TAG = "pipeline.killed_by"  # on a run left RUNNING by a process that died: the run that found it


def _mark_killed(record: Mapping[str, Any], run: StageRun) -> None:
    """Set run ``record["run_id"]``, left open by a process that ended, KILLED with a note if it is still RUNNING.
    Only in the store of ``run`` or in this node's offline store (another node's SQLite file is that node's)."""
    old, uri = record.get("run_id"), str(record.get("uri"))
    if not old or old == run.run_id:
        return
    if uri == run.uri:
        client = run.client
    elif record.get("host") == socket.gethostname() and Path(uri.removeprefix("sqlite:///")).is_file():
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
    else:
        where = redact_uri(uri)
        log.warning("MLflow: run %s, left open by a process that ended, is in %s: it stays RUNNING", old, where)
        return
    try:
        found = client.get_run(old)
    except Exception as e:
        if _missing(e):
            return
        raise
    if found.info.status != "RUNNING":
        return
    words = (
        f"Killed: its process (pid {record.get('pid')} on {record.get('host')}, started {record.get('since')}) ended "
        f"without closing the run; marked KILLED when the stage ran again (run {run.run_id})."
    )
    note = found.data.tags.get(NOTE_TAG)
    client.set_tag(old, NOTE_TAG, f"{note}\n\n{words}" if note else words)
    client.set_tag(old, KILLED_BY_TAG, run.run_id)
    client.set_terminated(old, "KILLED")
    log.warning("MLflow: run %s was left RUNNING by a process that ended without closing it: marked KILLED", old)


def _claim(spec: _RunSpec, run: StageRun) -> Any:
    """Record the new run ``run`` in ``<exp_dir>/.runs/<stage>--<name>.json`` while it is open, under an exclusive
    flock that the OS drops when the process ends, however it ends. A record found there unlocked names a run whose
    process died before closing it (SIGKILL, a SLURM time limit, a lost node): it is set KILLED first. A record
    still locked is a live process's running the same stage and name: left alone, and this run goes unrecorded.
    Returns the open record (for :func:`_unclaim`) or None; never fails the stage."""
    if not run.active:
        return None
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{spec.tags.get('pipeline.stage', '')}--{spec.name}")
    path = spec.exp_dir / RUNS_DIR / f"{name}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = path.open("a+")
    except OSError as e:
        log.warning("MLflow: cannot record run %s in %s (%s)", run.run_id, path.parent, e)
        return None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.seek(0)
        text = f.read().strip()
        try:
            if text:
                _mark_killed(json.loads(text), run)
        except Exception as e:
            log.warning("MLflow: could not close run left open in %s (%s: %s)", path, type(e).__name__, e)
        since = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        me = {"run_id": run.run_id, "uri": run.uri, "pid": os.getpid(), "host": socket.gethostname(), "since": since}
        f.truncate(0)
        f.write(json.dumps(me))
        f.flush()
        return f
    except OSError as e:  # BlockingIOError: held by a live process
        if not isinstance(e, BlockingIOError):
            log.warning("MLflow: cannot record run %s in %s (%s)", run.run_id, path, e)
        f.close()
        return None


def _unclaim(record: Any) -> None:
    """The run is closed: empty its record and drop the lock."""
    if record is not None:
        with contextlib.suppress(OSError):
            record.truncate(0)
        record.close()


@contextlib.contextmanager
def stage_run(
    target: RunTarget,
    stage: str,
    *,
    rank: int = 0,
    run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
    run_name: str | None = None,
) -> Iterator[StageRun]:
    """Open (or, with ``run_id``, reopen) a child run of the experiment's parent run in ``target.mode``
    (see the module's docstring).

    Only rank 0 tracks; other ranks get an inactive :class:`StageRun`. ``target.system_metrics`` (seconds)
    samples the CPU, memory, disk, network and GPU use of rank 0's node into the run, and on more nodes that of
    each node from its local rank 0 (then every rank must enter here together, see :func:`_node_run`). The run
    ends FINISHED, or FAILED / KILLED if the stage raised; a run buffered mid-run is pushed then if the server
    answers again. A new run is recorded while open: the next run of that stage and name sets it KILLED if its
    process died without closing it (:func:`_claim`; train and distill reopen theirs with ``run_id`` instead).
    """
    if not target.enabled:
        yield StageRun()
        return
    if target.mode not in MODES:
        msg = f"tracking.mode = {target.mode!r}: expected one of {', '.join(MODES)}"
        raise ValueError(msg)
    _no_credentials(target.uri)
    note = {NOTE_TAG: STAGE_NOTES[stage]} if stage in STAGE_NOTES else {}
    tags = {"pipeline.stage": stage, **note, **{k: str(v) for k, v in (tags or {}).items()}}
    spec = _RunSpec(target.experiment, Path(target.exp_dir), run_name or stage, tags)
    run = _open(target.uri, target.mode, spec, run_id) if rank == 0 else StageRun()
    record = _claim(spec, run) if run_id is None else None
    node_run, monitor = _monitor(run, rank, target, spec)
    status = "FINISHED"
    try:
        yield run
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        if monitor is not None:
            monitor.stop()
        run.finish(status)
        _unclaim(record)
        if node_run is not run and node_run.mode != "online":  # another node's own offline run
            node_run.finish(status, parent=False)
        for r in {run, node_run}:
            if r.mode == "buffered":
                _push(target.uri, spec, r)
