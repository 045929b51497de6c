"""Unstructured grids (ICON's triangles, CAM-SE and MPAS columns) regridded to the regular target grid.

An unstructured grid keeps its cells along one dimension shared by 1-D latitude and longitude (the cell
centres; ICON's ``clat``/``clon`` on ``ncells``, CAM-SE's ``lat``/``lon`` on ``ncol``), with the cells'
vertices where the file has them (CF ``bounds`` of the centres: ICON's ``clat_bnds``/``clon_bnds`` with
``nv`` = 3). :func:`standardise_unstructured` puts the cells on dim ``cell`` with 1-D ``latitude`` and
``longitude`` and, with vertices, ``cell_corners`` (cell, corner, latlon); ``grid_kind = "unstructured"``.

- ``conservative`` (cells with vertices only): the area overlaps of each cell with each target cell, by
  :func:`pipeline.data.curvilinear.overlap_weights` in the equal-area plane (longitude, sin latitude).
  Each cell edge is followed along its great circle (``EDGE_POINTS`` points per edge), a vertex at a pole
  becomes the stretch of the pole's line between its neighbours' longitudes, and a cell around a pole is
  closed along that line: the cells tile the plane as they tile the sphere, so the area-weighted mean is
  conserved. A target cell is NaN unless ``nan_threshold`` of it is covered by valid cells.
- ``bilinear`` (any unstructured grid, and the only route for columns without vertices): linear
  interpolation on the spherical Delaunay triangulation of the cell centres (the convex hull of their unit
  vectors, scipy's qhull): the target point's weights are its barycentric coordinates in the triangle its
  direction passes through (gnomonic, exact at the three centres). A target point is NaN if any of the three
  is NaN, or if it lies outside the triangulation (a regional grid; triangles much longer than the spacing of
  their centres, which would bridge a gap in the grid, are left out).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import scipy.sparse as sp
import xarray as xr

from pipeline.data.coords import Axes, DataError, _check_latitude_range, _finish
from pipeline.data.curvilinear import _apply, _target_edges, apply_to_grid, overlap_weights

__all__ = [
    "EDGE_POINTS",
    "check_cover",
    "conservative_weights",
    "linear_weights",
    "regrid_unstructured",
    "standardise_unstructured",
]

log = logging.getLogger(__name__)

EDGE_POINTS = 8  # points along each cell edge's great circle (the plane's straight lines between them)
_CHUNK = 8192  # target points located at once
_CANDIDATES = 32  # triangles tried per target point (nearest by centroid)


def _xyz(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    la, lo = np.deg2rad(lat), np.deg2rad(lon)
    return np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1)


def _vertices(ds: xr.Dataset, axes: Axes) -> np.ndarray | None:
    """(cell, vertex, 2) latitude/longitude of the cells' vertices from the centres' CF bounds, or None."""
    blat, blon = ds[axes.latitude].attrs.get("bounds"), ds[axes.longitude].attrs.get("bounds")
    if blat not in ds.variables or blon not in ds.variables:
        return None
    la = ds[blat].transpose(axes.x, ...).values.astype(np.float64)
    lo = ds[blon].transpose(axes.x, ...).values.astype(np.float64)
    if la.ndim != 2 or la.shape != lo.shape or la.shape[1] < 3 or not (np.isfinite(la).all() and np.isfinite(lo).all()):
        return None
    return np.stack([la, lo], axis=-1)


def standardise_unstructured(ds: xr.Dataset, axes: Axes, source: str) -> xr.Dataset:
    """The cells on dim ``cell`` with 1-D ``latitude``/``longitude`` (degrees), ``cell_corners`` where the file
    has the cells' vertices, and ``grid_kind = "unstructured"`` in the attributes."""
    lat = ds[axes.latitude].values.astype(np.float64)
    lon = ds[axes.longitude].values.astype(np.float64)
    if not (np.isfinite(lat).all() and np.isfinite(lon).all()):
        msg = f"{source}: the cell centres {axes.latitude!r}/{axes.longitude!r} ({axes.how}) have missing values"
        raise DataError(msg)
    _check_latitude_range(lat, source)
    corners = _vertices(ds, axes)
    drop = [axes.latitude, axes.longitude]
    drop += [b for n in drop if (b := ds[n].attrs.get("bounds")) in ds.variables]
    ds = ds.drop_vars(drop)
    rename = {axes.x: "cell", axes.time: "time", axes.level: "level"}
    if axes.level:
        ds[axes.level].attrs.setdefault("source_name", axes.level)
    ds = ds.rename({k: v for k, v in rename.items() if k and k != v})
    ds = ds.assign_coords(
        latitude=("cell", lat, {"standard_name": "latitude", "units": "degrees_north"}),
        longitude=("cell", lon, {"standard_name": "longitude", "units": "degrees_east"}),
    )
    if corners is not None:
        ds = ds.assign_coords(
            cell_corners=(("cell", "corner", "latlon"), corners, {"long_name": "cell vertices (latitude, longitude)"})
        )
    ds.attrs.update({"grid_kind": "unstructured", "source_grid": axes.how})
    log.info(
        "%s: unstructured grid of %d cells (%s)",
        source,
        lat.size,
        "with vertices" if corners is not None else "centres",
    )
    return _finish(ds, source, axes.time)


