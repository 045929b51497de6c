"""The evaluation sweep as one submitit job array (local executor here; SLURM in test_slurm), and
sampling split across processes. Both start from a copy of the session's CI workflow results."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from pipeline.config import load_config
from tests.conftest import pipeline_cli

pytestmark = pytest.mark.workflow


@pytest.fixture
def copied(ci_workflow: Path, tmp_path: Path) -> Path:
    """A copy of the CI workflow's results (data, checkpoints, sweep, samples, MLflow store)."""
    shutil.copytree(ci_workflow / "results", tmp_path / "results", ignore=shutil.ignore_patterns("submitit"))
    return tmp_path


def _override(work: Path, name: str, settings: dict) -> list[str]:
    (work / name).write_text(yaml.safe_dump(settings))
    return ["--config", "results/eofs-z500-ci/config.resolved.yaml", "--config", name]


def _evaluate_runs(work: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'results' / 'mlflow.db'}")
    exp_id = client.get_experiment_by_name("eofs-z500-ci").experiment_id
    return [r for r in client.search_runs([exp_id], max_results=500) if r.data.tags.get("pipeline.stage") == "evaluate"]


def test_sweep_as_a_job_array_runs_only_the_missing_points(copied: Path) -> None:
    eval_dir = copied / "results/eofs-z500-ci/eval"
    before = {p: p.stat().st_mtime_ns for p in eval_dir.glob("*/step-*/*.json")}
    assert len([p for p in before if p.parts[-3] == "val"]) == 8
    runs_before = len(_evaluate_runs(copied))
    args = _override(copied, "more.yaml", {"evaluate": {"samplers": ["ddim", "dpmpp_2m", "ancestral"]}})
    r = pipeline_cli("evaluate", *args, cwd=copied, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    todo = re.search(r"evaluate: (\d+) sweep point\(s\) to run on validation: (.*)", r.stderr)
    assert todo and todo.group(1) == "4" and "ancestral-5" in todo.group(2) and "ddim" not in todo.group(2)
    assert "local array tasks 1-2 of 4" in r.stderr and "local array tasks 3-4 of 4" in r.stderr
    # then the choice on validation, and the chosen points that have no test score yet as a second array
    tested = re.search(r"evaluate: (\d+) point\(s\) to run on test: (.*)", r.stderr)
    assert "evaluate: chosen on validation -> " in r.stderr and tested, r.stderr[-3000:]
    selection = json.loads((eval_dir / "selection.json").read_text())
    assert len(selection["ranking"]) == 12 * 2  # every point and guidance weight, ancestral's included
    after = {p: p.stat().st_mtime_ns for p in eval_dir.glob("*/step-*/*.json")}
    assert len([p for p in after if p.parts[-3] == "val"]) == 12
    assert all(after[p] == t for p, t in before.items())  # the old points untouched
    assert all((eval_dir / "test" / c / f"{s}-{n}.json").exists() for c, s, n in selection["test_points"])
    new = json.loads((eval_dir / "val" / "step-00000020" / "ancestral-10.json").read_text())
    assert [x["guidance_weight"] for x in new["results"]] == [0.0, 2.0]
    assert new["results"][0]["variables"]["z500"]["crps"] > 0
    assert new["clip_starts"] == json.loads((eval_dir / "val" / "references.json").read_text())["clip_starts"]
    runs = _evaluate_runs(copied)
    new_tests = int(tested.group(1))
    assert len(runs) == runs_before + (4 + new_tests) * 2  # one MLflow run per new point and guidance weight
    # nothing left to do: no job submitted
    r = pipeline_cli("evaluate", *args, cwd=copied, timeout=300)
    assert r.returncode == 0 and "evaluate: 0 sweep point(s)" in r.stderr, r.stderr[-2000:]
    assert "evaluate: 0 point(s) to run on test" in r.stderr, r.stderr[-2000:]
    # collect sees the 12 points x 2 weights
    r = pipeline_cli("collect-eval", *args, cwd=copied, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    import pandas as pd

    table = pd.read_csv(eval_dir / "summary.csv")
    points = table[(table["kind"] == "checkpoint") & (table["split"] == "val")]
    assert len(points) == 12 * 2 and set(points["sampler"]) == {"ddim", "dpmpp_2m", "ancestral"}
    assert (table["kind"] == "reference").sum() == 3 * 2  # the references, scored once per split


def test_a_point_scored_one_clip_at_a_time_equals_the_point_scored_at_once(copied: Path) -> None:
    """evaluate.score_batch 1 (generate and score one clip at a time, the memory of one clip's ensemble) gives the
    workflow's point (all its clips in one batch): the same members (seeded per clip) and the same scores."""
    point = copied / "results/eofs-z500-ci/eval/val/step-00000020/ddim-5.json"
    whole = json.loads(point.read_text())
    assert whole["test_clips"] > 2  # more than one batch below
    args = _override(copied, "one.yaml", {"evaluate": {"score_batch": 1}})
    r = pipeline_cli(
        "evaluate", *args, "--split", "val", "--checkpoint", "step-00000020", "--sampler", "ddim", "--steps", "5",
        cwd=copied, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    batched = json.loads(point.read_text())
    for a, b in zip(whole["results"], batched["results"], strict=True):
        np.testing.assert_allclose(b["multivariate"]["per_clip"], a["multivariate"]["per_clip"], rtol=1e-6)
        for k, v in a["variables"]["z500"].items():
            got = b["variables"]["z500"][k]
            if k == "per_clip":
                for part in ("crps", "se"):
                    np.testing.assert_allclose(got[part], v[part], rtol=1e-6, err_msg=part)
            elif isinstance(v, dict):  # spectral ratios per band
                assert got == pytest.approx(v, rel=1e-6), k
            elif k != "units":
                np.testing.assert_allclose(np.asarray(got, float), np.asarray(v, float), rtol=1e-6, err_msg=k)


def test_evaluate_point_arguments_all_or_none(copied: Path) -> None:
    r = pipeline_cli(
        "evaluate", "--config", "results/eofs-z500-ci/config.resolved.yaml", "--sampler", "ddim", cwd=copied
    )
    assert r.returncode == 2 and "give all of --checkpoint, --sampler and --steps" in r.stderr


def test_sampling_split_across_processes_and_batches_gives_the_same_samples(copied: Path) -> None:
    exp = copied / "results/eofs-z500-ci"
    # 3 clips, 2 rollouts: one process one at a time vs two processes (clips 0, 2 in one batch on rank 0)
    clips = {"unconditional": 3, "rollouts": 2}
    one = _override(copied, "one.yaml", {"sample": {"processes": 1, "batch_size": 1, **clips}})
    args = _override(copied, "two.yaml", {"sample": {"processes": 2, "batch_size": 2, **clips}})
    r = pipeline_cli("sample", *one, cwd=copied, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    shutil.move(exp / "samples", copied / "one-process")
    r = pipeline_cli("sample", *args, cwd=copied, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "submitted local job" in r.stderr and "(2 task(s))" in r.stderr
    cfg = load_config([copied / "results/eofs-z500-ci/config.resolved.yaml", copied / "two.yaml"])
    assert cfg.sample.processes == 2
    for name in ("unconditional.zarr", "rollouts.zarr"):
        a = xr.open_zarr(copied / "one-process" / name, zarr_format=3)
        b = xr.open_zarr(exp / "samples" / name, zarr_format=3)
        assert a.attrs["processes"] == 1 and b.attrs["processes"] == 2
        assert a["z500"].shape == b["z500"].shape
        # same seeds per clip: the same fields, up to float32 rounding of different thread counts
        np.testing.assert_allclose(b["z500"].values, a["z500"].values, rtol=1e-6, atol=1e-3)
        assert float(b["z500"].std()) > 10  # real fields, not constants
    for f in ("z500_rollout.gif", "manifest.json"):
        assert (exp / "samples" / f).stat().st_size > 0


def test_sweep_checkpoint_selection_and_its_errors() -> None:
    from pipeline.config import ConfigError
    from tests.conftest import REPO

    default = REPO / "config" / "config.yaml"

    base = {"train": {"steps": 300, "checkpoint_every": 50, "keep_last": 3, "keep_every": 100}}

    def checkpoints(sel) -> list[str]:
        cfg = load_config([default, base, {"evaluate": {"checkpoints": sel}}])
        return cfg.eval_checkpoints()

    assert checkpoints("last") == ["step-00000300"]
    assert checkpoints("last 2") == ["step-00000250", "step-00000300"]
    assert checkpoints("all") == ["step-00000100", "step-00000200", "step-00000250", "step-00000300"]
    assert checkpoints([100, 300]) == ["step-00000100", "step-00000300"]
    with pytest.raises(ConfigError, match=r"\[.step-00000150.\] will not exist after training"):
        checkpoints([150])
    with pytest.raises(
        ConfigError, match=r"evaluate.checkpoints = 'latest': must be 'last', 'last N', 'all' or a list of steps"
    ):
        checkpoints("latest")
    with pytest.raises(ConfigError, match=r"evaluate.guidance_weights = \[1.0, 1.0\]: has repeated values"):
        load_config([default, {"evaluate": {"guidance_weights": [1.0, 1.0]}}])
