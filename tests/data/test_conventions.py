"""A catalogue of real file conventions through prepare and normalise.

Each entry writes a file the way its producer does (after the published CMIP6, CORDEX, NEMO, ERA5,
NCEP and HadCM3 conventions) or takes a real one (ERA5 GRIB from ../shared/data, NCEP/NCAR from the
eofs package), runs ``python -m pipeline check-config``, ``prepare`` and ``normalise`` (in-process,
tracking off), and checks either the regridded values at known geographic points against the
analytic field the file was written from, or a short error naming the file, what was wrong and the
config key that settles it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from pipeline.cli import main
from pipeline.data.io import open_store
from pipeline.data.times import format_time
from tests.conftest import REPO, SHARED_DATA, require
from tests.data.test_regrid_unstructured import camse_columns, icon_triangles

DAYS = 24
SPLIT_DAILY = {
    "train": ["2000-01-01", "2000-01-12"],
    "val": ["2000-01-13", "2000-01-18"],
    "test": ["2000-01-19", "2000-01-24"],
}


def field_at(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """The analytic field every synthetic file holds (K): smooth on the sphere, periodic in longitude."""
    la, lo = np.deg2rad(lat), np.deg2rad(lon)
    return 280.0 + 10.0 * np.cos(la) * np.sin(2 * lo) + 5.0 * np.sin(la)


def cell_mean(lat: np.ndarray, lon: np.ndarray, res: float) -> np.ndarray:
    """The exact area mean of :func:`field_at` over each target cell (centres lat x lon, ``res`` degrees wide):
    what conservative regridding must give."""
    p1, p2 = (np.deg2rad(np.clip(lat + s * res / 2, -90, 90))[:, None] for s in (-1, 1))
    l1, l2 = (np.deg2rad(lon + s * res / 2)[None, :] for s in (-1, 1))
    area = np.sin(p2) - np.sin(p1)
    cos2 = (p2 / 2 + np.sin(2 * p2) / 4 - p1 / 2 - np.sin(2 * p1) / 4) / area  # mean of cos(lat) (area-weighted)
    sin2lon = (np.cos(2 * l1) - np.cos(2 * l2)) / (2 * (l2 - l1))
    return 280.0 + 10.0 * cos2 * sin2lon + 5.0 * (np.sin(p1) + np.sin(p2)) / 2


def _step(k: np.ndarray) -> np.ndarray:
    return 0.1 * np.asarray(k, dtype=np.float64)


def _time(units: str, calendar: str, n: int = DAYS, start: float = 0.0) -> xr.Variable:
    return xr.Variable(
        "time",
        start + np.arange(n, dtype=np.float64),
        {"standard_name": "time", "units": units, "calendar": calendar, "axis": "T"},
    )


def _regular(lat: np.ndarray, lon: np.ndarray, n: int = DAYS) -> np.ndarray:
    f = field_at(lat[:, None], lon[None, :])
    return (f[None] + _step(np.arange(n))[:, None, None]).astype(np.float32)


LAT_ATTRS = {"standard_name": "latitude", "units": "degrees_north", "axis": "Y"}
LON_ATTRS = {"standard_name": "longitude", "units": "degrees_east", "axis": "X"}
ROTATED_POLE = {
    "grid_mapping_name": "rotated_latitude_longitude",
    "grid_north_pole_latitude": 39.25,
    "grid_north_pole_longitude": -162.0,
}


@dataclass
class Case:
    """One convention: how to write it, the data config, and what must come out."""

    write: Callable[[Path], list[Path]]
    variables: list[dict]
    grid: dict
    split: dict = field(default_factory=lambda: dict(SPLIT_DAILY))
    error: str | None = None  # a regex the short error must match (and then nothing is written)
    tol: float = 0.05  # K, against the analytic field at the target points
    check: Callable[[xr.Dataset], None] | None = None
    log: str | None = None  # a regex the log must match
    source: dict = field(default_factory=dict)
    names: list[str] | None = None  # the output variables, if not the source's names
    spot: bool = False  # the file holds the warm spot at 50N 10E besides the analytic field
    skip: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None  # cells left out of the value check


# --- writers ----------------------------------------------------------------------------------------------


def cmip6_tas(d: Path) -> list[Path]:
    """CMIP6 day tas: noleap, bounds, scalar height = 2 m, longitude 0..360."""
    lat, lon = np.arange(-89.0, 90, 2.0), np.arange(1.0, 360, 2.0)
    ds = xr.Dataset(
        {
            "tas": (
                ("time", "lat", "lon"),
                _regular(lat, lon),
                {
                    "standard_name": "air_temperature",
                    "units": "K",
                    "coordinates": "height",
                    "cell_methods": "area: time: mean",
                },
            ),
            "time_bnds": (("time", "bnds"), np.stack([np.arange(DAYS), np.arange(DAYS) + 1.0], axis=1) + 54750.0),
            "lat_bnds": (("lat", "bnds"), np.stack([lat - 1, lat + 1], axis=1)),
            "lon_bnds": (("lon", "bnds"), np.stack([lon - 1, lon + 1], axis=1)),
        },
        coords={
            "time": _time("days since 1850-01-01", "noleap", start=54750.0),  # 2000-01-01 in noleap
            "lat": ("lat", lat, {**LAT_ATTRS, "bounds": "lat_bnds"}),
            "lon": ("lon", lon, {**LON_ATTRS, "bounds": "lon_bnds"}),
            "height": ((), 2.0, {"standard_name": "height", "units": "m", "positive": "up", "axis": "Z"}),
        },
        attrs={"mip_era": "CMIP6", "frequency": "day", "Conventions": "CF-1.7 CMIP-6.2"},
    )
    ds["time"].attrs["bounds"] = "time_bnds"
    p = d / "tas_day_MODEL_historical_r1i1p1f1_gn_20000101-20000124.nc"
    ds.to_netcdf(p)
    return [p]


def _rotated_grid(step: float = 0.44) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    import pyproj

    rlat, rlon = np.arange(-23.375, 21.9, step), np.arange(-28.375, 18.1, step)
    tr = pyproj.Transformer.from_crs(pyproj.CRS.from_cf(ROTATED_POLE), "EPSG:4326", always_xy=True)
    lon, lat = tr.transform(*np.meshgrid(rlon, rlat))
    return rlat, rlon, np.asarray(lat), np.asarray(lon)


def warm_spot(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """A 10 K bump at 50N 10E, about 1 degree wide: where it lands tells where the data went."""
    la, lo, la0, lo0 = np.deg2rad(lat), np.deg2rad(lon), np.deg2rad(50.0), np.deg2rad(10.0)
    cosd = np.sin(la) * np.sin(la0) + np.cos(la) * np.cos(la0) * np.cos(lo - lo0)
    dist = np.rad2deg(np.arccos(np.clip(cosd, -1, 1)))
    return 10.0 * np.exp(-((dist / 1.0) ** 2))


def cordex_rotated(d: Path) -> list[Path]:
    """CORDEX EUR-44 tas as some files come: rotated pole, no 2-D lat/lon, a height dim of length 1."""
    rlat, rlon, lat, lon = _rotated_grid()
    f = field_at(lat, lon) + warm_spot(lat, lon)
    data = (f[None, None] + _step(np.arange(DAYS))[:, None, None, None]).astype(np.float32)
    ds = xr.Dataset(
        {
            "tas": (
                ("time", "height", "rlat", "rlon"),
                data,
                {"standard_name": "air_temperature", "units": "K", "grid_mapping": "rotated_pole"},
            ),
            "rotated_pole": ((), np.int8(0), ROTATED_POLE),
        },
        coords={
            "time": _time("days since 1949-12-01 00:00:00", "proleptic_gregorian", start=18293.0),  # 2000-01-01
            "height": ("height", [2.0], {"standard_name": "height", "units": "m", "positive": "up", "axis": "Z"}),
            "rlat": ("rlat", rlat, {"standard_name": "grid_latitude", "units": "degrees", "axis": "Y"}),
            "rlon": ("rlon", rlon, {"standard_name": "grid_longitude", "units": "degrees", "axis": "X"}),
        },
        attrs={"project_id": "CORDEX", "CORDEX_domain": "EUR-44"},
    )
    p = d / "tas_EUR-44_MODEL_evaluation_r1i1p1_RCM_v1_day_20000101-20000124.nc"
    ds.to_netcdf(p)
    return [p]


def cordex_rotated_aux(d: Path) -> list[Path]:
    """CORDEX as most files come: rotated pole plus 2-D lat/lon auxiliary coordinates with vertices."""
    from pipeline.data.coords import find_axes, geographic_corners

    p = cordex_rotated(d)[0]
    ds = xr.open_dataset(p, decode_times=False).load()
    corners = geographic_corners(ds, find_axes(ds), "cordex")
    _, _, lat, lon = _rotated_grid()
    ds = ds.assign_coords(
        lat=(("rlat", "rlon"), lat, {"standard_name": "latitude", "units": "degrees_north", "bounds": "lat_vertices"}),
        lon=(("rlat", "rlon"), lon, {"standard_name": "longitude", "units": "degrees_east", "bounds": "lon_vertices"}),
    )
    ds["lat_vertices"] = (("rlat", "rlon", "vertices"), corners[..., 0])
    ds["lon_vertices"] = (("rlat", "rlon", "vertices"), corners[..., 1])
    ds["tas"].attrs["coordinates"] = "lat lon"
    out = d / "tas_EUR-44_aux.nc"
    ds.to_netcdf(out)
    return [out]


def cordex_no_mapping(d: Path) -> list[Path]:
    p = cordex_rotated(d)[0]
    ds = xr.open_dataset(p, decode_times=False).load().drop_vars("rotated_pole")
    del ds["tas"].attrs["grid_mapping"]
    out = d / "tas_EUR-44_stripped.nc"
    ds.to_netcdf(out)
    return [out]


def nemo_curvilinear(d: Path) -> list[Path]:
    """NEMO-style ocean output: distorted 2-D nav_lat/nav_lon on (y, x), time_counter, land as NaN."""
    j, i = np.meshgrid(np.arange(100), np.arange(180), indexing="ij")
    lat = -49.5 + 1.0 * j + 0.3 * np.sin(2 * np.pi * i / 60)
    lon = 0.5 + 2.0 * i + 0.4 * np.sin(2 * np.pi * j / 50)
    f = field_at(lat, lon)
    land = (lat > 10) & (lat < 30) & (lon > 100) & (lon < 140)
    data = f[None] + _step(np.arange(DAYS))[:, None, None]
    data[:, land] = np.nan
    ds = xr.Dataset(
        {
            "tos": (
                ("time_counter", "y", "x"),
                data.astype(np.float32),
                {"standard_name": "sea_surface_temperature", "units": "K", "coordinates": "nav_lat nav_lon"},
            )
        },
        coords={
            "time_counter": xr.Variable(
                "time_counter",
                1577836800.0 + 86400.0 * np.arange(DAYS) - 30 * 365.25 * 86400 + 0.0,
                {"standard_name": "time", "units": "seconds since 1970-01-01", "calendar": "gregorian", "axis": "T"},
            ),
            "nav_lat": (("y", "x"), lat.astype(np.float32), {"standard_name": "latitude", "units": "degrees_north"}),
            "nav_lon": (("y", "x"), lon.astype(np.float32), {"standard_name": "longitude", "units": "degrees_east"}),
        },
    )
    ds["time_counter"] = xr.Variable("time_counter", 946684800.0 + 86400.0 * np.arange(DAYS), ds["time_counter"].attrs)
    p = d / "ORCA1_1d_20000101_20000124_grid_T.nc"
    ds.to_netcdf(p)
    return [p]


def nemo_time_centered(d: Path) -> list[Path]:
    """NEMO as XIOS writes it: time_counter carries only axis T; the times are in the auxiliary time_centered
    (seconds since 1900-01-01, with time_centered_bounds), which the variables list in their coordinates."""
    ds = xr.open_dataset(nemo_curvilinear(d)[0], decode_times=False).load()
    centred = 3155673600.0 + 86400.0 * np.arange(DAYS) + 43200.0  # 2000-01-01 12:00, daily means
    ds = ds.assign_coords(
        time_counter=("time_counter", centred, {"axis": "T"}),
        time_centered=(
            "time_counter",
            centred,
            {
                "standard_name": "time",
                "long_name": "Time axis",
                "calendar": "gregorian",
                "units": "seconds since 1900-01-01 00:00:00",
                "time_origin": "1900-01-01 00:00:00",
                "bounds": "time_centered_bounds",
            },
        ),
    )
    ds["time_centered_bounds"] = (("time_counter", "axis_nbounds"), np.stack([centred - 43200, centred + 43200], 1))
    ds["tos"].attrs["cell_methods"] = "time: mean (interval: 1 day)"
    ds["tos"].encoding["coordinates"] = "time_centered nav_lat nav_lon"
    p = d / "ORCA1_1d_20000101_20000124_grid_T_xios.nc"
    ds.to_netcdf(p)
    return [p]


def nemo_time_instant(d: Path) -> list[Path]:
    """NEMO with averaged and instantaneous fields in one file: time_instant (the end of each step) beside
    time_centered; which one the data's times are is for the user to say."""
    p = nemo_time_centered(d)[0]
    ds = xr.open_dataset(p, decode_times=False).load()
    instant = dict(ds["time_centered"].attrs, long_name="Time axis instant")
    del instant["bounds"]
    ds = ds.assign_coords(time_instant=("time_counter", ds["time_centered"].values + 43200.0, instant))
    out = d / "ORCA1_1d_20000101_20000124_grid_T_instant.nc"
    ds.to_netcdf(out)
    return [out]