# --- conservative: cell polygons in the equal-area plane --------------------------------------------------


def _densify(corners: np.ndarray, per_edge: int) -> np.ndarray:
    """(cell, vertex * per_edge, 3): unit vectors along each cell's edges, following their great circles."""
    v = _xyz(corners[..., 0], corners[..., 1])
    nxt = np.roll(v, -1, axis=1)
    t = (np.arange(per_edge) / per_edge)[None, None, :, None]
    p = (1 - t) * v[:, :, None, :] + t * nxt[:, :, None, :]
    p = p / np.linalg.norm(p, axis=-1, keepdims=True).clip(1e-300)
    return p.reshape(v.shape[0], -1, 3)


def _fill_pole_longitudes(lon: np.ndarray, pole: np.ndarray) -> np.ndarray:
    """A point at a pole takes the longitude of the point before it (cyclically): the ring then moves along
    the pole's line from there to the next point's longitude."""
    lon = lon.copy()
    todo = pole.copy()
    for _ in range(lon.shape[1]):
        if not todo.any():
            break
        before = np.roll(lon, 1, axis=1)
        ready = todo & ~np.roll(todo, 1, axis=1)
        lon[ready] = before[ready]
        todo &= ~ready
    return lon


def cell_rings(corners: np.ndarray, west: float, per_edge: int = EDGE_POINTS) -> np.ndarray:
    """(cell, 2 * points + 3, 2): each cell's outline in the plane (longitude, sin latitude), its first point's
    longitude in [west, west + 360). Every point appears twice (rectangular arrays), except that a point at
    a pole becomes the pole line's stretch between its neighbours' longitudes; a ring around a pole ends
    along the pole's line (the last three points; copies of the first point otherwise)."""
    p = _densify(corners, per_edge)
    h = np.hypot(p[..., 0], p[..., 1])
    pole = h < 1e-12
    y = p[..., 2]
    lon = _fill_pole_longitudes(np.rad2deg(np.arctan2(p[..., 1], p[..., 0])), pole)
    step = np.mod(np.roll(lon, -1, axis=1) - lon + 180.0, 360.0) - 180.0  # to the next point, cyclically
    u = lon[:, :1] + np.concatenate([np.zeros((lon.shape[0], 1)), np.cumsum(step[:, :-1], axis=1)], axis=1)
    u += np.mod(u[:, :1] - west, 360.0) + west - u[:, :1]
    u_next = u + step
    ypole = np.where(y.sum(axis=1, keepdims=True) >= 0, 1.0, -1.0)
    y = np.where(pole, ypole, y)
    pts = np.stack([np.stack([u, y], -1), np.stack([np.where(pole, u_next, u), y], -1)], axis=2).reshape(len(u), -1, 2)
    winding = np.round(step.sum(axis=1) / 360.0)  # +-1 around a pole, else 0
    around = winding != 0
    end = np.repeat(pts[:, :1], 3, axis=1)  # back over the pole: (u0 +- 360, y0), (u0 +- 360, pole), (u0, pole)
    end[around, :2, 0] = (u[around, 0] + 360.0 * winding[around])[:, None]
    end[around, 1:, 1] = ypole[around]
    return np.concatenate([pts, end], axis=1)


