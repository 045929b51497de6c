"""MLflow: the only module that imports mlflow.

One parent run per experiment, one child run per stage execution. The parent run id is kept in
``<results>/<experiment>/mlflow_parent_run_id`` so a stage started later, on another node,
attaches to it. Tracking never stops a stage: if the store cannot be reached, every call becomes
a no-op and the log says so once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pipeline.atomic import write_text_atomic

__all__ = ["StageRun", "flatten", "stage_run"]

log = logging.getLogger(__name__)

# Fail fast against an unreachable server instead of retrying for minutes.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


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


def _reachable(uri: str) -> bool:
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


class StageRun:
    """A child run; every method swallows tracking errors (logged once) so the stage goes on."""

    def __init__(self, client: Any | None, run_id: str | None, parent_id: str | None):
        self.client = client
        self.run_id = run_id
        self.parent_id = parent_id
        self._warned = False

    @property
    def active(self) -> bool:
        return self.client is not None and self.run_id is not None

    def _guard(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Call ``client.<method>(*args)`` if tracking is active; log the first failure only."""
        if not self.active:
            return
        what = method
        try:
            getattr(self.client, method)(*args, **kwargs)
        except Exception as e:
            if not self._warned:
                log.warning(
                    "MLflow %s failed (%s: %s); the stage continues without tracking", what, type(e).__name__, e
                )
                self._warned = True

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = flatten(params)
        items = [Param(k, v) for k, v in sorted(flat.items())]
        for i in range(0, len(items), 100):  # MLflow batch limit
            self._guard("log_batch", self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self._guard("log_batch", self.run_id, metrics=items[i : i + 1000])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for k, v in tags.items():
            self._guard("set_tag", self.run_id, k, str(v))

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        self._guard("log_artifact", self.run_id, str(path), artifact_path)

    def log_to_parent(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """An artifact of the experiment's parent run (sweep tables, summary plots)."""
        if self.parent_id is not None:
            self._guard("log_artifact", self.parent_id, str(path), artifact_path)

    def log_dict(self, data: Mapping[str, Any], name: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / name
            p.write_text(json.dumps(data, indent=2, default=str))
            self.log_artifact(p)


def _lock(path: Path) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    f = path.open("a+")
    fcntl.flock(f, fcntl.LOCK_EX)
    return f


def _parent_run(client: Any, exp_dir: Path, experiment: str, artifact_root: Path | None) -> tuple[str, str]:
    """Experiment id and the parent run id (created once, under a file lock, and kept).

    ``artifact_root`` None: the tracking server chooses (a server started with
    ``--artifacts-destination`` stores them and proxies uploads over HTTP)."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        try:
            location = artifact_root.resolve().as_uri() if artifact_root is not None else None
            exp_id = client.create_experiment(experiment, artifact_location=location)
        except Exception:
            exp_id = client.get_experiment_by_name(experiment).experiment_id
    else:
        exp_id = exp.experiment_id
    id_file = exp_dir / "mlflow_parent_run_id"
    with contextlib.closing(_lock(exp_dir / ".mlflow.lock")):
        if id_file.exists():
            run_id = id_file.read_text().strip()
            try:
                run = client.get_run(run_id)
                if run.info.experiment_id == exp_id and run.info.lifecycle_stage == "active":
                    return exp_id, run_id
            except Exception:
                pass
        run = client.create_run(exp_id, run_name=experiment, tags={"pipeline.role": "experiment"})
        write_text_atomic(id_file, run.info.run_id)
        return exp_id, run.info.run_id


@contextlib.contextmanager
def stage_run(
    uri: str,
    experiment: str,
    exp_dir: Path,
    stage: str,
    *,
    enabled: bool = True,
    rank: int = 0,
    run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
    run_name: str | None = None,
) -> Iterator[StageRun]:
    """Open (or, with ``run_id``, reopen) a child run of the experiment's parent run.

    Only rank 0 tracks; other ranks and an unreachable store get an inactive :class:`StageRun`.
    The run ends FINISHED, or FAILED / KILLED if the stage raised.
    """
    if not enabled or rank != 0:
        yield StageRun(None, None, None)
        return
    client = None
    child = None
    parent = None
    try:
        if not _reachable(uri):
            raise ConnectionError(f"no MLflow server answers at {uri}")
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        server = uri.startswith(("http://", "https://"))
        artifacts = None if server else Path(exp_dir).parent / "mlartifacts"
        exp_id, parent = _parent_run(client, exp_dir, experiment, artifacts)
        client.update_run(parent, status="RUNNING")
        if run_id is not None:
            client.update_run(run_id, status="RUNNING")
            child = run_id
        else:
            run_tags = {
                "mlflow.parentRunId": parent,
                "pipeline.stage": stage,
                **{k: str(v) for k, v in (tags or {}).items()},
            }
            child = client.create_run(exp_id, run_name=run_name or stage, tags=run_tags).info.run_id
        log.info("MLflow: stage run %s under parent %s at %s", child, parent, uri)
    except Exception as e:
        log.warning("MLflow tracking unavailable (%s: %s); the stage runs without it", type(e).__name__, e)
        client = None
    run = StageRun(client, child, parent)
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
        run._guard("set_terminated", child, status)
        if parent is not None and run.active:
            run._guard("update_run", parent, "FINISHED")
