"""The Snakemake workflow: format, lint, env paths, and a real run of the data stages."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

SNAKEMAKE = shutil.which("snakemake")
pytestmark = pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake is not installed")


def _run(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_snakefmt_check() -> None:
    r = _run(["snakefmt", "--check", "Snakefile", "workflow/rules"], REPO)
    assert r.returncode == 0, r.stdout + r.stderr


def test_snakemake_lint() -> None:
    r = _run([SNAKEMAKE, "--lint"], REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Congratulations" in r.stdout + r.stderr


def test_every_conda_env_path_exists() -> None:
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for env in re.findall(r'conda:\s*\n\s*"([^"]+)"', smk.read_text()):
            assert (smk.parent / env).resolve().is_file(), f"{smk.name}: conda env {env} does not exist"


def test_slurm_profile_parses() -> None:
    prof = yaml.safe_load((REPO / "slurm" / "config.yaml").read_text())
    assert prof["executor"] == "slurm" and "default-resources" in prof


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A copy of the workflow files; results land in the copy."""
    for name in ("Snakefile", "workflow", "config", "envs"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    return tmp_path


CI = ["--configfile", "config/experiments/ci.yaml"]


@pytest.mark.workflow
def test_workflow_runs_then_nothing_to_do_then_reruns_on_changed_setting(workdir: Path) -> None:
    r = _run([SNAKEMAKE, "--cores", "2", *CI], workdir)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    exp = workdir / "results/eofs-z500-ci"
    assert (exp / "data/normalised.zarr/zarr.json").exists()
    assert (exp / "data/stats.json").exists()
    assert (exp / "benchmarks/regrid_source.tsv").exists()
    assert (exp / "checkpoints/final.pt").exists()
    r = _run([SNAKEMAKE, "-n", *CI], workdir)
    assert r.returncode == 0 and "Nothing to be done" in r.stdout + r.stderr, r.stdout + r.stderr
    r = _run([SNAKEMAKE, "-n", *CI, "--config", 'data={"grid":{"nan_threshold":0.9}}'], workdir)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "rule regrid_source:" in out and "Params have changed" in out
    assert "rule normalise_data:" in out and "rule train_model:" in out  # downstream of the changed output
    # a training setting reruns training only
    r = _run([SNAKEMAKE, "-n", *CI, "--config", 'train={"lr":0.001}'], workdir)
    out = r.stdout + r.stderr
    assert "rule train_model:" in out and "rule regrid_source:" not in out and "rule normalise_data:" not in out, out
    # --forcerun train_model reruns training and nothing upstream
    r = _run([SNAKEMAKE, "-n", *CI, "--forcerun", "train_model"], workdir)
    out = r.stdout + r.stderr
    assert "rule train_model:" in out and "rule regrid_source:" not in out and "rule normalise_data:" not in out, out


def test_bad_config_fails_at_parse_time(workdir: Path) -> None:
    r = _run([SNAKEMAKE, "-n", *CI, "--config", 'data={"grid":{"resolution":-2}}'], workdir)
    assert r.returncode != 0
    assert "data.grid.resolution = " in r.stdout + r.stderr and "must be > 0 degrees, got -2.0" in r.stdout + r.stderr
    r = _run([SNAKEMAKE, "-n", *CI, "--config", 'data={"variables":[{"name":"t2m"}]}'], workdir)
    assert r.returncode != 0 and "no variable 't2m'" in r.stdout + r.stderr
