"""Regridding: conservation on real data, accuracy on analytic fields, every input convention."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import xarray as xr

from pipeline.data.coords import DataError, standardise
from pipeline.data.io import open_source
from pipeline.data.regrid import regrid, select, target_grid
from tests.conftest import analytic, make_dataset
from tests.data.test_conventions import cell_mean, field_at


def _cell_area_mean(da: xr.DataArray) -> xr.DataArray:
    """Area mean with exact cell areas (edges at midpoints, clipped at the poles): the oracle."""
    lat = da["latitude"].values
    edges = np.concatenate(
        [
            [max(-90.0, lat[0] - (lat[1] - lat[0]) / 2)],
            (lat[1:] + lat[:-1]) / 2,
            [min(90.0, lat[-1] + (lat[-1] - lat[-2]) / 2)],
        ]
    )
    w = xr.DataArray(np.diff(np.sin(np.deg2rad(edges))), dims="latitude", coords={"latitude": da["latitude"]})
    return da.weighted(w).mean(("latitude", "longitude"))


@pytest.mark.parametrize("res", [5.625, 2.8125])
def test_conservative_preserves_global_area_mean_on_era_interim(eraint_path, res: float) -> None:
    ds = open_source([eraint_path]).rename(month="time")  # an integer month, no units: dated here
    ds = standardise(ds.assign_coords(time=np.array(["1990-01-15", "1990-07-15"], dtype="datetime64[ns]")))
    out = regrid(ds, target_grid(res), {"z": "conservative", "u": "conservative", "v": "conservative"}).compute()
    assert out["z"].shape == (2, 3, round(180 / res), round(360 / res))
    assert not out["z"].isnull().any()
    for name, tol in (("z", 2e-6), ("u", 2e-5), ("v", 2e-5)):
        before, after = _cell_area_mean(ds[name]), _cell_area_mean(out[name])
        scale = _cell_area_mean(abs(ds[name]))
        rel = float((abs(after - before) / scale).max())
        # u, v: the source rows exactly at +-90 get zero weight in xarray-regrid (their cell
        # is 0.375 deg wide); that, not round-off, is the 1e-5 residual.
        assert rel < tol, (name, rel)


def test_bilinear_on_analytic_field() -> None:
    lat = np.arange(-89.5, 90, 1.0)
    lon = np.arange(0, 360, 1.0)
    ds = standardise(make_dataset(lat, lon, times=2, levels=None))
    tg = target_grid(5.0)
    out = regrid(ds, tg, {"t": "bilinear"}).compute()
    exact = 250 + 10 * (1 + 0.1 * np.arange(2))[:, None, None] * analytic(tg["latitude"].values, tg["longitude"].values)
    err = np.abs(out["t"].values - exact).max()
    # second-order scheme on a 1-deg source: error ~ (1 deg)^2 * curvature * amplitude 10 ~ 1e-3
    assert err < 5e-3, err
    # and across the dateline (lon 357.5 and 2.5 sit between the last and first source columns)
    assert np.isfinite(out["t"].values).all()


def _regrid_t(ds: xr.Dataset, method: str = "bilinear", res: float = 5.0, bounds=None) -> xr.DataArray:
    std = standardise(ds)
    return regrid(std, target_grid(res, *(bounds or (None, None))), {"t": method})["t"].compute()


@pytest.mark.parametrize("method", ["bilinear", "conservative"])
def test_conventions_give_the_same_answer(method: str) -> None:
    lat = np.arange(-88.75, 90, 2.5)
    lon = np.arange(0, 360, 2.5)
    ref = _regrid_t(make_dataset(lat, lon, times=2), method)
    variants = {
        "latitude descending": make_dataset(lat[::-1], lon, times=2),
        "longitude -180..180": make_dataset(lat, np.where(lon >= 180, lon - 360, lon), times=2).sortby("lon"),
        "bare names y/x, no attributes": make_dataset(
            lat, lon, times=2, names={"lat": "y", "lon": "x"}, cf_attrs=False
        ),
        "CF names only": make_dataset(lat, lon, times=2, names={"lat": "nav_lat", "lon": "nav_lon"}),
    }
    for what, ds in variants.items():
        out = _regrid_t(ds, method)
        np.testing.assert_allclose(out.values, ref.values, rtol=1e-10, atol=1e-10, err_msg=what)


def test_regional_domain_across_the_dateline() -> None:
    lat = np.arange(-30, 31, 1.0)
    lon = np.concatenate([np.arange(150, 180, 1.0), np.arange(-180, -149, 1.0)])  # 150E .. 150W
    ds = make_dataset(lat, lon, times=1, levels=None)
    out = _regrid_t(ds, "bilinear", 5.0, ((-20, 20), (160, -160)))
    assert out["longitude"].values.tolist() == [162.5, 167.5, 172.5, 177.5, 182.5, 187.5, 192.5, 197.5]
    exact = 250 + 10 * analytic(out["latitude"].values, out["longitude"].values)
    assert np.abs(out.values[0] - exact).max() < 5e-3
    # a target beyond the regional source is refused, naming the config key
    with pytest.raises(DataError, match=r"data\.grid\.lon_bounds"):
        _regrid_t(ds, "bilinear", 5.0, ((-20, 20), (100, 140)))


def test_nan_mask_stays_nan_and_does_not_leak() -> None:
    lat = np.arange(-88.75, 90, 2.5)
    lon = np.arange(0, 360, 2.5)
    ds = make_dataset(lat, lon, times=1, levels=None)
    land = (ds["lat"] > 10) & (ds["lat"] < 40) & (ds["lon"] > 100) & (ds["lon"] < 160)
    masked = ds.assign(t=ds["t"].where(~land), q=ds["q"].where(~land))
    for method in ("bilinear", "conservative"):
        full = _regrid_t(ds, method)[0]
        out = _regrid_t(masked, method)[0]
        inside = (out.latitude > 15) & (out.latitude < 35) & (out.longitude > 105) & (out.longitude < 155)
        assert int(out.isnull().where(inside, False).sum()) == int(inside.sum()), method  # the mask stays NaN
        far = (abs(out.latitude - 25) > 25) | (abs(out.longitude - 130) > 45)
        # away from the mask the result is unchanged: no NaN leaks, no values pulled in
        np.testing.assert_allclose(out.where(far).values, full.where(far).values, equal_nan=True, err_msg=method)
        # NaN spreads at most one target cell beyond the masked source region
        near = (out.latitude > 5) & (out.latitude < 45) & (out.longitude > 95) & (out.longitude < 165)
        assert int(out.isnull().where(~near, False).sum()) == 0, method


def test_packed_integers_are_decoded(write_nc) -> None:
    lat = np.arange(-88.75, 90, 2.5)
    lon = np.arange(0, 360, 2.5)
    ds = make_dataset(lat, lon, times=2, levels=None)
    enc = {"t": {"dtype": "int16", "scale_factor": 0.01, "add_offset": 250.0, "_FillValue": -32767}}
    path = write_nc(ds, "packed.nc", enc)
    opened = open_source([path])
    assert opened["t"].dtype.kind == "f"
    np.testing.assert_allclose(opened["t"].values, ds["t"].values, atol=0.006)


def test_several_files_variables_and_levels(write_nc) -> None:
    lat = np.arange(-88.75, 90, 2.5)
    lon = np.arange(0, 360, 2.5)
    ds = make_dataset(lat, lon, times=6, levels=(1000.0, 850.0, 500.0))
    paths = [write_nc(ds.isel(time=slice(0, 3)), "a.nc"), write_nc(ds.isel(time=slice(3, 6)), "b.nc")]
    opened = standardise(open_source(paths))
    sel = select(opened, [("t", [850.0, 500.0]), ("q", None)])
    assert sel.sizes["time"] == 6
    assert sorted(sel.data_vars) == ["q1000", "q500", "q850", "t500", "t850"]
    assert "level" not in sel["t850"].dims and sel["t850"].attrs["level"] == 850.0
    np.testing.assert_allclose(sel["t500"].values, opened["t"].sel(level=500.0).values)
    methods = {
        "t850": "bilinear",
        "t500": "bilinear",
        "q1000": "conservative",
        "q850": "conservative",
        "q500": "conservative",
    }
    out = regrid(sel, target_grid(10.0), methods).compute()
    assert out["t850"].attrs["regrid_method"] == "bilinear" and out["q500"].attrs["units"] == "kg m-2 s-1"


def test_chunking_invariance() -> None:
    lat = np.arange(-88.75, 90, 2.5)
    lon = np.arange(0, 360, 2.5)
    ds = standardise(make_dataset(lat, lon, times=8))
    tg = target_grid(5.0)
    results = []
    for chunks in ({"time": 1}, {"time": 3, "level": 1}, {"time": -1}):
        out = regrid(ds.chunk(chunks), tg, {"t": "conservative", "q": "bilinear"}).compute()
        results.append(out)
    for other in results[1:]:
        xr.testing.assert_allclose(results[0], other, rtol=1e-12, atol=1e-12)


def test_regrid_stays_lazy() -> None:
    lat = np.arange(-88.75, 90, 2.5)
    lon = np.arange(0, 360, 2.5)
    ds = standardise(make_dataset(lat, lon, times=4).chunk({"time": 1}))

    def forbid(*args, **kwargs):
        raise AssertionError("dask computed during graph construction")

    with dask.config.set(scheduler=forbid):
        out = regrid(ds, target_grid(5.0), {"t": "conservative", "q": "bilinear"})
    assert all(isinstance(v.data, dask.array.Array) for v in out.data_vars.values())


def test_grib_regional_real_data(era5_grib) -> None:
    ds = standardise(open_source([era5_grib]), era5_grib.name)
    assert ds["latitude"].values[0] < ds["latitude"].values[-1]  # GRIB latitude was descending
    out = regrid(select(ds, [("t2m", None)]), target_grid(1.0, (51, 57), (-8, 1)), {"t2m": "conservative"})
    out = out.isel(time=slice(0, 24)).compute()
    assert out["t2m"].shape == (24, 6, 9) and out["t2m"].attrs["units"] == "K"
    src = ds["t2m"].isel(time=slice(0, 24)).sel(latitude=slice(51, 57), longitude=slice(-8, 1)).load()
    assert float(src.min()) - 0.01 <= float(out["t2m"].min()) and float(out["t2m"].max()) <= float(src.max()) + 0.01


def _rotated_dataset(step: float, n_lat: int, n_lon: int) -> xr.Dataset:
    import pyproj

    pole = {
        "grid_mapping_name": "rotated_latitude_longitude",
        "grid_north_pole_latitude": 39.25,
        "grid_north_pole_longitude": -162.0,
    }
    rlat, rlon = -23.375 + step * np.arange(n_lat), -28.375 + step * np.arange(n_lon)
    tr = pyproj.Transformer.from_crs(pyproj.CRS.from_cf(pole), "EPSG:4326", always_xy=True)
    lon, lat = (np.asarray(a) for a in tr.transform(*np.meshgrid(rlon, rlat)))
    return xr.Dataset(
        {
            "t": (("rlat", "rlon"), field_at(lat, lon), {"units": "K"}),
            "rotated_pole": ((), 0, pole),
        },
        coords={
            "rlat": ("rlat", rlat, {"standard_name": "grid_latitude", "units": "degrees"}),
            "rlon": ("rlon", rlon, {"standard_name": "grid_longitude", "units": "degrees"}),
        },
    ).assign(t=lambda d: d["t"].assign_attrs(grid_mapping="rotated_pole"))


def test_rotated_grid_against_the_analytic_field() -> None:
    """Bilinear against the field at the target points, conservative against exact cell means."""
    std = standardise(_rotated_dataset(0.22, 200, 210))
    tg = target_grid(0.5, (40.0, 60.0), (-5.0, 25.0))
    tlat, tlon = tg["latitude"].values, tg["longitude"].values
    w = np.cos(np.deg2rad(tlat))[:, None] * np.ones(tlon.size)
    # bilinear: O(h^2) interpolation error, also in the mean; conservative: exact up to straight cell edges
    for method, exact, tol, mean_tol in (
        ("bilinear", field_at(tlat[:, None], tlon[None, :]), 5e-4, 1e-4),
        ("conservative", cell_mean(tlat, tlon, 0.5), 1e-2, 2e-5),
    ):
        out = regrid(std, tg, {"t": method})["t"].values
        assert not np.isnan(out).any(), method
        assert np.abs(out - exact).max() < tol, (method, np.abs(out - exact).max())
        assert abs(np.average(out, weights=w) - np.average(exact, weights=w)) < mean_tol, method


def test_conservative_weights_partition_the_cells() -> None:
    """Overlap areas are exact: a covered target cell is filled once, a source cell inside is spread whole."""
    import shapely

    from pipeline.data.curvilinear import conservative_weights

    std = standardise(_rotated_dataset(0.44, 100, 105))
    tg = target_grid(1.0, (40.0, 60.0), (-5.0, 25.0))
    w = conservative_weights(std["cell_corners"].values, tg)
    np.testing.assert_allclose(np.asarray(w.sum(axis=1)).ravel(), 1.0, atol=1e-9)
    corners = std["cell_corners"].values.reshape(-1, 4, 2)
    src_area = shapely.area(shapely.polygons(np.stack([corners[..., 1], np.sin(np.deg2rad(corners[..., 0]))], -1)))
    t_area = np.repeat(np.diff(np.sin(np.deg2rad(np.arange(40.0, 60.1, 1.0)))), 30) * 1.0
    spread = np.asarray(w.multiply(t_area[:, None]).sum(axis=0)).ravel()
    c = corners.reshape(-1, 4, 2)
    inside = (c[..., 0].min(1) > 40) & (c[..., 0].max(1) < 60) & (c[..., 1].min(1) > -5) & (c[..., 1].max(1) < 25)
    assert inside.sum() > 1000
    np.testing.assert_allclose(spread[inside], src_area[inside], rtol=1e-9)


def test_curvilinear_target_outside_the_source_is_refused() -> None:
    std = standardise(_rotated_dataset(0.44, 100, 105), "eur.nc")
    with pytest.raises(
        DataError, match=r"target grid reaches outside the curvilinear source grid \(eur.nc.*data\.grid"
    ):
        regrid(std, target_grid(1.0, (0.0, 30.0), (-40.0, 0.0)), {"t": "bilinear"}, source="eur.nc")
