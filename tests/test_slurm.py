"""Jobs on a real SLURM cluster (tests/slurm/cluster.sh): training (submit, scancel + resume, reattach
after the launcher dies, cancel on SIGTERM), the evaluation sweep as a job array, sampling on two
(fake) GPUs, and the README's cluster trial (`snakemake --profile slurm` with the shipped profile)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xarray as xr
import yaml

from tests.conftest import REPO, experiment_config, pipeline_cli, require, slurm_training_workdir

pytestmark = pytest.mark.slurm
CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> dict[str, str]:
    require(os.geteuid() == 0, "starting a SLURM cluster needs root (munged, slurmctld, slurmd)")
    r = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    env = {**os.environ, "SLURM_CONF": os.environ.get("PIPELINE_SLURM_DIR", "/tmp/pipeline-slurm") + "/slurm.conf"}
    assert subprocess.run(["sinfo", "-h"], env=env, capture_output=True).returncode == 0
    return env


@pytest.fixture(scope="module")
def work(tmp_path_factory, slurm) -> Path:
    train = {"steps": 40, "val_every": 20, "checkpoint_every": 10}
    return slurm_training_workdir(tmp_path_factory.mktemp("slurm"), slurm, train, {"tasks_per_node": 2})


def _start(work: Path, cfg: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "train", "-c", cfg],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _train(work: Path, cfg: str, env: dict) -> subprocess.CompletedProcess:
    """Run the train stage to its end; assert it succeeded."""
    r = pipeline_cli("train", "-c", cfg, cwd=work, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _wait_for(pred, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.1)
    pytest.fail("timed out waiting")


def _state(job_id: str, env: dict) -> str:
    r = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], env=env, capture_output=True, text=True)
    return r.stdout.strip()


def _checkpoint_at(exp: Path, step: int):
    latest = exp / "checkpoints" / "latest"
    return lambda: latest.exists() and latest.read_text().strip() == f"step-{step:08d}"


def test_scancel_then_rerun_resumes_in_the_same_mlflow_run(work: Path, slurm: dict) -> None:
    cfg, exp = experiment_config(work, "scancel")
    proc = _start(work, cfg, slurm)
    _wait_for(_checkpoint_at(exp, 10))
    job_id = json.loads((exp / "train_job.json").read_text())["job_id"]
    subprocess.run(["scancel", job_id], env=slurm, check=True)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and f"SLURM job {job_id} ended" in err, err[-2000:]
    assert not (exp / "checkpoints" / "final.pt").exists()  # nothing downstream sees a partial result
    r = _train(work, cfg, slurm)
    assert "resuming from the last checkpoint" in r.stderr
    assert json.loads((exp / "train_job.json").read_text())["job_id"] != job_id  # a new job
    steps = [json.loads(line)["step"] for line in (exp / "train_log.jsonl").read_text().splitlines()]
    assert steps[-1] == 40 and 11 in steps  # continued after the step-10 checkpoint
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'results' / 'mlflow.db'}")
    exp_id = client.get_experiment_by_name("scancel").experiment_id
    train = [r for r in client.search_runs([exp_id]) if r.data.tags.get("pipeline.stage") == "train"]
    assert len(train) == 1 and train[0].info.status == "FINISHED"
    assert max(m.step for m in client.get_metric_history(train[0].info.run_id, "loss")) == 40


def test_restarted_launcher_reattaches_instead_of_resubmitting(work: Path, slurm: dict) -> None:
    cfg, exp = experiment_config(work, "reattach")
    proc = _start(work, cfg, slurm)
    _wait_for(_checkpoint_at(exp, 10))
    job_id = json.loads((exp / "train_job.json").read_text())["job_id"]
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher dies (e.g. the login node session), the job does not
    proc.wait()
    assert _state(job_id, slurm) == "RUNNING"
    r = _train(work, cfg, slurm)
    assert f"reattaching to SLURM job {job_id}" in r.stderr
    assert json.loads((exp / "train_job.json").read_text())["job_id"] == job_id
    assert (exp / "checkpoints" / "final.pt").exists()


def test_sigterm_to_the_launcher_cancels_the_job(work: Path, slurm: dict) -> None:
    cfg, exp = experiment_config(work, "cancel")
    proc = _start(work, cfg, slurm)
    _wait_for(
        lambda: (
            (exp / "train_job.json").exists()
            and _state(json.loads((exp / "train_job.json").read_text())["job_id"], slurm) == "RUNNING"
        )
    )
    job_id = json.loads((exp / "train_job.json").read_text())["job_id"]
    proc.send_signal(signal.SIGTERM)  # what Snakemake sends its jobs when it is cancelled
    proc.wait(timeout=60)
    _wait_for(lambda: _state(job_id, slurm) in ("CANCELLED", "COMPLETING"), timeout=60)


def test_evaluation_array_and_multi_gpu_sampling(work: Path, slurm: dict) -> None:
    """`python -m pipeline evaluate` on SLURM: the sweep's points as one sbatch --array, then nothing
    left to do; then `sample` with 2 processes as one 2-task job with a GPU per task."""
    cfg, exp = experiment_config(
        work,
        "array",
        train={"steps": 10, "checkpoint_every": 10, "val_every": 10},
        launch={"tasks_per_node": 1},
        evaluate={
            "checkpoints": "last",
            "samplers": ["ddim", "dpmpp_2m", "ancestral"],
            "steps": [3],
            "guidance_weights": [1.0],
            "test_clips": 1,
            "ensemble": 2,
            "array_parallelism": 2,
            "timeout_min": 10,
        },
    )
    _train(work, cfg, slurm)
    r = pipeline_cli("evaluate", "-c", cfg, cwd=work, env=slurm)
    assert r.returncode == 0, r.stderr[-3000:]
    m = re.search(r"submitted SLURM job array (\d+): 3 task\(s\), 2 at a time", r.stderr)
    assert m, r.stderr[-3000:]
    array_id = m.group(1)
    logs = sorted(p.name for p in (exp / "submitit").glob(f"{array_id}_*_log.out"))
    assert logs == [f"{array_id}_{i}_0_log.out" for i in range(3)], logs
    for sampler in ("ddim", "dpmpp_2m", "ancestral"):
        point = json.loads((exp / "eval" / "step-00000010" / f"{sampler}-3.json").read_text())
        assert point["results"][0]["variables"]["z500"]["crps"] > 0
    r = pipeline_cli("evaluate", "-c", cfg, cwd=work, env=slurm)
    assert r.returncode == 0 and "evaluate: 0 sweep point(s)" in r.stderr, r.stderr[-2000:]
    # sampling split across 2 processes: one SLURM job of 2 tasks with one (fake) GPU each
    (work / "sample2.yaml").write_text(
        yaml.safe_dump(
            {
                "launch": {"gpus_per_node": 1},
                "sample": {
                    "checkpoint": "step-00000010",
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
    assert "--gpus-per-node=2" in sbatch and "--ntasks-per-node=2" in sbatch, sbatch
    unc = xr.open_zarr(exp / "samples" / "unconditional.zarr", zarr_format=3)
    assert unc.sizes["sample"] == 3 and unc.attrs["processes"] == 2


README_TRIAL = (
    "bash tests/slurm/cluster.sh start",
    "export SLURM_CONF=/tmp/pipeline-slurm/slurm.conf",
    "snakemake --profile slurm",
)
# the CI experiment's size, its sweep cut to the last checkpoint at one step count (2 points, one array);
# ci.yaml also pins launch.executor: local (for the other workflow tests), put back to the default
# (auto -> the cluster) so training is submitted as in the trial
CI_SIZE = (
    " --configfile config/experiments/ci.yaml"
    " --config 'launch={executor: auto}' 'evaluate={checkpoints: last, steps: [5]}'"
)


def _readme_trial() -> list[str]:
    """The commands of the README's one-machine cluster trial (its bash block after "To try")."""
    section = (REPO / "README.md").read_text().split("## On a SLURM cluster", 1)[1].split("\n## ", 1)[0]
    block = section.split("To try", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]