def mpiesm_absolute_time(d: Path) -> list[Path]:
    """MPI-ESM / ICON daily means on the T63 Gaussian grid after CDO with -a: time 'day as %Y%m%d.%f'
    (20000101.5 is 2000-01-01 12:00), proleptic_gregorian, with bounds in the same units."""
    x, _ = np.polynomial.legendre.leggauss(96)
    lat, lon = np.rad2deg(np.arcsin(x))[::-1], np.arange(192) * 1.875
    days = 20000101.0 + np.arange(DAYS)  # 1..24 January
    ds = xr.Dataset(
        {
            "tas": (("time", "lat", "lon"), _regular(lat, lon), {"standard_name": "air_temperature", "units": "K"}),
            "time_bnds": (("time", "bnds"), np.stack([days, days + 1], axis=1)),
        },
        coords={
            "time": xr.Variable(
                "time",
                days + 0.5,
                {
                    "standard_name": "time",
                    "units": "day as %Y%m%d.%f",
                    "calendar": "proleptic_gregorian",
                    "axis": "T",
                    "bounds": "time_bnds",
                },
            ),
            "lat": ("lat", lat, LAT_ATTRS),
            "lon": ("lon", lon, LON_ATTRS),
        },
        attrs={"CDI": "Climate Data Interface version 2.4.0", "CDO": "Climate Data Operators version 2.4.0"},
    )
    p = d / "tas_Aday_MPI-ESM1-2-LR_20000101-20000124.nc"
    ds.to_netcdf(p)
    return [p]


