"""Climate fidelity figures (pipeline.climate) against closed forms on synthetic fields."""

from __future__ import annotations

import cftime
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from pipeline import climate

LAT = np.arange(-60.0, 61.0, 10.0)
LON = np.arange(0.0, 360.0, 15.0)


def _seq(values: np.ndarray) -> xr.DataArray:
    """(case, frame, lat, lon) with real coordinates."""
    return xr.DataArray(
        values, dims=("case", "frame", "latitude", "longitude"), coords={"latitude": LAT, "longitude": LON}
    )


def _two_modes(amp1: float, amp2: float, n: int = 48) -> xr.DataArray:
    """a(t) cos(lon) + b(t) sin(lon): two patterns orthogonal under any latitude weights, with time series
    uncorrelated over whole periods (variances amp1^2/2 and amp2^2/2)."""
    t = 2 * np.pi * np.arange(n) / n
    p1 = np.broadcast_to(np.cos(np.deg2rad(LON)), (LAT.size, LON.size))
    p2 = np.broadcast_to(np.sin(np.deg2rad(LON)), (LAT.size, LON.size))
    f = amp1 * np.cos(t)[:, None, None] * p1 + amp2 * np.sin(t)[:, None, None] * p2
    return _seq(f[None] + 5.0)


def test_eofs_recover_two_known_modes():
    """Explained variance of a(t) P1 + b(t) P2 is var(a) / (var(a) + var(b)); the same field gives pattern
    correlation 1, and a field whose modes are swapped gives 0 for both (the patterns are orthogonal)."""
    real = _two_modes(2.0, 1.0)
    same = climate.eof_figures(real, real, 2)
    assert same["real_eof_explained_variance"] == pytest.approx([0.8, 0.2], abs=1e-9)
    assert same["eof_pattern_correlation"] == pytest.approx([1.0, 1.0], abs=1e-9)
    swapped = climate.eof_figures(_two_modes(1.0, 3.0), real, 2)
    assert swapped["eof_explained_variance"] == pytest.approx([0.9, 0.1], abs=1e-9)
    assert swapped["eof_pattern_correlation"] == pytest.approx([0.0, 0.0], abs=1e-9)
    # a cell missing in a field of one set: that set's EOFs leave it out (each set's are over the cells valid in
    # all its fields, as the real period's are summarised once for every candidate), the correlation is over the
    # cells both cover: the patterns stay the same there, up to the slight mixing one cell less brings
    holed = real.copy()
    holed[0, 3, 2, 4] = np.nan
    assert climate.eof_figures(holed, real, 2)["eof_pattern_correlation"] == pytest.approx([1.0, 1.0], abs=1e-4)


@pytest.mark.parametrize("calendar", ["standard", "360_day"])
def test_seasonal_cycle_amplitude_and_phase(calendar: str):
    """3 + 2 cos(2 pi (doy - 200) / 365.25) over two years of daily data: amplitude 2, maximum on day 200."""
    if calendar == "standard":
        times = pd.date_range("2001-01-01", periods=730, freq="D").values
    else:
        times = np.array([cftime.Datetime360Day(2001, 1, 1) + pd.Timedelta(days=i) for i in range(720)])
    from pipeline.data.times import day_of_year

    doy = day_of_year(times).astype(np.float64)
    y = 3 + 2 * np.cos(2 * np.pi * (doy - 200) / 365.25)
    got = climate.seasonal_cycle(np.stack([y, y]), times)
    assert got["amplitude"] == pytest.approx(2.0, rel=1e-6)
    assert got["phase_day"] == pytest.approx(200.0, abs=1e-3)


def test_seasonal_cycle_needs_sub_annual_data_over_a_year():
    annual = pd.date_range("1950-01-01", periods=40, freq="YS").values
    assert climate.seasonal_cycle(np.arange(40.0), annual) is None
    short = pd.date_range("2001-01-01", periods=200, freq="D").values
    assert climate.seasonal_cycle(np.arange(200.0), short) is None


def _ar1(rng: np.random.Generator, cases: int, frames: int, phi: float = 0.7, scale: float = 1.0) -> np.ndarray:
    x = np.empty((cases, frames, LAT.size, LON.size))
    x[:, 0] = rng.normal(size=(cases, LAT.size, LON.size))
    for t in range(1, frames):
        x[:, t] = phi * x[:, t - 1] + np.sqrt(1 - phi**2) * rng.normal(size=(cases, LAT.size, LON.size))
    return 280 + scale * x


