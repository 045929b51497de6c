"""Check before allocating (issue 25): what the data and the config will need is checked before a job runs.

Latitude/longitude units are checked however the coordinates were found (radians are converted, other units
refused); ``check-config`` estimates the target grid, a part's memory and the stores' sizes and refuses a grid
no part's job can hold; an unwritable results folder is an error before any job; a variable with no valid
value in the selected region and time is an error in prepare (no store is made) and, for the training
period, in normalise, each naming the files or store, the variable and the region or period.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import dask.array
import numpy as np
import pytest
import xarray as xr
import yaml

from pipeline.cli import main
from pipeline.config import ConfigError, load_config
from pipeline.data.budget import INTERPRETER, estimate
from pipeline.data.io import open_store, resolve_paths
from pipeline.data.regrid import target_grid
from pipeline.prepare import check_data
from tests.conftest import REPO, make_dataset

HGT = "bundled:eofs/hgt_djf.nc"  # real NCEP/NCAR z500 (the default data): CF coordinates with bounds


def _config(tmp: Path, paths: list[Path] | list[str], **data) -> Path:
    """The default config on ``paths``, tracking off, results under ``tmp``; ``data`` overrides data keys."""
    c = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    c["results_dir"] = str(tmp / "results")
    c["tracking"] = {"enabled": False}
    c["data"]["source"]["paths"] = [str(p) for p in paths]
    for k, v in data.items():
        c["data"][k] = {**c["data"][k], **v} if isinstance(v, dict) and k in c["data"] else v
    p = tmp / "config.yaml"
    p.write_text(yaml.safe_dump(c))
    return p


def _error(capsys, *argv: str) -> str:
    """Run the CLI, which must fail with a one-line error and no traceback; returns that line."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: "), err
    return last


def _hgt() -> xr.Dataset:
    return xr.open_dataset(resolve_paths([HGT])[0], decode_times=False).load()


def _in_radians(ds: xr.Dataset, how: str) -> tuple[xr.Dataset, dict | None]:
    """``ds`` with latitude and longitude (and their CF bounds) in radians, found by CF standard_name, named
    in data.source.coordinates (ICON's clat/clon) or guessed from bare names."""
    ds = ds.copy()
    for c in ("latitude", "longitude"):
        ds[c] = (c, np.deg2rad(ds[c].values.astype(np.float64)), {**ds[c].attrs, "units": "radians"})
        b = ds[c].attrs["bounds"]
        ds[b] = (ds[b].dims, np.deg2rad(ds[b].values), ds[b].attrs)
    if how == "cf":
        return ds, None
    for c in ("latitude", "longitude"):
        ds[c].attrs = {"units": "radian"}
    if how == "named":
        ds = ds.rename({"latitude": "clat", "longitude": "clon"})
        return ds, {"latitude": "clat", "longitude": "clon"}
    return ds.rename({"latitude": "lat", "longitude": "lon"}), None  # guessed


@pytest.mark.parametrize("how", ["cf", "named", "guessed"])
def test_radians_are_converted_to_degrees(how: str, tmp_path: Path, capsys, caplog) -> None:
    """The real z500 file rewritten with latitude and longitude in radians regrids as the file in degrees."""
    caplog.set_level(logging.INFO)
    rad, names = _in_radians(_hgt(), how)
    rad.to_netcdf(tmp_path / "z500_radians.nc")
    runs = {"degrees": ([HGT], None), "radians": ([tmp_path / "z500_radians.nc"], names)}
    stores = {}
    for label, (paths, coords) in runs.items():
        d = tmp_path / label
        d.mkdir()
        cfg = _config(d, paths, source={"coordinates": coords})
        assert main(["prepare", "--config", str(cfg)]) == 0, capsys.readouterr().err
        stores[label] = open_store(d / "results" / "eofs-z500" / "data" / "regridded.zarr").load()
    lat, lon = ("clat", "clon") if how == "named" else ("lat", "lon") if how == "guessed" else ("latitude", "longitude")
    for which, name in (("latitude", lat), ("longitude", lon)):
        assert re.search(
            rf"z500_radians\.nc: {which} coordinate '{name}' is in radians .*converted to degrees", caplog.text
        )
    deg, radians = stores["degrees"], stores["radians"]
    assert (
        radians["longitude"].attrs["units"] == "degrees_east" and radians["latitude"].attrs["units"] == "degrees_north"
    )
    np.testing.assert_array_equal(radians["latitude"].values, deg["latitude"].values)
    np.testing.assert_array_equal(radians["longitude"].values, deg["longitude"].values)
    assert np.isfinite(deg["z500"].values).all()
    np.testing.assert_allclose(radians["z500"].values, deg["z500"].values, rtol=1e-9, atol=0)


