"""benchmarks/rollout_drift.py: a rollout's drift beside every real window, windows from the same start and the truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from tests.conftest import benchmark


def _module():
    return benchmark("rollout_drift")


def _series(n: int = 600, seed: int = 0) -> xr.DataArray:
    """A (time, lat, lon) series whose area mean is a slow AR(1) (it reverts toward 0 over about 50 frames)."""
    rng = np.random.default_rng(seed)
    level = np.zeros(n)
    for t in range(1, n):
        level[t] = 0.98 * level[t - 1] + 0.2 * rng.standard_normal()
    field = level[:, None, None] + 0.1 * rng.standard_normal((n, 4, 8))
    coords = {
        "time": pd.date_range("2000-01-01", periods=n, freq="D"),
        "latitude": np.linspace(-30, 30, 4),
        "longitude": np.arange(8) * 45.0,
    }
    return xr.DataArray(field, dims=("time", "latitude", "longitude"), coords=coords, name="x")


def _rollouts(real: xr.DataArray, starts: list[int], frames: int, shift: float = 0.0) -> xr.DataArray:
    """Real windows as rollouts (rollout, lead, lat, lon), raised after their 2 given frames by a ramp to ``shift``."""
    data = np.stack([real.values[s : s + frames] for s in starts]).copy()
    data[:, 2:] += shift * np.linspace(0, 1, frames - 2)[:, None, None]
    return xr.DataArray(
        data,
        dims=("rollout", "lead", "latitude", "longitude"),
        coords={
            "init_time": ("rollout", real["time"].values[starts]),
            "latitude": real.latitude,
            "longitude": real.longitude,
        },
    )


def test_real_windows_as_rollouts_equal_their_truth_and_sit_in_every_range() -> None:
    rd = _module()
    real = _series()
    low = int(np.argmin(real.mean(("latitude", "longitude")).values[:400]))
    rows = rd.report(_rollouts(real, [100, 250, low], 120), real, given=2)
    assert len(rows) == 6 and {r["curve"] for r in rows} == {"area_mean", "spread"}
    for r in rows:
        assert r["change"] == pytest.approx(r["truth_change"], abs=1e-12)  # the rollout is the truth
        lo, mid, hi = r["every_window"]
        assert lo < mid < hi and r["same_start"][0] < r["same_start"][2]
    # from the lowest start real windows rise: the same-start range sits above the range of every window
    lowest = next(r for r in rows if r["curve"] == "area_mean" and r["rollout"] == 2)
    assert lowest["same_start"][1] > lowest["every_window"][1] + 0.3


def test_a_rollout_that_climbs_away_is_above_the_real_levels_and_changes() -> None:
    rd = _module()
    real = _series()
    rows = rd.report(_rollouts(real, [100], 120, shift=10.0), real, given=2)
    mean = next(r for r in rows if r["curve"] == "area_mean")
    assert mean["settled_level"] > mean["level"][2] and rd._where(mean["settled_level"], mean["level"]) == "above"
    assert mean["change"] > mean["same_start"][2]


def test_a_rollout_whose_start_is_not_in_the_store_is_an_error() -> None:
    rd = _module()
    real = _series()
    roll = _rollouts(real, [100], 50).assign_coords(init_time=("rollout", [np.datetime64("1990-01-01")]))
    with pytest.raises(SystemExit, match="not in the store"):
        rd.report(roll, real, given=2)
