"""Unstructured grids to the regular target grid: ICON's triangles (conservative, from the cells' vertices)
and CAM-SE / MPAS columns (linear on the triangulation of the centres).

The meshes are built here: an ICON-like grid is an icosahedron whose triangles are bisected ``level`` times
(ICON's R2Bn grids are made the same way), its cell values the exact area means of the analytic field over
each spherical triangle (quadrature); CAM-SE-like columns are the points of an equiangular cubed sphere. The
files are written as the models write them (ICON: clat/clon in radians with clat_bnds/clon_bnds, nv = 3,
CDI_grid_type = unstructured, time 'day as %Y%m%d.%f'; CAM-SE: lat/lon in degrees on ncol, no vertices).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from scipy.spatial import ConvexHull

from pipeline.data.coords import DataError, standardise
from pipeline.data.io import open_source
from pipeline.data.regrid import check_covers, regrid, select, target_grid

DAYS = 24


def field_at(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """The analytic field (K) of tests/data/test_conventions.py."""
    la, lo = np.deg2rad(lat), np.deg2rad(lon)
    return 280.0 + 10.0 * np.cos(la) * np.sin(2 * lo) + 5.0 * np.sin(la)


def _latlon(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.rad2deg(np.arcsin(np.clip(xyz[..., 2], -1, 1))), np.rad2deg(np.arctan2(xyz[..., 1], xyz[..., 0]))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def spherical_area(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Area (steradians) of the spherical triangles with unit-vector corners a, b, c (Van Oosterom & Strackee)."""
    num = np.abs(np.einsum("...i,...i", a, np.cross(b, c)))
    den = 1 + np.einsum("...i,...i", a, b) + np.einsum("...i,...i", b, c) + np.einsum("...i,...i", c, a)
    return 2 * np.arctan2(num, den)


def icosahedral_mesh(level: int, rotation: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Unit-vector vertices and counter-clockwise triangles (as seen from outside) of an icosahedron bisected
    ``level`` times, with a vertex at each pole (as ICON's), or turned by a random rotation (seeded)."""
    lat = np.arctan(0.5)  # the icosahedron's other ten vertices, on two rings at +-26.57 degrees
    lon = np.deg2rad(36.0 * np.arange(10))
    ring = np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat) * (-1.0) ** np.arange(10)], 1)
    pts = np.concatenate([[[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]], ring])
    for _ in range(level):
        f = ConvexHull(pts).simplices
        mids = _unit(np.concatenate([pts[f[:, i]] + pts[f[:, (i + 1) % 3]] for i in range(3)]))
        pts = _unit(np.unique(np.round(np.concatenate([pts, mids]), 12), axis=0))
    if rotation is not None:
        q, _ = np.linalg.qr(np.random.default_rng(rotation).normal(size=(3, 3)))
        pts = pts @ q.T
    tri = ConvexHull(pts).simplices.copy()
    normal = np.cross(pts[tri[:, 1]] - pts[tri[:, 0]], pts[tri[:, 2]] - pts[tri[:, 0]])
    flip = np.einsum("ij,ij->i", normal, pts[tri].mean(axis=1)) < 0
    tri[flip] = tri[flip][:, ::-1]
    return pts, tri


def triangle_means(corners: np.ndarray, m: int = 6) -> np.ndarray:
    """The area mean of :func:`field_at` over each spherical triangle (corners (n, 3, 3)): the triangle cut
    into m * m small ones, each weighted by its spherical area, the field at its centroid."""
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]

    def at(i: float, j: float) -> np.ndarray:
        return _unit(a + (b - a) * (i / m) + (c - a) * (j / m))

    total = np.zeros(len(corners))
    area = np.zeros(len(corners))
    for i in range(m):
        for j in range(m - i):
            for p, q, r in [(at(i, j), at(i + 1, j), at(i, j + 1))] + (
                [(at(i + 1, j), at(i + 1, j + 1), at(i, j + 1))] if i + j < m - 1 else []
            ):
                w = spherical_area(p, q, r)
                total += w * field_at(*_latlon(_unit(p + q + r)))
                area += w
    return total / area


