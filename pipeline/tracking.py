"""MLflow: the only module that imports mlflow.

One parent run per experiment, one child run per stage execution. The parent run id is kept in
``<results>/<experiment>/mlflow_parent_run_id`` so a stage started later, on another node, attaches to
it. An outage of the store never stops a stage (a refused login does, see below). ``tracking.mode`` says where
a stage logs:

- ``online``: ``tracking.uri`` only; if it cannot be reached the stage runs untracked and its log says so.
- ``offline``: the experiment's offline stores, ``<results>/<experiment>/mlflow-offline/<hostname>/``: one
  SQLite MLflow store per node (``mlflow.db``, ``artifacts/``, its own parent run, id in ``parent_run_id``), so
  the processes that write one database always share a machine, never only a network filesystem.
- ``auto`` (the default): online when ``tracking.uri`` answers as the stage starts (a SQLite file always does),
  offline otherwise. A write that fails mid-run for an outage (server down, database busy past its timeout)
  opens an offline *continuation* run, tagged with the run it continues, and the rest of the run goes there;
  when the stage ends and the server answers again it is pushed at once, else by :func:`sync`.

:func:`sync` (``python -m pipeline mlflow-sync``) pushes the offline stores to ``tracking.uri``. Their parent
runs are merged into the server's parent (the one ``mlflow_parent_run_id`` names, created there if there is
none), so later online stages attach to that same parent. Any other offline run goes to the run its
continuation tag names (a server run, or another offline run's server run: a training resumed offline on
another node), else to the server run tagged with its id (``pipeline.offline_run_id``), else to a new server
run created with that tag. Only what the server run lacks is sent: missing params, changed tags, metric values
whose (key, step, timestamp, value) it does not hold, artifacts it lacks or holds at another size. A second
sync therefore sends nothing, and a sync killed midway is finished by the next one. An offline run that had
ended when it was pushed is tagged ``pipeline.sync.done`` and skipped afterwards.

A server that answers but refuses the login (HTTP 401: no or wrong credentials; 403: the user lacks the
permission) is not an outage: :class:`LoginRefused` is raised wherever the server is asked (modes online and
auto as the stage starts, :func:`check_login`, which the CLI calls before a stage does any work, and
:func:`sync`, which pushes mode offline's runs), naming where the credentials come from:
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` in the environment, or ``~/.mlflow/credentials``,
never ``tracking.uri`` (refused there, by the config and by this module). Every URI this module writes to a log
or an error goes through :func:`redact_uri`.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import json
import logging
import math
import os
import re
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pipeline.atomic import write_text_atomic

__all__ = [
    "MODES",
    "OFFLINE_DIR",
    "LoginRefused",
    "RunTarget",
    "StageRun",
    "SyncReport",
    "TrackingError",
    "check_login",
    "flatten",
    "redact_uri",
    "stage_run",
    "sync",
]

log = logging.getLogger(__name__)

# Fail fast against an unreachable server instead of retrying for minutes.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

MODES = ("online", "offline", "auto")
OFFLINE_DIR = "mlflow-offline"
ROLE_TAG = "pipeline.role"  # "experiment" on the parent runs

# The MLflow UI opens a model-training experiment on its runs table (not the GenAI overview).
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
NOTE_TAG = "mlflow.note.content"  # a run's description in the UI
PARENT_NOTE = (
    "Experiment {experiment}: a video diffusion model trained and evaluated on climate data. Every stage is a child "
    "run (prepare, normalise, train, references, evaluate per sweep point, select-points, collect-eval, sample); "
    "collect-eval "
    "writes here whether the best point beats climatology and persistence, with its scorecard."
)
STAGE_NOTES = {
    "prepare": "Regridding of the source files into the chunked zarr store (data.grid, data.variables).",
    "normalise": "Area-weighted training-period statistics and the normalised store.",
    "train": "DeepSpeed training of the video diffusion model: losses, learning rate, validation, checkpoints.",
    "references": "A reference forecast (climatology or persistence) scored on the sweep's validation or test clips.",
    "evaluate": "One sweep point (checkpoint x sampler x steps x guidance weight) scored on the validation clips "
    "(every point) or the test clips (the points chosen on validation).",
    "select-points": "The best point chosen on the validation clips (selection.json); no test score is read.",
    "collect-eval": "The chosen point reported on the test clips: table, intervals, scorecard, best.json.",
    "sample": "Samples of the best checkpoint, compared with the real climate (realism.json, maps, animations).",
    "distill": "Progressive distillation: each round a student with half the sampling steps (losses, validation).",
}
OFFLINE_ID_TAG = "pipeline.offline_run_id"  # on a server run: the offline run it was created from
TARGET_TAG = "pipeline.sync.target"  # on an offline run: the run it continues
NODE_TAG = "pipeline.sync.node"  # on an offline run that only holds one node's system metrics of its target
DONE_TAG = "pipeline.sync.done"  # on an offline run: the server run it was completely pushed to
_NOT_COPIED = frozenset({"mlflow.parentRunId", OFFLINE_ID_TAG, TARGET_TAG, NODE_TAG, DONE_TAG})


class TrackingError(RuntimeError):
    """The tracking server is needed (mlflow-sync) and does not answer, or it refuses the login."""


class LoginRefused(TrackingError):
    """``tracking.uri`` answers but refuses this process: HTTP 401 (no or wrong credentials) or 403 (the user
    lacks the permission). An error in every mode, raised before the stage works: never an outage, never a
    silently untracked stage."""


# the password of a URI's user info: scheme://user:<password>@host (the host's port has no '@' after it)
_URI_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@'\"]*):[^/\s'\"]*@")
_HOW_TO_LOG_IN = (
    "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD in the environment of every stage (compute nodes "
    "too: SLURM jobs get the submitting shell's environment unless --export says otherwise), or put them in "
    "~/.mlflow/credentials (mlflow_tracking_username = ... and mlflow_tracking_password = ... under [mlflow]); "
    "never in tracking.uri"
)


def redact_uri(text: str) -> str:
    """``text`` (a URI, or a message naming URIs) with the password of every URI replaced by ``***``:
    ``http://alice:***@host:5000``. Everything this module logs or raises about a URI goes through here."""
    return _URI_PASSWORD.sub(r"\1:***@", text)


