"""pipeline.response: pattern scaling recovers a linear forced response; the scores rank what they should."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.response import block_indices, fit_pattern_scaling, predict_pattern_scaling, response_scores


def _climate(rng: np.random.Generator, forcing: np.ndarray, noise: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """A field whose forced part is a(cell) + b(cell) forcing(t), plus AR(1) interannual noise."""
    a = rng.normal(280, 5, (6, 8))
    b = rng.uniform(1, 3, (6, 8))
    ar = np.zeros((forcing.size, 6, 8))
    for t in range(1, forcing.size):
        ar[t] = 0.5 * ar[t - 1] + rng.normal(0, noise, (6, 8))
    return a[None] + b[None] * forcing[:, None, None] + ar, b


def test_pattern_scaling_recovers_the_forced_pattern_and_beats_no_change() -> None:
    rng = np.random.default_rng(0)
    forcing = np.linspace(0, 3, 200)  # (a log CO2 anomaly, say)
    x, b = _climate(rng, forcing)
    fit = fit_pattern_scaling(x[:160], forcing[:160])
    np.testing.assert_allclose(fit[1], b, atol=0.25)  # the slope per cell, from 160 noisy years
    clean, _ = _climate(np.random.default_rng(0), forcing, noise=0.0)
    np.testing.assert_allclose(fit_pattern_scaling(clean, forcing)[1], b, atol=1e-9)  # no noise: exact
    lat, years = np.linspace(20, 60, 6), np.arange(160, 200)
    held = x[160:]
    cands = {
        "pattern_scaling": predict_pattern_scaling(fit, forcing[160:]),
        "no_change": np.repeat(x[150:160].mean(axis=0)[None], 40, axis=0),
        "truth_as_ensemble": np.stack([held, held]),
    }
    s = response_scores(held, cands, lat, years, resamples=200)
    ps, nc, tr = s["pattern_scaling"], s["no_change"], s["truth_as_ensemble"]
    assert tr["map_rmse"]["value"] == pytest.approx(0, abs=1e-12) and tr["trend_error"]["value"] == pytest.approx(0)
    assert ps["map_rmse"]["value"] < 0.3 < nc["map_rmse"]["value"]  # no change misses the warming
    assert abs(ps["trend_error"]["value"]) < 0.15 < abs(nc["trend_error"]["value"])
    lo, hi = nc["map_rmse_minus_pattern_scaling"]["interval"]
    assert 0 < lo <= nc["map_rmse_minus_pattern_scaling"]["value"] <= hi  # paired: the gap is significant
    for cand in s.values():
        if isinstance(cand, dict) and "map_rmse" in cand:
            lo, hi = cand["map_rmse"]["interval"]
            assert lo <= hi


def test_block_bootstrap_indices_are_runs_of_consecutive_years() -> None:
    idx = block_indices(38, 5, 50, np.random.default_rng(1))
    assert idx.shape == (50, 38) and idx.min() >= 0 and idx.max() <= 37
    steps = np.diff(idx, axis=1)
    assert (steps[:, :4] == 1).all()  # the first block is consecutive
    with pytest.raises(ValueError, match="varying forcing"):
        fit_pattern_scaling(np.zeros((5, 2, 2)), np.ones(5))


def test_the_sweeps_forced_response_scores_rollouts_beside_pattern_scaling() -> None:
    """pipeline.point_climate.forced_response on a store-like data set: rollouts equal to the truth score 0; pattern
    scaling, fitted on the training steps against the forcing the network sees, is close but not exact."""
    import cftime
    import xarray as xr

    from pipeline.point_climate import ClimateData, forced_response

    rng = np.random.default_rng(3)
    forcing = np.linspace(-2, 2, 100)
    x, _ = _climate(rng, forcing)
    times = np.array([cftime.Datetime360Day(1950 + i, 6, 1) for i in range(100)])
    real = xr.Dataset({"t": (("time", "latitude", "longitude"), x)},
                      coords={"time": times, "latitude": np.linspace(20, 60, 6), "longitude": np.arange(8.0)})  # fmt: skip
    cd = ClimateData(
        names=["t"], init=np.zeros(1), real=real, frames=40, roll_times=times[60:], clip_dates=times[60:62],
        periods={"period": np.arange(60, 100), "train": np.arange(0, 60)}, stats={}, var_attrs={}, forcing=forcing,
    )  # fmt: skip
    rollouts = xr.Dataset({"t": (("member", "frame", "latitude", "longitude"), np.stack([x[62:], x[62:]]))})
    res = forced_response(rollouts, cd, given=2, seed=0)["t"]
    assert res["years"] == [2012, 2049]
    assert res["rollouts"]["map_rmse"]["value"] == pytest.approx(0, abs=1e-12)
    assert 0 < res["pattern_scaling"]["map_rmse"]["value"] < 0.3
    assert abs(res["pattern_scaling"]["trend_error"]["value"]) < 0.2


def test_lagged_pattern_scaling_keeps_the_committed_warming_that_plain_pattern_scaling_loses() -> None:
    """A forcing that rises, then falls after year 150, and a climate that follows its 30-year lagged response (one
    box): regressed on the forcing alone, pattern scaling follows the decline; given the lagged response too
    (``pattern_scaling_lagged``), it keeps the warming, exactly without noise."""
    from pipeline.response import pattern_scaling_candidates

    years = np.arange(240.0)
    f = np.where(years < 150, years / 150, 1 - (years - 150) / 300)  # up to 1, then down to 0.7
    lag = np.zeros_like(f)
    for t in range(1, f.size):
        lag[t] = lag[t - 1] + (f[t] - lag[t - 1]) / 30
    rng = np.random.default_rng(3)
    a, b = rng.normal(280, 5, (6, 8)), rng.uniform(1, 3, (6, 8))
    x = a[None] + b[None] * lag[:, None, None]
    forcings = np.stack([f, lag], axis=1)
    train, held = slice(0, 200), slice(200, 240)  # the training years include 50 of the decline
    cands = pattern_scaling_candidates(x[train], forcings[train], forcings[held])
    assert set(cands) == {"pattern_scaling", "pattern_scaling_lagged"}
    np.testing.assert_allclose(cands["pattern_scaling_lagged"], x[held], atol=1e-8)
    s = response_scores(x[held], cands, np.linspace(20, 60, 6), years[held], resamples=100)
    assert s["pattern_scaling"]["map_rmse"]["value"] > 0.1 > s["pattern_scaling_lagged"]["map_rmse"]["value"]
    only = pattern_scaling_candidates(x[train], f[train], f[held])  # one series: no lagged candidate
    assert set(only) == {"pattern_scaling"}
