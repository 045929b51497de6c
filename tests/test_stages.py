"""The data stages through the CLI, with real MLflow tracking (SQLite) and zarr stores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.data.io import atomic_path, open_store
from pipeline.data.stats import denormalise, read_stats
from tests.conftest import default_config, pipeline_cli


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("stages")
    cfg = default_config(tmp)
    for stage in ("prepare", "normalise"):
        r = pipeline_cli(stage, "--config", str(cfg), cwd=tmp, timeout=300)
        assert r.returncode == 0, r.stderr
    return tmp, cfg


@pytest.mark.slow
def test_stores_are_cf_zarr_v3_with_provenance(prepared) -> None:
    tmp, cfg_path = prepared
    cfg = load_config([cfg_path])
    reg = open_store(tmp / cfg.regridded_path)
    assert json.loads((tmp / cfg.regridded_path / "zarr.json").read_text())["zarr_format"] == 3
    assert reg["z500"].dims == ("time", "latitude", "longitude")
    assert reg["z500"].shape == (65, 14, 24)
    assert reg["z500"].encoding["chunks"] == (8, 14, 24)
    assert (
        reg["latitude"].attrs["units"] == "degrees_north"
        and reg["z500"].attrs["standard_name"] == "geopotential_height"
    )
    assert reg["z500"].attrs["level"] == 500.0 and reg["z500"].attrs["regrid_method"] == "bilinear"
    assert "hgt_djf.nc" in reg.attrs["source_files"] and "quick_sha256" in reg.attrs["source_provenance"]
    assert reg.attrs["pipeline_version"] and reg.attrs["data_config_hash"]
    # bilinear regridding of a smooth field: regridded values lie within the source's range
    assert 4500 < float(reg["z500"].min()) and float(reg["z500"].max()) < 6000


@pytest.mark.slow
def test_normalised_store_inverts_to_the_regridded_one(prepared) -> None:
    tmp, cfg_path = prepared
    cfg = load_config([cfg_path])
    reg = open_store(tmp / cfg.regridded_path)
    norm = open_store(tmp / cfg.normalised_path)
    stats = read_stats(tmp / cfg.stats_path)
    back = denormalise(norm, stats)
    np.testing.assert_allclose(back["z500"].values, reg["z500"].values, rtol=1e-6)
    train = norm["z500"].isel(time=np.flatnonzero(norm["split"].values == 1))
    w = np.cos(np.deg2rad(norm["latitude"]))
    assert float(train.weighted(w).mean()) == pytest.approx(0, abs=1e-5)
    assert int((norm["split"] == 1).sum()) == 32  # train 1948-1979


@pytest.mark.slow
def test_mlflow_parent_and_stage_runs(prepared) -> None:
    from mlflow.tracking import MlflowClient

    tmp, cfg_path = prepared
    cfg = load_config([cfg_path])
    client = MlflowClient(tracking_uri=cfg.tracking_uri)
    exp = client.get_experiment_by_name(cfg.experiment)
    parent_id = (tmp / cfg.exp_dir / "mlflow_parent_run_id").read_text().strip()
    runs = client.search_runs([exp.experiment_id])
    children = {
        r.data.tags.get("pipeline.stage"): r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id
    }
    assert set(children) == {"prepare", "normalise"}
    prep = children["prepare"]
    assert prep.info.status == "FINISHED"
    assert prep.data.params["data.grid.resolution"] == "5.0"
    assert prep.data.metrics["bytes_written"] > 0 and prep.data.metrics["throughput_MBps"] > 0
    assert prep.data.tags["source_hashes"]
    arts = {a.path for a in client.list_artifacts(prep.info.run_id)}
    assert {"config.json", "quicklook_regrid.png"} <= arts
    norm = children["normalise"]
    assert norm.data.metrics["std_z500"] == pytest.approx(read_stats(tmp / cfg.stats_path)["z500"]["std"])
    assert "stats.json" in {a.path for a in client.list_artifacts(norm.info.run_id)}


@pytest.mark.slow
def test_unreachable_tracking_server_does_not_stop_the_stage(tmp_path: Path) -> None:
    cfg = default_config(tmp_path, tracking={"uri": "http://127.0.0.1:9", "enabled": True})
    r = pipeline_cli("prepare", "--config", str(cfg), cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "MLflow tracking unavailable" in r.stderr
    assert (tmp_path / "results" / "eofs-z500" / "data" / "regridded.zarr" / "zarr.json").exists()


def test_cli_help_and_config_errors(tmp_path: Path) -> None:
    for cmd in ("prepare", "normalise", "check-config"):
        r = pipeline_cli(cmd, "--help", cwd=tmp_path, timeout=300)
        assert r.returncode == 0 and "--config" in r.stdout
    bad = default_config(tmp_path, seed="zero")
    r = pipeline_cli("prepare", "--config", str(bad), cwd=tmp_path, timeout=300)
    assert r.returncode == 2
    assert "seed = 'zero'" in r.stderr and "Traceback" not in r.stderr
    ok = pipeline_cli("check-config", "--config", str(default_config(tmp_path)), cwd=tmp_path, timeout=300)
    assert ok.returncode == 0 and "config OK" in ok.stdout


def test_interrupted_write_leaves_no_output(tmp_path: Path) -> None:
    final = tmp_path / "store.zarr"
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.mkdir()
        (tmp / "half").write_text("partial")
        raise RuntimeError("killed")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []
    final.mkdir()
    (final / "old").write_text("previous complete output")
    with atomic_path(final) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["new"]


def test_mlflow_sqlite_works_after_grib_backend_loaded(tmp_path: Path) -> None:
    """eccodes bundles an old SQLite; importing pipeline first keeps MLflow's store readable."""
    code = (
        "import pipeline, cfgrib, sqlite3\n"
        "from mlflow.tracking import MlflowClient\n"
        f"c = MlflowClient(tracking_uri='sqlite:///{tmp_path}/m.db')\n"
        "c.create_experiment('x')\n"
        "print(sqlite3.sqlite_version)\n"
    )
    import cfgrib  # noqa: F401  (a test dependency)

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert tuple(int(x) for x in r.stdout.strip().split(".")) >= (3, 31)


