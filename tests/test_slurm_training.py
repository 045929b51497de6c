"""Training jobs on the second test SLURM cluster (tests/slurm/cluster.sh, fixture `slurm` in conftest: group
"slurm2", beside the multi-node tests): submit, scancel + resume, reattach after the launcher dies, cancel on
SIGTERM. Training submits its own job (submitit's sbatch, SLURM_CONF in its environment), so it runs on either
cluster; the README's trial and the SLURM sweep run on the first (tests/test_slurm.py, tests/test_slurm_sweep.py),
whose jobs' srun reads the default /etc/slurm."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import (
    experiment_config,
    job_state,
    mlflow_train_runs,
    pipeline_cli,
    slurm_training_workdir,
    start_training,
    wait_for,
)

pytestmark = pytest.mark.slurm
# Enough steps after the cancel point (step 20) that the job is still training when SLURM's KillWait (5 s: the
# job ignores SIGTERM until then) ends it: at 3-4 steps/s an idle machine would otherwise finish in the grace.
STEPS = 80


@pytest.fixture(scope="module")
def work(tmp_path_factory, slurm, slurm_data) -> Path:
    train = {"steps": STEPS, "val_every": 20, "checkpoint_every": 10}
    return slurm_training_workdir(tmp_path_factory.mktemp("slurm"), slurm, train, {"tasks_per_node": 2}, slurm_data)


def _train(work: Path, cfg: str, env: dict) -> subprocess.CompletedProcess:
    """Run the train stage to its end; assert it succeeded."""
    r = pipeline_cli("train", "-c", cfg, cwd=work, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _checkpoint_at(exp: Path, step: int):
    latest = exp / "checkpoints" / "latest"
    return lambda: latest.exists() and latest.read_text().strip() == f"step-{step:08d}"


def test_reattach_after_the_launcher_dies_then_scancel_and_resume_in_the_same_mlflow_run(
    work: Path, slurm: dict
) -> None:
    """One training job, two faults. The launcher dies (SIGKILL, e.g. the login node's session ends) after the
    first checkpoint: the job runs on, and a new launcher reattaches to it instead of submitting another. Then
    the job is cancelled (scancel) after the second checkpoint: the launcher says the SLURM job ended and exits
    non-zero, with no final checkpoint for anything downstream to see; rerun, it submits a new job that resumes
    after the last checkpoint and ends in the same MLflow run."""
    cfg, exp = experiment_config(work, "faults")
    proc = start_training(work, cfg, slurm)
    wait_for(_checkpoint_at(exp, 10))
    job_id = json.loads((exp / "train_job.json").read_text())["job_id"]
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher dies, the job does not
    proc.wait()
    assert job_state(job_id, slurm) == "RUNNING"

    proc = start_training(work, cfg, slurm)  # reattaches
    wait_for(_checkpoint_at(exp, 20))
    assert json.loads((exp / "train_job.json").read_text())["job_id"] == job_id
    subprocess.run(["scancel", job_id], env=slurm, check=True)
    _, err = proc.communicate(timeout=120)
    assert f"reattaching to SLURM job {job_id}" in err, err[-2000:]
    assert proc.returncode != 0 and f"SLURM job {job_id} ended" in err, err[-2000:]
    assert not (exp / "checkpoints" / "final.pt").exists()  # nothing downstream sees a partial result

    r = _train(work, cfg, slurm)
    assert "resuming from the last checkpoint" in r.stderr
    assert json.loads((exp / "train_job.json").read_text())["job_id"] != job_id  # a new job
    assert (exp / "checkpoints" / "final.pt").exists()
    steps = [json.loads(line)["step"] for line in (exp / "train_log.jsonl").read_text().splitlines()]
    assert steps[-1] == STEPS and 21 in steps  # continued after the step-20 checkpoint
    ((run, losses),) = mlflow_train_runs(work, "faults")
    assert run.info.status == "FINISHED" and max(m.step for m in losses) == STEPS


def test_sigterm_to_the_launcher_cancels_the_job(work: Path, slurm: dict) -> None:
    cfg, exp = experiment_config(work, "cancel")
    proc = start_training(work, cfg, slurm)
    wait_for(
        lambda: (
            (exp / "train_job.json").exists()
            and job_state(json.loads((exp / "train_job.json").read_text())["job_id"], slurm) == "RUNNING"
        )
    )
    job_id = json.loads((exp / "train_job.json").read_text())["job_id"]
    proc.send_signal(signal.SIGTERM)  # what Snakemake sends its jobs when it is cancelled
    proc.wait(timeout=60)
    wait_for(lambda: job_state(job_id, slurm) in ("CANCELLED", "COMPLETING"), timeout=60)