def test_training_period_in_its_own_place_has_ratio_one_and_a_wrong_climate_does_not():
    """The yardstick's own figures give every ratio 1; a set with twice the variability has a std ratio error
    far above the yardstick's and a worse climate score than a set drawn from the real process."""
    rng = np.random.default_rng(0)
    period, train = _seq(_ar1(rng, 1, 80)), _seq(_ar1(rng, 1, 160))
    own = climate._set(train, period, train, [1, 2], 2)
    assert all(r == pytest.approx(1.0) for r in own["ratios"].values())
    good = climate._set(_seq(_ar1(rng, 4, 40)), period, train, [1, 2], 2)
    wide = climate._set(_seq(_ar1(rng, 4, 40, scale=2.0)), period, train, [1, 2], 2)
    assert wide["figures"]["std_ratio"] == pytest.approx(2.0, rel=0.1)
    assert wide["ratios"]["std_ratio"] > 5 * max(1.0, good["ratios"]["std_ratio"])
    score = {
        name: climate.climate_score({"z": {"rollouts": s, "unconditional": s, "stability": {"stable": True}}})
        for name, s in (("good", good), ("wide", wide))
    }
    assert score["wide"] > 2 * score["good"]


def test_an_unstable_rollout_scores_infinite():
    rng = np.random.default_rng(1)
    roll = _seq(_ar1(rng, 2, 20)).rename({"case": "member"})
    roll[1, 7, 3, 3] = np.inf
    st = climate.stability(roll, _seq(_ar1(rng, 1, 50))[0].rename({"frame": "time"}))
    assert st["stable"] is False and st["finite_fraction"] == 0.5
    assert climate.climate_score({"z": {"stability": st}}) == float("inf")
    # values far outside the real range are counted
    st = climate.stability(
        roll.where(np.isfinite(roll), 280) + 100, _seq(_ar1(rng, 1, 50))[0].rename({"frame": "time"})
    )
    assert st["stable"] is True and st["inside_range_fraction"] == 0.0


def test_assess_reads_a_lazy_store_one_variable_at_a_time_with_the_same_figures(tmp_path):
    """The sweep's climate figures read the real series from the store lazily (one variable in memory at a time,
    not every variable of every split): the same figures, bit for bit, as from the series held in memory."""
    rng = np.random.default_rng(3)
    n = 120
    times = pd.date_range("2000-01-01", periods=n, freq="D")
    real = xr.Dataset(
        {v: (("time", "latitude", "longitude"), _ar1(rng, 1, n)[0]) for v in ("a", "b")},
        coords={"time": times, "latitude": LAT, "longitude": LON},
    )
    real.chunk({"time": 16}).to_zarr(tmp_path / "real.zarr", zarr_format=3, consolidated=True)
    lazy = xr.open_zarr(tmp_path / "real.zarr", zarr_format=3, consolidated=True)
    assert all(lazy[v].chunks is not None for v in lazy.data_vars)  # dask-backed: nothing read yet
    roll = xr.Dataset(
        {v: (("member", "frame", "latitude", "longitude"), _ar1(rng, 2, 20)) for v in ("a", "b")},
        coords={"latitude": LAT, "longitude": LON, "time": ("frame", times[60:80])},
    )
    unc = xr.Dataset({v: (("sample", "frame", "latitude", "longitude"), _ar1(rng, 4, 4)) for v in ("a", "b")},
                     coords={"latitude": LAT, "longitude": LON})  # fmt: skip
    periods = {"period": np.arange(60, 120), "train": np.arange(0, 60), "season": np.arange(60, 90),
               "train_season": np.arange(0, 30)}  # fmt: skip
    eager, from_store = (climate.assess(roll, unc, r, periods, [1, 2], 2) for r in (real, lazy))
    assert from_store["score"] == eager["score"] and np.isfinite(eager["score"])
    assert climate.flat_metrics(from_store) == climate.flat_metrics(eager)


