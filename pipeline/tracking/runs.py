"""A stage's MLflow run (:class:`StageRun`): opened online, offline or buffered as ``tracking.mode`` says,
falling back to an offline continuation when the store fails mid-run."""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.tracking.server import (
    _NOT_COPIED,
    DONE_TAG,
    NOTE_TAG,
    OFFLINE_DIR,
    OFFLINE_ID_TAG,
    TARGET_TAG,
    LoginRefused,
    _missing,
    _outage,
    _reachable,
    _refusal,
    _refusals,
    _refused,
    flatten,
    redact_uri,
)
from pipeline.tracking.stores import _main_store, _offline_store, _offline_stores, _Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _RunSpec:
    """What a stage run is: its experiment, results folder, name and tags."""

    experiment: str
    exp_dir: Path
    name: str
    tags: dict[str, str]


class StageRun:
    """A run as a stage sees it: every call is guarded, so tracking never stops the stage.

    ``client`` None gives an inactive run (tracking off, rank > 0, nothing reachable in mode online); ``uri``
    is its store's. ``mode`` says where the calls go: ``online``, ``offline``, ``buffered`` (an online run whose
    rest goes to an offline continuation) or ``off``. With ``fallback`` (mode auto, online) the first call that
    fails for an outage calls ``fallback()``, which opens the continuation and returns its store and run id;
    that call and every later one go there.
    """

    def __init__(
        self,
        client: Any | None = None,
        run_id: str | None = None,
        parent_id: str | None = None,
        *,
        uri: str | None = None,
        mode: str = "online",
        fallback: Callable[[], tuple[_Store, str]] | None = None,
    ):
        self.client = client
        self.run_id = run_id
        self.parent_id = parent_id
        self.uri = uri
        self.mode = mode if client is not None else "off"
        self._fallback = fallback
        self._warned = False
        self._lock = threading.Lock()  # the system-metrics thread logs too

    @property
    def active(self) -> bool:
        return self.client is not None and self.run_id is not None

    def _send(self, method: str, of: str, *args: Any, **kwargs: Any) -> None:
        """``client.<method>(<run or parent id>, *args)`` where the calls go now."""
        with self._lock:
            while self.active:
                run_id = self.run_id if of == "run" else self.parent_id
                if run_id is None:
                    return
                try:
                    getattr(self.client, method)(run_id, *args, **kwargs)
                    return
                except Exception as e:
                    if self._fallback is None or not _outage(e):
                        self._warn(method, e)
                        return
                    fallback, self._fallback = self._fallback, None
                    log.warning("MLflow (mode auto): %s failed (%s: %s)", method, type(e).__name__, e)
                    try:
                        store, self.run_id = fallback()
                        self.client, self.parent_id, self.uri = store.client, store.parent_id, store.uri
                        self.mode = "buffered"
                    except Exception as e2:
                        self._warn("offline buffer", e2)
                        self.client, self.mode = None, "off"

    def _warn(self, what: str, e: Exception) -> None:
        if not self._warned:
            status = _refusal(e)  # a login or permission refused mid-run (changed meanwhile): say so
            why = str(_refused(self.uri or "", status, e)) if status else f"{type(e).__name__}: {e}"
            log.warning("MLflow %s failed (%s); the stage continues without tracking", what, redact_uri(why))
            self._warned = True

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in sorted(flatten(params).items())]
        for i in range(0, len(items), 100):  # MLflow batch limit
            self._send("log_batch", "run", params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self._send("log_batch", "run", metrics=items[i : i + 1000])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), 100):
            self._send("log_batch", "run", tags=items[i : i + 100])

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        self._send("log_artifact", "run", str(path), artifact_path)

    def log_to_parent(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """An artifact of the experiment's parent run (sweep tables, summary plots)."""
        self._send("log_artifact", "parent", str(path), artifact_path)

    def log_dict(self, data: Mapping[str, Any], name: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / name
            p.write_text(json.dumps(data, indent=2, default=str))
            self.log_artifact(p)

    def describe_parent(self, text: str) -> None:
        """The parent run's description (what the experiment achieved, written by collect-eval)."""
        self._send("set_tag", "parent", NOTE_TAG, text)

    def finish(self, status: str, parent: bool = True) -> None:
        """End the run with ``status`` and (``parent``) end the parent FINISHED, with its end time: the last
        stage to end does, so the parent's duration spans the experiment's stages."""
        self._send("set_terminated", "run", status)
        if parent:
            self._send("set_terminated", "parent", "FINISHED")


def _child(store: _Store, spec: _RunSpec, extra: Mapping[str, str] | None = None) -> str:
    tags = {"mlflow.parentRunId": store.parent_id, **spec.tags, **(extra or {})}
    return store.client.create_run(store.experiment_id, run_name=spec.name, tags=tags).info.run_id


def _offline_runs(experiment: str, exp_dir: Path) -> dict[str, tuple[_Store, Any]]:
    """Every run of the experiment's offline stores, by id, with its store."""
    runs = {}
    for folder in _offline_stores(exp_dir):
        store = _offline_store(folder, experiment)
        token = None
        while True:
            page = store.client.search_runs([store.experiment_id], max_results=1000, page_token=token)
            runs |= {r.info.run_id: (store, r) for r in page}
            token = page.token
            if not token:
                break
    return runs


def _server_run(server: _Store, runs: Mapping[str, tuple[_Store, Any]], run_id: str) -> tuple[str, bool]:
    """The server run that offline run ``run_id`` goes to, and whether it was created now."""
    store, run = runs[run_id]
    if run_id == store.parent_id:
        return server.parent_id, False
    target = run.data.tags.get(TARGET_TAG)
    if target in runs:  # it continues another offline run
        return _server_run(server, runs, target)
    if target is not None:
        try:
            server.client.get_run(target)
            return target, False
        except Exception as e:
            if not _missing(e):
                raise
            where = redact_uri(server.uri)
            log.warning(
                "MLflow sync: %s lacks run %s, which offline run %s continues: a new run", where, target, run_id
            )
    found = server.client.search_runs([server.experiment_id], f"tags.`{OFFLINE_ID_TAG}` = '{run_id}'", max_results=1)
    if found:
        return found[0].info.run_id, False
    tags = {k: v for k, v in run.data.tags.items() if k not in _NOT_COPIED}
    tags |= {OFFLINE_ID_TAG: run_id, "mlflow.parentRunId": server.parent_id}
    new = server.client.create_run(
        server.experiment_id, start_time=run.info.start_time, tags=tags, run_name=run.info.run_name
    )
    return new.info.run_id, True


def _reopen_online(store: _Store, spec: _RunSpec, run_id: str) -> str:
    """Continue run ``run_id`` online: a run of ``store``, or one the stage logged offline before."""
    try:
        store.client.get_run(run_id)
        return run_id
    except Exception as e:
        if not _missing(e):
            raise
    runs = _offline_runs(spec.experiment, spec.exp_dir)
    if run_id in runs:
        return _server_run(store, runs, run_id)[0]
    where = redact_uri(store.uri)
    log.warning("MLflow: run %s to continue is in neither %s nor the offline stores: a new run", run_id, where)
    return _child(store, spec)


def _open_offline(
    spec: _RunSpec, run_id: str | None = None, extra: Mapping[str, str] | None = None
) -> tuple[_Store, str]:
    """A run in this node's offline store -> (the store, run id): new, or continuing ``run_id`` (this store's
    run itself, else a continuation run tagged with it)."""
    store = _offline_store(spec.exp_dir / OFFLINE_DIR / socket.gethostname(), spec.experiment)
    store.client.update_run(store.parent_id, status="RUNNING")
    if run_id is None:
        return store, _child(store, spec, extra)
    try:
        run = store.client.get_run(run_id)
    except Exception as e:
        if not _missing(e):
            raise
        return store, _child(store, spec, {TARGET_TAG: run_id, **(extra or {})})
    store.client.update_run(run_id, status="RUNNING")
    if DONE_TAG in run.data.tags:
        store.client.delete_tag(run_id, DONE_TAG)  # it grows again: the next sync pushes the rest
    return store, run_id


def _label(mode: str, where: str) -> str:
    return mode if mode == where else f"{mode} -> {where}"


def _open_online(uri: str, spec: _RunSpec, run_id: str | None) -> tuple[_Store, str]:
    """The stage's run at ``uri`` -> (the store, run id): new, or continuing ``run_id``. A refused login or
    permission raises :class:`LoginRefused`."""
    with _refusals(uri):
        store = _main_store(uri, spec.experiment, spec.exp_dir)
        store.client.update_run(store.parent_id, status="RUNNING")
        child = _child(store, spec) if run_id is None else _reopen_online(store, spec, run_id)
        if run_id is not None:
            store.client.update_run(child, status="RUNNING")
        return store, child


def _open(uri: str, mode: str, spec: _RunSpec, run_id: str | None) -> StageRun:
    """The stage's run in ``mode``; the log names the mode in use. A server that refuses the login raises
    :class:`LoginRefused` in every mode that contacts it (online, auto)."""
    if mode != "offline":
        why = None if _reachable(uri) else f"no MLflow server answers at {redact_uri(uri)}"
        if why is None:
            try:
                store, child = _open_online(uri, spec, run_id)
            except LoginRefused:
                raise
            except Exception as e:
                why = redact_uri(f"{type(e).__name__}: {e}")
                if mode == "online" or not _outage(e):
                    log.warning("MLflow tracking unavailable (%s); the stage runs without it", why)
                    return StageRun()
            else:
                log.info(
                    "MLflow (mode %s): stage run %s under parent %s at %s",
                    _label(mode, "online"),
                    child,
                    store.parent_id,
                    redact_uri(uri),
                )

                def buffer() -> tuple[_Store, str]:
                    opened = _open_offline(spec, child)
                    log.warning("MLflow: the rest of run %s is buffered in offline run %s", child, opened[1])
                    return opened

                fallback = buffer if mode == "auto" else None
                return StageRun(store.client, child, store.parent_id, uri=uri, fallback=fallback)
        if mode == "online":
            log.warning("MLflow tracking unavailable (%s); the stage runs without it", why)
            return StageRun()
        log.warning("MLflow tracking unavailable (%s): mode auto goes offline", why)
    try:
        store, child = _open_offline(spec, run_id)
    except Exception as e:
        log.warning("MLflow offline store unavailable (%s: %s); the stage runs untracked", type(e).__name__, e)
        return StageRun()
    log.info(
        "MLflow (mode %s): stage run %s in %s; 'python -m pipeline mlflow-sync' pushes it to %s",
        _label(mode, "offline"),
        child,
        spec.exp_dir / OFFLINE_DIR,
        redact_uri(uri),
    )
    return StageRun(store.client, child, store.parent_id, uri=store.uri, mode="offline")
