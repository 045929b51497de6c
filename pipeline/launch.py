"""Launching distributed stages with submitit: the only module that imports submitit.

One code path for a laptop, CI and a cluster: a stage function runs in ``nodes x tasks_per_node``
processes, started by submitit's SLURM executor (sbatch) or its local executor (subprocesses). Inside
each process the distributed environment (rank, local rank, world size, master address and port) is
exported from SLURM / submitit before the stage initialises torch.distributed; under torchrun the
variables are already there; a bare ``python`` call gets a one-process default.

The job is checkpointable: on preemption or time-out SLURM requeues it and the stage resumes from
its last checkpoint. The submitted job's id is kept in ``<exp>/<stage>_job.json``: a restarted
Snakemake reattaches to a job that is still queued or running instead of submitting another, and
cancelling (Ctrl-C / SIGTERM to the launcher) cancels the job.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from pipeline.atomic import write_text_atomic
from pipeline.config import Config, config_hash, load_config

__all__ = ["DistEnv", "DistributedJob", "distributed_env", "launch", "prepare_checkpoint_dir"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def distributed_env() -> DistEnv:
    """Export and return the distributed environment: submitit/SLURM, torchrun, or one process."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:
        pass  # torchrun, or already exported
    elif "SUBMITIT_EXECUTOR" in os.environ or "SLURM_JOB_ID" in os.environ:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    else:
        os.environ.update(
            RANK="0",
            LOCAL_RANK="0",
            WORLD_SIZE="1",
            LOCAL_WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(_free_port()),
        )
    return DistEnv(
        int(os.environ["RANK"]),
        int(os.environ.get("LOCAL_RANK", "0")),
        int(os.environ["WORLD_SIZE"]),
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
    )


class DistributedJob(submitit.helpers.Checkpointable):
    """Picklable callable run in every task: export the environment, load the config, call ``target``.

    ``target`` is ``"module:function"`` taking the :class:`Config`; imported inside the task, so
    this module does not import the stages. Requeued after preemption / time-out (``checkpoint``
    from :class:`submitit.helpers.Checkpointable` resubmits the same call).
    """

    def __init__(self, target: str, config_paths: Sequence[str], workdir: str):
        self.target = target
        self.config_paths = [str(p) for p in config_paths]
        self.workdir = workdir

    def __call__(self) -> Any:
        os.chdir(self.workdir)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        env = distributed_env()
        log.info(
            "task rank %d/%d (local %d) master %s:%d",
            env.rank,
            env.world_size,
            env.local_rank,
            env.master_addr,
            env.master_port,
        )
        module, _, fn = self.target.partition(":")
        return getattr(importlib.import_module(module), fn)(load_config(self.config_paths))


def slurm_available() -> bool:
    """A SLURM controller answers (not just: the client tools are installed)."""
    if not shutil.which("sbatch") or not shutil.which("sinfo"):
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=15).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _executor(cfg: Config, folder: Path) -> tuple[submitit.Executor, str]:
    kind = cfg.launch.executor
    if kind == "auto":
        kind = "slurm" if slurm_available() else "local"
        log.info("launch.executor auto -> %s", kind)
    lc = cfg.launch
    if kind == "slurm":
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=lc.max_requeues)
        params: dict[str, Any] = {
            "nodes": lc.nodes,
            "tasks_per_node": lc.tasks_per_node,
            "cpus_per_task": lc.cpus_per_task,
            "mem_gb": lc.mem_gb,
            "timeout_min": lc.timeout_min,
            "slurm_signal_delay_s": lc.signal_delay_s,
            "name": f"{cfg.experiment}-train",
        }
        if lc.gpus_per_node:
            params["gpus_per_node"] = lc.gpus_per_node
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(lc, key):
                params[f"slurm_{key}"] = getattr(lc, key)
        if lc.extra_sbatch:
            params["slurm_additional_parameters"] = dict(lc.extra_sbatch)
        ex.update_parameters(**params)
    else:
        if lc.nodes != 1:
            msg = f"launch.nodes = {lc.nodes}: the local executor runs on one node; use launch.executor: slurm"
            raise ValueError(msg)
        ex = submitit.AutoExecutor(folder=folder, cluster="local")
        ex.update_parameters(
            tasks_per_node=lc.tasks_per_node,
            timeout_min=lc.timeout_min,
            gpus_per_node=lc.gpus_per_node,
            cpus_per_task=lc.cpus_per_task,
        )
    return ex, kind


