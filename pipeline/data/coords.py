"""Find and standardise time, latitude, longitude and vertical coordinates with cf-xarray.

Lookups go through CF attributes (standard_name, units, axis); bare names (lat/lon/y/x/level)
are guessed with ``cf.guess_coord_axis``. After :func:`standardise` a dataset has dims named
``time``, ``level`` (if any), ``latitude`` (ascending), ``longitude`` (ascending, one contiguous
run that may extend past 180 or 360 across the dateline).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import cf_xarray  # noqa: F401  (registers the .cf accessor)
import numpy as np
import xarray as xr

__all__ = ["CANONICAL_UNITS", "Axes", "DataError", "fill_units", "find_axes", "standardise", "unwrap_longitude"]

log = logging.getLogger(__name__)

# Canonical units of common CF standard names (CF standard name table), used only where a
# variable has a standard_name but no units attribute.
CANONICAL_UNITS = {
    "geopotential_height": "m",
    "geopotential": "m2 s-2",
    "air_temperature": "K",
    "air_pressure_at_mean_sea_level": "Pa",
    "surface_air_pressure": "Pa",
    "eastward_wind": "m s-1",
    "northward_wind": "m s-1",
    "specific_humidity": "1",
    "relative_humidity": "1",
    "precipitation_flux": "kg m-2 s-1",
    "sea_surface_temperature": "K",
    "sea_surface_temperature_anomaly": "K",
}


def fill_units(ds: xr.Dataset, source: str = "dataset") -> xr.Dataset:
    """Give variables with a known standard_name but no units their canonical CF units (logged)."""
    for name, da in ds.data_vars.items():
        std = da.attrs.get("standard_name")
        if "units" not in da.attrs and std in CANONICAL_UNITS:
            da.attrs["units"] = CANONICAL_UNITS[std]
            log.warning(
                "%s: variable %r has no units; using %r, canonical for standard_name %r",
                source,
                name,
                CANONICAL_UNITS[std],
                std,
            )
    return ds


class DataError(ValueError):
    """Input data that cannot be used as it is; the message names the file and variable."""


@dataclass(frozen=True)
class Axes:
    time: str | None
    latitude: str
    longitude: str
    level: str | None


_NAMES = {
    "latitude": ("latitude", "lat", "y", "nav_lat", "rlat"),
    "longitude": ("longitude", "lon", "x", "nav_lon", "rlon"),
    "time": ("time", "valid_time", "t"),
    "level": ("level", "pressure", "plev", "lev", "isobaricInhPa", "pressure_level", "height", "depth"),
}


def _lookup(ds: xr.Dataset, key: str, axis: str | None) -> str | None:
    cf = ds.cf
    found = list(cf.coordinates.get(key, [])) if key != "level" else list(cf.coordinates.get("vertical", []))
    if not found and axis is not None:
        found = list(cf.axes.get(axis, []))
    found = [f for f in found if f in ds.dims or (f in ds.coords and ds[f].ndim == 1)]
    if len(found) == 1:
        return found[0]
    lowered = {str(n).lower(): str(n) for n in ds.coords} | {str(n).lower(): str(n) for n in ds.dims}
    for name in _NAMES[key]:
        if name.lower() in lowered:
            return lowered[name.lower()]
    return found[0] if found else None


def find_axes(ds: xr.Dataset, source: str = "dataset") -> Axes:
    """Find the axes; an error names what was looked for and lists what the dataset has."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        guessed = ds.cf.guess_coord_axis()
    lat = _lookup(guessed, "latitude", "Y")
    lon = _lookup(guessed, "longitude", "X")
    time = _lookup(guessed, "time", "T")
    level = _lookup(guessed, "level", "Z")
    for name, found, attrs in (("latitude", lat, "degrees_north"), ("longitude", lon, "degrees_east")):
        if found is None:
            msg = (
                f"{source}: no {name} coordinate found (looked for standard_name={name!r}, units={attrs!r}, "
                f"axis attribute, or a name in {list(_NAMES[name])}); the dataset has coordinates "
                f"{sorted(map(str, ds.coords))} and dimensions {sorted(map(str, ds.dims))}"
            )
            raise DataError(msg)
    return Axes(time=time, latitude=lat, longitude=lon, level=level)  # type: ignore[arg-type]


