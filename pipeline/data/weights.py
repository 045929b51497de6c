"""Separable regridding weights for regular latitude-longitude grids: built once, cached, applied per chunk.

On a regular grid conservative and bilinear regridding factorise by axis: ``out = A_lat @ field @ A_lon.T``
with two small banded matrices (a handful of non-zeros per row), so a time step costs two sparse
products and the field streams from memory once.

The weights are xarray-regrid's (the pipeline's regridder before these; the tests check them
against it to 1e-6), built here from its definitions:

- ``conservative``: ``A_lon[j, i]`` is the length of the overlap of target cell ``j`` with source cell
  ``i`` (edges midway between centres, the outer ones half a cell out; periodic for a global source);
  ``A_lat[j, i]`` the overlap length times the source row's area factor ``sin(lat + d/2) - sin(lat - d/2)``
  at its centre, ``d`` the median spacing (xarray-regrid's spherical correction: exact for whole cells,
  second order in ``d`` for a cell a target edge splits; a row at a pole weighs nothing). Rows are
  normalised over the source cells they overlap. With NaN in the field
  ``out = A_lat (x valid) A_lon.T / A_lat valid A_lon.T``, NaN where that valid fraction is below
  ``nan_threshold``.
- ``bilinear``: linear in latitude and in longitude between the bracketing source points (a point on a
  source point takes the interval to its left, as scipy's interp1d), periodic for a global source; a
  global source without rows at the poles is padded there with the mean of its outermost row. A
  target point is NaN if any of its neighbours is NaN.

Target points outside the source are NaN (xarray-regrid's rule: outside the outermost source centres,
the poles of a pole-padded source inside). :func:`regrid_weights` builds the weights for two grids and
a method and can keep them as ``weights_<hash>.npz`` in a folder; :func:`apply_weights` applies them
to a block.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.sparse as sp

from pipeline.data.coords import DataError

__all__ = ["Method", "RegridWeights", "apply_weights", "regrid_weights", "weights_key"]

log = logging.getLogger(__name__)

Method = Literal["conservative", "bilinear"]

# part of the cache key: bump when the definition of the weights changes
VERSION = 1


@dataclass(frozen=True, eq=False)
class RegridWeights:
    """``out = lat @ field @ lon.T`` for one pair of grids and one method.

    ``lat`` has two columns more than the source has rows: the south and north pole rows that the
    bilinear method interpolates towards on a global source without rows at the poles (each the
    mean over longitude of the outermost source row; xarray-regrid pads so). Stored zeros in ``lat``
    and ``lon`` are neighbours of weight zero, which still make a bilinear target NaN when NaN.
    """

    method: str
    lat: sp.csr_matrix
    lon: sp.csr_matrix
    lat_covered: np.ndarray
    lon_covered: np.ndarray

    @functools.cached_property
    def _plans(self) -> dict[str, _Plan]:
        """Per dtype, built on first use (not a field: not saved, not hashed by dask)."""
        return {}

    @property
    def source_shape(self) -> tuple[int, int]:
        return self.lat.shape[1] - 2, self.lon.shape[1]

    @property
    def target_shape(self) -> tuple[int, int]:
        return self.lat.shape[0], self.lon.shape[0]

    def save(self, path: Path) -> None:
        """Write to ``path`` (npz) atomically: parallel jobs may build the same weights at once."""
        arrays = {"method": np.array(self.method), "lat_covered": self.lat_covered, "lon_covered": self.lon_covered}
        for name, m in (("lat", self.lat), ("lon", self.lon)):
            arrays |= {f"{name}_data": m.data, f"{name}_indices": m.indices, f"{name}_indptr": m.indptr}
            arrays[f"{name}_shape"] = np.array(m.shape)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> RegridWeights:
        with np.load(path) as z:
            mats = {
                n: sp.csr_matrix((z[f"{n}_data"], z[f"{n}_indices"], z[f"{n}_indptr"]), shape=tuple(z[f"{n}_shape"]))
                for n in ("lat", "lon")
            }
            return cls(str(z["method"]), mats["lat"], mats["lon"], z["lat_covered"], z["lon_covered"])


def weights_key(src_lat: np.ndarray, src_lon: np.ndarray, tgt_lat: np.ndarray, tgt_lon: np.ndarray, method: str) -> str:
    """A hash of both grids' coordinates (as float64), the method and the weights' version."""
    h = hashlib.sha256(f"regrid-weights v{VERSION} {method}".encode())
    for a in (src_lat, src_lon, tgt_lat, tgt_lon):
        a = np.ascontiguousarray(a, dtype=np.float64)
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:20]


def regrid_weights(
    src_lat: np.ndarray,
    src_lon: np.ndarray,
    tgt_lat: np.ndarray,
    tgt_lon: np.ndarray,
    method: Method,
    cache_dir: Path | None = None,
) -> RegridWeights:
    """The weights from the source to the target grid (1-D ascending centres, degrees) for ``method``.

    With ``cache_dir``, read from ``cache_dir/weights_<hash>.npz`` if there, else built and written there.
    """
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"weights_{weights_key(src_lat, src_lon, tgt_lat, tgt_lon, method)}.npz"
        cached = _load(path)
        shapes = ((len(src_lat), len(src_lon)), (len(tgt_lat), len(tgt_lon)))
        if cached is not None and (cached.method, cached.source_shape, cached.target_shape) == (method, *shapes):
            log.info("regrid weights (%s) from %s", method, path)
            return cached
    src_lat, src_lon, tgt_lat, tgt_lon = (np.asarray(a, dtype=np.float64) for a in (src_lat, src_lon, tgt_lat, tgt_lon))
    if src_lat.size < 2 or src_lon.size < 2:
        msg = f"regridding needs at least two source points along latitude and longitude, got {src_lat.size} x {src_lon.size}"
        raise DataError(msg)
    for what, a in (("source", src_lat), ("source", src_lon), ("target", tgt_lat), ("target", tgt_lon)):
        if a.size > 1 and not np.all(np.diff(a) > 0):
            msg = f"regrid weights: {what} coordinates must be ascending, got {a[:4].tolist()}..."
            raise ValueError(msg)
    lat_x, lat_i = _pad_lat(src_lat)
    lon_x, lon_i = _pad_lon(src_lon, tgt_lon)
    lat_covered = (tgt_lat >= lat_x[0]) & (tgt_lat <= lat_x[-1])
    lon_covered = (tgt_lon >= lon_x[0]) & (tgt_lon <= lon_x[-1])
    if method == "conservative":
        lat = _csr(_conservative_lat(src_lat, tgt_lat))
        lon = _csr(_conservative_lon(src_lon, tgt_lon, _is_global_lon(src_lon)))
    elif method == "bilinear":
        lat = _linear(lat_x, lat_i, tgt_lat, src_lat.size + 2)
        lon = _linear(lon_x, lon_i, tgt_lon, src_lon.size)
    else:
        msg = f"regrid method must be 'conservative' or 'bilinear', got {method!r}"
        raise ValueError(msg)
    w = RegridWeights(method, lat, lon, lat_covered, lon_covered)
    if path is not None:
        w.save(path)
        log.info("regrid weights (%s) written to %s", method, path)
    return w


def _load(path: Path) -> RegridWeights | None:
    """Cached weights, or None where there are none or the file cannot be read (then rebuilt)."""
    if not path.exists():
        return None
    try:
        return RegridWeights.load(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        log.warning("regrid weights in %s cannot be read (%s); building them again", path, e)
        return None


# --- building -------------------------------------------------------------------------------------


def _edges(c: np.ndarray) -> np.ndarray:
    """Cell edges midway between centres, the outer ones half a cell out; one centre: unbounded."""
    if c.size == 1:
        return np.array([-np.inf, np.inf])
    mid = (c[1:] + c[:-1]) / 2
    return np.concatenate([[2 * c[0] - mid[0]], mid, [2 * c[-1] - mid[-1]]])


def _normalise(overlap: np.ndarray) -> np.ndarray:
    """Rows divided by their sums, in place (a row summing to zero is all zero: overlaps are >= 0)."""
    total = overlap.sum(axis=1, keepdims=True)
    return np.divide(overlap, total, out=overlap, where=total > 0)


def _overlap(src_edges: np.ndarray, tgt_edges: np.ndarray, turns: int = 0) -> np.ndarray:
    """Overlap lengths ``(n_target, n_source)`` of intervals, also with the source shifted by whole turns.

    Only the pairs that overlap are computed (both edge lists ascending: a band), each as
    ``clip(min(hi) - max(lo), 0)``; the others are zero.
    """
    overlap = np.zeros((tgt_edges.size - 1, src_edges.size - 1))
    t_lo, t_hi = tgt_edges[:-1], tgt_edges[1:]
    for k in range(-turns, turns + 1):
        s = src_edges + 360.0 * k
        if s[-1] <= tgt_edges[0] or s[0] >= tgt_edges[-1]:
            continue  # this turn of the source does not reach the target
        first = np.searchsorted(s[1:], t_lo, side="right")  # the first source cell ending after the target starts
        counts = np.maximum(np.searchsorted(s[:-1], t_hi, side="left") - first, 0)
        rows = np.repeat(np.arange(t_lo.size), counts)
        cols = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts - first, counts)
        lo = np.maximum(t_lo[rows], s[:-1][cols])
        hi = np.minimum(t_hi[rows], s[1:][cols])
        overlap[rows, cols] += np.clip(hi - lo, 0.0, None)
    return overlap


def _conservative_lat(src: np.ndarray, tgt: np.ndarray) -> np.ndarray:
    """xarray-regrid's latitude weights: overlap length times the area factor of the source row,
    ``sin(lat + d/2) - sin(lat - d/2)`` at its centre for the median spacing ``d`` (exact for whole
    source cells; rows at the poles and the zero-area pole rows of a padded source weigh nothing)."""
    x, idx = _pad_lat(src)
    d = np.deg2rad(np.median(np.diff(x)))
    area = np.sin(np.deg2rad(x) + d / 2) - np.sin(np.deg2rad(x) - d / 2)
    w = _normalise(_overlap(_edges(x), _edges(tgt)) * area[None, :])
    out = np.zeros((tgt.size, src.size + 2))
    out[:, idx] = w
    out[:, src.size :] = 0.0  # the pole rows' area factor is zero up to round-off
    return out


def _is_global_lon(src: np.ndarray) -> bool:
    """xarray-regrid's rule: the centres span at least 360 degrees less one cell."""
    return src.size > 1 and src[-1] - src[0] >= 360.0 - float(np.diff(src).max())


