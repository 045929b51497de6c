"""Find and standardise time, latitude, longitude and vertical coordinates by their CF meaning.

Geographic latitude/longitude come from CF ``standard_name`` or ``units`` (degrees_north/east),
never from a name that can lie: ``grid_latitude``/``grid_longitude`` (rotated pole), projection
x/y with a ``grid_mapping``, and 2-D latitude/longitude mark a curvilinear grid, whose geographic
positions come from the 2-D coordinates or, through pyproj, from the grid mapping. A bare name
(``lat``, ``nav_lat``) is accepted only where its values and units fit, and the log says so. However
they were found (CF attributes, ``data.source.coordinates``, a bare name), latitude and longitude must be
in degrees (any CF spelling) or radians (ICON's ``clat``/``clon``), which are converted to degrees and
logged; other units are an error naming the file, the coordinate and its units.

After :func:`standardise` a regular grid has dims ``time``, ``level`` (if any), ``latitude``
(ascending), ``longitude`` (ascending, one contiguous run that may extend past 180 or 360 across
the dateline); a curvilinear one has dims ``y``/``x`` with 2-D ``latitude``/``longitude`` and
``cell_corners`` coordinates. A vertical axis is always a dimension: scalar coordinates (CMIP's
``height = 2 m``) stay attributes.
"""

from __future__ import annotations

import datetime as dt
import logging
import warnings
from dataclasses import dataclass

import cf_xarray  # noqa: F401  (registers the .cf accessor)
import numpy as np
import xarray as xr

__all__ = [
    "CANONICAL_UNITS",
    "Axes",
    "DataError",
    "fill_units",
    "find_axes",
    "geographic_2d",
    "geographic_corners",
    "standardise",
    "unwrap_longitude",
]

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
    """Where the horizontal grid, time and vertical axes of a dataset are.

    ``kind`` is ``"regular"`` (1-D geographic latitude and longitude dimensions) or ``"curvilinear"``
    (the data's horizontal dims ``y``/``x`` are not geographic: rotated pole, projected, ocean grids);
    then ``latitude``/``longitude`` name 2-D auxiliary coordinates over ``(y, x)``, or are ``None``
    when geographic positions follow only from the ``grid_mapping`` variable; or ``"unstructured"``
    (1-D latitude and longitude of cell centres on one cell dimension ``x``: ICON, CAM-SE, MPAS; see
    :mod:`pipeline.data.unstructured`).
    """

    time: str | None
    latitude: str | None
    longitude: str | None
    level: str | None
    kind: str = "regular"
    y: str | None = None
    x: str | None = None
    grid_mapping: str | None = None
    how: str = ""


_NAMES = {
    "latitude": ("latitude", "lat", "nav_lat", "tlat", "ulat", "yc", "lat_rho", "xlat", "y"),
    "longitude": ("longitude", "lon", "nav_lon", "tlong", "ulong", "xc", "lon_rho", "xlong", "x"),
    "time": ("time", "valid_time", "t"),
    "level": ("level", "pressure", "plev", "lev", "isobaricInhPa", "pressure_level", "height", "depth"),
}
_GEO_UNITS = {
    "latitude": {"degrees_north", "degree_north", "degree_n", "degrees_n", "degreen", "degreesn"},
    "longitude": {"degrees_east", "degree_east", "degree_e", "degrees_e", "degreee", "degreese"},
}
# besides the spellings above, geographic coordinates may be in plain degrees (CF's rotated-grid unit, which
# many model files also give their latitude/longitude), or in radians (ICON's clat/clon): converted to degrees
_PLAIN_DEGREES = {"degrees", "degree"}
_RADIANS = {"radians", "radian", "rad"}
# standard names of horizontal coordinates that are NOT geographic latitude / longitude
_GRID_NAMES = {
    "Y": ("grid_latitude", "projection_y_coordinate", "projection_y_angular_coordinate"),
    "X": ("grid_longitude", "projection_x_coordinate", "projection_x_angular_coordinate"),
}
CONFIG_KEY = "data.source.coordinates"