def _steps(n: int = DAYS) -> np.ndarray:
    return 0.1 * np.arange(n)


def icon_triangles(d: Path, level: int = 4, rotation: int | None = None) -> list[Path]:
    """An ICON R2B-like global triangular grid as ICON (through CDI) writes its output."""
    pts, tri = icosahedral_mesh(level, rotation)
    corners = pts[tri]
    clat, clon = _latlon(_unit(corners.mean(axis=1)))
    vlat, vlon = _latlon(corners)
    means = triangle_means(corners)
    data = (means[None] + _steps()[:, None]).astype(np.float32)
    ds = xr.Dataset(
        {
            "tas": (
                ("time", "ncells"),
                data,
                {
                    "standard_name": "air_temperature",
                    "long_name": "temperature in 2m",
                    "units": "K",
                    "CDI_grid_type": "unstructured",
                    "number_of_grid_in_reference": 1,
                },
            ),
            "clon_bnds": (("ncells", "vertices"), np.deg2rad(vlon)),
            "clat_bnds": (("ncells", "vertices"), np.deg2rad(vlat)),
        },
        coords={
            "time": (
                "time",
                20000101.5 + np.arange(DAYS),  # daily means at noon, 1..24 January 2000
                {"standard_name": "time", "units": "day as %Y%m%d.%f", "calendar": "proleptic_gregorian", "axis": "T"},
            ),
            "clon": (
                "ncells",
                np.deg2rad(clon),
                {
                    "standard_name": "longitude",
                    "long_name": "center longitude",
                    "units": "radian",
                    "bounds": "clon_bnds",
                },
            ),
            "clat": (
                "ncells",
                np.deg2rad(clat),
                {"standard_name": "latitude", "long_name": "center latitude", "units": "radian", "bounds": "clat_bnds"},
            ),
        },
        attrs={
            "CDI": "Climate Data Interface version 2.4.0",
            "Conventions": "CF-1.6",
            "number_of_grid_used": 5,
            "uuidOfHGrid": "0f1e7d66-637e-11e8-913b-51232bb4d8f9",
        },
    )
    p = d / f"icon_R2B{level}_atm_2d_ml_20000101.nc"
    ds.to_netcdf(p)
    return [p]


def cubed_sphere(n: int) -> np.ndarray:
    """Unit vectors of an equiangular cubed sphere, n x n points per face (CAM-SE's element layout)."""
    t = np.tan(np.pi / 4 * ((np.arange(n) + 0.5) / n * 2 - 1))
    a, b = np.meshgrid(t, t)
    faces = []
    for axis in range(3):
        for sign in (1.0, -1.0):
            p = np.zeros((n * n, 3))
            p[:, axis] = sign
            p[:, (axis + 1) % 3] = a.ravel()
            p[:, (axis + 2) % 3] = b.ravel()
            faces.append(p)
    return _unit(np.concatenate(faces))


def camse_columns(d: Path, n: int = 30, box: tuple[float, float, float, float] | None = None) -> list[Path]:
    """CAM-SE-like output: columns on ncol with 1-D lat/lon in degrees (0..360), no vertices; noleap time.
    ``box`` (south, north, west, east) keeps a regional subset (a limited-area mesh)."""
    lat, lon = _latlon(cubed_sphere(n))
    lon = np.mod(lon, 360.0)
    if box is not None:
        keep = (lat >= box[0]) & (lat <= box[1]) & (np.mod(lon - box[2], 360.0) <= np.mod(box[3] - box[2], 360.0))
        lat, lon = lat[keep], lon[keep]
    data = (field_at(lat, lon)[None] + _steps()[:, None]).astype(np.float32)
    ds = xr.Dataset(
        {
            "TREFHT": (("time", "ncol"), data, {"units": "K", "long_name": "Reference height temperature"}),
            "area": ("ncol", np.full(lat.size, 4 * np.pi / lat.size), {"long_name": "gll grid areas"}),
        },
        coords={
            "time": (
                "time",
                729635.5 + np.arange(DAYS),  # 2000-01-01 12:00 in noleap
                {"units": "days since 0001-01-01 00:00:00", "calendar": "noleap"},
            ),
            "lat": ("ncol", lat, {"long_name": "latitude", "units": "degrees_north"}),
            "lon": ("ncol", lon, {"long_name": "longitude", "units": "degrees_east"}),
        },
        attrs={"Conventions": "CF-1.0", "source": "CAM", "case": "f.e21.FHIST.ne30_ne30"},
    )
    p = d / f"cam.h1.TREFHT.ncol{lat.size}.nc"
    ds.to_netcdf(p)
    return [p]