def _conservative_lon(src: np.ndarray, tgt: np.ndarray, periodic: bool) -> np.ndarray:
    """Overlap lengths; a global source's edges wrap (the cell between the last and first centre)."""
    if periodic:
        ext = np.concatenate([[src[-1] - 360.0], src, [src[0] + 360.0]])
        edges = (ext[1:] + ext[:-1]) / 2  # n + 1 edges, the last one 360 past the first
    else:
        edges = _edges(src)
    t = _edges(tgt) if tgt.size > 1 else np.array([tgt[0] - 180.0, tgt[0] + 180.0])
    # a target may sit a turn or two away from the source's convention (170..190 against -180..180)
    return _normalise(_overlap(edges, t, turns=2))


def _pad_lat(src: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """xarray-regrid's latitude padding: a global source without rows at the poles gets pole rows
    (index ``n`` south, ``n + 1`` north). Returns the padded centres and their row indices."""
    n = src.size
    dy = float(np.diff(src).max()) if n > 1 else 0.0
    x, idx = src, np.arange(n)
    if dy - 90.0 >= src[0] > -90.0:
        x, idx = np.concatenate([[-90.0], x]), np.concatenate([[n], idx])
    if 90.0 - dy <= src[-1] < 90.0:
        x, idx = np.concatenate([x, [90.0]]), np.concatenate([idx, [n + 1]])
    return x, idx


def _pad_lon(src: np.ndarray, tgt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """xarray-regrid's longitude formatting: the source shifted by 360 degrees into the target's frame
    and, when global, padded periodically to bracket every target point. Returns the centres and
    their source column indices."""
    wrap = (tgt[-1] + tgt[0] + 360.0) / 2
    x = np.where(src < wrap - 360.0, src + 360.0, src)
    x = np.where(x > wrap, x - 360.0, x)
    order = np.argsort(x, kind="stable")
    x, idx = x[order], order
    if x.size > 1 and x[-1] - x[0] >= 360.0 - float(np.diff(x).max()):
        dx_s = float(np.diff(x).max())
        dx_t = float(np.diff(tgt).max()) if tgt.size > 1 else 0.0
        left = int(np.ceil(max((x[0] - tgt[0] + dx_t / 2) / dx_s, 0.0)))
        right = int(np.ceil(max((tgt[-1] - x[-1] + dx_t / 2) / dx_s, 0.0)))
        n = x.size
        li, ri = np.arange(n - left, n), np.arange(right)  # at most one turn: the target spans < 360 degrees
        x = np.concatenate([x[li] - 360.0, x, x[ri] + 360.0])
        idx = np.concatenate([idx[li], idx, idx[ri]])
    return x, idx


def _linear(x: np.ndarray, idx: np.ndarray, t: np.ndarray, n_cols: int) -> sp.csr_matrix:
    """Linear interpolation from centres ``x`` (columns ``idx``) to ``t``, as scipy's interp1d brackets
    (searchsorted left, clipped to the first and last interval); both neighbours stored, even a zero."""
    hi = np.clip(np.searchsorted(x, t, side="left"), 1, x.size - 1)
    lo = hi - 1
    f = (t - x[lo]) / (x[hi] - x[lo])
    inside = (t >= x[0]) & (t <= x[-1])
    data = np.where(inside[:, None], np.stack([1.0 - f, f], axis=1), 0.0)
    cols = np.stack([idx[lo], idx[hi]], axis=1)
    indptr = np.concatenate([[0], np.cumsum(np.where(inside, 2, 0))])
    return sp.csr_matrix((data[inside].ravel(), cols[inside].ravel(), indptr), shape=(t.size, n_cols))


def _csr(dense: np.ndarray) -> sp.csr_matrix:
    m = sp.csr_matrix(dense)
    m.eliminate_zeros()
    return m


# --- applying -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """The weights in the block's dtype, split into the source rows and the pole rows."""

    lat: sp.csr_matrix  # (n_lat_out, n_lat_in)
    poles: np.ndarray | None  # (n_lat_out, 2) weights of the pole rows; None when unused
    lon: sp.csr_matrix  # (n_lon_out, n_lon_in)
    ind_lat: sp.csr_matrix  # 1 for every neighbour, of any weight: the bilinear NaN test
    ind_poles: np.ndarray | None
    ind_lon: sp.csr_matrix


def _split(m: sp.csr_matrix, n: int, dtype: np.dtype, ones: bool) -> tuple[sp.csr_matrix, np.ndarray | None]:
    """Columns ``< n`` as CSR and the rest as dense columns, keeping stored zeros (neighbours of weight 0)."""
    c = m.tocoo()
    data = np.ones_like(c.data, dtype=dtype) if ones else c.data.astype(dtype)
    left = c.col < n
    main = sp.csr_matrix((data[left], (c.row[left], c.col[left])), shape=(m.shape[0], n))
    if left.all():
        return main, None
    rest = np.zeros((m.shape[0], m.shape[1] - n), dtype=dtype)
    np.add.at(rest, (c.row[~left], c.col[~left] - n), data[~left])
    return main, rest


def _plan(w: RegridWeights, dtype: np.dtype, flip: bool = False) -> _Plan:
    """The plan for blocks of ``dtype``; ``flip``: for a block whose latitude rows lie in memory in the
    reverse order (the latitude weights' source columns reversed, each row summed in the same order)."""
    key = f"{dtype.str} flipped" if flip else dtype.str
    plan = w._plans.get(key)
    if plan is None and flip:
        p = _plan(w, dtype)
        plan = dataclasses.replace(p, lat=_reverse_columns(p.lat), ind_lat=_reverse_columns(p.ind_lat))
    elif plan is None:
        n = w.lat.shape[1] - 2
        lat, poles = _split(w.lat, n, dtype, ones=False)
        ind_lat, ind_poles = _split(w.lat, n, dtype, ones=True)
        lon, _ = _split(w.lon, w.lon.shape[1], dtype, ones=False)
        ind_lon, _ = _split(w.lon, w.lon.shape[1], dtype, ones=True)
        plan = _Plan(lat, poles, lon, ind_lat, ind_poles, ind_lon)
    w._plans[key] = plan
    return plan


def _reverse_columns(m: sp.csr_matrix) -> sp.csr_matrix:
    """Column ``i`` becomes ``n - 1 - i``, the entries of each row kept in their order (not re-sorted)."""
    return sp.csr_matrix((m.data, m.shape[1] - 1 - m.indices, m.indptr), shape=m.shape)


def _product(
    x: np.ndarray, lat: sp.csr_matrix, lon: sp.csr_matrix, poles: np.ndarray | None = None, pole_values=None
) -> np.ndarray:
    """``lat @ x[t] @ lon.T`` for each step ``t`` of ``x`` (steps, lat, lon); with ``poles`` (n_lat_out, 2),
    plus the pole rows' share, constant along longitude, from ``pole_values`` (steps, 2)."""
    out = np.empty((x.shape[0], lat.shape[0], lon.shape[0]), dtype=x.dtype)
    extra = None if poles is None else pole_values @ poles.T
    for t in range(x.shape[0]):
        y = lat @ x[t]  # a quarter of the step or less: its transpose below stays in cache
        if extra is not None:
            y += extra[t][:, None]
        out[t] = (lon @ np.ascontiguousarray(y.T)).T
    return out


def _edge_rows(a: np.ndarray, flip: bool = False) -> np.ndarray:
    """The southernmost and northernmost latitude rows of each step: (steps, 2, lon)."""
    return np.stack([a[:, -1], a[:, 0]] if flip else [a[:, 0], a[:, -1]], axis=1)


def apply_weights(block: np.ndarray, weights: RegridWeights, nan_threshold: float = 0.5) -> np.ndarray:
    """Regrid the last two axes (latitude, longitude) of ``block``; float32 stays float32, other types
    become float64.

    Two products per step. Only where the result has NaN (a NaN source point reached a target) is
    the block done again with its mask: conservative ``A (x valid) A' / A valid A'``, NaN below
    ``nan_threshold``; bilinear NaN wherever a neighbour, of any weight, is NaN. A block whose
    latitude is a reversed view (a descending source flipped without a copy) is read as it lies in
    memory, with the latitude weights reversed instead.
    """
    dtype = np.dtype(np.float32) if block.dtype == np.float32 else np.dtype(np.float64)
    lead, (n_lat, n_lon) = block.shape[:-2], block.shape[-2:]
    if (n_lat, n_lon) != weights.source_shape:
        msg = f"regrid: block of shape {block.shape} does not end in the source grid {weights.source_shape}"
        raise ValueError(msg)
    x = block.reshape(-1, n_lat, n_lon)
    flip = x.strides[1] < 0 and x[:, ::-1].flags.c_contiguous
    x = np.ascontiguousarray(x[:, ::-1] if flip else x, dtype=dtype)
    p = _plan(weights, dtype, flip)
    poles = None if p.poles is None else _edge_rows(x, flip).mean(axis=-1)  # NaN if any NaN: then redone below
    out = _product(x, p.lat, p.lon, p.poles, poles)
    if np.isnan(out).any():
        out = _conservative_nan(x, p, nan_threshold) if weights.method == "conservative" else _bilinear_nan(x, p, flip)
    out[:, ~weights.lat_covered, :] = np.nan
    out[:, :, ~weights.lon_covered] = np.nan
    return out.reshape(*lead, *weights.target_shape)


def _conservative_nan(x: np.ndarray, p: _Plan, nan_threshold: float) -> np.ndarray:
    """``A (x valid) A' / A valid A'``, NaN where the valid fraction is below ``nan_threshold``."""
    valid = ~np.isnan(x)
    num = _product(np.where(valid, x, x.dtype.type(0)), p.lat, p.lon)
    den = _product(valid.astype(x.dtype), p.lat, p.lon)
    # xarray-regrid's threshold (kept for identical masks): the valid fraction must reach it
    need = 1.0 - np.clip(1.0 - nan_threshold, 1e-6, 1.0 - 1e-6)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[~(den >= need)] = np.nan
    return out


def _bilinear_nan(x: np.ndarray, p: _Plan, flip: bool) -> np.ndarray:
    """The valid points' interpolation, NaN wherever a neighbour (of any weight) is NaN; a pole row is
    the mean of the valid points of the outermost row."""
    valid = ~np.isnan(x)
    filled = np.where(valid, x, x.dtype.type(0))
    poles = pole_bad = None
    if p.poles is not None:
        rows, ok = _edge_rows(filled, flip), _edge_rows(valid, flip)
        n_ok = ok.sum(axis=-1)
        poles = rows.sum(axis=-1) / np.maximum(n_ok, 1)
        pole_bad = (n_ok == 0).astype(x.dtype)
    out = _product(filled, p.lat, p.lon, p.poles, poles)
    bad = _product((~valid).astype(x.dtype), p.ind_lat, p.ind_lon, p.ind_poles, pole_bad)
    out[bad > 0] = np.nan
    return out
