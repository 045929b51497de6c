"""The MLflow stores a stage writes to: ``tracking.uri`` and the per-node offline stores, each with the
experiment and its parent run, created once under a file lock."""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.atomic import write_text_atomic
from pipeline.tracking.server import (
    EXPERIMENT_TAGS,
    NOTE_TAG,
    OFFLINE_DIR,
    PARENT_NOTE,
    ROLE_TAG,
    _is_server,
    _missing,
    _refusal,
)

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _offline_stores(exp_dir: Path) -> list[Path]:
    root = exp_dir / OFFLINE_DIR
    return sorted(d for d in root.iterdir() if (d / "mlflow.db").is_file()) if root.is_dir() else []


@dataclass(frozen=True)
class _Store:
    """One MLflow store as the pipeline uses it: a client, the experiment and the experiment's parent run."""

    uri: str
    client: Any
    experiment_id: str
    parent_id: str


def _open_store(uri: str, experiment: str, id_file: Path, location: str | None, lock: Path) -> _Store:
    """The store at ``uri`` with the experiment (artifacts at ``location``) and its parent run (id in
    ``id_file``), created once, under the file lock ``lock``, and kept."""
    from mlflow.tracking import MlflowClient

    with _locked(lock):
        client = MlflowClient(tracking_uri=uri)  # a new SQLite database gets its tables here
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            try:
                exp_id = client.create_experiment(experiment, artifact_location=location, tags=EXPERIMENT_TAGS)
            except Exception as e:  # created meanwhile from another results folder
                if _refusal(e):  # not allowed to create experiments: that, not a missing one, is the error
                    raise
                exp_id = client.get_experiment_by_name(experiment).experiment_id
        else:
            exp_id = exp.experiment_id
            for k, v in EXPERIMENT_TAGS.items():  # experiments made before the tags existed
                if exp.tags.get(k) != v:
                    client.set_experiment_tag(exp_id, k, v)
        if id_file.exists():
            run_id = id_file.read_text().strip()
            try:
                run = client.get_run(run_id)
                if run.info.experiment_id == exp_id and run.info.lifecycle_stage == "active":
                    return _Store(uri, client, exp_id, run_id)
            except Exception as e:
                if not _missing(e):
                    raise
        note = {NOTE_TAG: PARENT_NOTE.format(experiment=experiment)}
        run_id = client.create_run(exp_id, run_name=experiment, tags={ROLE_TAG: "experiment", **note}).info.run_id
        id_file.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(id_file, run_id)
        return _Store(uri, client, exp_id, run_id)


def _main_store(uri: str, experiment: str, exp_dir: Path) -> _Store:
    """The store at ``tracking.uri``. A server chooses the artifact location (one started with
    ``--artifacts-destination`` proxies uploads over HTTP); a database keeps them in ``<results>/mlartifacts``.

    The lock of a SQLite store lies beside the database, which every experiment of a results folder shares:
    MLflow creates its tables on first use, and first uses at once fail ("duplicate column name"); 7 of 8
    processes starting together on a new database lost their runs that way."""
    location = None if _is_server(uri) else (exp_dir.parent / "mlartifacts").resolve().as_uri()
    lock = exp_dir / ".mlflow.lock"
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        lock = db.with_name(f".{db.name}.lock")
    return _open_store(uri, experiment, exp_dir / "mlflow_parent_run_id", location, lock)


def _offline_store(folder: Path, experiment: str) -> _Store:
    """The offline store in ``folder`` (one node's): SQLite, artifacts and the parent run's id beside it."""
    db = (folder / "mlflow.db").resolve()
    location = (folder / "artifacts").resolve().as_uri()
    return _open_store(f"sqlite:///{db}", experiment, folder / "parent_run_id", location, folder / ".mlflow.db.lock")