@pytest.mark.parametrize(
    ("which", "units", "how"),
    [("latitude", "m", "cf"), ("longitude", "degrees_north", "cf"), ("latitude", "km", "named")],
)
def test_other_units_are_refused(which: str, units: str, how: str, tmp_path: Path, capsys) -> None:
    ds = _hgt()
    ds[which].attrs["units"] = units
    coords = None
    if how == "named":
        ds = ds.rename({"latitude": "ylat", "longitude": "xlon"})
        coords = {"latitude": "ylat", "longitude": "xlon"}
    ds.to_netcdf(tmp_path / "odd_units.nc")
    cfg = _config(tmp_path, [tmp_path / "odd_units.nc"], source={"coordinates": coords})
    name = {"latitude": "ylat", "longitude": "xlon"}[which] if coords else which
    for stage in ("check-config", "prepare"):
        last = _error(capsys, stage, "--config", str(cfg))
        assert re.search(
            rf"data\.source: odd_units\.nc: {which} coordinate '{name}' \(.*\) has units '{units}', which are not "
            rf"degrees .* nor radians.*data\.source\.coordinates",
            last,
        ), last
    assert not (tmp_path / "results" / "eofs-z500" / "data" / "regridded.zarr").exists()


def _global(tmp_path: Path) -> Path:
    lat, lon = np.arange(-88.75, 90, 2.5), np.arange(0, 360, 2.5)
    p = tmp_path / "global.nc"
    make_dataset(lat, lon, times=24, levels=None).to_netcdf(p)
    return p


SPLIT = {
    "train": ["2000-01-01", "2000-01-12"],
    "val": ["2000-01-13", "2000-01-18"],
    "test": ["2000-01-19", "2000-01-24"],
}


def test_a_grid_no_job_can_hold_is_refused_by_check_config(tmp_path: Path, capsys) -> None:
    """0.001 degrees global: check-config (and prepare, before allocating) names data.grid.resolution."""
    grid = {"resolution": 0.001, "lat_bounds": None, "lon_bounds": None}
    cfg = _config(tmp_path, [_global(tmp_path)], variables=[{"name": "t"}], grid=grid, split=SPLIT)
    for stage in ("check-config", "prepare"):
        last = _error(capsys, stage, "--config", str(cfg))
        assert re.search(
            r"data\.grid\.resolution = 0\.001: the target grid is 180000 x 360000 = 6\.48e\+10 cells \(data\.grid\."
            r"lat_bounds global, lon_bounds global\); regridding one time chunk of one variable \(data\.time_chunk = 8 "
            r"steps\) needs about [\d.]+ TiB in a part's job, more than data\.max_part_memory_gb = 8 GB",
            last,
        ), last
        assert "data.time_chunk (one step" not in last  # a single step does not fit either
    assert not list((tmp_path / "results").rglob("*.zarr*/zarr.json"))  # nothing allocated, no store begun


