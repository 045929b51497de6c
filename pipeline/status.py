"""``python -m pipeline status``: where an experiment stands, read from its files and the scheduler.

Per stage: ``done`` (its output exists), ``running`` (a job that is alive, a process holding a store's lock,
or a temporary output being written), ``stopped`` (training started but no job runs: it resumes when the stage
is rerun; or a store's replacement was interrupted), ``partial`` (some of the sweep's points, or of a store's
parts) or ``missing``;
the training job's state, last step and loss; the sweep's points done out of all; the best point's
verdict against climatology; and the SLURM jobs of this user in flight (``squeue``, which works without
accounting). Nothing is written and nothing is submitted (a store's lock is probed, for an instant, where it is free).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pipeline.atomic import temporaries
from pipeline.checkpoints import students_index
from pipeline.config import Config
from pipeline.launch import TERMINAL, squeue_state

__all__ = ["StageStatus", "experiment_status", "format_status", "slurm_jobs"]


@dataclass
class StageStatus:
    stage: str
    state: str  # done | running | stopped | partial | missing
    detail: str = ""


def _writing(path: Path) -> bool:
    """A temporary sibling (:func:`pipeline.atomic.temporary`, how every output is written) exists: being written
    or killed."""
    return bool(temporaries(path))


def _output(stage: str, path: Path, detail: str = "") -> StageStatus:
    if path.exists():
        return StageStatus(stage, "done", detail or str(path))
    if _writing(path):
        return StageStatus(stage, "running", f"{path.name} is being written (or was killed while written)")
    return StageStatus(stage, "missing", str(path))


def _store(stage: str, store: Path, out: Path) -> StageStatus:
    """A store built in parts (prepare, normalise; ``out`` says it is done): ``running`` while a process holds its
    lock (named), ``stopped`` where its replacement was interrupted (``.<name>.old-*`` left beside it: the next run
    of the stage removes it), ``partial`` while a new build has parts left, else as :func:`_output`."""
    from pipeline.data.lock import busy, leftovers

    holder = busy(store)
    if holder:
        return StageStatus(stage, "running", f"{store.name} is being written by {holder}")
    old = [p.name for p in leftovers(store) if ".old-" in p.name]
    if old:
        why = f"a replacement of {store.name} was interrupted ({old[0]} left)"
        return StageStatus(stage, "stopped", f"{why}; rerun the stage (or its --finalise): it finishes and cleans up")
    parts = store.with_name(f"{store.stem}.parts")
    if (parts / "store.zarr").is_dir() and (parts / "init.json").is_file():
        plan = json.loads((parts / "init.json").read_text())
        n = len(plan["parts"])
        markers = [parts / f"part-{k:04d}.done" for k in range(n)]
        done = sum(1 for m in markers if m.is_file() and json.loads(m.read_text()).get("build") == plan["build"])
        then = "--finalise" if done == n else "the missing --part N, then --finalise"
        return StageStatus(stage, "partial", f"{done} of {n} parts of a new {store.name} built; {then} (or the stage)")
    return _output(stage, out)


def _job_alive(info: dict) -> tuple[bool, str]:
    """Whether the training job recorded in train_job.json is alive, and its state in words."""
    job = str(info.get("job_id", ""))
    if info.get("executor") == "local":
        alive = job.isdigit() and Path(f"/proc/{job}").exists()
        return alive, f"local process {job} {'running' if alive else 'ended'}"
    state = squeue_state(job)
    if state is None:
        return False, f"SLURM job {job} unknown to squeue (ended)"
    return state not in TERMINAL, f"SLURM job {job} {state}"


def _last_log(path: Path) -> dict | None:
    if not path.exists():
        return None
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    return json.loads(lines[-1]) if lines else None


def _train(cfg: Config) -> StageStatus:
    last = _last_log(cfg.exp_dir / "train_log.jsonl")
    progress = f"step {last['step']} of {cfg.train.steps}, loss {last['loss']:.4g}" if last else "no step logged"
    if cfg.final_checkpoint.exists():
        return StageStatus("train", "done", progress)
    job_file = cfg.exp_dir / "train_job.json"
    if job_file.exists():
        alive, words = _job_alive(json.loads(job_file.read_text()))
        if alive:
            return StageStatus("train", "running", f"{words}; {progress}")
        return StageStatus("train", "stopped", f"{words}; {progress}; rerun the stage to resume")
    return StageStatus("train", "missing", progress if last else "")


def _evaluate(cfg: Config, split: str) -> StageStatus:
    """The sweep's points on the validation clips, or the chosen points on the test clips (once chosen)."""
    from pipeline.evaluate import missing_points

    stage = f"evaluate-{split}"
    if split == "test" and not cfg.eval_selection().exists():
        return StageStatus(stage, "missing", "no point chosen on validation yet")
    total = len(missing_points(cfg, force=True, split=split))
    todo = missing_points(cfg, split=split)
    done = total - len(todo)
    state = "done" if not todo else ("missing" if done == 0 else "partial")
    detail = f"{done} of {total} {'sweep' if split == 'val' else 'chosen'} points scored"
    if todo and done:
        detail += "; missing: " + ", ".join(f"{c}/{s}-{n}" for c, s, n in todo[:4]) + (" ..." if len(todo) > 4 else "")
    return StageStatus(stage, state, detail)