def unwrap_longitude(lon: np.ndarray) -> np.ndarray:
    """Map longitudes to one increasing run, keeping values in the array's order.

    A uniformly spaced global grid keeps its convention (-180..180 if it had negative values,
    else 0..360). A regional grid starts after its largest gap, so a domain across the dateline
    (170..-170) becomes contiguous (170..190) and 80W..40E stays -80..40.
    """
    lon = np.asarray(lon, dtype=np.float64)
    m = np.mod(lon, 360.0)
    if lon.size < 2:
        return lon
    order = np.sort(m)
    gaps = np.diff(np.concatenate([order, order[:1] + 360.0]))
    if gaps.max() - gaps.min() < 1e-6 * gaps.max():  # global and uniform
        return np.mod(lon + 180.0, 360.0) - 180.0 if lon.min() < 0 else m
    start = order[(int(np.argmax(gaps)) + 1) % order.size]
    out = np.where(m < start, m + 360.0, m)
    return out - 360.0 if start >= 180.0 else out


def _check_monotonic(values: np.ndarray, what: str, source: str) -> None:
    d = np.diff(values)
    if values.size > 1 and not (np.all(d > 0) or np.all(d < 0)):
        bad = int(np.argmax(~((d > 0) if d[0] > 0 else (d < 0))))
        msg = (
            f"{source}: {what} coordinate is not monotonic (values {values[bad]}, {values[bad + 1]} at "
            f"positions {bad}, {bad + 1} break the order{'; it has repeated values' if np.any(d == 0) else ''})"
        )
        raise DataError(msg)


def standardise(ds: xr.Dataset, source: str = "dataset") -> xr.Dataset:
    """Rename the axes to time/level/latitude/longitude, sort latitude ascending, unwrap longitude."""
    axes = find_axes(ds, source)
    rename = {axes.latitude: "latitude", axes.longitude: "longitude"}
    if axes.time:
        rename[axes.time] = "time"
    if axes.level:
        rename[axes.level] = "level"
    rename = {k: v for k, v in rename.items() if k != v}
    ds = ds.rename(rename) if rename else ds
    for name in ("latitude", "longitude", "time", "level"):
        if name in ds.coords and ds[name].ndim != 1:
            msg = f"{source}: {name} coordinate must be 1-D (a regular lat-lon grid), it has dims {ds[name].dims}"
            raise DataError(msg)
    _check_monotonic(ds["latitude"].values, "latitude", source)
    if "time" in ds.coords:
        _check_monotonic(ds["time"].values, "time", source)
    lon = unwrap_longitude(ds["longitude"].values)
    attrs = ds["longitude"].attrs
    ds = ds.assign_coords(longitude=("longitude", lon, attrs))
    if ds.sizes["longitude"] > 1 and not np.all(np.diff(lon) > 0):
        ds = ds.sortby("longitude")
    _check_monotonic(ds["longitude"].values, "longitude", source)
    if ds["latitude"].values[0] > ds["latitude"].values[-1]:
        ds = ds.isel(latitude=slice(None, None, -1))
    lat = ds["latitude"].values
    if lat.min() < -90 - 1e-6 or lat.max() > 90 + 1e-6:
        msg = f"{source}: latitude values must lie in [-90, 90], got {lat.min()}..{lat.max()}"
        raise DataError(msg)
    ds["latitude"].attrs.update(standard_name="latitude", units="degrees_north", axis="Y")
    ds["longitude"].attrs.update(standard_name="longitude", units="degrees_east", axis="X")
    if "time" in ds.coords:
        ds["time"].attrs.update(standard_name="time", axis="T")
    if "level" in ds.coords:
        ds["level"].attrs.setdefault("axis", "Z")
    return ds