def _noon(reg: xr.Dataset) -> None:
    assert format_time(reg["time"].values[0]) == "2000-01-01T12:00:00", reg["time"].values[:2]


def _end_of_first_day(reg: xr.Dataset) -> None:
    assert format_time(reg["time"].values[0]) == "2000-01-02T00:00:00", reg["time"].values[:2]


def era_interim_real(d: Path) -> list[Path]:
    """The real ERA-Interim sample (xarray tutorial data): its time axis is an integer 'month' with no units."""
    p = SHARED_DATA / "eraint_uvz.nc"
    require(p.exists(), f"real ERA-Interim test file not found at {p}")
    return [p]


def ncep_z500_real(d: Path) -> list[Path]:
    """The real NCEP/NCAR z500 DJF means shipped in eofs (the default data): bounds, -80..40, a pressure level."""
    from pipeline.data.io import resolve_paths

    return resolve_paths(["bundled:eofs/hgt_djf.nc"])


def _ncep_real(reg: xr.Dataset) -> None:
    assert list(reg.data_vars) == ["z500"] and reg.sizes["time"] == 65
    assert reg["z500"].attrs["level"] == 500.0 and float(reg["longitude"][0]) == -77.5
    assert 4500 < float(reg["z500"].min()) and float(reg["z500"].max()) < 6000


