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
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import UncompletedJobError

from pipeline.atomic import write_text_atomic
from pipeline.config import Config, config_hash, load_config

__all__ = [
    "DistEnv",
    "DistributedJob",
    "distributed_env",
    "launch",
    "launch_array",
    "prepare_checkpoint_dir",
    "spread",
    "squeue_state",
]

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


def cpu_threads(local_world: int) -> int:
    """Threads for one task's CPU work: its share of the CPUs it can run on, never more than SLURM gave it.

    torch starts one thread per core it sees, in every process: 2 tasks on a 2-core laptop (the local
    executor) ran 4 threads on 2 cores, and 4 tasks on a node whose cgroup holds all their CPUs ran 4x the
    node's cores. Under SLURM a task gets ``SLURM_CPUS_PER_TASK`` (``launch.cpus_per_task``), capped by the
    CPUs it may use; elsewhere the tasks of a node share what the process sees. torchrun sets
    ``OMP_NUM_THREADS=1`` itself for the same reason.
    """
    visible = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        return max(1, min(int(os.environ["SLURM_CPUS_PER_TASK"]), visible))
    return max(1, visible // max(1, local_world))


def _limit_threads() -> None:
    """Apply :func:`cpu_threads` to this task, unless the user set ``OMP_NUM_THREADS``."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        log.info("%s CPU thread(s) per task (OMP_NUM_THREADS)", os.environ["OMP_NUM_THREADS"])
        return
    n = cpu_threads(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    os.environ["OMP_NUM_THREADS"] = str(n)  # read by torch (and numpy's BLAS) when first imported
    if "torch" in sys.modules:  # already imported (by unpickling): set it directly
        sys.modules["torch"].set_num_threads(n)
    log.info("%d CPU thread(s) per task (set OMP_NUM_THREADS to choose)", n)


def _drop_stale_result() -> None:
    """Remove this task's result file left by an earlier attempt of the same (requeued) job.

    When one node of a multi-node job dies, the tasks on the other nodes fail (their peer is gone)
    and submitit writes their errors as results; SLURM then requeues the job under the same id. In
    the new attempt those error files would still be there, and the launcher, which waits until
    every task has a result file, could read a surviving task's old error as soon as the others
    finished: each task removes its own before it starts.
    """
    try:
        stale = submitit.JobEnvironment().paths.result_pickle
    except (RuntimeError, KeyError):  # not in a submitit job (torchrun, a bare call)
        return
    if stale.exists():
        log.info("removing %s from an earlier attempt of this job", stale.name)
        stale.unlink(missing_ok=True)


class DistributedJob(submitit.helpers.Checkpointable):
    """Picklable callable run in every task: export the environment, load the config, call ``target``.

    ``target`` is ``"module:function"`` taking the :class:`Config` (and the arguments of the call, for
    the items of a job array); imported inside the task, so
    this module does not import the stages. Requeued after preemption / time-out (``checkpoint``
    from :class:`submitit.helpers.Checkpointable` resubmits the same call).
    """

    def __init__(self, target: str, config_paths: Sequence[str], workdir: str):
        self.target = target
        self.config_paths = [str(p) for p in config_paths]
        self.workdir = workdir

    def __call__(self, *args: Any) -> Any:
        os.chdir(self.workdir)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        _drop_stale_result()
        env = distributed_env()
        _limit_threads()
        log.info(
            "task rank %d/%d (local %d) master %s:%d",
            env.rank,
            env.world_size,
            env.local_rank,
            env.master_addr,
            env.master_port,
        )
        module, _, fn = self.target.partition(":")
        return getattr(importlib.import_module(module), fn)(load_config(self.config_paths), *args)


def slurm_available() -> bool:
    """A SLURM controller answers (not just: the client tools are installed)."""
    if not shutil.which("sbatch") or not shutil.which("sinfo"):
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=15).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _executor(
    cfg: Config,
    folder: Path,
    *,
    name: str,
    nodes: int,
    tasks_per_node: int,
    gpus_per_node: int,
    timeout_min: int,
    array_parallelism: int | None = None,
) -> tuple[submitit.Executor, str]:
    """submitit executor for SLURM or local processes; the cluster settings come from ``launch``."""
    kind = cfg.launch.executor
    if kind == "auto":
        kind = "slurm" if slurm_available() else "local"
        log.info("launch.executor auto -> %s", kind)
    lc = cfg.launch
    if kind == "slurm":
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=lc.max_requeues)
        params: dict[str, Any] = {
            "nodes": nodes,
            "tasks_per_node": tasks_per_node,
            "cpus_per_task": lc.cpus_per_task,
            "mem_gb": lc.mem_gb,
            "timeout_min": timeout_min,
            "slurm_signal_delay_s": lc.signal_delay_s,
            "name": name,
        }
        if gpus_per_node:
            params["gpus_per_node"] = gpus_per_node
        if array_parallelism:
            params["slurm_array_parallelism"] = array_parallelism
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(lc, key):
                params[f"slurm_{key}"] = getattr(lc, key)
        if lc.extra_sbatch:
            params["slurm_additional_parameters"] = dict(lc.extra_sbatch)
        ex.update_parameters(**params)
    else:
        if nodes != 1:
            msg = f"launch.nodes = {nodes}: the local executor runs on one node; use launch.executor: slurm"
            raise ValueError(msg)
        ex = submitit.AutoExecutor(folder=folder, cluster="local")
        ex.update_parameters(
            tasks_per_node=tasks_per_node,
            timeout_min=timeout_min,
            gpus_per_node=gpus_per_node,
            cpus_per_task=lc.cpus_per_task,
        )
    return ex, kind


# States after which a job will not produce a result (REQUEUED / PREEMPTED jobs come back).
TERMINAL = {"CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "COMPLETED"}
# States of a job SLURM may still run (again): while a job is in one, its tasks' result files do not count. When a
# node dies, the tasks on the other nodes fail and write their errors while the job is COMPLETING, and SLURM then
# requeues it under the same id: the launcher waits for that attempt instead of reporting the failed one.
LIVE = {
    "PENDING",
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "REQUEUED",
    "REQUEUE_FED",
    "REQUEUE_HOLD",
    "RESIZING",
    "SUSPENDED",
    "SIGNALING",
    "STAGE_OUT",
}


def squeue_state(job_id: str) -> str | None:
    """SLURM state from squeue (works without accounting; finished jobs stay listed for MinJobAge);
    None when squeue does not know the job."""
    if not shutil.which("squeue"):
        return None
    r = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    states = [s for s in r.stdout.split() if s]
    return states[0] if r.returncode == 0 and states else None


# What a checkpoint must agree with to be resumed: the model, the diffusion, the training settings but these (step
# count, logging, retention, loader workers), the data, the seed and the number of processes.
_NOT_TRAINING = frozenset(
    {"steps", "log_every", "val_every", "checkpoint_every", "keep_last", "keep_every", "num_workers", "val_clips"}
)
# Settings added since checkpoints were stamped with a hash only, newest first. A stamp written before a setting
# existed matches today's settings without it, where it is at its default: an upgrade that adds a setting must not
# archive a month of checkpoints and train afresh. (Stamps now hold the settings themselves; see _compatible.)
ADDED_SETTINGS = (
    "diffusion.sigmoid_bias",
    "train.zero3_persist_below",
    "train.shuffle_block",
    "data.codec",
    "train.compile",
    "diffusion.min_snr_gamma",
)


def _settings_tree(cfg: Config, drop: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The hashed settings (the stamp's layout since the first release), without the dotted keys in ``drop``."""

    def dump(section: str, exclude: frozenset[str] = frozenset(), mode: str = "python") -> dict[str, Any]:
        gone = {k.split(".", 1)[1] for k in drop if k.startswith(f"{section}.")}
        return getattr(cfg, section).model_dump(mode=mode, exclude=set(exclude | gone))

    return {
        "model": dump("model"),
        "diffusion": dump("diffusion"),
        "train": dump("train", _NOT_TRAINING),
        "data": config_hash(dump("data", mode="json")),
        "seed": cfg.seed,
        "world": cfg.launch.nodes * cfg.launch.tasks_per_node,
    }


def training_settings_hash(cfg: Config) -> str:
    """The hash of what a checkpoint must agree with to be resumed (not: step count, logging, retention)."""
    return config_hash(_settings_tree(cfg))


def training_settings(cfg: Config) -> dict[str, Any]:
    """The same settings, one JSON value per ``section.field`` (stored in the stamp beside the hash)."""
    out: dict[str, Any] = {"seed": cfg.seed, "world": cfg.launch.nodes * cfg.launch.tasks_per_node}
    for section in ("model", "diffusion", "train", "data"):
        dumped = getattr(cfg, section).model_dump(mode="json")
        out |= {f"{section}.{k}": v for k, v in dumped.items() if not (section == "train" and k in _NOT_TRAINING)}
    return out


def _default(cfg: Config, key: str) -> Any:
    """The schema's default of ``section.field`` as JSON (a marker that equals nothing where there is none)."""
    section, _, name = key.partition(".")
    model = getattr(cfg, section, None)
    field = type(model).model_fields.get(name) if model is not None else None
    if field is None or field.is_required():
        return object()
    value = field.get_default(call_default_factory=True)
    return json.loads(json.dumps(value.model_dump(mode="json") if hasattr(value, "model_dump") else value, default=str))


def _compatible(cfg: Config, stamp: dict[str, Any]) -> bool:
    """Whether checkpoints stamped ``stamp`` were made with ``cfg``'s training settings, up to settings added since
    at their defaults (a setting the stamp has and the code no longer knows is ignored)."""
    have = stamp.get("settings")
    if have is not None:
        want = training_settings(cfg)
        return all(have[k] == v if k in have else v == _default(cfg, k) for k, v in want.items())
    # a stamp with the hash alone: today's settings without the settings added since, where at their defaults
    want, hashes = training_settings(cfg), set()
    for i in range(len(ADDED_SETTINGS) + 1):
        dropped = ADDED_SETTINGS[:i]
        if all(want[k] == _default(cfg, k) for k in dropped):
            hashes.add(config_hash(_settings_tree(cfg, frozenset(dropped))))
    return stamp.get("hash") in hashes


def _write_stamp(path: Path, cfg: Config) -> None:
    """The stamp of checkpoints made with ``cfg``: the training settings and their hash."""
    write_text_atomic(path, json.dumps({"hash": training_settings_hash(cfg), "settings": training_settings(cfg)}))


def prepare_checkpoint_dir(cfg: Config) -> bool:
    """Keep checkpoints made with the same settings (resume); archive others. True if resuming."""
    d = cfg.checkpoint_dir
    stamp = d / "settings.json"
    if d.exists() and (d / "latest").exists():
        have = json.loads(stamp.read_text()) if stamp.exists() else {}
        if _compatible(cfg, have):
            if "settings" not in have:  # from now on the stamp holds the settings themselves
                _write_stamp(stamp, cfg)
            return True
        archive = d.with_name(f"checkpoints.old-{time.strftime('%Y%m%d-%H%M%S')}")
        log.warning("checkpoints in %s were made with other settings; moved to %s, training starts afresh", d, archive)
        d.rename(archive)
    d.mkdir(parents=True, exist_ok=True)
    _write_stamp(stamp, cfg)
    return False


def spread(processes: int, nodes: int) -> tuple[int, int]:
    """``(nodes, tasks per node)`` for ``processes`` tasks on at most ``nodes`` nodes, the same number on
    each: the largest common divisor (2 processes on 2 nodes: 2 x 1; 4 on 2: 2 x 2; 3 on 2: 1 x 3)."""
    n = math.gcd(processes, nodes)
    return n, processes // n


def launch(
    cfg: Config,
    config_paths: Sequence[str],
    target: str,
    stage: str,
    poll_s: float = 5.0,
    processes: int | None = None,
) -> list[Any]:
    """Submit (or reattach to) the job for ``stage`` and wait for all its tasks' results.

    The job has ``launch.nodes x launch.tasks_per_node`` tasks (training), or ``processes`` tasks
    (one GPU each when ``launch.gpus_per_node`` > 0) spread evenly over as many of ``launch.nodes``
    as divide them (:func:`spread`).
    """
    folder = (cfg.exp_dir / "submitit").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    job_file = cfg.exp_dir / f"{stage}_job.json"
    lc = cfg.launch
    nodes, per_node = (lc.nodes, lc.tasks_per_node) if processes is None else spread(processes, lc.nodes)
    gpus = lc.gpus_per_node if processes is None else (per_node if lc.gpus_per_node else 0)
    ex, kind = _executor(
        cfg,
        folder,
        name=f"{cfg.experiment}-{stage}",
        nodes=nodes,
        tasks_per_node=per_node,
        gpus_per_node=gpus,
        timeout_min=lc.timeout_min,
    )
    job = None
    if kind == "slurm" and job_file.exists():
        info = json.loads(job_file.read_text())
        state = squeue_state(info["job_id"])
        if state in LIVE:
            log.info("reattaching to SLURM job %s (%s) instead of submitting another", info["job_id"], state)
            job = submitit.SlurmJob(folder=folder, job_id=info["job_id"], tasks=tuple(range(info["tasks"])))
    if job is None:
        job = ex.submit(DistributedJob(target, config_paths, str(Path.cwd())))
        tasks = nodes * per_node
        write_text_atomic(job_file, json.dumps({"job_id": str(job.job_id), "executor": kind, "tasks": tasks}))
        log.info("submitted %s job %s (%d task(s)); logs in %s", kind, job.job_id, tasks, folder)

    _wait([job], kind, folder, poll_s)
    try:
        return job.results()
    except UncompletedJobError as e:  # with accounting, submitit itself may see the job end first
        msg = f"SLURM job {job.job_id} ended ({squeue_state(str(job.job_id)) or job.state}) without a result; logs in {folder}"
        raise RuntimeError(msg) from e


def _wait(jobs: Sequence[submitit.Job], kind: str, folder: Path, poll_s: float) -> None:
    """Wait for every job; cancel them all on Ctrl-C / SIGTERM; a SLURM job that ended without a
    result (cancelled, failed, timed out, node failure, gone) is an error instead of a wait forever."""

    def _cancel(signum: int, _frame: Any) -> None:
        log.warning("signal %d: cancelling job(s) %s", signum, ", ".join(str(j.job_id) for j in jobs))
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _cancel)
    if kind == "slurm":
        # without slurmdbd submitit's sacct calls fail on every poll; squeue below is the liveness check
        logging.getLogger("submitit").setLevel(logging.ERROR)
    finished: set[str] = set()
    try:
        while True:
            finished |= {
                str(j.job_id) for j in jobs if str(j.job_id) not in finished and _finished(j, kind, folder, poll_s)
            }
            if len(finished) == len(jobs):
                return
            time.sleep(poll_s if kind == "slurm" else 0.2)
    except KeyboardInterrupt:
        for job in jobs:
            job.cancel(check=False)
        raise
    finally:
        signal.signal(signal.SIGTERM, old)


