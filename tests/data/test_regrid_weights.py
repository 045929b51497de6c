"""The regular-grid regridder's weights: by hand, against xarray-regrid (the oracle), cached, per chunk."""

from __future__ import annotations

import logging

import dask
import numpy as np
import pytest
import xarray as xr

from pipeline.data import weights as wmod
from pipeline.data.coords import standardise
from pipeline.data.io import open_source
from pipeline.data.regrid import regrid, target_grid
from pipeline.data.weights import apply_weights, regrid_weights
from tests.conftest import analytic

xarray_regrid = pytest.importorskip("xarray_regrid")  # a dependency; here only as the oracle


def _oracle(ds: xr.Dataset, target: xr.Dataset, method: str, nan_threshold: float = 0.5) -> xr.Dataset:
    """xarray-regrid as the pipeline called it before, on float64 coordinates (it computes its weights
    in the coordinates' dtype: ERA-Interim's float32 ones would put 1e-6 of round-off into the oracle)."""
    ds = ds.astype("float64").assign_coords(
        latitude=ds["latitude"].astype("float64"), longitude=ds["longitude"].astype("float64")
    )
    time_dim = "time" if "time" in ds.dims else None
    if method == "conservative":
        return ds.regrid.conservative(
            target, latitude_coord="latitude", time_dim=time_dim, skipna=True, nan_threshold=1.0 - nan_threshold
        )
    return ds.regrid.linear(target, time_dim=time_dim)


def _assert_matches(ours: xr.DataArray, ref: xr.DataArray, scale: float, rtol: float = 1e-6, what: str = "") -> None:
    """Identical NaN masks; values within ``rtol`` of the field's scale (its largest magnitude)."""
    ref = ref.transpose(*ours.dims)
    a, b = ours.values, ref.values
    assert a.shape == b.shape, what
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=f"NaN masks differ: {what}")
    ok = ~np.isnan(a)
    err = float(np.abs(a[ok] - b[ok]).max()) / scale if ok.any() else 0.0
    assert err < rtol, (what, err)


@pytest.fixture(scope="module")
def eraint(eraint_path) -> xr.Dataset:
    ds = open_source([eraint_path]).rename(month="time")
    ds = ds.assign_coords(time=np.array(["1990-01-15", "1990-07-15"], dtype="datetime64[ns]"))
    return standardise(ds).load()


def _synthetic(times: int = 3) -> xr.Dataset:
    """A global 2.5-degree field without rows at the poles (xarray-regrid pads them), anomalies around 0."""
    lat, lon = np.arange(-88.75, 90, 2.5), np.arange(0, 360, 2.5)
    f = 10 * analytic(lat, lon)[None] * (1 + 0.1 * np.arange(times))[:, None, None]
    ds = xr.Dataset(
        {"t": (("time", "latitude", "longitude"), f)},
        coords={"time": np.arange(times), "latitude": lat, "longitude": lon},
    )
    return ds


def _masks(ds: xr.Dataset, name: str) -> dict[str, xr.DataArray]:
    """NaN patterns: a land-like blob, scattered points, the outermost rows, a whole step."""
    da = ds[name]
    lat, lon = da["latitude"], da["longitude"]
    rng = np.random.default_rng(0)
    edge = xr.zeros_like(da, dtype=bool)
    edge[{"time": 0, "latitude": 0}] = True  # the whole southernmost row: a padded pole is NaN
    edge[{"time": 1, "latitude": -1, "longitude": slice(0, 20)}] = True  # part of it: the pole is the rest's mean
    step = xr.zeros_like(da, dtype=bool)
    step[{"time": -1}] = True
    return {
        "blob": da.where(~((lat > 10) & (lat < 40) & (lon > 100) & (lon < 160))),
        "scattered": da.where(rng.random(da.shape) > 0.03),
        "edge rows": da.where(~edge),
        "a whole step": da.where(~step),
    }


# --- by hand ---------------------------------------------------------------------------------------


def test_conservative_weights_by_hand() -> None:
    """Rows at -30, -10, 10, 30 (edges -40, -20, 0, 20, 40) onto rows at -20 and 20: each target row is
    two whole source rows, weighted by their area factor 2 sin(10) cos(lat); longitude 90-degree cells
    onto 180-degree cells: halves, also across 0/360."""
    lon = np.array([45.0, 135, 225, 315])
    w = regrid_weights(
        np.array([-30.0, -10, 10, 30]), lon, np.array([-20.0, 20]), np.array([90.0, 270]), "conservative"
    )
    c = np.cos(np.deg2rad([30.0, 10.0]))
    np.testing.assert_allclose(w.lat.toarray()[:, :4], np.array([[c[0], c[1], 0, 0], [0, 0, c[1], c[0]]]) / c.sum())
    np.testing.assert_array_equal(w.lat.toarray()[:, 4:], 0.0)  # no pole rows
    np.testing.assert_allclose(w.lon.toarray(), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]], rtol=1e-14)
    w = regrid_weights(np.array([-30.0, -10, 10, 30]), lon, np.array([-20.0, 20]), np.array([0.0, 180]), "conservative")
    np.testing.assert_allclose(w.lon.toarray(), [[0.5, 0, 0, 0.5], [0, 0.5, 0.5, 0]], rtol=1e-14)
    # rows at -60 .. 60 reach within a spacing of the poles: xarray-regrid pads a pole row (area factor 0)
    # at -90, which moves the outer edge of the row at -60 from -80 to -75: overlaps 35 and 40 with [-80, 0]
    w = regrid_weights(
        np.array([-60.0, -20, 20, 60]), lon, np.array([-40.0, 40]), np.array([90.0, 270]), "conservative"
    )
    c = np.array([35 * np.cos(np.deg2rad(60.0)), 40 * np.cos(np.deg2rad(20.0))])
    np.testing.assert_allclose(w.lat.toarray()[0, :2], c / c.sum())


