"""Bad input files and bad config values fail early with messages that name what is wrong."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.config import ConfigError, load_config
from pipeline.data.coords import DataError, standardise
from pipeline.data.io import open_source, resolve_paths
from pipeline.prepare import check_data
from tests.conftest import REPO, make_dataset

LAT = np.arange(-87.5, 90, 5.0)
LON = np.arange(0, 360, 5.0)


def test_not_netcdf(tmp_path: Path) -> None:
    p = tmp_path / "notes.nc"
    p.write_text("this is a text file\n")
    with pytest.raises(DataError, match=r"notes.nc: not a NetCDF, GRIB or zarr input"):
        open_source([p])


def test_truncated_netcdf(tmp_path: Path, write_nc) -> None:
    good = write_nc(make_dataset(LAT, LON, times=2))
    bad = tmp_path / "truncated.nc"
    bad.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(DataError, match=r"could not open .*truncated.nc"):
        open_source([bad]).load()


def test_no_latitude(write_nc) -> None:
    ds = make_dataset(LAT, LON, times=2, names={"lat": "row"}, cf_attrs=False)
    with pytest.raises(
        DataError,
        match=r"in.nc: no geographic latitude/longitude found .* the dataset has coordinates .*row\('row',\).* "
        r"Name them with data.source.coordinates",
    ):
        standardise(open_source([write_nc(ds)]), "in.nc")


def test_non_monotonic_latitude(write_nc) -> None:
    lat = LAT.copy()
    lat[[3, 4]] = lat[[4, 3]]
    with pytest.raises(DataError, match=r"in.nc: latitude coordinate is not monotonic"):
        standardise(open_source([write_nc(make_dataset(lat, LON, times=2))]), "in.nc")


def test_missing_input_pattern() -> None:
    with pytest.raises(DataError, match=r"'/nonexistent/\*.nc' matches no file"):
        resolve_paths(["/nonexistent/*.nc"])


def _cfg(tmp_path: Path, **data_overrides) -> dict:
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    base["results_dir"] = str(tmp_path / "results")
    base["data"].update(data_overrides)
    return base


def test_config_unknown_key_and_bad_values(tmp_path: Path) -> None:
    c = _cfg(tmp_path)
    c["data"]["grid"]["resolutoin"] = 2.0
    with pytest.raises(ConfigError, match=r"data.grid.resolutoin: unknown key"):
        load_config(c)
    c = _cfg(tmp_path)
    c["data"]["grid"]["resolution"] = -1
    with pytest.raises(ConfigError, match=r"data.grid.resolution = -1: must be > 0 degrees"):
        load_config(c)
    c = _cfg(tmp_path)
    c["data"]["grid"]["resolution"] = "fine"
    with pytest.raises(ConfigError, match=r"data.grid.resolution = 'fine'"):
        load_config(c)
    c = _cfg(tmp_path)
    c["data"]["variables"][0]["regrid"] = "cubic"
    with pytest.raises(ConfigError, match=r"data.variables.0.regrid = 'cubic'.*'conservative' or 'bilinear'"):
        load_config(c)
    c = _cfg(tmp_path)
    c["data"]["split"]["val"] = ["1990-01-01", "1999-12-31"]
    with pytest.raises(ConfigError, match=r"data.split.*overlap"):
        load_config(c)


def test_config_against_data_is_fast_and_names_the_key(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    c = _cfg(tmp_path, variables=[{"name": "temperature", "levels": None, "regrid": "bilinear"}])
    with pytest.raises(
        ConfigError,
        match=r"data.variables: hgt_djf.nc: no variable 'temperature'; it has \['bounds_latitude', 'bounds_longitude', 'bounds_time', 'z'\]",
    ):
        check_data(load_config(c))
    c = _cfg(tmp_path, variables=[{"name": "z", "levels": [850], "regrid": "bilinear"}])
    with pytest.raises(ConfigError, match=r"no level\(s\) \[850.0\]; available levels are \[500.0\]"):
        check_data(load_config(c))
    c = _cfg(tmp_path)
    c["data"]["split"]["test"] = ["2020-01-01", "2021-12-31"]
    with pytest.raises(
        ConfigError, match=r"data.split.test = \[2020-01-01, 2021-12-31\] holds no time step.*1948-01-15 .. 2012-01-15"
    ):
        check_data(load_config(c))
    c = _cfg(tmp_path)
    c["data"]["grid"]["lat_bounds"] = [-20, 90]
    with pytest.raises(ConfigError, match=r"data.grid.*reach outside the source grid"):
        check_data(load_config(c))
    assert time.perf_counter() - t0 < 10


def test_overrides_merge_in_order(tmp_path: Path) -> None:
    over = tmp_path / "x.yaml"
    over.write_text("experiment: other\ndata:\n  grid:\n    resolution: 10.0\n")
    cfg = load_config([REPO / "config" / "config.yaml", over])
    assert cfg.experiment == "other" and cfg.data.grid.resolution == 10.0
    assert cfg.data.grid.lat_bounds == (20.0, 90.0)  # untouched keys survive
    for p in sorted((REPO / "config" / "experiments").glob("*.yaml")):
        load_config([REPO / "config" / "config.yaml", p])  # every shipped experiment validates