def _finished(job: submitit.Job, kind: str, folder: Path, poll_s: float) -> bool:
    """Whether ``job`` is over with every task's result written. On SLURM, while squeue lists it in a :data:`LIVE`
    state, only if every task succeeded (a failed task's result may be that of an attempt SLURM is about to
    requeue); a job that ended without a result raises."""
    if kind != "slurm":
        return job.done()
    state = squeue_state(str(job.job_id))
    if state in LIVE:
        tasks = [job.task(i) for i in range(job.num_tasks)]
        return all(t.paths.result_pickle.exists() for t in tasks) and all(t.exception() is None for t in tasks)
    if job.done():
        return True
    if state is None or state in TERMINAL:
        time.sleep(poll_s)  # a result file written as the job ended
        if job.done():
            return True
        msg = f"SLURM job {job.job_id} ended ({state or 'left the queue'}) without a result; logs in {folder}"
        raise RuntimeError(msg)
    return False  # PREEMPTED: requeued soon, or cancelled (then TERMINAL)


def launch_array(
    cfg: Config,
    config_paths: Sequence[str],
    target: str,
    items: Sequence[tuple[Any, ...]],
    stage: str,
    poll_s: float = 5.0,
) -> list[Any]:
    """Run ``target(cfg, *item)`` for every item as one submitit job array and return the results in order.

    On SLURM: one ``sbatch --array`` with ``evaluate.array_parallelism`` tasks at once, one GPU each
    when ``launch.gpus_per_node`` > 0. Locally: the same tasks as subprocesses,
    ``array_parallelism`` at a time. A task that fails raises here after the others finished.
    """
    if not items:
        return []
    folder = (cfg.exp_dir / "submitit").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    par = cfg.evaluate.array_parallelism
    ex, kind = _executor(
        cfg,
        folder,
        name=f"{cfg.experiment}-{stage}",
        nodes=1,
        tasks_per_node=1,
        gpus_per_node=1 if cfg.launch.gpus_per_node else 0,
        timeout_min=cfg.evaluate.timeout_min,
        array_parallelism=par,
    )
    fn = DistributedJob(target, config_paths, str(Path.cwd()))
    columns = list(zip(*items, strict=True))
    jobs: list[submitit.Job] = []
    if kind == "slurm":
        jobs = ex.map_array(fn, *columns)
        log.info("submitted SLURM job array %s: %d task(s), %d at a time", jobs[0].job_id.split("_")[0], len(jobs), par)
        _wait(jobs, kind, folder, poll_s)
    else:  # the local executor starts every job at once: submit in groups
        for i in range(0, len(items), par):
            group = ex.map_array(fn, *(c[i : i + par] for c in columns))
            log.info("local array tasks %d-%d of %d", i + 1, i + len(group), len(items))
            jobs += group
            _wait(group, kind, folder, poll_s)
    errors = []
    results = []
    for item, job in zip(items, jobs, strict=True):
        try:
            results.append(job.result())
        except Exception as e:
            errors.append(f"{item}: job {job.job_id}: {str(e).strip().splitlines()[-1] if str(e).strip() else e!r}")
    if errors:
        msg = f"{len(errors)} of {len(items)} {stage} task(s) failed (logs in {folder}):\n" + "\n".join(errors)
        raise RuntimeError(msg)
    return results