def test_bilinear_weights_by_hand() -> None:
    """Between the last and first source column across 0/360; on a source point, the interval to its left
    (both neighbours stored, one with weight 0); a point beyond a regional source: not covered."""
    lon = np.arange(0.0, 360.0, 10.0)
    w = regrid_weights(np.array([-10.0, 10.0]), lon, np.array([0.0, 5.0]), np.array([-5.0, 5.0, 20.0]), "bilinear")
    a = w.lon.toarray()
    assert a[0, 35] == 0.5 and a[0, 0] == 0.5 and a[1, 0] == 0.5 and a[1, 1] == 0.5
    assert a[2, 2] == 1.0 and w.lon[2, 1] == 0.0 and w.lon.indices[w.lon.indptr[2] : w.lon.indptr[3]].tolist() == [1, 2]
    np.testing.assert_allclose(w.lat.toarray()[:, :2], [[0.5, 0.5], [0.25, 0.75]])
    regional = regrid_weights(
        np.array([-10.0, 10.0]), np.arange(100.0, 140.0, 10.0), np.array([0.0]), np.array([105.0, 135.0]), "bilinear"
    )
    assert regional.lon_covered.tolist() == [True, False]


def test_float32_stays_float32_and_accumulates_well_below_1e_6() -> None:
    ds = _synthetic()
    x32 = ds["t"].values.astype(np.float32)
    tg = target_grid(1.0)
    for method in ("conservative", "bilinear"):
        w = regrid_weights(
            ds["latitude"].values, ds["longitude"].values, tg["latitude"].values, tg["longitude"].values, method
        )
        out32 = apply_weights(x32, w)
        out64 = apply_weights(x32.astype(np.float64), w)  # the same input values, float64 throughout
        assert out32.dtype == np.float32
        err = np.nanmax(np.abs(out32 - out64)) / np.abs(x32).max()
        assert err < 3e-7, (method, err)


@pytest.mark.parametrize("method", ["conservative", "bilinear"])
@pytest.mark.parametrize("nan", [False, True])
def test_a_latitude_reversed_view_gives_the_contiguous_result_bit_for_bit(method: str, nan: bool) -> None:
    """A source stored north to south (ERA5) reaches apply_weights as a reversed view of its latitude axis;
    it is read in memory order with the weights' columns reversed, which must change nothing, NaN included."""
    ds = _synthetic()
    x = ds["t"].values.astype(np.float32)  # (time, latitude, longitude)
    if nan:
        x[:, 3:6, 10:20] = np.nan
    tg = target_grid(1.0)
    w = regrid_weights(
        ds["latitude"].values, ds["longitude"].values, tg["latitude"].values, tg["longitude"].values, method
    )
    view = np.ascontiguousarray(x[:, ::-1])[:, ::-1]  # the same values, latitude reversed in memory
    assert not view.flags.c_contiguous and np.array_equal(view, x, equal_nan=True)
    a, b = apply_weights(x, w), apply_weights(view, w)
    assert np.array_equal(a, b, equal_nan=True) and np.isnan(a).any() == nan


# --- against xarray-regrid -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["conservative", "bilinear"])
@pytest.mark.parametrize("res", [5.625, 1.0])
def test_matches_xarray_regrid_on_era_interim(eraint, method: str, res: float) -> None:
    tg = target_grid(res)
    for dtype in ("float64", "float32"):
        ds = eraint.astype(dtype)
        ours = regrid(ds, tg, {n: method for n in ("z", "u", "v")})
        ref = _oracle(ds, tg, method)
        for name in ("z", "u", "v"):
            assert ours[name].dtype == dtype
            _assert_matches(ours[name], ref[name], float(abs(ds[name]).max()), what=f"{name} {dtype}")