def era5_grib_file(d: Path) -> list[Path]:
    p = SHARED_DATA / "era5-2mt-2019-03-uk.grib"
    require(p.exists(), f"real ERA5 GRIB test file not found at {p}")
    return [p]


def era5_netcdf(d: Path) -> list[Path]:
    """ERA5 NetCDF from the new CDS: valid_time, latitude 90..-90, longitude 0..360, packed int16, number/expver."""
    lat, lon = np.arange(60.0, 29.9, -0.5), np.arange(0.0, 40.0, 0.5)
    ds = xr.Dataset(
        {
            "t2m": (
                ("valid_time", "latitude", "longitude"),
                _regular(lat, lon),
                {"standard_name": "unknown", "long_name": "2 metre temperature", "units": "K", "GRIB_paramId": 167},
            )
        },
        coords={
            "valid_time": xr.Variable(
                "valid_time",
                946684800 + 86400 * np.arange(DAYS, dtype=np.int64),
                {"standard_name": "time", "units": "seconds since 1970-01-01", "calendar": "proleptic_gregorian"},
            ),
            "latitude": (
                "latitude",
                lat,
                {"standard_name": "latitude", "units": "degrees_north", "stored_direction": "decreasing"},
            ),
            "longitude": ("longitude", lon, {"standard_name": "longitude", "units": "degrees_east"}),
            "number": ((), 0, {"standard_name": "realization", "units": "1"}),
            "expver": ("valid_time", np.array(["0001"] * DAYS)),
        },
        attrs={"GRIB_centre": "ecmf", "Conventions": "CF-1.7"},
    )
    p = d / "era5_t2m_2000-01.nc"
    ds.to_netcdf(
        p, encoding={"t2m": {"dtype": "int16", "scale_factor": 0.002, "add_offset": 285.0, "_FillValue": -32767}}
    )
    return [p]


def ncep_months(d: Path) -> list[Path]:
    """NCEP/NCAR monthly means: `hours since 1800-1-1` in the old files, `months since` in some derived ones."""
    lat, lon = np.arange(90.0, -90.1, -2.5), np.arange(0.0, 360, 2.5)
    months = np.arange(24) + (1998 - 1958) * 12  # Jan 1998 .. Dec 1999
    ds = xr.Dataset(
        {
            "air": (
                ("time", "lat", "lon"),
                _regular(lat, lon, 24),
                {
                    "long_name": "Monthly Mean Air Temperature at sigma level 0.995",
                    "units": "degK",
                    "actual_range": [190.0, 320.0],
                },
            )
        },
        coords={
            "time": xr.Variable(
                "time",
                months.astype(np.float64),
                {"units": "months since 1958-1-1", "calendar": "standard", "long_name": "Time"},
            ),
            "lat": ("lat", lat, {"units": "degrees_north", "long_name": "Latitude"}),
            "lon": ("lon", lon, {"units": "degrees_east", "long_name": "Longitude"}),
        },
    )
    p = d / "air.sig995.mon.mean.nc"
    ds.to_netcdf(p)
    return [p]


