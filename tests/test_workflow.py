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
assert SNAKEMAKE is not None, "snakemake is a dependency of the project: pip install -e '.[test]'"


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
def test_workflow_runs_then_nothing_to_do_then_reruns_on_changed_setting(ci_workflow: Path) -> None:
    workdir = ci_workflow
    exp = workdir / "results/eofs-z500-ci"
    assert (exp / "data/normalised.zarr/zarr.json").exists()
    assert (exp / "data/stats.json").exists()
    assert (exp / "benchmarks/regrid_part-0000.tsv").exists()
    assert (exp / "checkpoints/final.pt").exists()
    _check_evaluation_and_samples(exp)
    resolved = (exp / "config.resolved.yaml").read_text()
    r = _run([SNAKEMAKE, "-n", *CI], workdir)
    assert r.returncode == 0 and "Nothing to be done" in r.stdout + r.stderr, r.stdout + r.stderr
    r = _run([SNAKEMAKE, "-n", *CI, "--config", 'data={"grid":{"nan_threshold":0.9}}'], workdir)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "rule init_store:" in out and "Params have changed" in out
    assert "rule regrid_part:" in out and "rule finalise_normalised:" in out  # downstream of the changed output
    assert "rule train_model:" in out
    # a training setting reruns training only
    r = _run([SNAKEMAKE, "-n", *CI, "--config", 'train={"lr":0.001}'], workdir)
    out = r.stdout + r.stderr
    assert "rule train_model:" in out and "rule init_store:" not in out and "rule init_normalised:" not in out, out
    # another sampler list: only the new sweep points (and what collects them) run
    r = _run([SNAKEMAKE, "-n", *CI, "--config", 'evaluate={"samplers":["ddim","dpmpp_2m","ancestral"]}'], workdir)
    out = r.stdout + r.stderr
    points = re.findall(r"wildcards: split=(\w+), checkpoint=(step-\d+), sampler=(\w+), steps=(\d+)", out)
    assert len(points) == 4 and {p[2] for p in points} == {"ancestral"} and {p[0] for p in points} == {"val"}, points
    assert "checkpoint select_points:" in out and "rule train_model:" not in out
    assert "rule score_references:" not in out  # the references do not depend on the sweep's axes
    # a reference setting reruns the references and the collecting job (skill), not the sweep points
    r = _run([SNAKEMAKE, "-n", *CI, "--config", 'evaluate={"reference_members":20}'], workdir)
    out = r.stdout + r.stderr
    assert "rule score_references:" in out and "checkpoint select_points:" in out, out
    assert "rule evaluate_checkpoint:" not in out and "rule train_model:" not in out, out
    assert "rule init_normalised:" not in out, out
    # the bootstrap settings rerun only the collecting job
    r = _run([SNAKEMAKE, "-n", *CI, "--config", 'evaluate={"bootstrap_block":2}'], workdir)
    out = r.stdout + r.stderr
    assert "checkpoint select_points:" in out and "rule score_references:" not in out, out
    assert "rule evaluate_checkpoint:" not in out, out
    # --forcerun train_model reruns training and nothing upstream
    r = _run([SNAKEMAKE, "-n", *CI, "--forcerun", "train_model"], workdir)
    out = r.stdout + r.stderr
    assert "rule train_model:" in out and "rule init_store:" not in out and "rule init_normalised:" not in out, out
    # the dry runs with other settings left the running workflow's resolved config alone
    assert (exp / "config.resolved.yaml").read_text() == resolved
    # Snakemake's own report collects the evaluation and sample figures
    r = _run([SNAKEMAKE, *CI, "--report", "report.html"], workdir)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    html = (workdir / "report.html").read_text(errors="replace")
    for name in ("scorecard.png", "summary.png", "z500_realism.png", "z500_rollout.gif", "Evaluation", "Samples"):
        assert name in html, name


def test_bad_config_fails_at_parse_time(workdir: Path) -> None:
    r = _run([SNAKEMAKE, "-n", *CI, "--config", 'data={"grid":{"resolution":-2}}'], workdir)
    assert r.returncode != 0
    assert "data.grid.resolution = " in r.stdout + r.stderr and "must be > 0 degrees, got -2.0" in r.stdout + r.stderr
    r = _run([SNAKEMAKE, "-n", *CI, "--config", 'data={"variables":[{"name":"t2m"}]}'], workdir)
    assert r.returncode != 0 and "no variable 't2m'" in r.stdout + r.stderr