# States after which a job will not produce a result (REQUEUED / PREEMPTED jobs come back).
TERMINAL = {"CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "COMPLETED"}


def _squeue_state(job_id: str) -> str | None:
    """SLURM state from squeue (works without accounting; finished jobs stay listed for MinJobAge);
    None when squeue does not know the job."""
    if not shutil.which("squeue"):
        return None
    r = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", job_id.split("_")[0], "-o", "%T"], capture_output=True, text=True
    )
    states = [s for s in r.stdout.split() if s]
    return states[0] if r.returncode == 0 and states else None


def training_settings_hash(cfg: Config) -> str:
    """What a checkpoint must agree with to be resumed (not: step count, logging, retention)."""
    keep = cfg.train.model_dump(
        exclude={
            "steps",
            "log_every",
            "val_every",
            "checkpoint_every",
            "keep_last",
            "keep_every",
            "num_workers",
            "val_clips",
        }
    )
    return config_hash(
        {
            "model": cfg.model.model_dump(),
            "diffusion": cfg.diffusion.model_dump(),
            "train": keep,
            "data": config_hash(cfg.data),
            "seed": cfg.seed,
            "world": cfg.launch.nodes * cfg.launch.tasks_per_node,
        }
    )


def prepare_checkpoint_dir(cfg: Config) -> bool:
    """Keep checkpoints made with the same settings (resume); archive others. True if resuming."""
    d = cfg.checkpoint_dir
    stamp = d / "settings.json"
    want = training_settings_hash(cfg)
    if d.exists() and (d / "latest").exists():
        have = json.loads(stamp.read_text()).get("hash") if stamp.exists() else None
        if have == want:
            return True
        archive = d.with_name(f"checkpoints.old-{time.strftime('%Y%m%d-%H%M%S')}")
        log.warning("checkpoints in %s were made with other settings; moved to %s, training starts afresh", d, archive)
        d.rename(archive)
    d.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"hash": want}))
    return False


def launch(cfg: Config, config_paths: Sequence[str], target: str, stage: str, poll_s: float = 5.0) -> list[Any]:
    """Submit (or reattach to) the job for ``stage`` and wait for all its tasks' results."""
    folder = (cfg.exp_dir / "submitit").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    job_file = cfg.exp_dir / f"{stage}_job.json"
    ex, kind = _executor(cfg, folder)
    job = None
    if kind == "slurm" and job_file.exists():
        info = json.loads(job_file.read_text())
        state = _squeue_state(info["job_id"])
        if state in ("PENDING", "RUNNING", "CONFIGURING", "REQUEUED", "SUSPENDED", "COMPLETING"):
            log.info("reattaching to SLURM job %s (%s) instead of submitting another", info["job_id"], state)
            job = submitit.SlurmJob(folder=folder, job_id=info["job_id"], tasks=tuple(range(info["tasks"])))
    if job is None:
        job = ex.submit(DistributedJob(target, config_paths, str(Path.cwd())))
        tasks = cfg.launch.nodes * cfg.launch.tasks_per_node
        write_text_atomic(job_file, json.dumps({"job_id": str(job.job_id), "executor": kind, "tasks": tasks}))
        log.info("submitted %s job %s (%d task(s)); logs in %s", kind, job.job_id, tasks, folder)

    def _cancel(signum: int, _frame: Any) -> None:
        log.warning("signal %d: cancelling job %s", signum, job.job_id)
        job.cancel(check=False)
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _cancel)
    if kind == "slurm":
        # without slurmdbd submitit's sacct calls fail on every poll; squeue below is the liveness check
        logging.getLogger("submitit").setLevel(logging.ERROR)
    try:
        while not job.done():
            state = _squeue_state(str(job.job_id)) if kind == "slurm" else None
            if kind == "slurm" and (state is None or state in TERMINAL):
                # ended (cancelled, failed, timed out, node failure) or gone: submitit alone would wait forever
                time.sleep(poll_s)
                if not job.done():
                    msg = (
                        f"SLURM job {job.job_id} ended ({state or 'left the queue'}) without a result; logs in {folder}"
                    )
                    raise RuntimeError(msg)
            time.sleep(poll_s if kind == "slurm" else 0.2)
        return job.results()
    except KeyboardInterrupt:
        job.cancel(check=False)
        raise
    finally:
        signal.signal(signal.SIGTERM, old)