def test_a_memo_summarises_each_real_period_once_with_the_same_figures(monkeypatch):
    """Where ``train_season`` equals ``train`` (no seasonal cycle) and a point is judged at a second guidance
    weight, each real period is read once: 2 summaries instead of 4, then none with the memo a point keeps, and
    the figures are the same each time."""
    rng = np.random.default_rng(5)
    n = 120
    times = pd.date_range("2000-01-01", periods=n, freq="D")
    real = xr.Dataset({"a": (("time", "latitude", "longitude"), _ar1(rng, 1, n)[0])},
                      coords={"time": times, "latitude": LAT, "longitude": LON})  # fmt: skip
    roll = xr.Dataset(
        {"a": (("member", "frame", "latitude", "longitude"), _ar1(rng, 2, 20))},
        coords={"latitude": LAT, "longitude": LON, "time": ("frame", times[60:80])},
    )
    unc = xr.Dataset({"a": (("sample", "frame", "latitude", "longitude"), _ar1(rng, 4, 4))},
                     coords={"latitude": LAT, "longitude": LON})  # fmt: skip
    periods = {"period": np.arange(60, 120), "train": np.arange(0, 60), "season": np.arange(60, 120),
               "train_season": np.arange(0, 60)}  # fmt: skip
    calls = []
    summarise = climate.summarise
    monkeypatch.setattr(climate, "summarise", lambda *a, **k: calls.append(a[1]) or summarise(*a, **k))
    without = climate.assess(roll, unc, real, periods, [1, 2], 2)
    assert len(calls) == 2  # season is the period, train_season the training period (a fresh memo per call)
    memo: dict = {}
    first = climate.assess(roll, unc, real, periods, [1, 2], 2, memo)
    assert len(calls) == 4 and len(memo) == 2
    again = climate.assess(roll, unc, real, periods, [1, 2], 2, memo)
    assert len(calls) == 4  # the second guidance weight reads nothing
    other = climate.assess(roll, unc, real, periods | {"season": np.arange(60, 90)}, [1, 2], 2, memo)
    assert len(calls) == 5 and len(memo) == 3  # a season of its own is read
    w1 = [r["variables"]["a"]["unconditional"]["figures"]["w1_rel"] for r in (first, other)]
    assert w1[0] != w1[1]
    assert climate.flat_metrics(first) == climate.flat_metrics(without) == climate.flat_metrics(again)


def test_assess_streams_a_large_store_a_block_at_a_time_with_the_figures_of_the_whole(tmp_path, monkeypatch):
    """A store too large to hold (here: blocks of 5 frames, no set kept whole) gives the figures of the series held
    whole: the moments, autocorrelations, spectra, drift and stability exactly, the distances and quantiles within
    the histogram's bin, the EOFs (by subspace iteration) to the eofs package's."""
    from pipeline import fieldstats

    rng = np.random.default_rng(4)
    n = 120
    times = pd.date_range("2000-01-01", periods=n, freq="D")
    modes = _two_modes(3.0, 1.5, n)[0].values  # two patterns with a clear order, plus AR(1) weather
    real = xr.Dataset(
        {"a": (("time", "latitude", "longitude"), modes + _ar1(rng, 1, n)[0])},
        coords={"time": times, "latitude": LAT, "longitude": LON},
    )
    real.chunk({"time": 16}).to_zarr(tmp_path / "real.zarr", zarr_format=3, consolidated=True)
    lazy = xr.open_zarr(tmp_path / "real.zarr", zarr_format=3, consolidated=True)
    roll = xr.Dataset(
        {"a": (("member", "frame", "latitude", "longitude"), modes[None, 60:80] + _ar1(rng, 2, 20))},
        coords={"latitude": LAT, "longitude": LON, "time": ("frame", times[60:80])},
    )
    unc = xr.Dataset({"a": (("sample", "frame", "latitude", "longitude"), modes[None, :4] + _ar1(rng, 4, 4))},
                     coords={"latitude": LAT, "longitude": LON})  # fmt: skip
    periods = {"period": np.arange(60, 120), "train": np.arange(0, 60), "season": np.arange(60, 90),
               "train_season": np.arange(0, 30)}  # fmt: skip
    whole = climate.assess(roll, unc, real, periods, [1, 2], 2)
    monkeypatch.setattr(fieldstats, "BLOCK_BYTES", 5 * 8 * LAT.size * LON.size)
    monkeypatch.setattr(fieldstats, "EXACT_VALUES", 0)
    streamed = climate.assess(roll, unc, lazy, periods, [1, 2], 2)
    a, b = climate.flat_metrics(whole), climate.flat_metrics(streamed)
    assert a.keys() == b.keys()
    loose = ("w1", "extremes", "eof", "score")  # histogram- and iteration-based: close, not equal
    for k in a:
        tol = 1e-3 if any(t in k for t in loose) else 1e-9
        assert b[k] == pytest.approx(a[k], rel=tol, abs=1e-9), k
    fig = streamed["variables"]["a"]["rollouts"]["figures"]
    assert fig["w1_error_bound"] > 0 and whole["variables"]["a"]["rollouts"]["figures"]["w1_error_bound"] == 0
