"""Selecting variables and levels, the target grid, and regridding.

Regular latitude-longitude sources are regridded by two banded products per field with weights from
:mod:`pipeline.data.weights` (xarray-regrid's definitions: conservative area weights with the
spherical correction, linear interpolation, periodic longitude, pole padding; checked against it in
the tests); curvilinear sources go to :mod:`pipeline.data.curvilinear`, unstructured ones (ICON, CAM-SE,
MPAS: cells along one dimension) to :mod:`pipeline.data.unstructured`. This module validates the
inputs first and phrases errors for the config.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import dask.array
import numpy as np
import xarray as xr

from pipeline.data.coords import DataError
from pipeline.data.curvilinear import check_footprint, regrid_curvilinear
from pipeline.data.unstructured import check_cover, regrid_unstructured
from pipeline.data.weights import Method, RegridWeights, apply_weights, regrid_weights

__all__ = ["Method", "check_covers", "regrid", "select", "target_grid"]

log = logging.getLogger(__name__)

# the horizontal dims of a standardised source, by its grid_kind (regular: latitude, longitude)
_HORIZONTAL = {"curvilinear": ("y", "x"), "unstructured": ("cell",)}


def _centres(lo: float, hi: float, res: float) -> np.ndarray:
    n = round((hi - lo) / res)
    if n < 1 or abs(n * res - (hi - lo)) > 1e-6 * max(res, 1.0):
        msg = f"grid bounds [{lo}, {hi}] are not a whole number of {res}-degree cells"
        raise DataError(msg)
    return lo + res * (np.arange(n) + 0.5)


def target_grid(
    resolution: float,
    lat_bounds: tuple[float, float] | None = None,
    lon_bounds: tuple[float, float] | None = None,
) -> xr.Dataset:
    """A regular grid of cell centres between cell edges (global by default: -90..90, 0..360).

    ``lon_bounds`` with west > east crosses the dateline (e.g. (170, -170) -> 170..190).
    """
    if not resolution > 0:
        msg = f"grid resolution must be > 0 degrees, got {resolution}"
        raise DataError(msg)
    south, north = lat_bounds if lat_bounds is not None else (-90.0, 90.0)
    west, east = lon_bounds if lon_bounds is not None else (0.0, 360.0)
    if east <= west:
        east += 360.0
    lat = _centres(south, north, resolution)
    lon = _centres(west, east, resolution)
    return xr.Dataset(
        coords={
            "latitude": ("latitude", lat, {"standard_name": "latitude", "units": "degrees_north", "axis": "Y"}),
            "longitude": ("longitude", lon, {"standard_name": "longitude", "units": "degrees_east", "axis": "X"}),
        }
    )


def select(
    ds: xr.Dataset, variables: Sequence[tuple[str, Sequence[float] | None]], source: str = "dataset"
) -> xr.Dataset:
    """Keep the named variables (and levels); errors list what the data has.

    A variable with a vertical dimension becomes one variable per level, named ``<name><level>``
    (``z500``, ``t850``), with ``source_variable``, ``level`` and ``level_units`` attributes: the
    channels of a training clip, and no padding when variables have different levels. A vertical
    dimension of length one with no levels asked for (CORDEX's ``height = 2 m``) is no level: it
    becomes attributes and the name stays the source's, as do scalar coordinates and other
    length-one dimensions (``realization``, ``forecast_period``, ...).
    """
    horizontal = _HORIZONTAL.get(ds.attrs.get("grid_kind"), ("latitude", "longitude"))
    out = {}
    for name, levels in variables:
        if name not in ds.data_vars:
            msg = f"{source}: no variable {name!r}; it has {sorted(map(str, ds.data_vars))}"
            raise DataError(msg)
        da = _squeeze(ds[name], levels, source)
        for dim in horizontal:
            if dim not in da.dims:
                msg = f"{source}: variable {name!r} has dims {da.dims}, no {dim} dimension"
                raise DataError(msg)
        extra = [d for d in da.dims if d not in (*horizontal, "time", "level")]
        if extra:
            msg = (
                f"{source}: variable {name!r} has dimension(s) {[f'{d} ({da.sizes[d]})' for d in extra]} besides "
                f"time, a vertical level and the horizontal grid; the pipeline trains on (time, lat, lon) fields: "
                f"select one member/step in the files, or choose another variable in data.variables"
            )
            raise DataError(msg)
        if "level" not in da.dims:
            if levels is not None:
                msg = f"{source}: levels {list(levels)} asked for {name!r}, which has no vertical dimension (dims {da.dims})"
                raise DataError(msg)
            out[name] = da
            continue
        have = ds["level"].values
        wanted = have if levels is None else levels
        missing = [lv for lv in wanted if not np.any(np.isclose(have, lv))]
        if missing:
            msg = f"{source}: variable {name!r} has no level(s) {missing}; available levels are {have.tolist()}"
            raise DataError(msg)
        for lv in wanted:
            one = da.isel(level=int(np.argmin(np.abs(have - lv)))).drop_vars("level")
            one.attrs = {
                **da.attrs,
                "source_variable": name,
                "level": float(lv),
                "level_units": ds["level"].attrs.get("units", ""),
            }
            out[f"{name}{float(lv):g}"] = one
    result = xr.Dataset(out, attrs=ds.attrs)
    if "cell_corners" in ds.coords:  # a curvilinear or unstructured grid's corners span dims no variable has
        result = result.assign_coords(cell_corners=ds["cell_corners"])
    return result


def _squeeze(da: xr.DataArray, levels: Sequence[float] | None, source: str) -> xr.DataArray:
    """Length-one dims and scalar coordinates become attributes (``height = 2.0 m``), kept as provenance."""
    keep = {"time", "latitude", "longitude", "y", "x", "cell"}
    scalars = {}
    for d in [d for d in da.dims if d not in keep and da.sizes[d] == 1 and not (d == "level" and levels is not None)]:
        if d in da.coords:
            scalars[str(d)] = da[d]
        da = da.isel({d: 0}, drop=d not in da.coords)
    for c in [c for c in da.coords if c not in da.dims and c not in ("latitude", "longitude", "cell_corners")]:
        if da[c].ndim == 0 or "time" in da[c].dims:  # expver, forecast_period, ... along time
            scalars[str(c)] = da[c]
    attrs = dict(da.attrs)
    for c, v in scalars.items():
        values = np.unique(np.asarray(v.values).ravel())
        value = values[0] if values.size == 1 else f"{values.size} values along time: {values[:3].tolist()}..."
        units = v.attrs.get("units", "")
        attrs[f"coordinate_{v.attrs.get('source_name', c)}"] = f"{value}{f' {units}' if units else ''}"
    if scalars:
        log.info("%s: %r: scalar coordinate(s) kept as attributes: %s", source, da.name, sorted(scalars))
    da = da.drop_vars(list(scalars), errors="ignore")
    da.attrs = attrs
    return da


def check_covers(ds: xr.Dataset, target: xr.Dataset, source: str) -> None:
    if ds.attrs.get("grid_kind") == "curvilinear":
        check_footprint(ds, target, source)
        return
    if ds.attrs.get("grid_kind") == "unstructured":
        check_cover(ds, target, source)
        return
    lat, tlat = ds["latitude"].values, target["latitude"].values
    dlat = float(np.abs(np.diff(lat)).max()) if lat.size > 1 else 0.0
    if tlat.min() < lat.min() - dlat or tlat.max() > lat.max() + dlat:
        msg = (
            f"target grid latitudes {tlat.min():.3f}..{tlat.max():.3f} reach outside the source grid "
            f"({source}: {lat.min():.3f}..{lat.max():.3f}); narrow data.grid.lat_bounds"
        )
        raise DataError(msg)
    lon, tlon = ds["longitude"].values, target["longitude"].values
    dlon = float(np.diff(lon).max()) if lon.size > 1 else 0.0
    if lon.max() - lon.min() >= 360 - dlon - 1e-6:
        return  # global source: any target longitude is covered
    span_t = np.mod(tlon - lon.min(), 360.0)
    if span_t.max() > lon.max() - lon.min() + dlon:
        msg = (
            f"target grid longitudes {tlon.min():.3f}..{tlon.max():.3f} reach outside the regional source grid "
            f"({source}: {lon.min():.3f}..{lon.max():.3f}); set data.grid.lon_bounds inside it"
        )
        raise DataError(msg)


def regrid(
    ds: xr.Dataset,
    target: xr.Dataset,
    methods: Mapping[str, Method],
    nan_threshold: float = 0.5,
    source: str = "dataset",
    cache_dir: Path | None = None,
) -> xr.Dataset:
    """Regrid each variable with its method; lazy in, lazy out (one task per chunk of the other dims,
    latitude and longitude whole). Attributes are kept; float32 stays float32.

    Conservative: area-weighted with xarray-regrid's spherical (cos latitude) correction; NaN
    cells are skipped and a target cell with less than ``nan_threshold`` valid coverage is NaN.
    Bilinear: a target point is NaN if any of its four neighbours is NaN (masks do not leak).
    Curvilinear and unstructured sources: :mod:`pipeline.data.curvilinear`, :mod:`pipeline.data.unstructured`.
    ``cache_dir``: keep the weights of a regular grid there (``weights_<hash>.npz``, see
    :func:`pipeline.data.weights.regrid_weights`), e.g. the folder of the regridded store.
    """
    check_covers(ds, target, source)
    if ds.attrs.get("grid_kind") in ("curvilinear", "unstructured"):
        if ds.attrs["grid_kind"] == "curvilinear":
            result = regrid_curvilinear(ds, target, methods, nan_threshold)
        else:
            result = regrid_unstructured(ds, target, methods, nan_threshold, source)
        for name, method in methods.items():
            result[name].attrs["regrid_method"] = method
        result.attrs.pop("grid_kind", None)
        return result.transpose(*[d for d in ("time", "level", "latitude", "longitude") if d in result.dims])
    grids = [np.asarray(g[c].values, dtype=np.float64) for g in (ds, target) for c in ("latitude", "longitude")]
    weights: dict[str, RegridWeights] = {}
    out = {}
    for name, method in methods.items():
        if method not in ("conservative", "bilinear"):
            msg = f"regrid method for {name!r} must be 'conservative' or 'bilinear', got {method!r}"
            raise DataError(msg)
        if method not in weights:
            weights[method] = regrid_weights(*grids, method, cache_dir=cache_dir)
        r = _apply(ds[name], weights[method], nan_threshold)
        r.attrs = dict(ds[name].attrs)
        r.attrs["regrid_method"] = method
        out[name] = r.transpose(*ds[name].dims)
    result = xr.Dataset(out, attrs=ds.attrs)
    result = result.assign_coords(latitude=target["latitude"], longitude=target["longitude"])
    return result


def _apply(da: xr.DataArray, weights: RegridWeights, nan_threshold: float) -> xr.DataArray:
    """The weights over (latitude, longitude), block by block: each block whole in both.

    ``map_blocks`` rather than ``apply_ufunc``: a gufunc's core dims are contracted, and dask then
    copies every block (even one of a single chunk) before the function sees it.
    """
    da = da.drop_vars([c for c in da.coords if {"latitude", "longitude"} & set(da[c].dims)])
    da = da.transpose(..., "latitude", "longitude")
    kwargs = {"weights": weights, "nan_threshold": nan_threshold}
    data = da.data
    if isinstance(data, dask.array.Array):
        if any(len(c) > 1 for c in data.chunks[-2:]):
            data = data.rechunk({data.ndim - 2: -1, data.ndim - 1: -1})
        dtype = np.float32 if data.dtype == np.float32 else np.float64
        chunks = (*data.chunks[:-2], *((n,) for n in weights.target_shape))
        out = data.map_blocks(apply_weights, chunks=chunks, meta=np.empty((0,) * data.ndim, dtype), **kwargs)
    else:
        out = apply_weights(np.asarray(data), **kwargs)
    return xr.DataArray(out, dims=da.dims, coords=da.coords)
