"""Regridding curvilinear sources (rotated pole, projected, ocean grids) to the regular target grid.

Every method is a sparse weight matrix ``W`` (target cells x source cells), built once from the
geometry and applied to each time step (lazy, chunk by chunk):

- ``bilinear``: pyresample's bilinear resampler (irregular quadrilaterals around each target point)
  gives the four corner indices and fractional distances; a target point is NaN if any of its
  four corners is NaN or if it lies outside the source grid.
- ``conservative``: exact area overlaps of each source cell (its four corners: CF bounds, the grid
  mapping, or midway between centres) with each target cell, computed by shapely in the Lambert
  cylindrical equal-area plane (longitude, sin latitude), where areas are proportional to areas on
  the sphere and the target cells are exact rectangles. Source cell edges are straight lines in that
  plane (not great circles): the one approximation, negligible for cells of a degree or less. A
  target cell is NaN unless at least ``nan_threshold`` of its area is covered by valid source cells.

No pip-installable library does conservative regridding from 2-D latitude/longitude today
(xESMF needs ESMF, which is not on the Python registry; xarray-regrid handles rectilinear grids), so
the overlap weights are built here from shapely's polygon intersections; pyresample does the
bilinear geometry.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping

import numpy as np
import scipy.sparse as sp
import xarray as xr

from pipeline.data.coords import DataError

__all__ = [
    "apply_to_grid",
    "bilinear_weights",
    "check_footprint",
    "conservative_weights",
    "overlap_weights",
    "regrid_curvilinear",
]

log = logging.getLogger(__name__)


def _target_edges(c: np.ndarray) -> np.ndarray:
    d = np.diff(c)
    return np.concatenate([[c[0] - d[0] / 2], (c[1:] + c[:-1]) / 2, [c[-1] + d[-1] / 2]])


def conservative_weights(corners: np.ndarray, target: xr.Dataset) -> sp.csr_matrix:
    """Fractions of each target cell's area covered by each source cell: ``W[t, s]`` (rows sum to <= 1).

    ``corners``: (y, x, 4, 2) latitude/longitude of each source cell's corners, in order around it.
    """
    import shapely

    ny, nx = corners.shape[:2]
    lat, lon = corners[..., 0].reshape(-1, 4), corners[..., 1].reshape(-1, 4)
    west = _target_edges(target["longitude"].values)[0]
    # each cell's corners within 180 degrees of its first corner, the first corner in [west, west + 360)
    lon0 = np.mod(lon[:, :1] - west, 360.0) + west
    lon = lon0 + (np.mod(lon - lon[:, :1] + 180.0, 360.0) - 180.0)
    span = lon.max(axis=1) - lon.min(axis=1)
    polar = span > 180.0  # cells around a pole have no polygon in this plane
    if polar.any():
        log.warning("conservative regridding: %d source cell(s) around a pole left out", int(polar.sum()))
    y = np.sin(np.deg2rad(lat))
    rings = np.stack([lon, y], axis=-1)  # (n, 4, 2)
    ok = np.flatnonzero(~polar)
    return overlap_weights(shapely.polygons(rings[ok]), ok, ny * nx, target)


def overlap_weights(polygons: np.ndarray, cells: np.ndarray, n_source: int, target: xr.Dataset) -> sp.csr_matrix:
    """``W[t, s]``: the fraction of target cell ``t``'s area covered by source cell ``s``, from shapely
    ``polygons`` of source cells (numbers ``cells`` of ``n_source``) in the Lambert cylindrical equal-area
    plane (longitude, sin latitude), each given with its first corner's longitude in [west, west + 360) of
    the target grid (copies 360 degrees to either side are added here)."""
    import shapely

    tlat, tlon = target["latitude"].values, target["longitude"].values
    lat_e, lon_e = np.clip(_target_edges(tlat), -90, 90), _target_edges(tlon)
    src = [shapely.transform(polygons, lambda c, s=shift: c + np.array([s, 0.0])) for shift in (-360.0, 0.0, 360.0)]
    src_poly = np.concatenate(src)
    src_id = np.tile(cells, 3)
    invalid = ~shapely.is_valid(src_poly)
    if invalid.any():  # bow-ties from corners out of order: make_valid keeps their area
        src_poly[invalid] = shapely.make_valid(src_poly[invalid])
    ty = np.sin(np.deg2rad(lat_e))
    jj, ii = np.meshgrid(np.arange(tlat.size), np.arange(tlon.size), indexing="ij")
    boxes = shapely.box(lon_e[ii.ravel()], ty[jj.ravel()], lon_e[ii.ravel() + 1], ty[jj.ravel() + 1])
    tree = shapely.STRtree(boxes)
    s_idx, t_idx = tree.query(src_poly, predicate="intersects")
    area = shapely.area(shapely.intersection(src_poly[s_idx], boxes[t_idx]))
    frac = area / shapely.area(boxes)[t_idx]
    keep = frac > 1e-12
    w = sp.coo_matrix((frac[keep], (t_idx[keep], src_id[s_idx[keep]])), shape=(boxes.size, n_source))
    return w.tocsr()


def bilinear_weights(lat: np.ndarray, lon: np.ndarray, target: xr.Dataset) -> sp.csr_matrix:
    """Bilinear weights from pyresample's irregular-quadrilateral bilinear resampler: ``W[t, s]``."""
    from pyresample.bilinear import NumpyBilinearResampler
    from pyresample.geometry import AreaDefinition, SwathDefinition

    tlat, tlon = target["latitude"].values, target["longitude"].values
    centre = float((tlon[0] + tlon[-1]) / 2)
    # an equirectangular target centred on the domain: no seam inside it, whatever its longitudes
    r = 6370997.0
    k = np.pi / 180 * r
    dlon, dlat = float(np.diff(tlon).mean()), float(np.diff(tlat).mean()) if tlat.size > 1 else 1.0
    extent = (
        (tlon[0] - centre - dlon / 2) * k,
        (tlat[0] - dlat / 2) * k,
        (tlon[-1] - centre + dlon / 2) * k,
        (tlat[-1] + dlat / 2) * k,
    )
    proj = {"proj": "eqc", "lon_0": centre, "R": r, "units": "m"}
    area = AreaDefinition("target", "target", "eqc", proj, tlon.size, tlat.size, extent)
    src_lon = np.mod(lon + 180.0, 360.0) - 180.0
    swath = SwathDefinition(lons=src_lon, lats=lat)
    spacing = _spacing_m(lat, lon)
    res = NumpyBilinearResampler(swath, area, radius_of_influence=4 * spacing, neighbours=32, reduce_data=False)
    with warnings.catch_warnings():  # pyproj's note on PROJ strings: the target here is one
        warnings.simplefilter("ignore", UserWarning)
        res.get_bil_info()
    s, t = np.asarray(res.bilinear_s), np.asarray(res.bilinear_t)
    n_target = tlat.size * tlon.size
    if s.size != n_target:
        msg = f"bilinear regridding: pyresample returned {s.size} target points, expected {n_target}"
        raise DataError(msg)
    ys, xs = np.asarray(res.slices_y), np.asarray(res.slices_x)
    corner_w = np.stack([(1 - s) * (1 - t), s * (1 - t), (1 - s) * t, s * t], axis=1)
    ok = np.isfinite(corner_w).all(axis=1) & ~np.asarray(res.mask_slices).any(axis=1)
    # AreaDefinition rows run north to south; the target's latitudes ascend
    rows = np.arange(n_target).reshape(tlat.size, tlon.size)[::-1].ravel()
    t_idx = np.repeat(rows[ok], 4)
    s_idx = (ys[ok] * lat.shape[1] + xs[ok]).ravel()
    w = sp.coo_matrix((corner_w[ok].ravel(), (t_idx, s_idx)), shape=(n_target, lat.size))
    return w.tocsr()


