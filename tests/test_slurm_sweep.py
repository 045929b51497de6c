"""A sweep wider than the Snakemake profile's `jobs:` on the test SLURM cluster (issue 25, item 6).

With the executor plugin's array mode (`slurm-array-jobs`, plugin 2.8.0), points handed to the plugin in a smaller
batch than the rule's other ready points (fewer free `jobs:` slots than points) were held back, kept their slots and
were never submitted (snakemake-executor-plugin-slurm issue #473): the sweep stopped with an empty queue, and
SIGTERM, which waits for the running jobs, waited for those forever. The shipped profile submits each point as its own job; here the
profile's `jobs:` is cut to 2 so that a 6-point sweep is wider than it. Data and training are the session's CI
workflow's (conftest `ci_workflow`, copied), the reference scores are made once, locally; the SLURM runs have only
the sweep to do."""

from __future__ import annotations

import datetime
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.slurm

JOBS = 2  # the profile's `jobs:` in these tests
# CI size (config/experiments/ci.yaml: 20 training steps, checkpoints at 10 and 20) with a sweep of 2 checkpoints
# x 1 sampler x 3 step counts = 6 points on validation, then 2 on test
SWEEP = {
    "evaluate": {
        "samplers": ["ddim"],
        "steps": [1, 2, 3],
        "test_clips": 2,
        "ensemble": 2,
        "bootstrap": 100,
        "guidance_weights": [2.0],
        "test_points": 2,
    },
    "distill": {"enabled": False},
}
POINTS = 6
CONFIG = ("--configfile", "config/experiments/ci.yaml", "sweep.yaml")
EXP = "results/eofs-z500-ci"
TARGET = f"{EXP}/eval/summary.csv"


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory, slurm: dict, ci_workflow: Path) -> Path:
    """A copy of the workflow and of the shipped profile with `jobs:` cut to JOBS (nothing else changed); the data
    and the training copied from the session's CI workflow (the same settings: the sweep's only change evaluation),
    the reference scores made there with `snakemake --cores 2` (no SLURM)."""
    work = tmp_path_factory.mktemp("slurm_sweep")
    for name in ("Snakefile", "workflow", "config", "envs", "slurm"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
    # its evaluation and samples left behind: the sweep's points, choice and summary are this test's to make
    skip = shutil.ignore_patterns("submitit", "eval", "samples")
    shutil.copytree(ci_workflow / "results", work / "results", ignore=skip)  # file times kept: nothing to rerun
    shutil.copytree(ci_workflow / ".snakemake" / "metadata", work / ".snakemake" / "metadata")
    profile = work / "slurm" / "config.yaml"
    text, n = re.subn(r"^jobs: *\d+", f"jobs: {JOBS}", profile.read_text(), count=1, flags=re.M)
    assert n == 1, "the shipped profile sets no `jobs:`"
    profile.write_text(text)
    (work / "sweep.yaml").write_text(yaml.safe_dump(SWEEP))
    targets = [f"{EXP}/checkpoints/final.pt", f"{EXP}/eval/val/references.json", f"{EXP}/eval/test/references.json"]
    r = subprocess.run(
        ["snakemake", "--cores", "2", *CONFIG, "--", *targets], cwd=work, env=slurm, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "rule train_model:" not in r.stderr, r.stderr[-3000:]  # the CI workflow's training was reused
    r = subprocess.run(
        ["snakemake", "-n", "--profile", "slurm", *CONFIG, "--", TARGET],
        cwd=work,
        env=slurm,
        capture_output=True,
        text=True,
    )
    stats = (r.stdout + r.stderr).split("Job stats:", 1)[-1].split("\n\n", 1)[0]
    planned = dict(re.findall(r"^(\w+) +(\d+)$", stats, re.M))
    want = {"evaluate_checkpoint": str(POINTS), "select_points": "1", "collect_evaluation": "1", "total": "8"}
    assert planned == want and POINTS > JOBS, r.stdout[-3000:] + r.stderr[-3000:]  # only the sweep is left
    return work


def _start(work: Path, env: dict, log: Path) -> subprocess.Popen:
    """`snakemake --profile slurm` (the cut copy) towards the sweep's summary, output to ``log``."""
    with log.open("w") as out:
        return subprocess.Popen(
            ["snakemake", "--profile", "slurm", *CONFIG, "--", TARGET],
            cwd=work,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _jobs(log: Path, env: dict) -> list[dict]:
    """This run's SLURM jobs (the plugin names them by the run's id): id, state, rule (the comment), partition,
    submit and end times, from squeue (MinJobAge keeps finished jobs listed)."""
    m = re.search(r"SLURM run ID: (\S+)", log.read_text())
    if not m:
        return []
    r = subprocess.run(
        ["squeue", "-h", "-t", "all", "-n", m.group(1), "-o", "%i|%T|%k|%P|%V|%e"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    keys = ("id", "state", "comment", "partition", "submit", "end")
    return [dict(zip(keys, line.split("|"), strict=True)) for line in r.stdout.splitlines()]


def _points(jobs: list[dict]) -> list[dict]:
    return [j for j in jobs if j["comment"].startswith("rule_evaluate_checkpoint")]


def _done(work: Path, split: str) -> list[Path]:
    return sorted((work / EXP / "eval" / split).glob("step-*/*.json"))


def _finish(proc: subprocess.Popen, log: Path, timeout: float, failure: str) -> float:
    """Wait for ``proc``; on time-out stop it and fail with ``failure`` and the end of its log. Returns the seconds."""
    t0 = time.monotonic()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)  # Snakemake's own cancel: it scancels what it submitted
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        pytest.fail(f"{failure}:\n{log.read_text()[-4000:]}")
    return time.monotonic() - t0


@pytest.mark.timeout(900)
def test_sigterm_mid_sweep_exits_once_the_submitted_points_end(sweep_dir: Path, slurm: dict) -> None:
    """SIGTERM to `snakemake --profile slurm` while the first points run: it submits nothing more, waits for the
    jobs it submitted (left to finish: they end COMPLETED, not cancelled, their results kept) and exits non-zero
    within a bound, with no job of its own left in the queue and the rest of the sweep not started."""
    log = sweep_dir / "sigterm.log"
    proc = _start(sweep_dir, slurm, log)
    deadline = time.monotonic() + 300
    while not any(j["state"] == "RUNNING" for j in _points(_jobs(log, slurm))):
        if proc.poll() is not None:
            pytest.fail(f"snakemake ended before a point ran:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:  # array mode (plugin issue #473) holds the points back: none is submitted
            _finish(proc, log, timeout=0, failure="no sweep point's job ran within 300 s")
        time.sleep(1)
    proc.send_signal(signal.SIGTERM)  # to Snakemake alone, as `kill PID` does
    seconds = _finish(proc, log, timeout=180, failure="snakemake did not exit within 180 s of SIGTERM")
    out = log.read_text()
    assert proc.returncode != 0, out[-4000:]
    assert "Will exit after finishing currently running jobs" in out, out[-4000:]
    jobs = _jobs(log, slurm)
    points = _points(jobs)
    # at most `jobs:` points were in flight, all of them ran to their end; nothing was left queued or cancelled
    assert 1 <= len(points) <= JOBS, points
    assert {j["state"] for j in jobs} == {"COMPLETED"}, jobs
    assert len(_done(sweep_dir, "val")) == len(points) < POINTS
    assert not (sweep_dir / TARGET).exists()
    print(f"SIGTERM: exited {seconds:.0f} s later (rc {proc.returncode}), {len(points)} point(s) left to finish")


def _most_in_flight(jobs: list[dict]) -> int:
    """The most jobs queued or running at once: submit-to-end intervals that overlap."""
    spans = [(datetime.datetime.fromisoformat(j["submit"]), datetime.datetime.fromisoformat(j["end"])) for j in jobs]
    return max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)


@pytest.mark.timeout(1200)
def test_a_sweep_wider_than_jobs_finishes(sweep_dir: Path, slurm: dict) -> None:
    """`snakemake --profile slurm` with more ready points than `jobs:` (JOBS) finishes: each point is a job of its
    own on the GPU partition, at most JOBS jobs are queued or running at once, and the choice, the test points and
    the summary follow. After the SIGTERM test it runs the points that test did not (still more than JOBS)."""
    before = len(_done(sweep_dir, "val"))
    log = sweep_dir / "finish.log"
    t0 = time.monotonic()
    proc = _start(sweep_dir, slurm, log)
    _finish(proc, log, timeout=1000, failure="the sweep did not finish in 1000 s")
    out = log.read_text()
    assert proc.returncode == 0, out[-4000:]
    assert (sweep_dir / TARGET).exists()
    assert len(_done(sweep_dir, "val")) == POINTS
    assert "Submitted array job" not in out  # one job per point (plugin issue #473: array mode can hang)
    jobs = _jobs(log, slurm)
    val = [j for j in _points(jobs) if "_wildcards_val_" in j["comment"]]
    assert len(val) == POINTS - before > JOBS, val  # the property: more ready points than slots
    test = [j for j in _points(jobs) if "_wildcards_test_" in j["comment"]]
    assert 1 <= len(test) == len(_done(sweep_dir, "test")) <= SWEEP["evaluate"]["test_points"], test
    assert {(j["state"], j["partition"]) for j in _points(jobs)} == {("COMPLETED", "gpu")}, jobs
    assert {j["state"] for j in jobs} == {"COMPLETED"}, jobs
    assert _most_in_flight(jobs) <= JOBS, jobs
    print(f"{len(val)} + {len(test)} points through jobs: {JOBS} in {time.monotonic() - t0:.0f} s")