def test_a_shorter_time_chunk_is_suggested_where_it_fits(tmp_path: Path) -> None:
    """0.1 degrees global: one step fits in 2 GB, a chunk of 8 does not; nothing is allocated to find out."""
    grid = {"resolution": 0.1, "lat_bounds": None, "lon_bounds": None}
    cfg = _config(tmp_path, [_global(tmp_path)], variables=[{"name": "t"}], grid=grid, split=SPLIT)
    c = load_config([cfg, _override(tmp_path, {"data": {"max_part_memory_gb": 2}})])
    with pytest.raises(ConfigError, match=r"data\.grid\.resolution = 0\.1: .*lower data\.time_chunk \(one step needs"):
        check_data(c)
    c = load_config([cfg, _override(tmp_path, {"data": {"max_part_memory_gb": 2, "time_chunk": 1}})])
    check_data(c)


def _override(tmp: Path, over: dict) -> Path:
    p = tmp / f"override-{len(list(tmp.glob('override-*')))}.yaml"
    p.write_text(yaml.safe_dump(over))
    return p


def test_the_shipped_configs_pass_and_log_their_sizes(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO)
    over = _override(tmp_path, {"results_dir": str(tmp_path / "results")})
    for extra in [[], *([p] for p in sorted((REPO / "config" / "experiments").glob("*.yaml")))]:
        cfg = load_config([REPO / "config" / "config.yaml", *extra, over])
        if any(p.startswith("simulated:") for p in cfg.data.source.paths):
            continue  # simulated data is made on first use (minutes); its grid is 32 x 32
        if any(p.startswith("/path/to/") for p in cfg.data.source.paths):
            continue  # a template for the user's own files (gpu-era5.yaml): its settings validated, no data to check
        check_data(cfg)
    assert re.search(
        r"data\.grid: target grid 14 x 24 \(336 cells\) at 5 deg; a part's job: .* per time chunk of a variable "
        r"\(data\.time_chunk = 8\), .* of regridding weights, peak about .* with \d+ chunk\(s\) at once on \d+ "
        r"CPU\(s\) \(data\.max_part_memory_gb = 8\); stores \(uncompressed\): regridded .*, normalised ",
        caplog.text,
    ), caplog.text[-2000:]


def test_a_part_runs_as_many_chunks_as_its_memory_holds() -> None:
    """From metadata only (a lazy 0.1-degree source of 64 steps): one chunk needs about 2 GiB (measured: a part
    regridding it holds 2.0 GiB with one chunk at once, 3.8 GiB with two), so 3 GB runs one chunk at a time."""
    lat, lon = np.arange(-89.5, 90, 1.0), np.arange(0.5, 360, 1.0)
    data = dask.array.zeros((64, lat.size, lon.size), dtype=np.float32, chunks=(8, -1, -1))
    ds = xr.Dataset({"t": (("time", "latitude", "longitude"), data)}, coords={"latitude": lat, "longitude": lon})
    target = target_grid(0.1)
    b = estimate(ds, target, {"conservative"}, time_chunk=8, part_steps=64, limit_gb=3)
    assert b.grid == (1800, 3600) and b.part_tasks == 8
    assert 2.0 * 2**30 < b.peak(1) < 2.6 * 2**30 and 3.8 * 2**30 < b.peak(2) < 4.6 * 2**30
    assert b.fits and b.workers(16) == 1
    assert estimate(ds, target, {"conservative"}, 8, 64, 8).workers(16) == 3
    assert estimate(ds, target, {"bilinear"}, 8, 16, 64).workers(16) == 2  # never more than the part's chunks
    assert not estimate(ds, target, {"conservative"}, 8, 64, 2).fits
    assert b.peak(1) > INTERPRETER + b.weights