def gaussian(d: Path) -> list[Path]:
    """A T31 Gaussian grid (48 latitudes at Gauss-Legendre nodes, 96 longitudes), as spectral models write."""
    x, _ = np.polynomial.legendre.leggauss(48)
    lat, lon = np.rad2deg(np.arcsin(x))[::-1], np.arange(96) * 3.75
    ds = xr.Dataset(
        {"t": (("time", "lat", "lon"), _regular(lat, lon), {"standard_name": "air_temperature", "units": "K"})},
        coords={
            "time": _time("days since 2000-01-01", "standard"),
            "lat": ("lat", lat, LAT_ATTRS),
            "lon": ("lon", lon, LON_ATTRS),
        },
        attrs={"grid_type": "gaussian", "truncation": 31},
    )
    p = d / "t31_gaussian.nc"
    ds.to_netcdf(p)
    return [p]


def lon_pm180(d: Path) -> list[Path]:
    lat, lon = np.arange(-88.5, 90, 3.0), np.arange(-178.5, 180, 3.0)
    ds = xr.Dataset(
        {"t": (("time", "latitude", "longitude"), _regular(lat, lon), {"units": "K"})},
        coords={
            "time": _time("hours since 2000-01-01", "standard").copy(data=24.0 * np.arange(DAYS)),
            "latitude": ("latitude", lat, LAT_ATTRS),
            "longitude": ("longitude", lon, LON_ATTRS),
        },
    )
    p = d / "pm180.nc"
    ds.to_netcdf(p)
    return [p]


def hadcm3_360day(d: Path) -> list[Path]:
    """HadCM3 daily output on a 360-day calendar, 2.5 x 3.75 degrees, latitude descending."""
    lat, lon = np.arange(90.0, -90.1, -2.5), np.arange(0.0, 360, 3.75)
    ds = xr.Dataset(
        {
            "tas": (
                ("time", "latitude", "longitude"),
                _regular(lat, lon),
                {"standard_name": "air_temperature", "units": "K"},
            )
        },
        coords={
            "time": _time("days since 1859-12-01", "360_day", start=(2000 - 1860) * 360 + 30.0),
            "latitude": ("latitude", lat, LAT_ATTRS),
            "longitude": ("longitude", lon, LON_ATTRS),
        },
    )
    p = d / "hadcm3_tas_360day.nc"
    ds.to_netcdf(p)
    return [p]


def lambert_km(d: Path) -> list[Path]:
    """A regional model on a Lambert conformal grid, x/y in km, geographic positions only in the grid mapping."""
    x, y = np.arange(-1500.0, 1501, 50.0), np.arange(-1200.0, 1201, 50.0)
    import pyproj

    gm = {
        "grid_mapping_name": "lambert_conformal_conic",
        "standard_parallel": [30.0, 60.0],
        "longitude_of_central_meridian": 10.0,
        "latitude_of_projection_origin": 50.0,
    }
    tr = pyproj.Transformer.from_crs(pyproj.CRS.from_cf(gm), "EPSG:4326", always_xy=True)
    lon, lat = tr.transform(*np.meshgrid(x * 1000, y * 1000))
    f = field_at(np.asarray(lat), np.asarray(lon))
    data = (f[None] + _step(np.arange(DAYS))[:, None, None]).astype(np.float32)
    ds = xr.Dataset(
        {
            "tas": (
                ("time", "y", "x"),
                data,
                {"standard_name": "air_temperature", "units": "K", "grid_mapping": "Lambert_Conformal"},
            ),
            "Lambert_Conformal": ((), 0, gm),
        },
        coords={
            "time": _time("days since 2000-01-01", "standard"),
            "x": ("x", x, {"standard_name": "projection_x_coordinate", "units": "km", "axis": "X"}),
            "y": ("y", y, {"standard_name": "projection_y_coordinate", "units": "km", "axis": "Y"}),
        },
    )
    p = d / "lambert_km.nc"
    ds.to_netcdf(p)
    return [p]


def bare_names(d: Path) -> list[Path]:
    lat, lon = np.arange(-87.5, 90, 5.0), np.arange(0.0, 360, 5.0)
    ds = xr.Dataset(
        {"t": (("time", "lat", "lon"), _regular(lat, lon), {"units": "K"})},
        coords={"time": _time("days since 2000-01-01", "standard"), "lat": ("lat", lat), "lon": ("lon", lon)},
    )
    p = d / "bare.nc"
    ds.to_netcdf(p)
    return [p]


def days_no_reference(d: Path) -> list[Path]:
    lat, lon = np.arange(-87.5, 90, 5.0), np.arange(0.0, 360, 5.0)
    ds = xr.Dataset(
        {"t": (("time", "lat", "lon"), _regular(lat, lon), {"units": "K"})},
        coords={
            "time": xr.Variable("time", np.arange(DAYS, dtype=np.float64), {"units": "days", "axis": "T"}),
            "lat": ("lat", lat, LAT_ATTRS),
            "lon": ("lon", lon, LON_ATTRS),
        },
    )
    p = d / "model_days.nc"
    ds.to_netcdf(p)
    return [p]