def _means(var: xr.Variable | xr.DataArray, which: str) -> bool:
    """True where CF attributes say the variable is geographic ``which`` (latitude or longitude)."""
    return var.attrs.get("standard_name") == which or str(var.attrs.get("units", "")).lower() in _GEO_UNITS[which]


def _lookup(ds: xr.Dataset, key: str, axis: str | None) -> str | None:
    """A 1-D time or vertical axis. A vertical axis must be a dimension: a scalar coordinate (CMIP's
    ``height = 2 m``) never is one."""
    cf = ds.cf
    found = list(cf.coordinates.get(key, [])) if key != "level" else list(cf.coordinates.get("vertical", []))
    if not found and axis is not None:
        found = list(cf.axes.get(axis, []))
    found = [f for f in found if f in ds.dims or (key == "time" and f in ds.coords and ds[f].ndim == 1)]
    if len(found) == 1:
        return found[0]
    lowered = {str(n).lower(): str(n) for n in ds.dims}
    if key == "time":
        lowered |= {str(n).lower(): str(n) for n in ds.coords if ds[n].ndim == 1}
    for name in _NAMES[key]:
        if name.lower() in lowered:
            return lowered[name.lower()]
    return found[0] if found else None


def _describe(ds: xr.Dataset) -> str:
    def attrs(n: object) -> str:
        a = ds[n].attrs
        keys = [f"{k}={a[k]!r}" for k in ("standard_name", "units") if k in a]
        return f"{n}{ds[n].dims}" + (f" [{', '.join(keys)}]" if keys else "")

    return f"coordinates {[attrs(n) for n in ds.coords]} and dimensions {dict(ds.sizes)}"


def _fits(ds: xr.Dataset, name: str, which: str) -> bool:
    """A guessed coordinate is accepted only if its values and units fit a geographic axis."""
    v = ds[name]
    units = str(v.attrs.get("units", "")).strip().lower()
    if units and not (units in _GEO_UNITS[which] or units.startswith("degree") or units in _RADIANS):
        return False
    if v.attrs.get("standard_name") in _GRID_NAMES["Y"] + _GRID_NAMES["X"]:
        return False
    if not np.issubdtype(v.dtype, np.number) or v.size == 0:
        return False
    scale = 180.0 / np.pi if units in _RADIANS else 1.0
    lo, hi = scale * float(np.nanmin(v.values)), scale * float(np.nanmax(v.values))
    return (-90 - 1e-6 <= lo and hi <= 90 + 1e-6) if which == "latitude" else (-360 <= lo and hi <= 720)


def _grid_axis(ds: xr.Dataset, axis: str) -> str | None:
    for n in ds.dims:
        if n in ds.coords and ds[n].attrs.get("standard_name") in _GRID_NAMES[axis]:
            return str(n)
    for n in ds.dims:
        if n in ds.coords and ds[n].attrs.get("axis") == axis:
            return str(n)
    return None


def _grid_mapping(ds: xr.Dataset) -> str | None:
    for da in ds.data_vars.values():
        gm = da.attrs.get("grid_mapping") or da.encoding.get("grid_mapping")
        if gm:
            name = str(gm).split(":")[0].strip()
            if name in ds.variables:
                return name
    for n, v in ds.variables.items():
        if "grid_mapping_name" in v.attrs:
            return str(n)
    return None


