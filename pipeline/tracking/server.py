"""The tracking store as a service: where it is (database or server), whether it answers, whether it lets
this process in (credentials from the environment or ~/.mlflow/credentials, never the URI), the errors that
say so, and the tags and notes every run carries."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.tracking.stage import RunTarget

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