def conservative_weights(corners: np.ndarray, target: xr.Dataset) -> sp.csr_matrix:
    """``W[t, s]``: the fraction of target cell ``t`` covered by cell ``s``; ``corners`` (cell, vertex, 2)."""
    import shapely

    rings = cell_rings(corners, float(_target_edges(target["longitude"].values)[0]))
    polygons = shapely.polygons(rings)
    return overlap_weights(polygons, np.arange(len(rings)), len(rings), target)


# --- bilinear: linear on the spherical Delaunay triangulation of the centres -----------------------------


def _triangles(points: np.ndarray) -> np.ndarray:
    """(triangle, 3): the spherical Delaunay triangles of unit vectors ``points`` (their convex hull's faces
    that look away from the centre), without those much longer than the spacing around their corners (the
    distance to the 6th nearest centre): those would bridge a gap or the outside of a regional grid."""
    from scipy.spatial import ConvexHull, cKDTree

    hull = ConvexHull(points)
    tri = hull.simplices[hull.equations[:, 3] < -1e-9]
    spacing = cKDTree(points).query(points, k=min(7, len(points)))[0][:, -1]  # to the 6th nearest centre
    edge = np.stack([np.linalg.norm(points[tri[:, i]] - points[tri[:, (i + 1) % 3]], axis=-1) for i in range(3)], 1)
    return tri[edge.max(axis=1) <= 4.0 * spacing[tri].max(axis=1)]