def _spacing_m(lat: np.ndarray, lon: np.ndarray) -> float:
    """Largest distance between neighbouring cell centres, in metres (a search radius)."""
    la, lo = np.deg2rad(lat), np.deg2rad(lon)
    xyz = np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1)
    d = max(
        float(np.linalg.norm(np.diff(xyz, axis=0), axis=-1).max()) if lat.shape[0] > 1 else 0.0,
        float(np.linalg.norm(np.diff(xyz, axis=1), axis=-1).max()) if lat.shape[1] > 1 else 0.0,
    )
    return max(d, 1e-6) * 6370997.0


def check_footprint(ds: xr.Dataset, target: xr.Dataset, source: str) -> None:
    """Every target cell centre must lie inside a regional curvilinear source's outline."""
    import shapely

    corners = ds["cell_corners"].values
    lat, lon = corners[..., 0], corners[..., 1]
    ring = np.concatenate(
        [
            corners[0, :, 0, :],
            corners[:, -1, 1, :],
            corners[-1, ::-1, 2, :],
            corners[::-1, 0, 3, :],
        ]
    )
    rlon = np.rad2deg(np.unwrap(np.deg2rad(ring[:, 1])))
    if abs(rlon[-1] - rlon[0]) > 180 or _covers_all_longitudes(lon):
        return  # the outline winds around the globe (global ocean grids): every longitude is covered
    poly = shapely.make_valid(shapely.polygons(np.stack([rlon, np.sin(np.deg2rad(ring[:, 0]))], axis=-1)))
    tlat, tlon = np.meshgrid(target["latitude"].values, target["longitude"].values, indexing="ij")
    ty = np.sin(np.deg2rad(tlat))
    inside = np.zeros(tlat.shape, dtype=bool)
    for shift in (-720.0, -360.0, 0.0, 360.0, 720.0):
        inside |= shapely.contains_xy(poly, tlon + shift, ty)
    if not inside.all():
        bad = np.argwhere(~inside)[0]
        msg = (
            f"target grid reaches outside the curvilinear source grid ({source}: latitude "
            f"{np.nanmin(lat):.3f}..{np.nanmax(lat):.3f}, longitude {np.nanmin(lon):.3f}..{np.nanmax(lon):.3f}): "
            f"{int((~inside).sum())} of {inside.size} target cells, e.g. at {tlat[tuple(bad)]:.3f}N "
            f"{tlon[tuple(bad)]:.3f}E; set data.grid.lat_bounds / data.grid.lon_bounds inside it"
        )
        raise DataError(msg)