@pytest.mark.parametrize("method", ["conservative", "bilinear"])
def test_nan_masks_match_xarray_regrid(eraint, method: str) -> None:
    """Masks in a global field with pole rows (ERA-Interim) and one without (padded at the poles),
    down to 5 degrees, up to 1 degree, and onto a box across the dateline."""
    cases = [(eraint[["u"]].isel(level=0), "u"), (_synthetic(), "t")]
    targets = {
        "5 deg": target_grid(5.0),
        "1 deg": target_grid(1.0),
        "dateline box": target_grid(2.0, (-30, 30), (160, -160)),
    }
    thresholds = (0.5, 0.0, 1.0) if method == "conservative" else (0.5,)
    for ds, name in cases:
        scale = float(abs(ds[name]).max())
        for mask, da in _masks(ds, name).items():
            masked = ds.assign({name: da})
            for tname, tg in targets.items():
                for th in thresholds:
                    ours = regrid(masked, tg, {name: method}, nan_threshold=th)[name]
                    ref = _oracle(masked, tg, method, th)[name]
                    _assert_matches(ours, ref, scale, what=f"{name}: {mask}, {tname}, threshold {th}")


@pytest.mark.parametrize("method", ["conservative", "bilinear"])
def test_regional_source_across_the_dateline_matches_xarray_regrid(method: str) -> None:
    lat = np.arange(-30, 31, 1.0)
    lon = np.concatenate([np.arange(150, 180, 1.0), np.arange(-180, -149, 1.0)])  # 150E .. 150W
    f = 10 * analytic(lat, lon)
    ds = standardise(
        xr.Dataset(
            {"t": (("lat", "lon"), f)},
            coords={
                "lat": ("lat", lat, {"standard_name": "latitude", "units": "degrees_north"}),
                "lon": ("lon", lon, {"standard_name": "longitude", "units": "degrees_east"}),
            },
        )
    )
    for tg in (target_grid(5.0, (-20, 20), (160, -160)), target_grid(0.5, (-29, 29), (151, -151))):
        ours = regrid(ds, tg, {"t": method})["t"]
        _assert_matches(ours, _oracle(ds, tg, method)["t"], float(np.abs(f).max()), what=str(tg.sizes))


# --- applying per chunk ----------------------------------------------------------------------------


def test_one_task_per_chunk_and_the_nan_path_only_where_needed() -> None:
    """Time chunks stay as they are (memory bounded by a chunk); a chunk without NaN gives what it gives
    alone, whatever another chunk holds."""
    ds = _synthetic(times=6).chunk({"time": 2})
    tg = target_grid(5.0)
    with_nan = ds.assign(t=ds["t"].where(ds["time"] != 0))  # NaN in the first chunk only
    for method in ("conservative", "bilinear"):
        out = regrid(with_nan, tg, {"t": method})["t"]
        assert out.chunks[0] == (2, 2, 2)
        added = set(out.data.dask.layers) - set(with_nan["t"].data.dask.layers)
        assert added and not [k for k in added if "rechunk" in k], added
        clean = regrid(ds, tg, {"t": method})["t"].values
        got = out.values
        assert np.isnan(got[0]).all()
        np.testing.assert_array_equal(got[2:], clean[2:])


# --- the cache -------------------------------------------------------------------------------------


def test_weights_cache(tmp_path, monkeypatch, caplog) -> None:
    ds = _synthetic()
    tg = target_grid(5.0)
    methods = {"t": "conservative"}
    first = regrid(ds, tg, methods, cache_dir=tmp_path).compute()
    files = sorted(tmp_path.glob("weights_*.npz"))
    assert len(files) == 1
    key = wmod.weights_key(
        ds["latitude"].values, ds["longitude"].values, tg["latitude"].values, tg["longitude"].values, "conservative"
    )
    assert files[0].name == f"weights_{key}.npz"

    def refuse(*args, **kwargs):
        raise AssertionError("weights built again although cached")

    with monkeypatch.context() as m:
        m.setattr(wmod, "_conservative_lat", refuse)
        again = regrid(ds, tg, methods, cache_dir=tmp_path).compute()
    xr.testing.assert_identical(first, again)
    # another target grid, another method: other keys
    regrid(ds, target_grid(10.0), methods, cache_dir=tmp_path)
    regrid(ds, tg, {"t": "bilinear"}, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("weights_*.npz"))) == 3
    # a damaged file is rebuilt, with a warning
    files[0].write_bytes(b"not a zip file")
    with caplog.at_level(logging.WARNING, logger="pipeline.data.weights"):
        rebuilt = regrid(ds, tg, methods, cache_dir=tmp_path).compute()
    assert "cannot be read" in caplog.text
    xr.testing.assert_identical(first, rebuilt)


def test_stays_lazy_with_a_cache(tmp_path) -> None:
    ds = _synthetic().chunk({"time": 1})

    def forbid(*args, **kwargs):
        raise AssertionError("dask computed during graph construction")

    with dask.config.set(scheduler=forbid):
        out = regrid(ds, target_grid(5.0), {"t": "bilinear"}, cache_dir=tmp_path)
    assert isinstance(out["t"].data, dask.array.Array)
