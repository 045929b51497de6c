"""Shared fixtures: paths to real data, a synthetic CF data set writer."""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PIPELINE_SHARED_DATA", REPO.parent / "shared" / "data"))


def pytest_configure(config) -> None:
    """Each xdist worker (and what it starts: Snakemake, stages, the test cluster's jobs) takes its share of the
    cores: torch starts one thread per core in every process, and two workers on 2 cores ran twice as many
    threads as cores. OMP_NUM_THREADS set by the caller wins."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        share = max(1, len(os.sched_getaffinity(0)) // workers)
        os.environ["OMP_NUM_THREADS"] = str(share)
        import torch

        torch.set_num_threads(share)


# CPU seconds per test, printed after --durations: on the 2-core CI machine the suite keeps both cores busy, so its
# wall time follows the CPU the tests spend, not their wall times. Counted: the worker process and the children it
# waited for (Snakemake, the stages, local jobs), over setup, call and teardown; not counted: SLURM jobs (children
# of slurmd) and daemons.
_CPU = pytest.StashKey[float]()
CPU_REPORT = 25


def _cpu_seconds() -> float:
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_CPU] = _cpu_seconds()  # before the fixtures are made: a fixture's cost goes to its first user


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    if call.when == "teardown" and _CPU in item.stash:
        outcome.get_result().user_properties.append(("cpu_s", _cpu_seconds() - item.stash[_CPU]))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    cpu = dict(report.user_properties).get("cpu_s") if report.when == "teardown" else None
    if cpu is not None:
        _CPU_SPENT[report.nodeid] = float(cpu)


_CPU_SPENT: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not _CPU_SPENT:
        return
    total = sum(_CPU_SPENT.values())
    terminalreporter.write_sep("=", f"CPU seconds, the {CPU_REPORT} dearest tests (of {total:.0f} s in all)")
    for nodeid, cpu in sorted(_CPU_SPENT.items(), key=lambda kv: -kv[1])[:CPU_REPORT]:
        terminalreporter.write_line(f"{cpu:8.1f}s  {nodeid}")


@pytest.fixture(scope="session")
def eraint_path() -> Path:
    p = SHARED_DATA / "eraint_uvz.nc"
    require(p.exists(), f"real ERA-Interim test file not found at {p} (set PIPELINE_SHARED_DATA)")
    return p


@pytest.fixture(scope="session")
def era5_grib() -> Path:
    import cfgrib  # noqa: F401  (a test dependency)

    p = SHARED_DATA / "era5-2mt-2019-03-uk.grib"
    require(p.exists(), f"real ERA5 GRIB test file not found at {p}")
    return p


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require(ok: bool, why: str) -> None:
    """A test's tool or data is missing: skip on a developer's machine, fail in CI (CI=true), where
    .ci/run installs every tool and ../shared is beside the clone."""
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"{why} (CI must run every test)")
        pytest.skip(why)


CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"


# Two test clusters (tests/slurm/cluster.sh: each isolated by its directory, ports, subnet, bridge and network
# namespaces), one per xdist group, so that their tests run side by side on two workers: "slurm" is the README's
# trial cluster (the default directory, which /etc/slurm/slurm.conf links to: srun in the Snakemake plugin's job
# scripts reads that path), for the tests that go through the shipped profile; "slurm2" holds the multi-node
# training tests (submitit's jobs inherit SLURM_CONF, and the cluster.sh variables say which cluster a node
# belongs to when a test kills one).
CLUSTERS: dict[str, dict[str, str]] = {
    "slurm": {},
    "slurm2": {
        "PIPELINE_SLURM_DIR": "/tmp/pipeline-slurm-2",
        "PIPELINE_SLURMCTLD_PORT": "16827",
        "PIPELINE_SLURMD_PORT": "16828",
        "PIPELINE_SLURMDBD_PORT": "16829",
        "PIPELINE_MARIADB_PORT": "16830",
        "PIPELINE_SLURM_NET": "10.213.2",
        "PIPELINE_SLURM_BRIDGE": "plbr2",
        "PIPELINE_SLURM_NS": "pl2",
        "PIPELINE_SLURM_ETC": "0",
    },
}


@functools.cache
def _cluster(group: str) -> dict[str, str]:
    """Start the cluster of ``group`` (once per process) and return the environment for its commands."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "GLOO_"))}
    env.update(CLUSTERS[group])
    r = subprocess.run(["bash", str(CLUSTER), "start"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    env["SLURM_CONF"] = env.get("PIPELINE_SLURM_DIR", "/tmp/pipeline-slurm") + "/slurm.conf"
    r = subprocess.run(["sinfo", "-h", "-o", "%n %T"], env=env, capture_output=True, text=True)
    nodes = dict(line.split() for line in r.stdout.splitlines())
    assert set(nodes) == {"n1", "n2"}, r.stdout + r.stderr
    return env


@pytest.fixture(scope="module")
def slurm(request: pytest.FixtureRequest) -> dict[str, str]:
    """The test SLURM cluster of the module's group (:data:`CLUSTERS`: nodes n1 and n2, each in its own network
    namespace, with accounting), started once per worker; returns the environment for its commands (SLURM_CONF
    and the cluster.sh variables set, no SLURM_/MASTER_/GLOO_ variables inherited from an outer job)."""
    require(os.geteuid() == 0, "starting a SLURM cluster with network namespaces needs root")
    return _cluster(GROUPS[request.path.name])


def benchmark(name: str):
    """The script ``benchmarks/<name>.py`` imported as a module (benchmarks are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def pipeline_cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m pipeline <args>`` in ``cwd``, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def analytic(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """cos(lat) sin(2 lon) + 0.5 sin(lat): smooth on the sphere, periodic in longitude."""
    la, lo = np.deg2rad(lat)[:, None], np.deg2rad(lon)[None, :]
    return np.cos(la) * np.sin(2 * lo) + 0.5 * np.sin(la)


def make_dataset(
    lat: np.ndarray,
    lon: np.ndarray,
    times: int = 12,
    levels: tuple[float, ...] | None = (850.0, 500.0),
    names: dict[str, str] | None = None,
    cf_attrs: bool = True,
) -> xr.Dataset:
    """A CF data set with variables t (analytic x level factor x time factor) and q (positive)."""
    names = {"time": "time", "lat": "lat", "lon": "lon", "level": "plev", **(names or {})}
    time = pd.date_range("2000-01-01", periods=times, freq="D")
    base = analytic(lat, lon)
    tf = 1 + 0.1 * np.arange(times)[:, None, None]
    if levels is not None:
        lf = np.asarray(levels)[None, :, None, None] / 500.0
        t = 250 + 10 * lf * tf[:, None] * base[None, None]
        q = np.exp(base)[None, None] * lf * tf[:, None]
        dims = (names["time"], names["level"], names["lat"], names["lon"])
    else:
        t = 250 + 10 * tf * base[None]
        q = np.exp(base)[None] * tf
        dims = (names["time"], names["lat"], names["lon"])
    coords = {names["time"]: time, names["lat"]: lat, names["lon"]: lon}
    if levels is not None:
        coords[names["level"]] = np.asarray(levels)
    ds = xr.Dataset({"t": (dims, t, {"units": "K"}), "q": (dims, q, {"units": "kg m-2 s-1"})}, coords=coords)
    if cf_attrs:
        ds[names["lat"]].attrs = {"standard_name": "latitude", "units": "degrees_north"}
        ds[names["lon"]].attrs = {"standard_name": "longitude", "units": "degrees_east"}
        if levels is not None:
            ds[names["level"]].attrs = {
                "standard_name": "air_pressure",
                "units": "hPa",
                "positive": "down",
                "axis": "Z",
            }
    return ds


@pytest.fixture
def write_nc(tmp_path: Path):
    def _write(ds: xr.Dataset, name: str = "in.nc", encoding: dict | None = None) -> Path:
        p = tmp_path / name
        ds.to_netcdf(p, encoding=encoding)
        return p

    return _write


@pytest.fixture(scope="session")
def ci_workflow(tmp_path_factory, worker_id: str) -> Path:
    """The whole workflow, once per test run, on the bundled data with config/experiments/ci.yaml.

    Runs in a copy of the workflow files; returns that folder (results under results/eofs-z500-ci). Under
    pytest-xdist the first worker to ask builds it in the run's shared temporary folder, holding a file lock, and
    the other worker waits for it and reuses it (its users only read it, or copy it); a failed build is recorded
    there, so the second worker fails at once with the first one's output instead of running it again.
    """
    from filelock import FileLock

    snakemake = shutil.which("snakemake")
    assert snakemake is not None, "snakemake is a dependency of the project: reinstall with pip install -e '.[test]'"
    root = tmp_path_factory.getbasetemp()
    root = root if worker_id == "master" else root.parent  # the folder every worker's basetemp lies in
    work, done, failed = root / "ci_workflow", root / "ci_workflow.done", root / "ci_workflow.failed"
    with FileLock(str(root / "ci_workflow.lock")):
        if failed.exists():
            pytest.fail(f"the CI workflow failed in another worker:\n{failed.read_text()}")
        if done.exists():
            return work
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        try:
            for name in ("Snakefile", "workflow", "config", "envs"):
                src = REPO / name
                (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
            r = subprocess.run(
                [snakemake, "--cores", "2", "--configfile", "config/experiments/ci.yaml"],
                cwd=work,
                capture_output=True,
                text=True,
                timeout=1500,
            )
            error = "" if r.returncode == 0 else r.stdout[-4000:] + r.stderr[-4000:]
        except Exception as e:  # a copy or the run itself (a timeout): the other worker must not try again
            error = f"{type(e).__name__}: {e}"
        if error:
            failed.write_text(error)
            pytest.fail(error)
        done.touch()
    return work


def assert_same_data(a: Path, b: Path) -> None:
    """Two experiments' data folders hold identical stores (values, coordinates, attributes) and statistics."""
    from pipeline.data.io import open_store

    for name in ("regridded.zarr", "normalised.zarr"):
        x, y = open_store(a / name), open_store(b / name)
        assert {k: v for k, v in x.attrs.items() if k != "history"} == {
            k: v for k, v in y.attrs.items() if k != "history"
        }, name
        assert x.drop_attrs(deep=False).identical(y.drop_attrs(deep=False)), name
        for v in x.data_vars:
            assert np.array_equal(x[v].values, y[v].values, equal_nan=True), (name, v)
            assert x[v].encoding["chunks"] == y[v].encoding["chunks"], (name, v)
    sa, sb = (json.loads((d / "stats.json").read_text()) for d in (a, b))
    assert sa.pop("source").endswith("regridded.zarr") and sb.pop("source").endswith("regridded.zarr")
    assert sa == sb  # float for float: the statistics merge the same moments in the same order


@pytest.fixture(scope="session")
def slurm_data(tmp_path_factory) -> Path:
    """The bundled data prepared and normalised once for all SLURM training tests (the default data settings,
    which their train and launch settings leave alone); returns the data folder."""
    import yaml

    tmp = tmp_path_factory.mktemp("slurm_data")
    c = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    c["results_dir"] = str(tmp / "results")
    (tmp / "base.yaml").write_text(yaml.safe_dump(c))
    for stage in ("prepare", "normalise"):
        r = pipeline_cli(stage, "-c", "base.yaml", cwd=tmp, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
    return tmp / "results" / c["experiment"] / "data"


def slurm_training_workdir(tmp: Path, env: dict, train: dict, launch: dict, data: Path) -> Path:
    """For the SLURM training tests: ``tmp/base.yaml`` (the default config with a tiny model, small clips and
    the given ``train`` and ``launch`` settings, on SLURM) and the prepared and normalised ``data`` (the session's
    ``slurm_data``) copied under ``tmp/results/eofs-z500``."""
    import yaml

    c = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    c["results_dir"] = str(tmp / "results")
    c["model"].update({"base_channels": 8, "heads": 2})
    small = {"clip_frames": 4, "micro_batch": 2, "log_every": 1, "num_workers": 0, "lr": 1e-3, "warmup_steps": 2}
    c["train"].update({**small, **train})
    c["launch"].update({"executor": "slurm", "cpus_per_task": 1, "mem_gb": 4, "timeout_min": 20, **launch})
    (tmp / "base.yaml").write_text(yaml.safe_dump(c))
    shutil.copytree(data, tmp / "results" / c["experiment"] / "data")
    return tmp


def default_config(tmp: Path, data: dict | None = None, **over: object) -> Path:
    """``tmp/config.yaml``: the bundled default config with its results under ``tmp``, top-level keys replaced by
    ``over`` and keys of its ``data`` section by ``data``."""
    import yaml

    c = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    c["results_dir"] = str(tmp / "results")
    c.update(over)
    c["data"].update(data or {})
    p = tmp / "config.yaml"
    p.write_text(yaml.safe_dump(c))
    return p


def hadcm3_runs_config(tmp: Path, experiment: str, files: dict[str, str], variables: list[dict]) -> dict:
    """The bundled default config (a dict) with its results under ``tmp`` and a store of the two HadCM3 runs:
    A1B (train to 2039, validation 2040-2059) and E1 (train 2000-2039, test 2060-2099) from ``files`` (run ->
    path), on a 5-degree North American grid, with a made-up CO2 table (``tmp/co2.csv``: two scenarios that part
    in 2000) as forcing ``co2`` (log)."""
    import yaml

    years = np.arange(1850, 2101)
    table = tmp / "co2.csv"
    table.write_text("year,A1B,E1\n" + "".join(f"{y},{280 + y - 1850},{280 + min(y, 2000) - 1850}\n" for y in years))
    c = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    c["results_dir"] = str(tmp / "results")
    c["experiment"] = experiment
    c["data"] = {
        "source": {"paths": []},
        "split": None,
        "runs": [
            {"name": "A1B", "paths": [files["A1B"]],
             "split": {"train": ["1860-01-01", "2039-12-30"], "val": ["2040-01-01", "2059-12-30"]}},
            {"name": "E1", "paths": [files["E1"]],
             "split": {"train": ["2000-01-01", "2039-12-30"], "test": ["2060-01-01", "2099-12-30"]}},
        ],
        "variables": variables,
        "grid": {"resolution": 5.0, "lat_bounds": [15, 60], "lon_bounds": [-135, -45]},
        "forcings": [{"name": "co2", "table": str(table), "transform": "log"}],
        "time_chunk": 8,
    }  # fmt: skip
    return c


def experiment_config(work: Path, name: str, **sections: dict) -> tuple[str, Path]:
    """``work/<name>.yaml``: base.yaml (see :func:`slurm_training_workdir`) as experiment ``name`` with ``sections``
    updated, its data copied from the prepared one; returns the config file name and the experiment folder."""
    import shutil

    import yaml

    c = yaml.safe_load((work / "base.yaml").read_text())
    c["experiment"] = name
    for key, values in sections.items():
        c[key].update(values)
    (work / f"{name}.yaml").write_text(yaml.safe_dump(c))
    dst = work / "results" / name / "data"
    if not dst.exists():
        shutil.copytree(work / "results" / "eofs-z500" / "data", dst)
    return f"{name}.yaml", work / "results" / name


def start_training(work: Path, cfg: str, env: dict) -> subprocess.Popen:
    """``python -m pipeline train -c cfg`` in the background (its own session, stderr captured)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "train", "-c", cfg],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for(pred, timeout: float = 300, what: str = "") -> None:
    """Poll ``pred`` every 0.1 s until it is true; fail the test after ``timeout`` seconds."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what or pred}")


def job_state(job_id: str, env: dict) -> str:
    """The job's state in squeue (finished jobs stay listed for MinJobAge)."""
    r = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], env=env, capture_output=True, text=True)
    return r.stdout.strip()


