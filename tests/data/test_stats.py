"""Statistics against numpy, the split, the exact inverse, bounded laziness."""

from __future__ import annotations

import datetime as dt
import itertools

import dask
import numpy as np
import pytest
import xarray as xr

from pipeline.data.coords import DataError, standardise
from pipeline.data.regrid import select
from pipeline.data.stats import compute_stats, denormalise, normalise, split_labels, split_periods
from tests.conftest import make_dataset


@pytest.fixture
def ds() -> xr.Dataset:
    lat = np.arange(-87.5, 90, 5.0)
    lon = np.arange(0, 360, 5.0)
    d = standardise(make_dataset(lat, lon, times=30, levels=(850.0, 500.0)))
    d = select(d, [("t", None), ("q", [500.0])])
    d["t850"] = d["t850"].where(~((d.latitude > 20) & (d.latitude < 40) & (d.longitude < 30)))  # a NaN patch
    return d.chunk({"time": 7})


def test_stats_match_numpy(ds: xr.Dataset) -> None:
    stats = compute_stats(ds)
    w = np.cos(np.deg2rad(ds["latitude"].values))[None, :, None]
    for name in ("t850", "t500", "q500"):
        x = ds[name].values
        ww = np.broadcast_to(w, x.shape) * np.isfinite(x)
        mean = np.nansum(x * ww) / ww.sum()
        std = np.sqrt(np.nansum((x - mean) ** 2 * ww) / ww.sum())
        assert stats[name]["mean"] == pytest.approx(mean, rel=1e-12)
        assert stats[name]["std"] == pytest.approx(std, rel=1e-10)
    assert stats["q500"]["units"] == "kg m-2 s-1"


def test_normalise_denormalise_roundtrip(ds: xr.Dataset) -> None:
    stats = compute_stats(ds)
    n = normalise(ds, stats)
    assert n["t500"].dtype == np.float32 and n["t500"].attrs["units"] == "1"
    back = denormalise(n, stats)
    for name in ds.data_vars:
        x, y = ds[name].values, back[name].values
        np.testing.assert_array_equal(np.isnan(x), np.isnan(y))
        # float32 storage: relative precision 6e-8 of (x - mean) / std
        np.testing.assert_allclose(y, x, rtol=0, atol=stats[name]["std"] * 1e-6)
        assert back[name].attrs["units"] == ds[name].attrs["units"]
    # normalised training data: area-weighted mean 0, std 1
    again = compute_stats(n)
    assert again["t500"]["mean"] == pytest.approx(0, abs=1e-6)
    assert again["t500"]["std"] == pytest.approx(1, rel=1e-6)


def test_split_and_labels(ds: xr.Dataset) -> None:
    periods = {
        "train": (dt.date(2000, 1, 1), dt.date(2000, 1, 20)),
        "val": (dt.date(2000, 1, 21), dt.date(2000, 1, 25)),
        "test": (dt.date(2000, 1, 26), dt.date(2000, 1, 30)),
    }
    parts = split_periods(ds, periods)
    assert {k: v.sizes["time"] for k, v in parts.items()} == {"train": 20, "val": 5, "test": 5}
    labels = split_labels(ds["time"].values, periods)
    assert labels.values.tolist() == [1] * 20 + [2] * 5 + [3] * 5
    assert labels.attrs["flag_meanings"] == "none train val test"
    with pytest.raises(DataError, match=r"data.split.test = \[2001-01-01, 2001-02-01\] holds no time step"):
        split_periods(ds, {"test": (dt.date(2001, 1, 1), dt.date(2001, 2, 1))})


def test_stats_only_from_training_period(ds: xr.Dataset) -> None:
    a = compute_stats(ds.isel(time=slice(0, 10)))
    b = compute_stats(ds)
    assert a["t500"]["std"] != pytest.approx(b["t500"]["std"])


def test_statistics_stay_chunked() -> None:
    """The graph reduces chunk by chunk: no task holds more than one time chunk of data."""
    lat = np.arange(-87.5, 90, 5.0)
    lon = np.arange(0, 360, 5.0)
    d = standardise(make_dataset(lat, lon, times=40, levels=None)).chunk({"time": 4})
    biggest = []

    class Watch(dask.callbacks.Callback):
        def _posttask(self, key, result, dsk, state, id):
            if hasattr(result, "nbytes"):
                biggest.append(result.nbytes)

    with Watch():
        compute_stats(d)
    one_chunk = 4 * lat.size * lon.size * 8
    assert max(biggest) <= one_chunk * 1.01, (max(biggest), one_chunk)


def test_moments_from_parts_merge_to_the_one_pass_result(ds: xr.Dataset) -> None:
    """Statistics from parts (any split of time, an empty part too) equal the one-pass float64 result."""
    from pipeline.data.stats import merge_moments, partial_moments

    whole = partial_moments(ds.chunk({"time": -1}))
    w = np.cos(np.deg2rad(ds["latitude"].values))[None, :, None]
    for cuts in ([10], [3, 17, 29], [0, 1, 2, 30]):
        edges = [0, *cuts, ds.sizes["time"]]
        merged = {name: (0.0, 0.0, 0.0) for name in ds.data_vars}
        for a, b in itertools.pairwise(edges):
            for name, m in partial_moments(ds.isel(time=slice(a, b))).items():
                merged[name] = merge_moments(merged[name], m)
        for name in ds.data_vars:
            x = ds[name].values.astype(np.float64)
            ww = np.broadcast_to(w, x.shape) * np.isfinite(x)
            mean = np.nansum(x * ww) / ww.sum()
            m2 = np.nansum(ww * (x - mean) ** 2)
            for got in (merged[name], whole[name]):
                assert got[0] == pytest.approx(ww.sum(), rel=1e-12)
                assert got[1] == pytest.approx(mean, rel=1e-10)
                assert got[2] == pytest.approx(m2, rel=1e-10)