def test_rotated_grids_work_after_grib_backend_loaded(era5_grib: Path) -> None:
    """eccodes' eckit bundles another libproj; importing pipeline first keeps pyproj's own (and its proj.db)."""
    code = (
        "import pipeline, xarray as xr, pyproj\n"
        f"xr.open_dataset({str(era5_grib)!r}, engine='cfgrib', backend_kwargs={{'indexpath': ''}})['t2m'][0].load()\n"
        "crs = pyproj.CRS.from_cf({'grid_mapping_name': 'rotated_latitude_longitude',\n"
        "    'grid_north_pole_latitude': 39.25, 'grid_north_pole_longitude': -162.0})\n"
        "print(pyproj.Transformer.from_crs(crs, 'EPSG:4326', always_xy=True).transform(0.0, 0.0))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    lon, lat = (float(v) for v in r.stdout.strip().strip("()").split(","))
    assert abs(lon - 18.0) < 1e-9 and abs(lat - 50.75) < 1e-9  # the rotated origin of EUR-CORDEX


def test_sampling_processes_are_spread_evenly_over_the_nodes() -> None:
    """`sample.processes` over `launch.nodes`: the same number of processes on each node used, as many nodes
    as divide them (the two-node SLURM test runs 2 processes as 2 nodes x 1)."""
    from pipeline.launch import spread

    assert [spread(p, n) for p, n in ((2, 2), (4, 2), (3, 2), (2, 4), (6, 4), (5, 1))] == [
        (2, 1),
        (2, 2),
        (1, 3),
        (2, 1),
        (2, 3),
        (1, 5),
    ]


def _fails() -> None:
    raise RuntimeError("the gloo peer is gone")


def test_a_failed_attempt_is_not_the_end_while_slurm_may_requeue_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The launcher's end of a job (real submitit jobs, squeue's answer set): a task's error while the job is still
    RUNNING or COMPLETING (a node died; SLURM requeues the job next) is not the end, success is; once the job has
    left the live states an error is the end (and launch() raises it)."""
    import submitit

    from pipeline import launch

    ex = submitit.AutoExecutor(folder=tmp_path, cluster="local")
    ok, failed = ex.submit(sum, [1, 2]), ex.submit(_fails)
    ok.wait(), failed.wait()
    for state, want in (("RUNNING", (True, False)), ("COMPLETING", (True, False)), ("FAILED", (True, True))):
        monkeypatch.setattr(launch, "squeue_state", lambda _id, s=state: s)
        assert (launch._finished(ok, "slurm", tmp_path, 0), launch._finished(failed, "slurm", tmp_path, 0)) == want
    with pytest.raises(submitit.core.utils.FailedJobError, match="the gloo peer is gone"):
        failed.results()  # what launch() raises then