def test_an_unwritable_results_folder_is_refused_before_any_job(tmp_path: Path, capsys) -> None:
    (tmp_path / "a-file").write_text("not a folder\n")
    cases = {
        tmp_path / "a-file" / "results": r"cannot create .*a-file/results/eofs-z500: .*a-file is a file, not a folder",
        # root passes every permission check, but cannot create a file in /proc: the probe finds out
        Path("/proc/pipeline-results"): r"cannot write to /proc/pipeline-results/eofs-z500: ",
    }
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.geteuid() != 0:  # root writes into a folder without write permission: no error to expect there
        cases[locked / "results"] = r"cannot write to .*locked/results/eofs-z500: .*locked is not writable"
    try:
        for results, pattern in cases.items():
            cfg = _config(tmp_path, [HGT])
            cfg.write_text(cfg.read_text().replace(str(tmp_path / "results"), str(results)))
            last = _error(capsys, "check-config", "--config", str(cfg))
            assert last.startswith(f"error: results_dir = '{results}': "), last
            assert re.search(pattern, last), last
            # prepare stops as clearly, at its first write (the store's lock) or at the same check
            assert str(results) in _error(capsys, "prepare", "--config", str(cfg))
        if os.geteuid() == 0:
            cfg = _config(tmp_path, [HGT])
            cfg.write_text(cfg.read_text().replace(str(tmp_path / "results"), str(locked / "results")))
            assert main(["check-config", "--config", str(cfg)]) == 0
            assert not list(locked.iterdir())  # the probe file is gone
    finally:
        locked.chmod(0o700)


def _nan_z500(tmp_path: Path, steps: int | None = None) -> Path:
    """The real z500 file with every value missing (``steps``: only in its first steps, one a winter from 1948)."""
    ds = _hgt()
    missing = np.arange(ds.sizes["time"]) < (ds.sizes["time"] if steps is None else steps)
    ds["z"] = ds["z"].where(~xr.DataArray(missing, dims="time"))
    p = tmp_path / "z500_missing.nc"
    ds.to_netcdf(p)
    return p


@pytest.mark.parametrize("parts", [1, 3])
def test_a_variable_without_values_is_an_error_in_prepare(parts: int, tmp_path: Path, capsys, caplog) -> None:
    cfg = _config(tmp_path, [_nan_z500(tmp_path)], parts=parts)
    assert main(["check-config", "--config", str(cfg)]) == 0  # the metadata is fine: values are not read there
    last = _error(capsys, "prepare", "--config", str(cfg))
    assert re.search(
        r"error: z500_missing\.nc: every value of 'z500' \(variable 'z' at level 500 hPa\) in latitude 20\.\.90, "
        r"longitude -80\.\.40 \(data\.grid\), time 1948-01-15.* \.\. 2012-01-15.* is missing \(NaN\) after "
        r"regridding: .*data\.grid\.lat_bounds/lon_bounds.*data\.variables",
        last,
    ), last
    if parts > 1:  # each part warns with its own time range; finalise refuses
        assert len(re.findall(r"prepare part \d: z500_missing\.nc: every value of 'z500'", caplog.text)) == parts
        assert "time 1948-01-15" in caplog.text and "2012-01-15" in caplog.text
    assert not (tmp_path / "results" / "eofs-z500" / "data" / "regridded.zarr").exists()


def test_a_training_period_without_values_is_an_error_in_normalise(tmp_path: Path, capsys) -> None:
    split = {
        "train": ["1948-01-01", "1985-12-31"],
        "val": ["1986-01-01", "1990-12-31"],
        "test": ["1991-01-01", "2012-12-31"],
    }
    cfg = _config(tmp_path, [_nan_z500(tmp_path, steps=38)], split=split)  # missing in the 38 training winters
    assert main(["prepare", "--config", str(cfg)]) == 0, capsys.readouterr().err
    last = _error(capsys, "normalise", "--config", str(cfg))
    assert re.search(
        r"error: .*eofs-z500/data/regridded\.zarr: variable 'z500' has no valid \(non-NaN\) value in the training "
        r"period data\.split\.train = \[1948-01-01, 1985-12-31\]",
        last,
    ), last