def _horizontal(ds: xr.Dataset, source: str, names: dict[str, str] | None) -> dict:
    """Latitude / longitude by meaning (see :class:`Axes`), as keyword arguments of ``Axes``.

    In order of trust: the names the user gives, CF attributes, grid coordinates with a grid mapping, and
    last a bare name whose values fit; none of them is an error listing what the dataset has.
    """
    if names:  # the user names them (data.source.coordinates)
        return _named(ds, source, names)
    found = _by_cf_meaning(ds, source) or _by_grid_mapping(ds, source) or _by_bare_names(ds, source)
    if found is not None:
        return found
    msg = (
        f"{source}: no geographic latitude/longitude found (looked for standard_name latitude/longitude, units "
        f"degrees_north/degrees_east, a grid_mapping with grid coordinates, or names {list(_NAMES['latitude'])} / "
        f"{list(_NAMES['longitude'])} whose values fit); the dataset has {_describe(ds)}. Name them with "
        f"{CONFIG_KEY}: {{latitude: ..., longitude: ...}}"
    )
    raise DataError(msg)


def _named(ds: xr.Dataset, source: str, names: dict[str, str]) -> dict:
    """The coordinates named in ``data.source.coordinates``, which must be variables of the file."""
    lat, lon = names.get("latitude"), names.get("longitude")
    for key, n in (("latitude", lat), ("longitude", lon)):
        if n not in ds.variables:
            msg = f"{source}: {CONFIG_KEY}.{key} = {n!r} is not a variable of the file; it has {_describe(ds)}"
            raise DataError(msg)
    return _from_pair(ds, str(lat), str(lon), source, f"named in {CONFIG_KEY}")


def _by_cf_meaning(ds: xr.Dataset, source: str) -> dict | None:
    """1-D dimension coordinates, else 2-D auxiliary coordinates, that CF standard_name/units call geographic."""
    lats = [str(n) for n, v in ds.variables.items() if v.ndim in (1, 2) and _means(v, "latitude")]
    lons = [str(n) for n, v in ds.variables.items() if v.ndim in (1, 2) and _means(v, "longitude")]
    regular = ([a for a in lats if a in ds.dims], [o for o in lons if o in ds.dims])
    if regular[0] and regular[1]:
        return _from_pair(ds, regular[0][0], regular[1][0], source, "CF standard_name/units")
    two_d = [(a, o) for a in lats for o in lons if ds[a].ndim == 2 and ds[a].dims == ds[o].dims]
    if two_d:
        return _from_pair(ds, *two_d[0], source, "2-D auxiliary coordinates by CF standard_name/units")
    cells = [(a, o) for a in lats for o in lons if ds[a].ndim == 1 and ds[a].dims == ds[o].dims and a not in ds.dims]
    if cells:  # 1-D on one shared dimension: the cell centres of an unstructured grid (ICON, CAM-SE, MPAS)
        how = f"cell centres on dimension {ds[cells[0][0]].dims[0]!r} by CF standard_name/units"
        return _from_pair(ds, *cells[0], source, how)
    return None


def _by_grid_mapping(ds: xr.Dataset, source: str) -> dict | None:
    """Grid (rotated or projected) dims placed on Earth by a grid mapping; grid dims without one are an error."""
    gy, gx, gm = _grid_axis(ds, "Y"), _grid_axis(ds, "X"), _grid_mapping(ds)
    if not (gy and gx):
        return None
    if gm is None:
        msg = (
            f"{source}: the horizontal dims {gy!r}/{gx!r} are grid coordinates (standard_name "
            f"{ds[gy].attrs.get('standard_name')!r}), not geographic latitude/longitude, and the file has no "
            f"grid_mapping variable and no 2-D latitude/longitude: where its cells lie on Earth is unknown. Add the "
            f"grid-mapping variable (e.g. rotated_pole) or the 2-D lat/lon to the file, or name geographic "
            f"coordinates with {CONFIG_KEY}: {{latitude: ..., longitude: ...}}; it has {_describe(ds)}"
        )
        raise DataError(msg)
    return {
        "latitude": None,
        "longitude": None,
        "kind": "curvilinear",
        "y": gy,
        "x": gx,
        "grid_mapping": gm,
        "how": f"grid mapping {gm!r} ({ds[gm].attrs.get('grid_mapping_name', '?')}) on {gy}/{gx}",
    }