def _select(cfg: Config) -> StageStatus:
    path = cfg.eval_selection()
    if not path.exists():
        return _output("select-points", path)
    chosen = json.loads(path.read_text())["chosen"]
    words = f"{chosen['checkpoint']} {chosen['sampler']}-{chosen['steps']} w={chosen['guidance_weight']:g}"
    return StageStatus("select-points", "done", f"chosen on validation: {words}")


def _collect(cfg: Config) -> StageStatus:
    best = cfg.eval_best()
    if not best.exists():
        return _output("collect-eval", best)
    return StageStatus("collect-eval", "done", cfg.read_best("statement", "status", default=str(best)))


def experiment_status(cfg: Config) -> list[StageStatus]:
    """Every stage's status, in workflow order (distill and response where the experiment has them)."""
    return [
        _store("prepare", cfg.regridded_path, cfg.regridded_path),
        _store("normalise", cfg.normalised_path, cfg.stats_path),  # stats.json: a link into the store in place
        _train(cfg),
        _output("references", cfg.eval_references("test")),
        _evaluate(cfg, "val"),
        _select(cfg),
        _evaluate(cfg, "test"),
        _collect(cfg),
        _output("sample", cfg.samples_dir),
        *([_output("distill", students_index(cfg.distill_dir))] if cfg.distill.enabled else []),
        *([_output("response", cfg.response_dir)] if cfg.data.forcings else []),
    ]


def slurm_jobs() -> list[str] | None:
    """This user's SLURM jobs (id, name, state, elapsed, comment), or None without a SLURM controller."""
    if not shutil.which("squeue"):
        return None
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or str(os.getuid())
    r = subprocess.run(
        ["squeue", "-h", "-u", user, "-o", "%i  %j  %T  %M  %k"], capture_output=True, text=True, timeout=30
    )
    return [ln for ln in r.stdout.splitlines() if ln.strip()] if r.returncode == 0 else None


def format_status(cfg: Config, stages: list[StageStatus], jobs: list[str] | None) -> str:
    width = max(len(s.stage) for s in stages)
    lines = [f"experiment {cfg.experiment} ({cfg.exp_dir})"]
    lines += [f"  {s.stage:<{width}}  {s.state:<8} {s.detail}".rstrip() for s in stages]
    if jobs is None:
        lines.append("SLURM: no controller answers (squeue)")
    else:
        lines.append(f"SLURM jobs of this user in flight: {len(jobs)}")
        lines += [f"  {j}" for j in jobs]
    return "\n".join(lines)