def _check_evaluation_and_samples(exp: Path) -> None:
    import json

    import numpy as np
    import pandas as pd
    import xarray as xr

    table = pd.read_csv(exp / "eval/summary.csv")
    assert set(table["split"]) == {"val", "test"}
    tested = table[(table["kind"] == "checkpoint") & (table["split"] == "test")]
    table = table[table["split"] == "val"]  # every point and reference on validation, where the best is chosen
    points, refs = table[table["kind"] == "checkpoint"], table[table["kind"] == "reference"]
    assert len(points) == 2 * 2 * 2 * 2  # checkpoints x samplers x steps x guidance weights, one variable
    assert 2 <= len(tested) <= 4  # evaluate.test_points: the chosen one and the other sampler's best at least
    assert set(points["sampler"]) == {"ddim", "dpmpp_2m"} and set(points["steps"]) == {5, 10}
    assert set(points["guidance_weight"]) == {0.0, 2.0}
    assert (table["crps"] > 0).all() and (table["rmse"] > 0).all()
    assert set(refs["checkpoint"]) == {"climatology-ensemble", "climatology-mean", "persistence"}
    for k in ("crps", "rmse", "crpss_climatology", "crpss_persistence", "rmse_ss_climatology", "rmse_ss_persistence"):
        assert ((table[f"{k}_lo"] <= table[k] + 1e-9) & (table[k] <= table[f"{k}_hi"] + 1e-9)).all(), k
    clim = refs[refs["checkpoint"] == "climatology-ensemble"].iloc[0]
    assert clim["crpss_climatology"] == 0.0 and clim["crps"] < refs[refs["checkpoint"] == "persistence"].iloc[0]["crps"]
    best = json.loads((exp / "eval/best.json").read_text())
    selection = json.loads((exp / "eval/selection.json").read_text())
    assert selection["chosen"] == {k: best[k] for k in selection["chosen"]} and best["chosen_on"] == "val"
    chosen = tested[(tested["sampler"] == best["sampler"]) & (tested["steps"] == best["steps"])]
    chosen = chosen[
        (chosen["checkpoint"] == best["checkpoint"]) & (chosen["guidance_weight"] == best["guidance_weight"])
    ]
    assert chosen["crps"].tolist() == [best["variables"]["z500"]["crps"]]  # best.json reports the test score
    assert isinstance(best["beats_climatology"], bool) and isinstance(best["beats_persistence"], bool)
    assert ("it beats climatology" in best["statement"]) == best["beats_climatology"]  # or: does not beat / is worse
    assert best["test_clips"] == 4 and len(best["skill"]["climatology"]["interval"]) == 2
    point = json.loads((exp / f"eval/test/{best['checkpoint']}/{best['sampler']}-{best['steps']}.json").read_text())
    assert [r["guidance_weight"] for r in point["results"]] == [0.0, 2.0] and point["split"] == "test"
    references = json.loads((exp / "eval/test/references.json").read_text())
    assert point["clip_starts"] == references["clip_starts"] and len(point["clip_starts"]) == 4  # the same clips
    val_point = json.loads((exp / f"eval/val/{best['checkpoint']}/{best['sampler']}-{best['steps']}.json").read_text())
    val_refs = json.loads((exp / "eval/val/references.json").read_text())
    assert val_point["clip_starts"] == val_refs["clip_starts"] and val_point["split"] == "val"
    assert max(val_refs["clip_starts"]) < min(references["clip_starts"])  # validation clips precede the test clips
    (best_result,) = [r for r in point["results"] if r["guidance_weight"] == best["guidance_weight"]]
    z = best_result["variables"]["z500"]
    assert z["units"] == "m" and len(z["rank_histogram"]) == 4 and len(z["rmse_per_lead"]) == 2
    assert np.shape(z["per_clip"]["crps"]) == (4, 2) and np.shape(z["per_clip"]["se"]) == (4, 2)
    assert "crpss_climatology" not in z  # skill comes at collect time: new references do not rerun the sweep
    mv = best["multivariate"]  # the energy score over all variables, with its interval and skill (test clips)
    assert mv["interval"][0] <= mv["energy_score"] <= mv["interval"][1] and mv["energy_score"] > 0
    assert len(mv["skill_climatology-ensemble"]["interval"]) == 2
    zb = best["variables"]["z500"]
    assert len(zb["crpss_climatology_per_lead"]) == 2 and "rmse_ss_persistence" in zb
    assert (exp / "eval/scorecard.png").stat().st_size > 10_000
    samples = exp / "samples"
    unc = xr.open_zarr(samples / "unconditional.zarr", zarr_format=3)
    roll = xr.open_zarr(samples / "rollouts.zarr", zarr_format=3)
    assert unc["z500"].dims == ("sample", "frame", "latitude", "longitude") and unc.sizes["sample"] == 2
    assert roll["z500"].dims == ("rollout", "lead", "latitude", "longitude") and roll.sizes["lead"] == 12
    for ds in (unc, roll):
        assert ds.attrs["Conventions"] == "CF-1.8" and ds.attrs["sampler"] == "dpmpp_2m"
        assert ds.attrs["guidance_weight"] == best["guidance_weight"]  # sample.guidance_weight: best
        assert ds["z500"].attrs["units"] == "m" and ds["z500"].attrs["standard_name"] == "geopotential_height"
        assert ds["latitude"].attrs["units"] == "degrees_north"
        assert 4000 < float(ds["z500"].mean()) < 7000  # denormalised: metres, not standard units
    assert roll["time"].dims == ("rollout", "lead")
    for name in (
        "z500_rollout.gif",
        "z500_rollout.mp4",
        "z500_first_last.png",
        "z500_spectra.png",
        "z500_realism.png",
        "manifest.json",
    ):
        assert (samples / name).stat().st_size > 0
    realism = json.loads((samples / "realism.json").read_text())["variables"]["z500"]
    for name in ("unconditional", "rollouts", "train_period"):  # each set, and the real yardstick, vs the test period
        assert realism[name]["w1"] > 0 and realism[name]["fields"] > 0 and len(realism[name]["autocorrelation"]) >= 1
        assert realism[name]["p1"] < realism[name]["p50"] < realism[name]["p99"]
    assert realism["train_period"]["fields"] > realism["unconditional"]["fields"] == 2 * 4
    assert realism["drift"]["frames"] == 12 and "real_area_mean_change_q05_q50_q95" in realism["drift"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{exp.parent / 'mlflow.db'}")
    exp_id = client.get_experiment_by_name(exp.name).experiment_id
    runs = client.search_runs([exp_id], max_results=500)
    evals = [r for r in runs if r.data.tags.get("pipeline.stage") == "evaluate"]
    assert len([r for r in evals if r.data.tags["split"] == "val"]) == 16  # one run per point and guidance weight
    assert len([r for r in evals if r.data.tags["split"] == "test"]) == 2 * len(selection["test_points"])
    assert {r.data.params["guidance_weight"] for r in evals} == {"0.0", "2.0"}
    references = [r for r in runs if r.data.tags.get("reference") == "true"]
    assert sorted(r.info.run_name for r in references) == sorted(
        f"reference {name} ({split})"
        for name in ("climatology-ensemble", "climatology-mean", "persistence")
        for split in ("val", "test")
    )
    names = set(evals[0].data.metrics)
    climate = {n for n in names if n.startswith("climate_")}  # a sweep point's climate figures (not the references')
    assert "climate_score" in climate and "climate_rollouts_std_ratio_ratio_z500" in climate
    for r in evals + references:  # the same param and metric names everywhere: the compare view lines them up
        assert set(r.data.params) == set(evals[0].data.params), r.info.run_name
        assert {"checkpoint", "checkpoint_step", "sampler", "steps", "guidance_weight", "ensemble"} <= set(
            r.data.params
        )
        assert {
            "crps_z500",
            "rmse_z500",
            "spread_skill_z500",
            "crpss_climatology_z500",
            "rmse_ss_persistence_z500",
        } <= (set(r.data.metrics))
        own = names - {"samples_per_s", "seconds"} - (climate if r in references else set())
        assert set(r.data.metrics) - {"samples_per_s", "seconds"} == own, r.info.run_name
    parent = (exp / "mlflow_parent_run_id").read_text().strip()
    names = {a.path for a in client.list_artifacts(parent, "evaluation")}
    assert {"evaluation/summary.csv", "evaluation/summary.png", "evaluation/best.json"} <= names
    assert "evaluation/scorecard.png" in names
    stages = {r.data.tags.get("pipeline.stage") for r in runs}
    assert {
        "prepare",
        "normalise",
        "references",
        "train",
        "evaluate",
        "select-points",
        "collect-eval",
        "sample",
    } <= stages
