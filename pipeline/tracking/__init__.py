"""MLflow: the only package that imports mlflow (split by concern: :mod:`.server`, :mod:`.stores`, :mod:`.runs`,
:mod:`.system`, :mod:`.stage`, :mod:`.sync`).

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

from pipeline.tracking.runs import StageRun
from pipeline.tracking.server import MODES, OFFLINE_DIR, LoginRefused, TrackingError, check_login, flatten, redact_uri
from pipeline.tracking.stage import RunTarget, stage_run
from pipeline.tracking.sync import SyncReport, sync

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