def projected_no_mapping(d: Path) -> list[Path]:
    x, y = np.arange(0.0, 500e3, 50e3), np.arange(0.0, 400e3, 50e3)
    ds = xr.Dataset(
        {"t": (("time", "y", "x"), np.zeros((DAYS, y.size, x.size), np.float32), {"units": "K"})},
        coords={
            "time": _time("days since 2000-01-01", "standard"),
            "x": ("x", x, {"standard_name": "projection_x_coordinate", "units": "m"}),
            "y": ("y", y, {"standard_name": "projection_y_coordinate", "units": "m"}),
        },
    )
    p = d / "projected.nc"
    ds.to_netcdf(p)
    return [p]


def overlapping_files(d: Path) -> list[Path]:
    p = cmip6_tas(d)[0]
    ds = xr.open_dataset(p, decode_times=False).load()
    a, b = d / "tas_part1.nc", d / "tas_part2.nc"
    ds.isel(time=slice(0, 14)).to_netcdf(a)
    ds.isel(time=slice(10, DAYS)).to_netcdf(b)
    p.unlink()
    return [a, b]


# --- checks -------------------------------------------------------------------------------------------


def _near_spot(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Around the warm spot an interpolation error of ~f'' h^2 / 8 is ~0.5 K: checked by where the spot lands."""
    return warm_spot(lat, lon) > 0.01


def _near_land(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Coastal target cells average only their ocean part (NaN skipped), so they are no cell mean of the field."""
    return (lat > 4) & (lat < 36) & (lon > 94) & (lon < 146)


def _lands_at_50n_10e(reg: xr.Dataset) -> None:
    anomaly = reg["tas"].isel(time=0) - field_at(reg["latitude"].values[:, None], reg["longitude"].values[None, :])
    j, i = np.unravel_index(int(np.nanargmax(anomaly.values)), anomaly.shape)
    where = (float(reg["latitude"][j]), float(reg["longitude"][i]))
    assert abs(where[0] - 50.0) <= 0.25 and abs(where[1] - 10.0) <= 0.25, f"warm spot at {where}, not 50N 10E"
    assert reg["tas"].attrs["coordinate_height"] == "2.0 m"


def _cmip(reg: xr.Dataset) -> None:
    assert "tas" in reg and reg["tas"].attrs["coordinate_height"] == "2.0 m", reg["tas"].attrs
    assert reg["time"].encoding.get("calendar", reg["time"].attrs.get("calendar")) in ("noleap", "365_day")


def _nemo_land(reg: xr.Dataset) -> None:
    t = reg["tos"].isel(time=0)
    land = (reg["latitude"] > 14) & (reg["latitude"] < 26) & (reg["longitude"] > 104) & (reg["longitude"] < 136)
    assert int((t.isnull() & land).sum()) == int(land.sum()) > 0, "land cells must stay NaN"
    assert int(t.notnull().sum()) > 0.8 * t.size


def _ncep_months(reg: xr.Dataset) -> None:
    times = reg["time"].values
    assert str(times[0])[:10] == "1998-01-01" and str(times[13])[:10] == "1999-02-01", times[:14]


def _day360(reg: xr.Dataset) -> None:
    assert reg.sizes["time"] == DAYS
    assert "360" in str(reg["time"].encoding.get("calendar", reg["time"].attrs.get("calendar")))


CASES: dict[str, Case] = {
    "NCEP/NCAR z500 DJF means (real, eofs)": Case(
        ncep_z500_real,
        [{"name": "z", "levels": [500]}],
        {"resolution": 5.0, "lat_bounds": [20, 90], "lon_bounds": [-80, 40]},
        split={
            "train": ["1948-01-01", "1995-12-31"],
            "val": ["1996-01-01", "2003-12-31"],
            "test": ["2004-01-01", "2012-12-31"],
        },
        check=_ncep_real,
        tol=None,
        names=["z500"],
    ),
    "ERA-Interim sample (real; integer month axis)": Case(
        era_interim_real,
        [{"name": "z", "levels": [500]}],
        {"resolution": 5.0},
        error=r"eraint_uvz\.nc: the time axis 'month' holds int32 values \(1, 7\), not dates.*data\.source\.time_reference",
    ),
    "CMIP6 tas (noleap, bounds, scalar height)": Case(
        cmip6_tas, [{"name": "tas", "regrid": "conservative"}], {"resolution": 6.0}, check=_cmip
    ),
    "CORDEX rotated pole, grid mapping only": Case(
        cordex_rotated,
        [{"name": "tas", "regrid": "bilinear"}],
        {"resolution": 0.5, "lat_bounds": [40, 60], "lon_bounds": [-5, 25]},
        check=_lands_at_50n_10e,
        tol=0.05,
        spot=True,
        skip=_near_spot,
    ),
    "CORDEX rotated pole, 2-D lat/lon with vertices": Case(
        cordex_rotated_aux,
        [{"name": "tas", "regrid": "conservative"}],
        {"resolution": 0.5, "lat_bounds": [40, 60], "lon_bounds": [-5, 25]},
        check=_lands_at_50n_10e,
        tol=0.05,
        spot=True,
        skip=_near_spot,
    ),
    "CORDEX rotated coordinates, mapping stripped": Case(
        cordex_no_mapping,
        [{"name": "tas"}],
        {"resolution": 1.0, "lat_bounds": [40, 60], "lon_bounds": [-5, 25]},
        error=r"tas_EUR-44_stripped\.nc: the horizontal dims 'rlat'/'rlon' are grid coordinates \(standard_name 'grid_latitude'\).*data\.source\.coordinates",
    ),
    "NEMO curvilinear, nav_lat/nav_lon, land NaN": Case(
        nemo_curvilinear,
        [{"name": "tos", "regrid": "conservative"}],
        {"resolution": 4.0, "lat_bounds": [-40, 40]},
        check=_nemo_land,
        tol=0.05,
        skip=_near_land,
    ),
    "NEMO (XIOS): time_counter without units, time in time_centered": Case(
        nemo_time_centered,
        [{"name": "tos", "regrid": "conservative"}],
        {"resolution": 4.0, "lat_bounds": [-40, 40]},
        check=lambda reg: (_nemo_land(reg), _noon(reg)),
        tol=0.05,
        skip=_near_land,
        log=r"time coordinate 'time_counter' has no units; its times are read from 'time_centered'",
    ),
    "NEMO: time_centered and time_instant disagree": Case(
        nemo_time_instant,
        [{"name": "tos"}],
        {"resolution": 4.0, "lat_bounds": [-40, 40]},
        error=r"grid_T_instant\.nc: time coordinate 'time_counter' has no usable units, and the variables along its "
        r"dimension 'time_counter' that have them disagree: 'time_centered' .*'time_instant' .*"
        r"set data\.source\.coordinates\.time",
    ),
    "NEMO: time_instant named in data.source.coordinates.time": Case(
        nemo_time_instant,
        [{"name": "tos", "regrid": "conservative"}],
        {"resolution": 4.0, "lat_bounds": [-40, 40]},
        source={"coordinates": {"time": "time_instant"}},
        check=_end_of_first_day,
        split={
            "train": ["2000-01-02", "2000-01-13"],
            "val": ["2000-01-14", "2000-01-19"],
            "test": ["2000-01-20", "2000-01-25"],
        },
        tol=None,
        log=r"time read from 'time_instant' \(named in data\.source\.coordinates\.time\)",
    ),
    "MPI-ESM / ICON T63, CDO absolute time (day as %Y%m%d.%f)": Case(
        mpiesm_absolute_time,
        [{"name": "tas", "regrid": "bilinear"}],
        {"resolution": 5.0, "lat_bounds": [-80, 80]},
        check=_noon,
        tol=0.1,
        log=r"decoded 'time' \('day as %Y%m%d\.%f', CDO's absolute time\) as dates in the proleptic_gregorian",
    ),
    "ICON R2B5 triangles (clat/clon radians, vertices), conservative": Case(
        lambda d: icon_triangles(d, level=5),
        [{"name": "tas", "regrid": "conservative"}],
        {"resolution": 10.0},
        tol=0.1,  # first-order conservative remapping of ~3.8-degree cells onto 10-degree ones
        check=_noon,
        log=r"horizontal grid unstructured \(cell centres on dimension 'ncells'",
    ),
    "CAM-SE columns (ncol, no vertices), linear on the triangulation": Case(
        lambda d: camse_columns(d, n=30),
        [{"name": "TREFHT", "regrid": "bilinear"}],
        {"resolution": 5.0, "lat_bounds": [-80, 80]},
        tol=0.05,
        check=_noon,
        log=r"unstructured grid of 5400 cells \(centres\)",
    ),
    "ERA5 GRIB (real file)": Case(
        era5_grib_file,
        [{"name": "t2m"}],
        {"resolution": 1.0, "lat_bounds": [51, 57], "lon_bounds": [-9, 1]},
        split={
            "train": ["2019-03-01", "2019-03-20"],
            "val": ["2019-03-21", "2019-03-25"],
            "test": ["2019-03-26", "2019-03-31"],
        },
        tol=None,
    ),
    "ERA5 NetCDF (valid_time, packed int16, 90..-90)": Case(
        era5_netcdf, [{"name": "t2m"}], {"resolution": 2.0, "lat_bounds": [32, 58], "lon_bounds": [2, 38]}, tol=0.05
    ),
    "NCEP monthly, months since": Case(
        ncep_months,
        [{"name": "air", "regrid": "bilinear"}],
        {"resolution": 5.0},
        split={
            "train": ["1998-01-01", "1998-12-31"],
            "val": ["1999-01-01", "1999-06-30"],
            "test": ["1999-07-01", "1999-12-31"],
        },
        check=_ncep_months,
        log=r"calendar months",
    ),
    "Gaussian grid T31": Case(
        gaussian, [{"name": "t", "regrid": "bilinear"}], {"resolution": 5.0, "lat_bounds": [-80, 80]}, tol=0.1
    ),
    "longitude -180..180": Case(
        lon_pm180, [{"name": "t", "regrid": "conservative"}], {"resolution": 6.0, "lon_bounds": [-30, 90]}, tol=0.1
    ),
    "HadCM3 360_day, latitude descending": Case(
        hadcm3_360day,
        [{"name": "tas", "regrid": "bilinear"}],
        {"resolution": 7.5, "lat_bounds": [-60, 60]},
        check=_day360,
        tol=0.15,
    ),
    "Lambert conformal, x/y in km": Case(
        lambert_km,
        [{"name": "tas", "regrid": "bilinear"}],
        {"resolution": 1.0, "lat_bounds": [42, 58], "lon_bounds": [0, 20]},
        tol=0.05,
    ),
    "bare lat/lon names, no attributes": Case(
        bare_names, [{"name": "t"}], {"resolution": 10.0}, log=r"guessed 'lat' and 'lon' from their names", tol=0.3
    ),
    "time units without a reference date": Case(
        days_no_reference,
        [{"name": "t"}],
        {"resolution": 10.0},
        error=r"model_days\.nc.*'days'.*data\.source\.time_reference",
    ),
    "projected x/y without a grid mapping": Case(
        projected_no_mapping,
        [{"name": "t"}],
        {"resolution": 1.0},
        error=r"projected\.nc: the horizontal dims 'y'/'x' are grid coordinates.*data\.source\.coordinates",
    ),
    "overlapping files": Case(
        overlapping_files,
        [{"name": "tas"}],
        {"resolution": 6.0},
        error=r"tas_part1\.nc.*tas_part2\.nc.*overlap.*data\.source\.overlap",
    ),
}


def _config(tmp: Path, case: Case, paths: list[Path]) -> Path:
    c = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    c["experiment"] = "conventions"
    c["results_dir"] = str(tmp / "results")
    c["tracking"] = {"enabled": False}
    grid = {"resolution": 5.0, "lat_bounds": None, "lon_bounds": None, "nan_threshold": 0.5, **case.grid}
    variables = [{"levels": None, "regrid": "bilinear", **v} for v in case.variables]
    c["data"] = {
        "source": {"paths": [str(p) for p in paths], **case.source},
        "variables": variables,
        "grid": grid,
        "split": case.split,
        "time_chunk": 8,
    }
    p = tmp / "config.yaml"
    p.write_text(yaml.safe_dump(c))
    return p


@pytest.mark.parametrize("name", list(CASES))
def test_convention(name: str, tmp_path: Path, capsys, caplog) -> None:
    case = CASES[name]
    paths = case.write(tmp_path)
    cfg = _config(tmp_path, case, paths)
    caplog.set_level(logging.INFO)
    if case.error is not None:
        for stage in ("check-config", "prepare"):
            assert main([stage, "--config", str(cfg)]) == 2
            err = capsys.readouterr().err
            assert "Traceback" not in err
            last = err.strip().splitlines()[-1]
            assert last.startswith("error: "), err
            assert re.search(case.error, last), last
        assert not (tmp_path / "results" / "conventions" / "data" / "regridded.zarr").exists()
        return
    for stage in ("check-config", "prepare", "normalise"):
        assert main([stage, "--config", str(cfg)]) == 0, capsys.readouterr().err
    if case.log is not None:
        assert re.search(case.log, caplog.text), caplog.text[-2000:]
    data = tmp_path / "results" / "conventions" / "data"
    reg = open_store(data / "regridded.zarr").load()
    norm = open_store(data / "normalised.zarr")
    names = case.names or [v["name"] for v in case.variables]
    assert sorted(reg.data_vars) == sorted(names), "variable names stay the source's"
    assert sorted(norm.data_vars) == sorted(names) and (data / "stats.json").exists()
    if case.tol is not None:
        for v in names:
            lat, lon = reg["latitude"].values, reg["longitude"].values
            if reg[v].attrs["regrid_method"] == "conservative":
                exact = cell_mean(lat, lon, case.grid["resolution"])
            else:
                exact = field_at(lat[:, None], lon[None, :])
            exact = exact[None] + _step(np.arange(reg.sizes["time"]))[:, None, None]
            got = reg[v].values
            if case.spot:
                exact = exact + warm_spot(lat[:, None], lon[None, :])[None]
            ok = np.isfinite(got)
            if case.skip is not None:
                ok &= ~case.skip(*np.meshgrid(lat, lon, indexing="ij"))[None]
            assert ok.any()
            err = np.abs(got[ok] - exact[ok]).max()
            assert err < case.tol, f"{name}: max error {err:.4f} K against the analytic field"
    if case.check is not None:
        case.check(reg)


def test_catalogue_is_broad() -> None:
    assert len(CASES) >= 12