def _open(p: Path, name: str) -> xr.Dataset:
    return select(standardise(open_source([p]), p.name), [(name, None)], p.name)


def _area(tg: xr.Dataset, res: float) -> np.ndarray:
    lat = tg["latitude"].values
    band = np.sin(np.deg2rad(np.clip(lat + res / 2, -90, 90))) - np.sin(np.deg2rad(np.clip(lat - res / 2, -90, 90)))
    return np.repeat(band[:, None], tg.sizes["longitude"], axis=1)


@pytest.mark.parametrize("rotation", [None, 3])  # vertices on the poles (as ICON), or a cell around each pole
def test_icon_conservative_keeps_the_global_mean(tmp_path: Path, rotation: int | None) -> None:
    from tests.data.test_conventions import cell_mean

    path = icon_triangles(tmp_path, level=4, rotation=rotation)[0]
    src = _open(path, "tas")
    assert src.attrs["grid_kind"] == "unstructured" and src["cell_corners"].shape == (5120, 3, 2)
    assert src["time"].values[0] == np.datetime64("2000-01-01T12:00")
    # the area-weighted mean of every step, source cells weighted by their spherical areas
    pts, tri = icosahedral_mesh(4, rotation)
    cell_area = spherical_area(*(pts[tri[:, i]] for i in range(3)))
    source_mean = (src["tas"].values.astype(np.float64) * cell_area).sum(axis=1) / cell_area.sum()
    for res, tol in ((5.0, 0.4), (15.0, 0.12)):
        tg = target_grid(res)
        out = regrid(src, tg, {"tas": "conservative"}, source=path.name).load()
        got = out["tas"].values
        assert out["tas"].attrs["regrid_method"] == "conservative" and np.isfinite(got).all()
        area = _area(tg, res)
        np.testing.assert_allclose((got * area).sum(axis=(1, 2)) / area.sum(), source_mean, rtol=1e-6)
        # each target cell is the area mean of the analytic field over it, to first order in the source cells'
        # size (~7.5 degrees) over the target cells' (first-order conservative remapping)
        exact = cell_mean(tg["latitude"].values, tg["longitude"].values, res)[None] + _steps()[:, None, None]
        assert np.abs(got - exact).max() < tol, (res, np.abs(got - exact).max())


def test_icon_mask_and_linear_route(tmp_path: Path) -> None:
    path = icon_triangles(tmp_path, level=4)[0]
    src = _open(path, "tas").load()
    land = (src["latitude"] > 10) & (src["latitude"] < 30) & (src["longitude"] > 100) & (src["longitude"] < 140)
    src["tas"] = src["tas"].where(~land)
    tg = target_grid(5.0)
    out = regrid(src, tg, {"tas": "conservative"}, nan_threshold=0.5, source=path.name)["tas"].isel(time=0)
    lat, lon = np.meshgrid(tg["latitude"].values, tg["longitude"].values, indexing="ij")
    inside = (lat > 14) & (lat < 26) & (lon > 105) & (lon < 135)
    far = (lat < 0) | (lat > 40) | (lon < 90) | (lon > 150)
    assert np.isnan(out.values[inside]).all() and np.isfinite(out.values[far]).all()
    linear = regrid(src, tg, {"tas": "bilinear"}, source=path.name)["tas"].isel(time=0).values
    assert np.isnan(linear[inside]).all() and np.isfinite(linear[far]).all()
    # cell means taken as values at the centres, interpolated linearly between centres ~3 degrees apart; the
    # field's cos(lat) sin(2 lon) is not smooth at the poles (a cone there), so the error is largest near them
    error = np.abs(linear - field_at(lat, lon))
    assert error[far & (np.abs(lat) < 75)].max() < 0.1 and error[far].max() < 0.25