def _by_bare_names(ds: xr.Dataset, source: str) -> dict | None:
    """The last resort: a bare name (``lat``, ``nav_lat``), accepted only where values and units fit (logged)."""
    lowered = {str(n).lower(): str(n) for n in ds.variables}
    guess = {}
    for which in ("latitude", "longitude"):
        for cand in _NAMES[which]:
            n = lowered.get(cand)
            if n is not None and ds[n].ndim in (1, 2) and _fits(ds, n, which):
                guess[which] = n
                break
    if len(guess) != 2:
        return None
    axes = _from_pair(ds, guess["latitude"], guess["longitude"], source, "guessed from their names")
    log.warning(
        "%s: no CF latitude/longitude attributes; guessed %r and %r from their names (values and units fit); "
        "set %s to name them explicitly",
        source,
        guess["latitude"],
        guess["longitude"],
        CONFIG_KEY,
    )
    return axes


def _from_pair(ds: xr.Dataset, lat: str, lon: str, source: str, how: str) -> dict:
    a, o = ds[lat], ds[lon]
    if a.ndim == 1 and o.ndim == 1 and a.dims[0] in ds.dims and o.dims[0] in ds.dims and a.dims != o.dims:
        if a.dims[0] != lat or o.dims[0] != lon:  # 1-D coordinates on other dims: rename the dims
            return {"latitude": lat, "longitude": lon, "y": a.dims[0], "x": o.dims[0], "how": how}
        return {"latitude": lat, "longitude": lon, "how": how}
    if a.ndim == 2 and a.dims == o.dims:
        return {"latitude": lat, "longitude": lon, "kind": "curvilinear", "y": a.dims[0], "x": a.dims[1], "how": how}
    if a.ndim == 1 and a.dims == o.dims and a.dims[0] not in (lat, lon):  # cells along one dim: unstructured
        return {"latitude": lat, "longitude": lon, "kind": "unstructured", "x": a.dims[0], "how": how}
    msg = (
        f"{source}: latitude {lat!r} (dims {a.dims}) and longitude {lon!r} (dims {o.dims}) do not form a grid "
        f"(two 1-D dimension coordinates, two 2-D coordinates on the same dims, or two 1-D coordinates on one "
        f"cell dimension); set {CONFIG_KEY}"
    )
    raise DataError(msg)