def _covers_all_longitudes(lon: np.ndarray) -> bool:
    hist = np.histogram(np.mod(lon, 360.0), bins=72, range=(0, 360))[0]
    return bool((hist > 0).all())


def _apply(block: np.ndarray, w: sp.csr_matrix, need: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    lead = block.shape[:-2]
    dtype = block.dtype if block.dtype.kind == "f" else np.dtype(np.float64)
    flat = block.reshape(-1, block.shape[-2] * block.shape[-1]).T.astype(dtype, copy=False)
    w = w.astype(dtype, copy=False)
    valid = np.isfinite(flat)
    if valid.all():  # no mask: one product, the coverage is the row sum
        num = w @ flat
        den = np.broadcast_to(np.asarray(w.sum(axis=1), dtype=dtype), num.shape)
    else:
        num = w @ np.where(valid, flat, 0)
        den = w @ valid.astype(dtype)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[(den < need[:, None]) | (den <= 0)] = np.nan
    return out.T.reshape(*lead, *shape)


def apply_to_grid(
    da: xr.DataArray,
    weights: tuple[sp.csr_matrix, np.ndarray],
    shape: tuple[int, int],
    core: list[str],
    block: Callable[..., np.ndarray],
) -> xr.DataArray:
    """``da`` regridded lazily by the sparse ``weights`` (matrix, coverage each target cell needs) from its ``core``
    dims to a (latitude, longitude) grid of ``shape``: ``block`` (:func:`_apply` or a wrapper of it) maps each
    dask block; the source's coordinates are dropped, its attributes kept."""
    w, need = weights
    src = da.drop_vars(["latitude", "longitude", "cell_corners"], errors="ignore")
    if src.chunks is not None:
        src = src.chunk(dict.fromkeys(core, -1))
    r = xr.apply_ufunc(
        block,
        src,
        input_core_dims=[core],
        output_core_dims=[["latitude", "longitude"]],
        dask="parallelized",
        kwargs={"w": w, "need": need, "shape": shape},
        output_dtypes=[src.dtype if src.dtype.kind == "f" else np.float64],
        dask_gufunc_kwargs={"output_sizes": dict(zip(("latitude", "longitude"), shape, strict=True))},
    )
    r.attrs = dict(da.attrs)
    return r


def regrid_curvilinear(
    ds: xr.Dataset, target: xr.Dataset, methods: Mapping[str, str], nan_threshold: float = 0.5
) -> xr.Dataset:
    """Regrid each variable on dims ``(..., y, x)`` to the target's ``latitude``/``longitude``; lazy."""
    lat, lon = ds["latitude"].values, ds["longitude"].values
    shape = (target.sizes["latitude"], target.sizes["longitude"])
    weights: dict[str, tuple[sp.csr_matrix, np.ndarray]] = {}
    out = {}
    for name, method in methods.items():
        if method not in weights:
            if method == "conservative":
                w = conservative_weights(ds["cell_corners"].values, target)
                need = np.full(w.shape[0], max(nan_threshold, 1e-9))
            elif method == "bilinear":
                w = bilinear_weights(lat, lon, target)
                need = np.asarray(w.sum(axis=1)).ravel() * (1 - 1e-5)  # all four corners valid (float32 sums)
            else:
                msg = f"regrid method for {name!r} must be 'conservative' or 'bilinear', got {method!r}"
                raise DataError(msg)
            weights[method] = (w, need)
        out[name] = apply_to_grid(ds[name], weights[method], shape, ["y", "x"], _apply)
    result = xr.Dataset(out, attrs=ds.attrs)
    return result.assign_coords(latitude=target["latitude"], longitude=target["longitude"])