def _locate(points: np.ndarray, tri: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each target unit vector, the triangle its direction passes through (-1: none) and its barycentric
    weights there (rows sum to 1), trying the ``_CANDIDATES`` triangles nearest by centroid."""
    from scipy.spatial import cKDTree

    corner = points[tri]  # (triangle, 3, 3)
    centroid = corner.mean(axis=1)
    k = min(_CANDIDATES, len(tri))
    tree = cKDTree(centroid / np.linalg.norm(centroid, axis=1, keepdims=True))
    found = np.full(len(targets), -1)
    weights = np.zeros((len(targets), 3))
    for lo in range(0, len(targets), _CHUNK):
        p = targets[lo : lo + _CHUNK]
        cand = tree.query(p, k=k)[1].reshape(len(p), k)
        a, b, c = (corner[cand, i] for i in range(3))  # (point, k, 3)
        w = np.stack([np.cross(b, c), np.cross(c, a), np.cross(a, b)], axis=2) @ p[:, None, :, None]
        w = w[..., 0] / np.einsum("pkj,pkj->pk", a, np.cross(b, c))[..., None]
        inside = (w >= -1e-9).all(axis=2) & (w.sum(axis=2) > 0)
        first = np.argmax(inside, axis=1)
        ok = inside[np.arange(len(p)), first]
        rows = np.arange(len(p))[ok]
        found[lo : lo + len(p)][ok] = cand[rows, first[ok]]
        chosen = np.clip(w[rows, first[ok]], 0, None)
        weights[lo : lo + len(p)][ok] = chosen / chosen.sum(axis=1, keepdims=True)
    return found, weights


def _target_points(target: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    tlat, tlon = np.meshgrid(target["latitude"].values, target["longitude"].values, indexing="ij")
    return _xyz(tlat.ravel(), tlon.ravel()), np.stack([tlat.ravel(), tlon.ravel()], axis=1)


def linear_weights(lat: np.ndarray, lon: np.ndarray, target: xr.Dataset) -> sp.csr_matrix:
    """``W[t, s]``: linear interpolation weights on the spherical Delaunay triangulation of the centres (three
    per target point; none outside the triangulation)."""
    points = _xyz(lat, lon)
    tri = _triangles(points)
    found, weights = _locate(points, tri, _target_points(target)[0])
    ok = np.flatnonzero(found >= 0)
    rows = np.repeat(ok, 3)
    w = sp.coo_matrix((weights[ok].ravel(), (rows, tri[found[ok]].ravel())), shape=(len(found), lat.size))
    return w.tocsr()


def check_cover(ds: xr.Dataset, target: xr.Dataset, source: str) -> None:
    """Every target cell centre must lie inside the triangulation of the unstructured grid's centres."""
    lat, lon = ds["latitude"].values, ds["longitude"].values
    points = _xyz(lat, lon)
    targets, where = _target_points(target)
    found, _ = _locate(points, _triangles(points), targets)
    if (found >= 0).all():
        return
    bad = where[np.argmax(found < 0)]
    msg = (
        f"target grid reaches outside the unstructured source grid ({source}: {lat.size} cells, latitude "
        f"{lat.min():.3f}..{lat.max():.3f}, longitude {lon.min():.3f}..{lon.max():.3f}): {int((found < 0).sum())} of "
        f"{found.size} target cells, e.g. at {bad[0]:.3f}N {bad[1]:.3f}E; set data.grid.lat_bounds / "
        f"data.grid.lon_bounds inside it"
    )
    raise DataError(msg)


def _weights(ds: xr.Dataset, target: xr.Dataset, method: str, nan_threshold: float, name: str, source: str):
    if method == "conservative":
        if "cell_corners" not in ds.coords:
            msg = (
                f"{source}: variable {name!r} is to be regridded conservatively (data.variables[].regrid), which needs "
                f"the cells' vertices, and this unstructured grid has only their centres (no CF bounds on its "
                f"latitude/longitude): set regrid: bilinear (linear on the triangulation of the centres)"
            )
            raise DataError(msg)
        w = conservative_weights(ds["cell_corners"].values, target)
        return w, np.full(w.shape[0], max(nan_threshold, 1e-9))
    if method == "bilinear":
        w = linear_weights(ds["latitude"].values, ds["longitude"].values, target)
        return w, np.where(np.asarray(w.sum(axis=1)).ravel() > 0, 1 - 1e-5, np.inf)  # all three corners valid
    msg = f"regrid method for {name!r} must be 'conservative' or 'bilinear', got {method!r}"
    raise DataError(msg)


def _apply_cells(block: np.ndarray, w: sp.csr_matrix, need: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return _apply(block[..., None, :], w, need, shape)


def regrid_unstructured(
    ds: xr.Dataset, target: xr.Dataset, methods: Mapping[str, str], nan_threshold: float = 0.5, source: str = "dataset"
) -> xr.Dataset:
    """Regrid each variable on dims ``(..., cell)`` to the target's ``latitude``/``longitude``; lazy."""
    shape = (target.sizes["latitude"], target.sizes["longitude"])
    weights: dict[str, tuple[sp.csr_matrix, np.ndarray]] = {}
    out = {}
    for name, method in methods.items():
        if method not in weights:
            weights[method] = _weights(ds, target, method, nan_threshold, name, source)
        out[name] = apply_to_grid(ds[name], weights[method], shape, ["cell"], _apply_cells)
    result = xr.Dataset(out, attrs=ds.attrs)
    return result.assign_coords(latitude=target["latitude"], longitude=target["longitude"])