def _rule_jobs(log: str) -> tuple[dict[str, tuple[str, bool]], dict[str, str]]:
    """From Snakemake's log: Snakemake job id -> (rule, local), and Snakemake job id -> SLURM job id."""
    rules: dict[str, tuple[str, bool]] = {}
    current = None
    for line in log.splitlines():
        if m := re.match(r"^(localrule|rule) (\w+):$", line):
            current = (m.group(2), m.group(1) == "localrule")
        elif (m := re.match(r"^\s+jobid: (\d+)$", line)) and current:
            rules[m.group(1)] = current
            current = None
    slurm = dict(re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", log))
    for ids, array in re.findall(r"Submitted array job with Snakemake IDs ([\d,]+) and SLURM job ID (\d+)", log):
        slurm.update(dict.fromkeys(ids.split(","), array))
    return rules, slurm


def _check_trial(out: str, root: Path, env: dict) -> tuple[Path, set[str]]:
    """Every job of a rule that is not a local rule ran as a SLURM job on the profile's partition and account
    (Snakemake's log: rule -> job id; squeue: partition, account, state); training, a local rule, submitted its
    own job there. Returns the experiment folder and the rules that ran as SLURM jobs."""
    rules, slurm_ids = _rule_jobs(out)
    declared = {"all"}  # the default target runs where Snakemake runs
    for smk in (root / "Snakefile", *sorted((root / "workflow" / "rules").glob("*.smk"))):
        for names in re.findall(r"localrules:((?:\s+\w+,)+)", smk.read_text()):
            declared |= set(re.findall(r"\w+", names))
    local = {rule for rule, is_local in rules.values() if is_local}
    assert "train_model" in local and local <= declared, (local, declared)
    remote = {job: rule for job, (rule, is_local) in rules.items() if not is_local}
    missing = {job: rule for job, rule in remote.items() if job not in slurm_ids}
    assert not missing, f"rules not submitted to SLURM: {missing}\n{out[-3000:]}"
    evaluation = {"score_references", "evaluate_checkpoint", "collect_evaluation", "sample_model"}
    assert evaluation < set(remote.values()), remote  # and the data rules
    # the evaluation points: one SLURM job array
    assert len({slurm_ids[job] for job, rule in remote.items() if rule == "evaluate_checkpoint"}) == 1

    exp = root / "results" / "eofs-z500-ci"
    train = json.loads((exp / "train_job.json").read_text())
    assert train["executor"] == "slurm", train
    ids = sorted(set(slurm_ids.values()) | {train["job_id"]})
    r = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", ",".join(ids), "-o", "%i|%P|%a|%T|%k"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    listed = {}
    for line in r.stdout.splitlines():
        job, partition, account, state, comment = line.split("|")
        listed[job] = (partition, account, state, comment)
    for job, rule in remote.items():
        tasks = [v for k, v in listed.items() if k == slurm_ids[job] or k.startswith(slurm_ids[job] + "_")]
        assert tasks, f"{rule}: SLURM job {slurm_ids[job]} not in squeue:\n{r.stdout}"
        want = "gpu" if rule in ("evaluate_checkpoint", "sample_model") else "cpu"
        for partition, account, state, comment in tasks:
            assert (partition, account, state) == (want, "pipeline", "COMPLETED"), (rule, tasks)
            assert comment.startswith(f"rule_{rule}"), (rule, comment)
    assert listed[train["job_id"]][:3] == ("cpu", "pipeline", "COMPLETED"), listed[train["job_id"]]
    return exp, set(remote.values())


@pytest.mark.timeout(1800)
def test_snakemake_profile_slurm_runs_the_readme_trial(slurm: dict, tmp_path: Path) -> None:
    """The README's cluster trial as written (cluster.sh start, export SLURM_CONF, `snakemake --profile slurm`
    with the shipped profile, at the CI experiment's size) from a copy of the repository, to the end. Every rule
    but the local ones (training: submitit submits its own job) ran as a SLURM job on the profile's partition and
    account: the job ids per rule come from Snakemake's log, their states from squeue (MinJobAge keeps finished jobs
    listed), not from sacct. No warning about sacct or a missing account. Killed hard after 25 min."""
    import snakemake_executor_plugin_slurm  # noqa: F401  (a test dependency: fail, not skip, without it)

    assert _readme_trial() == list(README_TRIAL)
    for name in ("Snakefile", "workflow", "config", "envs", "slurm", "tests/slurm"):
        src, dst = REPO / name, tmp_path / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}  # the trial's export sets it
    script = "set -e\n" + "\n".join(README_TRIAL) + CI_SIZE + "\n"
    proc = subprocess.Popen(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=1500)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the plugin can wait forever on a job it cannot see finish
        out, _ = proc.communicate()
        pytest.fail(f"the README's cluster trial did not finish in 25 min:\n{out[-4000:]}")
    assert proc.returncode == 0, out[-4000:]
    assert "sacct" not in out.lower() and "account given" not in out and "account validation" not in out, [
        line for line in out.splitlines() if "sacct" in line.lower() or "account" in line
    ]

    exp, remote = _check_trial(out, tmp_path, slurm)
    assert (exp / "samples" / "manifest.json").exists() and (exp / "eval" / "best.json").exists()

    def dry_run(*extra: str) -> str:
        r = subprocess.run(
            f"snakemake --profile slurm -n {' '.join(extra)}{CI_SIZE}",
            shell=True,
            cwd=tmp_path,
            env=slurm,
            capture_output=True,
            text=True,
            timeout=300,
        )
        return r.stdout + r.stderr

    assert "Nothing to be done" in dry_run()
    # rerunning one stage under the profile: training and everything downstream, nothing upstream
    out = dry_run("--forcerun", "train_model")
    downstream = {"train_model", "evaluate_checkpoint", "collect_evaluation", "sample_model"}
    for rule in downstream:
        assert f"rule {rule}:" in out, out[-3000:]
    for rule in remote - downstream:  # the data rules and the references
        assert f"rule {rule}:" not in out, out[-3000:]
