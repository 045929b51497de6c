"""System metrics (CPU, memory, disk, network, GPUs) of every node of a stage, logged through its run."""

from __future__ import annotations

import logging
import os
import threading

from pipeline.tracking.runs import StageRun, _open_offline, _RunSpec
from pipeline.tracking.server import NODE_TAG

log = logging.getLogger(__name__)


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