def mlflow_train_runs(work: Path, name: str) -> list:
    """The train-stage MLflow runs of experiment ``name`` in ``work/results/mlflow.db``, each with its loss history."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'results' / 'mlflow.db'}")
    exp_id = client.get_experiment_by_name(name).experiment_id
    runs = [r for r in client.search_runs([exp_id]) if r.data.tags.get("pipeline.stage") == "train"]
    return [(r, client.get_metric_history(r.info.run_id, "loss")) for r in runs]


SEED_SYSTEMS = ("--configfile", "config/experiments/ci.yaml", "config/experiments/seed-systems.yaml")


def check_seed_systems(work: Path) -> None:
    """What config/experiments/seed-systems.yaml switches on, found in a finished workflow's results and MLflow
    store under ``work``: a learned schedule trained (its log-SNR curve logged, the inference file rebuilds it),
    the sweep over classifier-free guidance scales and a Langevin corrector, and a distilled student evaluated as
    a point of its own beside its teacher (issue 14)."""
    import torch
    import yaml
    from mlflow.tracking import MlflowClient

    from pipeline import checkpoints
    from pipeline.diffusion.schedule import LearnedSchedule
    from pipeline.train import SCHEDULE_PROBES

    exp = work / "results" / "eofs-z500-ci"
    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'results' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(exp.name).experiment_id], max_results=500)
    stage = {}
    for r in runs:
        stage.setdefault(r.data.tags.get("pipeline.stage"), []).append(r)
    # the learned schedule: trained, logged as a curve (monotone, endpoints fixed), rebuilt from the inference file
    (train,) = stage["train"]
    assert train.data.params["diffusion.schedule"] == "learned"
    train_cfg = yaml.safe_load((exp / "config.resolved.yaml").read_text())
    names = [f"logsnr_t{round(p * 100):03d}" for p in SCHEDULE_PROBES]
    probes = [client.get_metric_history(train.info.run_id, name) for name in names]
    assert all(len(h) == 2 for h in probes), probes  # val_every 10 of 20 steps
    curve = [h[-1].value for h in probes]
    assert curve == sorted(curve, reverse=True) and curve[0] > curve[-1], curve
    diffusion, _ = checkpoints.load_inference(exp / "checkpoints" / "final.pt")
    assert isinstance(diffusion.schedule, LearnedSchedule), type(diffusion.schedule)
    with torch.no_grad():  # the file's schedule is the one whose curve MLflow shows last
        saved = diffusion.schedule(torch.tensor(SCHEDULE_PROBES, dtype=torch.float64))
    np.testing.assert_allclose(saved.numpy(), curve, rtol=1e-6)
    assert curve[0] == pytest.approx(train_cfg["diffusion"]["logsnr_max"], rel=1e-5)  # endpoints fixed
    # guidance scales x samplers with and without the corrector, each point at every scale and weight
    table = pd.read_csv(exp / "eval" / "summary.csv")
    points = table[(table["kind"] == "checkpoint") & (table["split"] == "val")]
    assert set(points["sampler"]) == {"ddim", "ddim+langevin"} and set(points["cfg_scale"]) == {1.0, 2.0}
    assert len(points) == 2 * 2 and points["crps"].gt(0).all()  # samplers x scales (one guidance weight)
    by = points.set_index(["sampler", "guidance_weight", "cfg_scale"])["crps"]
    assert by[("ddim", 2.0, 1.0)] != by[("ddim", 2.0, 2.0)] != by[("ddim+langevin", 2.0, 2.0)]
    manifest = json.loads((exp / "samples" / "manifest.json").read_text())
    assert manifest["cfg_scale"] == json.loads((exp / "eval" / "best.json").read_text())["cfg_scale"]
    evals = stage["evaluate"]
    assert {(r.data.params["sampler"], r.data.params["cfg_scale"]) for r in evals} == {
        (s, c) for s in ("ddim", "ddim+langevin", "distilled") for c in ("1.0", "2.0")
    }
    # the distilled student: its own MLflow run, an inference file, a point collected beside the teacher's
    (distill,) = stage["distill"]
    assert client.get_metric_history(distill.info.run_id, "loss") and "round_final_loss" in distill.data.metrics
    students = json.loads((exp / "distill" / "students.json").read_text())
    best = json.loads((exp / "eval" / "best.json").read_text())
    assert students["teacher"].endswith(f"{best['checkpoint']}.pt") and (exp / "distill" / "round-0004").is_dir()
    both = pd.read_csv(exp / "eval" / "distilled" / "summary.csv")
    both = both[both["split"] == "val"]  # chosen among the teachers' points and the student's on validation
    student = both[both["sampler"] == "distilled"]
    assert set(student["checkpoint"]) == {"student-0004"} and set(student["steps"]) == {4} and len(student) == 2
    assert len(both[both["kind"] == "checkpoint"]) == len(points) + len(student)
    distilled_best = json.loads((exp / "eval" / "distilled" / "best.json").read_text())
    assert distilled_best["chosen_on"] == "val" and distilled_best["reported_on"] == "test"


# pytest-xdist (`-n 3 --dist loadgroup` in pyproject's addopts) runs whole groups on one worker: each module is a
# group (its module fixtures are built once). Three groups hold the end-to-end runs and go first, one to each
# worker: "slurm" (the cluster that owns /etc/slurm, which srun in the Snakemake plugin's jobs reads: the README
# trial and the SLURM sweep), "slurm2" (a second cluster: the training jobs, on one node and across both; see
# CLUSTERS) and "workflow" (the users of the session's CI workflow that need no cluster). The CI workflow is built
# once for all (the ci_workflow fixture: a file lock in the run's shared temporary folder; the README trial and the
# SLURM sweep compare with or start from its results; the trial asks for it only at its end). The groups come from
# the module's file name:
# xdist 3.8 renames a node id to mark its `xdist_group`, which pytest 9.2 ignores (node ids are no longer
# assignable), so the marks alone grouped nothing.
GROUPS = {
    "test_slurm.py": "slurm",
    "test_slurm_sweep.py": "slurm",
    "test_slurm_training.py": "slurm2",
    "test_multinode.py": "slurm2",
    "test_workflow.py": "workflow",
    "test_sweep.py": "workflow",
    "test_browser.py": "workflow",
}
CLUSTER_MODULES = {m for m, g in GROUPS.items() if g in CLUSTERS}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """--dist loadgroup: one work unit per module or GROUPS entry; the clusters' groups and "workflow" first."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return GROUPS.get(module.rsplit("/", 1)[-1], module)

        def _assign_work_unit(self, node) -> None:
            for group in ("workflow", "slurm2", "slurm"):  # slurm, slurm2, then workflow, at the front
                if group in self.workqueue:
                    self.workqueue.move_to_end(group, last=False)
            super()._assign_work_unit(node)

    return ModuleGroups(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The contributor's tier, ``pytest -m "not slow"`` (under 5 minutes on 2 cores), leaves out every test marked
    slow and every end-to-end run (markers workflow, slurm, browser: slow by nature). A SLURM test outside
    CLUSTER_MODULES is an error: it would start a group's cluster again in another worker, beside the first."""
    for item in items:
        if any(item.get_closest_marker(m) for m in ("workflow", "slurm", "browser")):
            item.add_marker(pytest.mark.slow)
        cluster = item.get_closest_marker("slurm") or "slurm" in getattr(item, "fixturenames", ())
        if cluster and item.path.name not in CLUSTER_MODULES:
            msg = f"{item.nodeid} uses the SLURM cluster: add {item.path.name} to GROUPS as one of {sorted(CLUSTERS)}"
            raise pytest.UsageError(msg)
