"""Jobs across nodes on the real two-node SLURM cluster on this machine (tests/slurm/cluster.sh: each
slurmd in its own network, UTS and mount namespace, node names resolving to bridge addresses only
inside the nodes). Issue 13: `launch.nodes: 2` runs DeepSpeed (gloo) across both nodes with the
rendezvous at the first node of the SLURM node list and trains exactly as one node with the same
tasks (2 x 1 = 1 x 2, 2 x 2 = 1 x 4); a node that dies and a preempted job (`scontrol requeue`)
resume from the last checkpoint; the evaluation array and multi-process sampling use both nodes."""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
import xarray as xr
import yaml

from tests.conftest import (
    CLUSTER,
    experiment_config,
    job_state,
    mlflow_train_runs,
    pipeline_cli,
    slurm_training_workdir,
    start_training,
    wait_for,
)

pytestmark = pytest.mark.slurm
STEPS = 12
CKPT = 6  # checkpoint_every
# The preempted job's budget: `scontrol requeue` signals the tasks, which run on until SLURM's KillWait (5 s) ends
# them, so the job must still be training 5 s after the interruption (0.15-0.3 s per step on the CI machine once
# each task ran one thread: 12 steps ended inside the grace and the requeued attempt had nothing left to do).
LONG_STEPS, LONG_CKPT = 180, 60  # interrupted after step 61: 59 steps (7.6 s at 7.7 steps/s, idle) to the next


@pytest.fixture(scope="module")
def work(tmp_path_factory, slurm, slurm_data) -> Path:
    train = {"steps": STEPS, "val_every": STEPS, "val_clips": 2, "checkpoint_every": CKPT}
    return slurm_training_workdir(tmp_path_factory.mktemp("multinode"), slurm, train, {}, slurm_data)


def _stamp(line: str) -> datetime:
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


def _budget(steps: int, ckpt: int) -> dict:
    return {"steps": steps, "val_every": steps, "checkpoint_every": ckpt}