def _no_credentials(uri: str) -> None:
    """Refuse credentials in ``uri`` (a password; for a server, a user too), as the config does: they would be
    written wherever the URI is, and a URI's user overrides the one MLflow sends from the environment."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is not None or (_is_server(uri) and parts.username):
        msg = f"tracking.uri = {redact_uri(uri)!r}: credentials do not belong in the URI; {_HOW_TO_LOG_IN}"
        raise TrackingError(msg)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as ``a.b.c`` -> string value (MLflow params are strings, <= 6000 chars)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = (json.dumps(v, default=str) if isinstance(v, list | tuple) else str(v))[:6000]
    return out


def _is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _credentials() -> tuple[str | None, str]:
    """The user this process logs in as (MLflow's own lookup: environment, then ~/.mlflow/credentials) and
    where that comes from, in words."""
    from mlflow.utils.credentials import read_mlflow_creds

    creds = read_mlflow_creds()
    if creds.username and creds.password:
        env = os.environ.get("MLFLOW_TRACKING_USERNAME") and os.environ.get("MLFLOW_TRACKING_PASSWORD")
        where = "MLFLOW_TRACKING_USERNAME/PASSWORD" if env else "~/.mlflow/credentials"
        return creds.username, f"user {creds.username!r} from {where}"
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return None, "the token in MLFLOW_TRACKING_TOKEN"
    if creds.username or creds.password:
        return creds.username, "a username without a password, or a password without a username"
    return None, "no credentials (neither MLFLOW_TRACKING_USERNAME/PASSWORD nor ~/.mlflow/credentials is set)"


def _auth_headers() -> dict[str, str]:
    """The Authorization header MLflow's client sends (basic auth, else a bearer token), for the health probe:
    a server behind an authenticating proxy may refuse even /health without it."""
    from mlflow.utils.credentials import read_mlflow_creds

    creds = read_mlflow_creds()
    if creds.username and creds.password:
        return {"Authorization": "Basic " + base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()}
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _refusal(e: BaseException) -> int | None:
    """401 or 403 if ``e`` is the server refusing the login or the permission, else None."""
    from mlflow.exceptions import MlflowException

    if isinstance(e, MlflowException):
        status = e.get_http_status_code()
    elif isinstance(e, urllib.error.HTTPError):
        status = e.code
    else:
        return None
    return status if status in (401, 403) else None


def _refused(uri: str, status: int, e: BaseException) -> LoginRefused:
    user, who = _credentials()
    detail = redact_uri(str(e)).splitlines()[0][:300] if str(e) else type(e).__name__
    where = f"tracking.uri = {redact_uri(uri)!r}"
    if status == 401:
        msg = f"{where}: the MLflow server refused the login, with {who} (HTTP 401: {detail})"
        return LoginRefused(f"{msg}. To log in, {_HOW_TO_LOG_IN}")
    msg = (
        f"{where}: the MLflow server denied the permission to {who} (HTTP 403: {detail}); its admin can grant user "
        f"{user!r} EDIT on the experiment, or log in as a user who has it: {_HOW_TO_LOG_IN}"
    )
    return LoginRefused(msg)


@contextlib.contextmanager
def _refusals(uri: str) -> Iterator[None]:
    """Raise a refused login or permission met inside as :class:`LoginRefused`; anything else as it is."""
    try:
        yield
    except LoginRefused:
        raise
    except Exception as e:
        status = _refusal(e)
        if status is None:
            raise
        raise _refused(uri, status, e) from e


def _reachable(uri: str) -> bool:
    """Whether the store answers (a database always does; a server's /health, with this process's credentials).
    A server that refuses them there raises :class:`LoginRefused`: it answers."""
    if not _is_server(uri):
        return True
    request = urllib.request.Request(uri.rstrip("/") + "/health", headers=_auth_headers())
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status == 200
    except urllib.error.HTTPError as e:
        status = _refusal(e)
        if status is not None:
            raise _refused(uri, status, e) from e
        return False
    except OSError:
        return False


def check_login(target: RunTarget) -> None:
    """Raise :class:`LoginRefused` if ``target.uri`` answers but refuses this process's credentials: the CLI
    calls this before a stage does any work or submits a job. Nothing happens with tracking off, in mode
    offline, for a database URI, or when the server does not answer (the stage then goes on as its mode says)."""
    if not target.enabled:
        return
    _no_credentials(target.uri)
    if target.mode == "offline" or not _is_server(target.uri) or not _reachable(target.uri):
        return
    from mlflow.tracking import MlflowClient

    try:
        with _refusals(target.uri):
            MlflowClient(tracking_uri=target.uri).get_experiment_by_name(target.experiment)
    except LoginRefused:
        raise
    except Exception as e:  # an outage: the stage's own start decides, as its mode says
        log.debug("MLflow login check: %s", redact_uri(f"{type(e).__name__}: {e}"))


def _outage(e: Exception) -> bool:
    """A failure worth buffering (no answer, server or database trouble), not a refused request."""
    from mlflow.exceptions import MlflowException

    return not isinstance(e, MlflowException) or e.get_http_status_code() >= 500


def _missing(e: Exception) -> bool:
    from mlflow.exceptions import MlflowException

    return isinstance(e, MlflowException) and e.error_code == "RESOURCE_DOES_NOT_EXIST"


def _terminal(run: Any) -> bool:
    from mlflow.entities import RunStatus

    return RunStatus.is_terminated(RunStatus.from_string(run.info.status))


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


class _SystemMetrics:
    """MLflow's system-metrics monitors (CPU and memory, disk, network; NVIDIA GPU utilisation and memory with
    nvidia-ml-py, AMD with pyrsmi), as ``mlflow.system_metrics.SystemMetricsMonitor`` builds them, sampled every
    ``interval`` s by a thread and logged through a :class:`StageRun`, so they follow its mode (offline,
    buffered) instead of a client bound to one run id. One aggregate per window, ``system/[<node>/]<name>`` at
    steps 0, 1, ...; the last, partial window is logged when the stage ends."""

    def __init__(self, run: StageRun, interval: float, node_id: str | None):
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL / _SAMPLES_BEFORE_LOGGING / _NODE_ID override these, as in MLflow.
        # The run's store URI is for the client it builds and we leave unused: MLflow's default creates ./mlflow.db.
        self._monitor = SystemMetricsMonitor(
            run.run_id, sampling_interval=interval, node_id=node_id, tracking_uri=run.uri
        )
        self._prefix = "system/" + (f"{self._monitor.node_id}/" if self._monitor.node_id else "")
        self._run = run
        self._step = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="system-metrics", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        m = self._monitor
        while True:
            for _ in range(m.samples_before_logging):
                m.collect_metrics()
                if self._stop.wait(m.sampling_interval):
                    self._publish()
                    return
            self._publish()

    def _publish(self) -> None:
        values = self._monitor.aggregate_metrics()
        for monitor in self._monitor.monitors:
            monitor.clear_metrics()
        if values:
            self._run.log_metrics({self._prefix + k: v for k, v in values.items()}, step=self._step)
            self._step += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _node_run(run: StageRun, rank: int, uri: str, spec: _RunSpec) -> tuple[StageRun, str | None]:
    """The run that this process logs its node's system metrics to, and the node's id (None on one node).

    Rank 0: its own run. Across nodes (torch.distributed initialised, WORLD_SIZE > LOCAL_WORLD_SIZE) every rank
    must call this together: rank 0 broadcasts where its run logs, and local rank 0 of each other node logs to
    that run (online), or to its own offline run continuing it; other ranks get an inactive run."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if world <= per_node:
        return (run if rank == 0 else StageRun()), None
    import torch.distributed as dist

    if not dist.is_initialized():
        return (run if rank == 0 else StageRun()), None
    where = [(run.mode, run.run_id) if rank == 0 and run.active else None]
    dist.broadcast_object_list(where, src=0)
    node_id = f"node{rank // per_node}"
    if rank == 0:
        return run, node_id
    if where[0] is None or int(os.environ.get("LOCAL_RANK", "0")) != 0:
        return StageRun(), node_id
    mode, run_id = where[0]
    node = {NODE_TAG: node_id}
    if mode == "online":  # a node that cannot reach the server buffers its own metrics offline
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        return StageRun(client, run_id, uri=uri, fallback=lambda: _open_offline(spec, run_id, node)), node_id
    store, child = _open_offline(spec, run_id, node)
    return StageRun(store.client, child, store.parent_id, uri=store.uri, mode="offline"), node_id


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