def find_axes(ds: xr.Dataset, source: str = "dataset", names: dict[str, str] | None = None) -> Axes:
    """Find the axes by CF meaning; an error names what was looked for and lists what the dataset has."""
    horizontal = _horizontal(ds, source, names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        guessed = ds.cf.guess_coord_axis()
    time = _lookup(guessed, "time", "T")
    level = _lookup(guessed, "level", "Z")
    if level in (horizontal.get("y"), horizontal.get("x"), horizontal.get("latitude"), horizontal.get("longitude")):
        level = None
    return Axes(time=time, level=level, **horizontal)


def _degrees_factor(ds: xr.Dataset, name: str, which: str, source: str, how: str) -> float:
    """1 where ``name``'s units are degrees (any CF spelling of them, or none), 180/pi for radians; any other
    units are an error naming the file, the coordinate and its units, however the coordinate was found."""
    units = str(ds[name].attrs.get("units", "")).strip()
    if not units or units.lower() in _GEO_UNITS[which] | _PLAIN_DEGREES:
        return 1.0
    if units.lower() in _RADIANS:
        return 180.0 / np.pi
    spellings = "degrees_north, degree_N, degreesN" if which == "latitude" else "degrees_east, degree_E, degreesE"
    msg = (
        f"{source}: {which} coordinate {name!r} ({how}) has units {units!r}, which are not degrees "
        f"({spellings}, degrees, ...) nor radians: its values cannot be placed on the target grid. "
        f"Fix the units in the file, or name the "
        f"geographic coordinates with {CONFIG_KEY}: {{latitude: ..., longitude: ...}}"
    )
    raise DataError(msg)


def _to_degrees(ds: xr.Dataset, axes: Axes, source: str) -> xr.Dataset:
    """Check the units of the geographic latitude/longitude (however found); radians become degrees (logged),
    with their CF bounds."""
    for which, name in (("latitude", axes.latitude), ("longitude", axes.longitude)):
        if name is None or _degrees_factor(ds, name, which, source, axes.how) == 1.0:
            continue
        log.warning(
            "%s: %s coordinate %r is in radians (units %r); converted to degrees",
            source,
            which,
            name,
            ds[name].attrs["units"],
        )
        for n in (name, ds[name].attrs.get("bounds")):
            if n is None or n not in ds.variables:
                continue
            v = ds[n].variable
            converted = xr.Variable(v.dims, np.rad2deg(np.asarray(v.values, dtype=np.float64)), v.attrs, v.encoding)
            converted.attrs["units"] = "degrees_north" if which == "latitude" else "degrees_east"
            ds = ds.assign_coords({n: converted}) if n in ds.coords else ds.assign({n: converted})
    return ds


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
    zero = d.dtype.type(0) if d.dtype.kind in "fiumM" else dt.timedelta(0)  # cftime differences are timedeltas
    if values.size > 1 and not (np.all(d > zero) or np.all(d < zero)):
        bad = int(np.argmax(~((d > zero) if d[0] > zero else (d < zero))))
        msg = (
            f"{source}: {what} coordinate is not monotonic (values {values[bad]}, {values[bad + 1]} at "
            f"positions {bad}, {bad + 1} break the order{'; it has repeated values' if np.any(d == zero) else ''})"
        )
        raise DataError(msg)


def geographic_2d(ds: xr.Dataset, axes: Axes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Geographic latitude and longitude (degrees) of every cell of a curvilinear grid, shape (y, x).

    From the 2-D auxiliary coordinates where the file has them, else from the grid mapping
    (rotated pole, Lambert, polar stereographic, ...) with pyproj.
    """
    if axes.latitude is not None:
        lat = ds[axes.latitude].transpose(axes.y, axes.x).values.astype(np.float64)
        lon = ds[axes.longitude].transpose(axes.y, axes.x).values.astype(np.float64)
        return lat, lon
    xx, yy = np.meshgrid(_projected(ds, axes.x, source), _projected(ds, axes.y, source))
    lon, lat = _to_geographic(ds, axes, source).transform(xx, yy)
    return np.asarray(lat), np.asarray(lon)


def _projected(ds: xr.Dataset, name: str, source: str, values: np.ndarray | None = None) -> np.ndarray:
    """Grid coordinate values in the units pyproj expects (degrees for rotated grids, metres for projections)."""
    v = np.asarray(ds[name].values if values is None else values, dtype=np.float64)
    units = str(ds[name].attrs.get("units", "")).lower()
    if units in ("km", "kilometre", "kilometer", "kilometres", "kilometers"):
        return v * 1000.0
    if ds[name].attrs.get("standard_name", "").startswith("projection_") and units not in ("m", "metre", "meter"):
        msg = f"{source}: projection coordinate {name!r} has units {units!r}; expected m or km"
        raise DataError(msg)
    return v


def _to_geographic(ds: xr.Dataset, axes: Axes, source: str):
    import pyproj

    attrs = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in ds[axes.grid_mapping].attrs.items()}
    try:
        crs = pyproj.CRS.from_cf(attrs)
    except pyproj.exceptions.CRSError as e:
        msg = f"{source}: grid mapping {axes.grid_mapping!r} ({attrs}) is not understood by pyproj: {e}"
        raise DataError(msg) from e
    return pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)


def _edges(c: np.ndarray) -> np.ndarray:
    """Cell edges of 1-D centres: midpoints, extrapolated by half a cell at both ends."""
    mid = (c[1:] + c[:-1]) / 2
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])


def geographic_corners(ds: xr.Dataset, axes: Axes, source: str) -> np.ndarray:
    """Corners of every cell, (y, x, 4, 2) as (latitude, longitude), counter-clockwise in index space.

    CF bounds (``bounds`` attribute of the 2-D coordinates, 4 vertices) where present; exact from the
    grid mapping for rotated and projected grids; else midway between neighbouring centres (on the
    sphere, so a seam at 180 or 360 degrees is harmless).
    """
    if axes.latitude is not None:
        blat, blon = ds[axes.latitude].attrs.get("bounds"), ds[axes.longitude].attrs.get("bounds")
        if blat in ds.variables and blon in ds.variables:
            la = ds[blat].transpose(axes.y, axes.x, ...).values
            lo = ds[blon].transpose(axes.y, axes.x, ...).values
            if la.shape[-1] == 4:
                return np.stack([la, lo], axis=-1).astype(np.float64)
        lat, lon = geographic_2d(ds, axes, source)
        xyz = _xyz(lat, lon)
        pad = np.pad(xyz, ((1, 1), (1, 1), (0, 0)), mode="reflect", reflect_type="odd")
        corner = (pad[:-1, :-1] + pad[1:, :-1] + pad[:-1, 1:] + pad[1:, 1:]) / 4
        clat = np.rad2deg(np.arcsin(np.clip(corner[..., 2] / np.linalg.norm(corner, axis=-1), -1, 1)))
        clon = np.rad2deg(np.arctan2(corner[..., 1], corner[..., 0]))
    else:
        ex, ey = np.meshgrid(
            _projected(ds, axes.x, source, _edges(ds[axes.x].values.astype(np.float64))),
            _projected(ds, axes.y, source, _edges(ds[axes.y].values.astype(np.float64))),
        )
        clon, clat = (np.asarray(a) for a in _to_geographic(ds, axes, source).transform(ex, ey))
    quad = [(slice(None, -1), slice(None, -1)), (slice(None, -1), slice(1, None))]
    quad += [(slice(1, None), slice(1, None)), (slice(1, None), slice(None, -1))]
    return np.stack([np.stack([clat[q], clon[q]], axis=-1) for q in quad], axis=2)


def _xyz(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    la, lo = np.deg2rad(lat), np.deg2rad(lon)
    return np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1)


def standardise(ds: xr.Dataset, source: str = "dataset", names: dict[str, str] | None = None) -> xr.Dataset:
    """Rename the axes by their CF meaning.

    A regular grid gets dims ``latitude`` (ascending) and ``longitude`` (ascending, unwrapped). A
    curvilinear grid (rotated pole, projected, ocean) keeps its cells on dims ``y``/``x`` with 2-D
    geographic ``latitude``/``longitude`` coordinates (computed from the grid mapping where the file
    has none) and ``grid_kind = "curvilinear"`` in the attributes; the regridder reads those.
    """
    axes = find_axes(ds, source, names)
    ds = _to_degrees(ds, axes, source)
    log.info("%s: horizontal grid %s (%s)", source, axes.kind, axes.how)
    if axes.kind == "curvilinear":
        return _standardise_curvilinear(ds, axes, source)
    if axes.kind == "unstructured":
        from pipeline.data.unstructured import standardise_unstructured  # (it imports this module)

        return standardise_unstructured(ds, axes, source)
    rename = {axes.latitude: "latitude", axes.longitude: "longitude"}
    if axes.y is not None:  # 1-D coordinates on dims of other names
        ds = ds.swap_dims({axes.y: axes.latitude, axes.x: axes.longitude})
    if axes.time:
        rename[axes.time] = "time"
    if axes.level:
        rename[axes.level] = "level"
        ds[axes.level].attrs.setdefault("source_name", axes.level)
    rename = {k: v for k, v in rename.items() if k != v}
    ds = ds.drop_vars([v for v in rename.values() if v in ds.variables and v not in rename], errors="ignore")
    ds = ds.rename(rename) if rename else ds
    for name in ("time", "level"):
        if name in ds.coords and ds[name].ndim != 1:
            msg = f"{source}: {name} coordinate must be 1-D, it has dims {ds[name].dims}"
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
    _check_latitude_range(ds["latitude"].values, source)
    ds["latitude"].attrs.update(standard_name="latitude", units="degrees_north", axis="Y")
    ds["longitude"].attrs.update(standard_name="longitude", units="degrees_east", axis="X")
    return _finish(ds, source, axes.time)


def _check_latitude_range(lat: np.ndarray, source: str) -> None:
    if np.nanmin(lat) < -90 - 1e-6 or np.nanmax(lat) > 90 + 1e-6:
        msg = f"{source}: latitude values must lie in [-90, 90], got {np.nanmin(lat)}..{np.nanmax(lat)}"
        raise DataError(msg)


def _finish(ds: xr.Dataset, source: str, time_name: str | None) -> xr.Dataset:
    if "time" in ds.coords:
        t = ds["time"]
        if not (t.dtype.kind == "M" or (t.dtype.kind == "O" and t.size and hasattr(t.values.flat[0], "calendar"))):
            msg = (
                f"{source}: the time axis {time_name!r} holds {t.dtype} values ({', '.join(map(str, t.values[:3]))}"
                f"{', ...' if t.size > 3 else ''}), not dates: its units are {t.attrs.get('units', 'missing')!r}. Give it "
                f"CF units '<unit> since <date>' (units such as 'days' take their date from data.source.time_reference)"
            )
            raise DataError(msg)
        ds["time"].attrs.update(standard_name="time", axis="T")
    if "level" in ds.coords:
        ds["level"].attrs.setdefault("axis", "Z")
    return ds


def _standardise_curvilinear(ds: xr.Dataset, axes: Axes, source: str) -> xr.Dataset:
    lat, lon = geographic_2d(ds, axes, source)
    corners = geographic_corners(ds, axes, source)
    if not (np.isfinite(lat).all() and np.isfinite(lon).all()):
        msg = f"{source}: the 2-D latitude/longitude ({axes.how}) have missing values; fill them or set {CONFIG_KEY}"
        raise DataError(msg)
    _check_latitude_range(lat, source)
    drop = [n for n in (axes.latitude, axes.longitude) if n is not None]
    for n in drop:
        drop += [b for b in (ds[n].attrs.get("bounds"),) if b in ds.variables]
    grid_attrs = {"grid_kind": "curvilinear", "source_grid": axes.how}
    if axes.grid_mapping is not None:
        grid_attrs["source_grid_mapping"] = str(dict(ds[axes.grid_mapping].attrs))
        drop.append(axes.grid_mapping)
    ds = ds.drop_vars(drop, errors="ignore")
    rename = {axes.y: "y", axes.x: "x"}
    if axes.time:
        rename[axes.time] = "time"
    if axes.level:
        rename[axes.level] = "level"
        ds[axes.level].attrs.setdefault("source_name", axes.level)
    ds = ds.rename({k: v for k, v in rename.items() if k != v})
    if "time" in ds.coords:
        _check_monotonic(ds["time"].values, "time", source)
    ds = ds.assign_coords(
        latitude=(("y", "x"), lat, {"standard_name": "latitude", "units": "degrees_north"}),
        longitude=(("y", "x"), lon, {"standard_name": "longitude", "units": "degrees_east"}),
        cell_corners=(("y", "x", "corner", "latlon"), corners, {"long_name": "cell corners (latitude, longitude)"}),
    )
    ds.attrs.update(grid_attrs)
    return _finish(ds, source, axes.time)