def _train(work: Path, name: str, nodes: int, per_node: int, env: dict, steps: int = STEPS, ckpt: int = CKPT) -> dict:
    """Train `name` as a nodes x per_node SLURM job; return what the tests check and the figures."""
    launch = {"nodes": nodes, "tasks_per_node": per_node}
    cfg, exp = experiment_config(work, name, launch=launch, train=_budget(steps, ckpt))
    r = pipeline_cli("train", "-c", cfg, cwd=work, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    job = json.loads((exp / "train_job.json").read_text())
    assert job["executor"] == "slurm" and job["tasks"] == nodes * per_node, job
    submitted = next(_stamp(line) for line in r.stderr.splitlines() if "submitted slurm job" in line)
    folder = exp / "submitit"
    tasks = {}
    for rank in range(nodes * per_node):
        err = (folder / f"{job['job_id']}_{rank}_log.err").read_text()
        m = re.search(
            r"^(.{23}) INFO pipeline.launch: task rank (\d+)/(\d+) \(local (\d+)\) master (\S+):(\d+)", err, re.M
        )
        assert m, err[-2000:]
        tasks[rank] = {"start": _stamp(m.group(1)), "local": int(m.group(4)), "master": m.group(5)}
    log = [json.loads(line) for line in (exp / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(1, steps + 1))
    deadline = time.time() + 60  # the results are back; the job may still be COMPLETING / ending its step
    while True:
        r = subprocess.run(
            ["squeue", "-h", "-t", "all", "-j", job["job_id"], "-o", "%T|%D|%N"],
            env=env,
            capture_output=True,
            text=True,
        )
        state, n, nodelist = r.stdout.strip().split("|")
        if state not in ("RUNNING", "COMPLETING") or time.time() > deadline:
            break
        time.sleep(0.5)
    return {
        "exp": exp,
        "job": job,
        "tasks": tasks,
        "log": log,
        "state": state,
        "nodes": int(n),
        "nodelist": nodelist,
        "start_latency_s": (min(t["start"] for t in tasks.values()) - submitted).total_seconds(),
        # steps/s from the median step time after the first (start-up; robust to other load on the machine)
        "steps_per_s": 1 / statistics.median(e["step_time_s"] for e in log[1:]),
    }


def _check_checkpoints(exp: Path, world: int, steps: int = STEPS, every: int = CKPT) -> None:
    ckpt = exp / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == f"step-{steps:08d}"
    for step in (steps - every, steps):  # train.keep_last 2
        tag = ckpt / f"step-{step:08d}"
        assert (tag / "mp_rank_00_model_states.pt").exists()
        shards = sorted(p.name for p in tag.glob("*zero_pp_rank_*_optim_states.pt"))
        assert len(shards) == world, shards  # ZeRO 2: one optimizer shard from every rank
        assert (ckpt / "inference" / f"step-{step:08d}.pt").exists()
    assert (exp / "checkpoints" / "final.pt").exists()


@pytest.fixture(scope="module")
def runs(work: Path, slurm: dict) -> dict[str, dict]:
    """The same training as 1 node x 2 tasks and 2 nodes x 1 task (one global batch)."""
    return {"1x2": _train(work, "one-node", 1, 2, slurm), "2x1": _train(work, "two-nodes", 2, 1, slurm)}


@pytest.mark.timeout(900)
def test_two_nodes_train_as_one_node_with_two_tasks(work: Path, runs: dict) -> None:
    """2 nodes x 1 task and 1 node x 2 tasks, same global batch: equal losses (relative 1e-5), the
    rendezvous at n1 (the first node of the job's node list, resolved inside the node namespaces), one
    MLflow run each, checkpoint shards from both ranks."""
    one, two = runs["1x2"], runs["2x1"]
    assert one["state"] == "COMPLETED" and one["nodes"] == 1, one
    assert {t["local"] for t in one["tasks"].values()} == {0, 1}
    assert two["state"] == "COMPLETED" and two["nodes"] == 2 and two["nodelist"] == "n[1-2]", two
    assert {t["local"] for t in two["tasks"].values()} == {0}  # one task per node: both local rank 0
    assert {t["master"] for t in two["tasks"].values()} == {"n1"}  # from the node list, not localhost

    for a, b in zip(one["log"], two["log"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (a["step"], a["loss"], b["loss"])
        assert a["losses"] == pytest.approx(b["losses"], rel=1e-5)  # rank 0's own micro-batch losses too

    for name, res in (("one-node", one), ("two-nodes", two)):
        _check_checkpoints(res["exp"], 2)
        runs_ = mlflow_train_runs(work, name)
        assert len(runs_) == 1 and runs_[0][0].info.status == "FINISHED", runs_
        assert sorted(m.step for m in runs_[0][1]) == list(range(1, STEPS + 1))
    print(
        f"\nfigures: job start latency 1x2 {one['start_latency_s']:.1f} s, 2x1 {two['start_latency_s']:.1f} s; "
        f"steps/s 1x2 {one['steps_per_s']:.2f}, 2x1 {two['steps_per_s']:.2f}"
    )


def _logged_steps(exp: Path) -> list[dict]:
    f = exp / "train_log.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines()] if f.exists() else []


def _train_and_interrupt(
    work: Path, name: str, launch: dict, env: dict, interrupt, steps: int = STEPS, ckpt: int = CKPT
) -> tuple[Path, str, dict]:
    """Train experiment ``name`` on the cluster; past its first checkpoint (and the barrier after it), before the
    next, call ``interrupt(job_id)`` and wait for the launcher, which must return 0 with the same job id (requeued,
    not resubmitted). Returns the experiment folder, the job id and the figures: ``at`` (when interrupted, epoch
    s), ``at_step`` (the last step logged then) and whatever ``interrupt`` returned."""
    cfg, exp = experiment_config(work, name, launch=launch, train=_budget(steps, ckpt))
    proc = start_training(work, cfg, env)
    try:
        wait_for(lambda: any(e["step"] > ckpt for e in _logged_steps(exp)), what=f"step {ckpt + 1}")
        job_id = json.loads((exp / "train_job.json").read_text())["job_id"]
        figures = {"at": time.time(), "at_step": max(e["step"] for e in _logged_steps(exp))}
        figures |= interrupt(job_id)
        assert figures["at_step"] < steps, "trained to the end before the interruption"
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-3000:]
    assert json.loads((exp / "train_job.json").read_text())["job_id"] == job_id
    return exp, job_id, figures


def _check_resumed(
    work: Path, exp: Path, job_id: str, reference: list[dict], shards: int, steps: int = STEPS, ckpt: int = CKPT
) -> float:
    """After an interruption: rank 0 resumed from the first checkpoint, every step after it trained once more
    with the losses of the uninterrupted ``reference`` run (relative 1e-5), the checkpoints hold ``shards``
    ZeRO shards, and one MLflow run went on to the end. Returns when (epoch s) the first step after the resume
    was logged."""
    rank0 = (exp / "submitit" / f"{job_id}_0_log.err").read_text()
    assert re.search(rf"resumed from .*step-{ckpt:08d} at step {ckpt}\n", rank0), rank0[-3000:]
    log = _logged_steps(exp)
    logged = [e["step"] for e in log]
    first_after = logged.index(ckpt + 1, logged.index(ckpt + 1) + 1)  # its second time: after the resume
    assert logged[first_after:] == list(range(ckpt + 1, steps + 1)), logged  # nothing lost beyond checkpoint_every
    last = {e["step"]: e for e in log}
    for ref in reference:
        assert last[ref["step"]]["loss"] == pytest.approx(ref["loss"], rel=1e-5), ref["step"]
        assert last[ref["step"]]["losses"] == pytest.approx(ref["losses"], rel=1e-5)
    _check_checkpoints(exp, shards, steps, ckpt)
    ((run, losses),) = mlflow_train_runs(work, exp.name)  # the same MLflow run, resumed
    assert run.info.status == "FINISHED" and max(m.step for m in losses) == steps
    return max(m.timestamp for m in losses if m.step == ckpt + 1) / 1000


@pytest.mark.timeout(900)
def test_a_node_dies_the_job_is_requeued_and_resumes(work: Path, slurm: dict, runs: dict) -> None:
    """While a 2-node job trains, node n2 dies (its slurmd and every process in its namespace are
    SIGKILLed). The task on n1 fails (its gloo peer is gone), SLURM marks n2 DOWN (SlurmdTimeout) and
    requeues the job (same id); once n2 is back the job runs again, resumes from its last
    checkpoint and ends: the launcher that submitted it returns 0, with the losses of the uninterrupted
    run and one MLflow run."""

    def kill_n2(job_id: str) -> dict:
        subprocess.run(["bash", str(CLUSTER), "kill", "n2"], env=slurm, capture_output=True, text=True, check=True)
        wait_for(lambda: job_state(job_id, slurm) in ("PENDING", "REQUEUED"), timeout=120, what="the requeue")
        requeued = time.time()
        # the node stays down a while: a slurmd back within a second of being marked DOWN left the requeued
        # job's step creation waiting for ever ("Requested nodes are busy") in a trial; 20 s later it did not
        time.sleep(20)
        r = subprocess.run(["bash", str(CLUSTER), "revive", "n2"], env=slurm, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        # SLURM holds a requeued job for ~2 minutes (EligibleTime = requeue + 121 s): let it start now
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=slurm, check=True)
        return {"requeued": requeued}

    exp, job_id, fig = _train_and_interrupt(work, "node-dies", {"nodes": 2, "tasks_per_node": 1}, slurm, kill_n2)
    rank0 = (exp / "submitit" / f"{job_id}_0_log.err").read_text()
    # the first attempt, ended by SLURM's node failure: slurmstepd cancels the step "DUE TO NODE FAILURE", or, where
    # rank 0 died of its lost gloo peer first (a loaded machine), srun reports the "Node failure on n2"
    assert "DUE TO NODE FAILURE" in rank0 or "Node failure on n2" in rank0, rank0[-3000:]
    assert "removing " + f"{job_id}_0_result.pkl" in rank0  # the first attempt's error result
    resumed = _check_resumed(work, exp, job_id, runs["2x1"]["log"], 2)
    killed, killed_at, requeued = fig["at"], fig["at_step"], fig["requeued"]
    print(
        f"\nfigures: node n2 killed at step {killed_at}; requeued (PENDING) {requeued - killed:.1f} s after the kill; "
        f"first step after the resume {resumed - killed:.1f} s after the kill "
        "(the requeue hold of ~120 s skipped with scontrol update StartTime=now)"
    )


def _requeued_then_started(job_id: str, env: dict) -> None:
    """Wait until SLURM has requeued ``job_id`` (PENDING again, same id), then lift the requeue hold."""
    wait_for(lambda: job_state(job_id, env) == "PENDING", timeout=120, what=f"job {job_id} requeued")
    # SLURM holds a requeued job for ~2 minutes (EligibleTime = requeue + 121 s): let it start now
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=env, check=True)


@pytest.mark.timeout(900)
def test_a_preempted_two_by_two_job_resumes_and_trains_as_one_node_with_four_tasks(work: Path, slurm: dict) -> None:
    """2 nodes x 2 tasks, preempted after its first checkpoint (`scontrol requeue`, what SLURM does to a job
    that a higher-priority one displaces): every task is stopped, the job is requeued under the same id,
    resumes from the checkpoint and ends; the launcher returns 0. Its losses equal those of 1 node x 4
    tasks, uninterrupted (relative 1e-5); local ranks 0 and 1 on each node; a shard from each of the 4 ranks;
    one MLflow run."""
    one = _train(work, "one-node-4", 1, 4, slurm, LONG_STEPS, LONG_CKPT)
    assert (
        one["state"] == "COMPLETED"
        and one["nodes"] == 1
        and {t["local"] for t in one["tasks"].values()}
        == {
            0,
            1,
            2,
            3,
        }
    )

    def preempt(job_id: str) -> dict:
        subprocess.run(["scontrol", "requeue", job_id], env=slurm, check=True)
        _requeued_then_started(job_id, slurm)
        return {}

    launch = {"nodes": 2, "tasks_per_node": 2}
    exp, job_id, fig = _train_and_interrupt(work, "preempted", launch, slurm, preempt, LONG_STEPS, LONG_CKPT)
    folder = exp / "submitit"
    hosts = {}
    for rank in range(4):
        err_log = (folder / f"{job_id}_{rank}_log.err").read_text()
        starts = re.findall(r"task rank (\d+)/4 \(local (\d+)\) master (\S+):", err_log)
        assert len(starts) == 2, err_log[-2000:]  # the first attempt and the one after the requeue
        hosts[rank] = starts[-1]
    assert sorted(int(local) for _, local, _ in hosts.values()) == [0, 0, 1, 1]
    assert {master for _, _, master in hosts.values()} == {"n1"}
    resumed = _check_resumed(work, exp, job_id, one["log"], 4, LONG_STEPS, LONG_CKPT)
    log = _logged_steps(exp)
    steps = [e["step"] for e in log]
    first_after = steps.index(LONG_CKPT + 1, steps.index(LONG_CKPT + 1) + 1)
    after = [e["step_time_s"] for e in log[first_after + 1 :]]
    print(
        f"\nfigures: job start latency 1x4 {one['start_latency_s']:.1f} s; steps/s 1x4 {one['steps_per_s']:.2f}, "
        f"2x2 {1 / statistics.median(after):.2f}; preempted at step {fig['at_step']}, first step after the resume "
        f"{resumed - fig['at']:.1f} s after the requeue (its ~120 s hold skipped with scontrol update StartTime=now)"
    )


def _squeue(job: str, env: dict) -> dict[str, tuple[str, str, int]]:
    """Job (or array task) id -> (state, node list, node count) for ``job`` and its array tasks."""
    r = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", job, "-o", "%i|%T|%N|%D"], env=env, capture_output=True, text=True
    )
    out = {}
    for line in r.stdout.splitlines():
        i, state, nodes, n = line.split("|")
        out[i] = (state, nodes, int(n))
    return out


@pytest.mark.timeout(900)
def test_evaluation_array_and_sampling_spread_over_both_nodes(work: Path, slurm: dict, runs: dict) -> None:
    """`python -m pipeline evaluate` on SLURM (the one-node run's last checkpoint): the sweep's 3 points on
    validation as one sbatch --array, 2 at a time, then the chosen ones on test as a second; each task asks for a whole node's CPUs, so the two running at once must be on
    n1 and n2. Then nothing left to do. Then `sample` with `processes: 2` and `launch.nodes: 2`: one job of
    2 nodes x 1 task (a GPU each), its ranks gathering the samples over the bridge (gloo)."""
    last = f"step-{STEPS:08d}"
    cfg, exp = experiment_config(
        work,
        "one-node",
        launch={"tasks_per_node": 1, "cpus_per_task": 16},
        evaluate={
            "checkpoints": "last",
            "samplers": ["ddim", "dpmpp_2m", "ancestral"],
            "steps": [3],
            "guidance_weights": [1.0],
            "test_clips": 1,
            "ensemble": 2,
            "array_parallelism": 2,
            "timeout_min": 10,
            "climate": {"members": 2, "frames": 4, "unconditional": 2},
        },
    )
    assert runs["1x2"]["exp"] == exp
    r = pipeline_cli("evaluate", "-c", cfg, cwd=work, env=slurm)
    assert r.returncode == 0, r.stderr[-3000:]
    m = re.search(r"submitted SLURM job array (\d+): 3 task\(s\), 2 at a time", r.stderr)
    assert m, r.stderr[-3000:]
    array_id = m.group(1)
    logs = sorted(p.name for p in (exp / "submitit").glob(f"{array_id}_*_log.out"))
    assert logs == [f"{array_id}_{i}_0_log.out" for i in range(3)], logs
    done = lambda: {state for state, _, _ in _squeue(array_id, slurm).values()} == {"COMPLETED"}  # noqa: E731
    wait_for(done, timeout=60, what="the array tasks' end")
    tasks = _squeue(array_id, slurm)
    assert len(tasks) == 3 and {state for state, _, _ in tasks.values()} == {"COMPLETED"}, tasks
    assert {nodes for _, nodes, _ in tasks.values()} == {"n1", "n2"}, tasks
    for sampler in ("ddim", "dpmpp_2m", "ancestral"):
        point = json.loads((exp / "eval" / "val" / last / f"{sampler}-3.json").read_text())
        assert point["results"][0]["variables"]["z500"]["crps"] > 0
    # then the choice on validation, and the chosen points (each sampler's best: all three) as a second array
    assert re.search(r"evaluate: 3 point\(s\) to run on test", r.stderr), r.stderr[-3000:]
    assert len(re.findall(r"submitted SLURM job array \d+: 3 task\(s\)", r.stderr)) == 2, r.stderr[-3000:]
    assert all((exp / "eval" / "test" / last / f"{s}-3.json").exists() for s in ("ddim", "dpmpp_2m", "ancestral"))
    r = pipeline_cli("evaluate", "-c", cfg, cwd=work, env=slurm)
    assert r.returncode == 0 and "evaluate: 0 sweep point(s)" in r.stderr, r.stderr[-2000:]

    (work / "sample2.yaml").write_text(
        yaml.safe_dump(
            {
                "launch": {"nodes": 2, "gpus_per_node": 1},
                "sample": {
                    "checkpoint": last,
                    "guidance_weight": 1.0,
                    "processes": 2,
                    "steps": 3,
                    "unconditional": 3,
                    "rollouts": 2,
                    "rollout_frames": 6,
                },
            }
        )
    )
    r = pipeline_cli("sample", "-c", cfg, "-c", "sample2.yaml", cwd=work, env=slurm)
    assert r.returncode == 0, r.stderr[-3000:]
    job = json.loads((exp / "sample_job.json").read_text())
    assert job["executor"] == "slurm" and job["tasks"] == 2
    sbatch = (exp / "submitit" / f"{job['job_id']}_submission.sh").read_text()
    assert "--nodes=2" in sbatch and "--ntasks-per-node=1" in sbatch and "--gpus-per-node=1" in sbatch, sbatch
    wait_for(lambda: job_state(job["job_id"], slurm) == "COMPLETED", timeout=60, what="the sampling job's end")
    assert _squeue(job["job_id"], slurm)[job["job_id"]] == ("COMPLETED", "n[1-2]", 2)
    unc = xr.open_zarr(exp / "samples" / "unconditional.zarr", zarr_format=3)
    assert unc.sizes["sample"] == 3 and unc.attrs["processes"] == 2
    roll = xr.open_zarr(exp / "samples" / "rollouts.zarr", zarr_format=3)
    assert roll.sizes["rollout"] == 2 and bool(roll[next(iter(roll.data_vars))].notnull().all())