def test_camse_columns_interpolate_linearly(tmp_path: Path) -> None:
    path = camse_columns(tmp_path, n=30)[0]
    src = _open(path, "TREFHT")
    assert src.attrs["grid_kind"] == "unstructured" and "cell_corners" not in src.coords
    tg = target_grid(4.0)
    out = regrid(src, tg, {"TREFHT": "bilinear"}, source=path.name)["TREFHT"].values
    lat, lon = np.meshgrid(tg["latitude"].values, tg["longitude"].values, indexing="ij")
    exact = field_at(lat, lon)[None] + _steps()[:, None, None]
    error = np.abs(out - exact)  # as above: largest near the poles, where the field is not smooth
    assert np.isfinite(out).all() and error[:, np.abs(lat) < 75].max() < 0.03 and error.max() < 0.1
    with pytest.raises(DataError, match=r"cam.h1.*'TREFHT' is to be regridded conservatively.*only their centres"):
        regrid(src, tg, {"TREFHT": "conservative"}, source=path.name)


def test_regional_columns_cover_only_their_domain(tmp_path: Path) -> None:
    path = camse_columns(tmp_path, n=60, box=(30.0, 70.0, 340.0, 40.0))[0]  # across the prime meridian
    src = _open(path, "TREFHT")
    inside = target_grid(1.0, (35.0, 65.0), (-15.0, 35.0))
    check_covers(src, inside, path.name)
    out = regrid(src, inside, {"TREFHT": "bilinear"}, source=path.name)["TREFHT"].isel(time=0).values
    lat, lon = np.meshgrid(inside["latitude"].values, inside["longitude"].values, indexing="ij")
    assert np.isfinite(out).all() and np.abs(out - field_at(lat, lon)).max() < 0.05
    with pytest.raises(
        DataError, match=r"target grid reaches outside the unstructured source grid \(cam.h1.*data\.grid"
    ):
        check_covers(src, target_grid(1.0, (20.0, 60.0), (-15.0, 35.0)), path.name)


def test_mpas_cell_centres_named_in_the_config(tmp_path: Path) -> None:
    """MPAS writes latCell/lonCell in radians on nCells without CF attributes: named in data.source.coordinates."""
    ds = xr.open_dataset(camse_columns(tmp_path, n=20)[0], decode_times=False).load()
    ds = ds.rename(ncol="nCells", lat="latCell", lon="lonCell", TREFHT="t2m")
    for c in ("latCell", "lonCell"):
        ds[c] = ("nCells", np.deg2rad(ds[c].values), {"units": "radians"})
    ds.to_netcdf(tmp_path / "mpas.nc")
    with pytest.raises(DataError, match=r"mpas.nc: no geographic latitude/longitude found"):
        standardise(open_source([tmp_path / "mpas.nc"]), "mpas.nc")
    names = {"latitude": "latCell", "longitude": "lonCell"}
    src = select(standardise(open_source([tmp_path / "mpas.nc"]), "mpas.nc", names), [("t2m", None)], "mpas.nc")
    assert src.attrs["grid_kind"] == "unstructured" and src.sizes["cell"] == 2400
    out = regrid(src, target_grid(10.0, (-60.0, 60.0)), {"t2m": "bilinear"}, source="mpas.nc")["t2m"].isel(time=0)
    lat, lon = np.meshgrid(out["latitude"].values, out["longitude"].values, indexing="ij")
    assert np.abs(out.values - field_at(lat, lon)).max() < 0.1
