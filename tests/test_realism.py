"""Samples against the real climate (pipeline.realism) and the moving-block bootstrap, against closed forms:
a shifted copy of the truth is exactly its shift away in Wasserstein-1, every quantile and the mean map; an
AR(1) series has autocorrelation phi^k; a linear drift changes the area mean by the slope times the lag
between the rollout's quarters; a block bootstrap of an AR(1) mean has the AR(1) variance of the mean."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from pipeline import metrics
from pipeline.collect import _clip_dependence
from pipeline.realism import assess, compare, drift_yardstick, flat_metrics, same_size, sequences, verdict

LAT = np.linspace(-60.0, 60.0, 7)
LON = np.arange(0.0, 360.0, 30.0)


def _field(values: np.ndarray, dims: tuple[str, ...]) -> xr.DataArray:
    return xr.DataArray(values, dims=(*dims, "latitude", "longitude"), coords={"latitude": LAT, "longitude": LON})


def _ar1(n: int, phi: float, shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.empty((n, *shape))
    x[0] = rng.standard_normal(shape)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + np.sqrt(1 - phi**2) * rng.standard_normal(shape)
    return x


def test_a_shifted_copy_is_its_shift_away_and_an_identical_copy_is_zero_away() -> None:
    rng = np.random.default_rng(0)
    test = _field(rng.normal(5500.0, 80.0, (1, 30, LAT.size, LON.size)), ("case", "frame"))
    same = compare(test, test, [1, 2])
    assert same["w1"] == pytest.approx(0.0, abs=1e-9)
    assert same["mean_bias_rms"] == pytest.approx(0.0, abs=1e-9)
    assert same["std_ratio"] == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for v in same["spectral_ratio"].values())
    shifted = compare(test + 12.5, test, [1, 2])
    assert shifted["w1"] == pytest.approx(12.5, rel=1e-9)
    assert shifted["w1_rel"] == pytest.approx(12.5 / float(test.std()), rel=0.02)
    for p in (1, 50, 99):
        assert shifted[f"p{p}"] - shifted[f"test_p{p}"] == pytest.approx(12.5, rel=1e-9)
    assert shifted["mean_bias_rms"] == pytest.approx(12.5, rel=1e-9)
    assert shifted["std_bias_rms"] == pytest.approx(0.0, abs=1e-9)
    assert shifted["autocorrelation"] == pytest.approx(same["autocorrelation"])
    mean = test.mean(("case", "frame"))
    wide = compare(mean + 2.0 * (test - mean), test, [1])
    assert wide["std_ratio"] == pytest.approx(2.0, rel=1e-9)
    assert wide["w1"] > 0.5 * float(test.std())


def test_autocorrelation_of_ar1_sequences_is_phi_to_the_lag() -> None:
    phi = 0.7
    x = _ar1(40, phi, (200, LAT.size, LON.size), seed=1)  # 200 cases of 40 frames
    seq = _field(x.transpose(1, 0, 2, 3), ("case", "frame"))
    acf = metrics.autocorrelation(seq, "frame", [1, 2, 3, 50], xr.zeros_like(seq.isel(case=0, frame=0)))
    assert acf[:3] == pytest.approx([phi, phi**2, phi**3], abs=0.02)
    assert np.isnan(acf[3])  # the lag does not fit in a sequence
    # short sequences (4 frames) estimate the same thing about a fixed mean, unlike about their own mean
    short = metrics.autocorrelation(seq.isel(frame=slice(0, 4)), "frame", [1], xr.zeros_like(seq.isel(case=0, frame=0)))
    assert short[0] == pytest.approx(phi, abs=0.03)


def test_drift_of_a_linear_trend_and_of_a_stationary_real_series() -> None:
    rng = np.random.default_rng(2)
    lead = np.arange(24.0)
    roll = _field(
        5500.0 + 0.5 * lead[None, :, None, None] + rng.normal(0, 1e-6, (2, 24, LAT.size, LON.size)), ("rollout", "lead")
    )
    real = _field(5500.0 + rng.normal(0, 10.0, (300, LAT.size, LON.size)), ("time",))
    d = drift_yardstick(roll, real)
    assert d["area_mean_change"] == pytest.approx(0.5 * 18.0, rel=1e-6)  # quarters of 6: mean lead 20.5 - 2.5
    lo, mid, hi = d["real_area_mean_change_q05_q50_q95"]
    assert lo < 0 < hi and abs(mid) < 1.0
    assert d["area_mean_change_per_rollout"] == pytest.approx([9.0, 9.0], rel=1e-6) and hi < 9.0
    assert d["area_mean_inside"] == "0 of 2"  # each trending rollout is outside what real windows do
    assert d["spread_inside"] == "2 of 2"  # their spread does not change (the noise is tiny), as real windows'
    assert drift_yardstick(roll, real.isel(time=slice(0, 10)))["real_area_mean_change_q05_q50_q95"] is None


def test_assess_names_every_set_and_flat_metrics_are_finite() -> None:
    rng = np.random.default_rng(3)
    times = np.arange("2000-01-01", "2000-03-11", dtype="datetime64[D]").astype("datetime64[ns]")  # 70 days
    real = xr.Dataset({"t": _field(rng.normal(280.0, 5.0, (times.size, LAT.size, LON.size)), ("time",))})
    real = real.assign_coords(time=times)
    unc = xr.Dataset({"t": _field(rng.normal(281.0, 5.0, (3, 4, LAT.size, LON.size)), ("sample", "frame"))})
    roll = xr.Dataset({"t": _field(rng.normal(280.0, 5.0, (2, 12, LAT.size, LON.size)), ("rollout", "lead"))})
    roll = roll.assign_coords(time=(("rollout", "lead"), np.stack([times[:12], times[1:13]])))
    test, train = np.arange(40, 70), np.arange(0, 30)
    periods = {"test": test, "train": train, "test_season": test[:10], "train_season": train}
    result = assess(unc, roll, real, periods, [1, 2, 3])
    assert set(result["t"]) == {"unconditional", "rollouts", "train_period", "test_period", "drift"}
    assert result["t"]["unconditional"]["fields"] == 12
    same = result["t"]["unconditional"]["same_size"]
    assert same["draws"] == 50 and (same["cases"], same["frames"]) == (3, 4)
    lo, mid, hi = same["ranges"]["w1_rel"]
    assert lo <= mid <= hi and same["verdict"]["w1_rel"] == "above"  # 1 K off: outside what real sets give
    # 30 training frames hold 19 windows of 12: too few distinct windows for a range, so none is given
    rollouts = result["t"]["rollouts"]["same_size"]
    assert rollouts["frames"] == 12 and rollouts["windows"] == 19 and rollouts["ranges"] == {} == rollouts["verdict"]
    # the unconditional clips (mean 281) are about 1 K from the test period (mean 280), the others are not
    assert result["t"]["unconditional"]["w1"] > 0.7
    assert result["t"]["train_period"]["w1"] < 0.5
    flat = flat_metrics(result)
    assert "realism_w1_rel_unconditional_t" in flat and "realism_drift_area_mean_change_t" in flat
    assert all(np.isfinite(v) for v in flat.values())
    np.testing.assert_array_equal(sequences(real["t"]).shape, (1, times.size, LAT.size, LON.size))


def test_block_bootstrap_keeps_runs_and_widens_intervals_of_autocorrelated_cases() -> None:
    idx = metrics.bootstrap_indices(50, 200, seed=0, block=5)
    assert idx.shape == (200, 50) and idx.min() >= 0 and idx.max() < 50
    runs = idx[:, :45].reshape(200, 9, 5)
    assert np.all(np.diff(runs, axis=-1) == 1)  # consecutive cases stay together
    np.testing.assert_array_equal(metrics.bootstrap_indices(50, 10, 0), metrics.bootstrap_indices(50, 10, 0, block=1))
    with pytest.raises(ValueError, match=r"evaluate\.bootstrap_block"):
        metrics.bootstrap_indices(10, 10, 0, block=11)
    phi, n = 0.8, 400
    x = _ar1(n, phi, (), seed=4)
    exact = np.sqrt((1 + phi) / (1 - phi) / n)  # std of the mean of a unit-variance AR(1) series
    iid = x[metrics.bootstrap_indices(n, 2000, 1)].mean(axis=1).std()
    block = x[metrics.bootstrap_indices(n, 2000, 1, block=20)].mean(axis=1).std()
    assert iid < 0.5 * exact  # resampling single cases pretends they are independent
    assert block == pytest.approx(exact, rel=0.35)


def test_stationary_bootstrap_with_the_automatic_block_has_the_ar1_variance_of_the_mean() -> None:
    """Politis & White's block length (arch) on an AR(1) series, and the stationary bootstrap's spread of the mean
    against the closed form; white noise gets a block of about one case."""
    phi, n = 0.8, 400
    x = _ar1(n, phi, (), seed=4)
    exact = np.sqrt((1 + phi) / (1 - phi) / n)
    block = metrics.automatic_block(x[:, None])
    assert 4 < block < 60, block
    idx = metrics.stationary_indices(n, 2000, 1, block)
    assert idx.shape == (2000, n) and idx.min() >= 0 and idx.max() < n
    assert x[idx].mean(axis=1).std() == pytest.approx(exact, rel=0.35)
    white = np.random.default_rng(7).standard_normal((n, 3))
    assert metrics.automatic_block(white) < 3
    np.testing.assert_array_equal(metrics.stationary_indices(30, 5, 2, 1.0), metrics.bootstrap_indices(30, 5, 2))
    assert metrics.automatic_block(x[:5, None]) == 1.0  # too few cases to estimate a dependence


def test_clip_dependence_suggests_a_block_only_for_correlated_clips() -> None:
    ar = _ar1(60, 0.8, (), seed=5)
    dep = _clip_dependence(ar, np.zeros(60), block=1)
    assert dep["lag_autocorrelation"][0] > 0.5
    assert "evaluate.bootstrap_block" in dep["statement"] and dep["suggested_block"] >= 2
    assert _clip_dependence(ar, np.zeros(60), block=dep["suggested_block"])["statement"] == ""
    white = np.random.default_rng(6).standard_normal(60)
    assert _clip_dependence(white, np.zeros(60), block=1)["statement"] == ""


def _process(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stationary climate: AR(1) anomalies (phi 0.8) about a mean map, scaled by a standard-deviation map."""
    rng = np.random.default_rng(seed)
    return rng.normal(5500.0, 50.0, (LAT.size, LON.size)), rng.uniform(20.0, 60.0, (LAT.size, LON.size))


def _real_sets(seed: int) -> tuple[xr.DataArray, np.ndarray, np.ndarray]:
    """One long realisation of :func:`_process`: its training and test periods."""
    mean, std = _process(seed)
    x = mean + std * _ar1(2400, 0.8, (LAT.size, LON.size), seed=seed + 1)
    times = np.arange(2400).astype("datetime64[D]").astype("datetime64[ns]")
    series = _field(x, ("time",)).assign_coords(time=times)
    return series, np.arange(0, 2000), np.arange(2000, 2400)


def _fresh(seed: int, shape: tuple[int, int], draw: int, scale: float = 1.0) -> xr.DataArray:
    """``shape`` = (sequences, frames) new independent sequences of the same climate (what a perfect model would
    generate), their anomalies scaled by ``scale``."""
    mean, std = _process(seed)
    cases, frames = shape
    x = _ar1(frames, 0.8, (cases, LAT.size, LON.size), seed=1000 + draw).transpose(1, 0, 2, 3)
    return _field(mean + scale * std * x, ("case", "frame"))


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(2, 4), (1, 12), (16, 4), (4, 24)])
def test_real_data_scored_as_a_candidate_lands_inside_its_own_same_size_range(shape: tuple[int, int]) -> None:
    """Real sets of a given shape, new sequences of the same climate scored as candidates: each figure's same-size
    range (drawn from the training period) holds them about as often as a 5-95% range should, at every size;
    for small sets the range sits away from the whole training period's figure (the yardstick before)."""
    series, train, test = _real_sets(10)
    test_seq = sequences(series.isel(time=test))
    lags = [1, 2]
    yard = same_size(series, train, train, shape, test_seq, lags, seed=0, draws=40)
    assert yard["draws"] == 40 and (yard["cases"], yard["frames"]) == shape
    inside: dict[str, list[bool]] = {}
    for draw in range(30):
        for k, v in verdict(compare(_fresh(10, shape, draw), test_seq, lags), yard["ranges"]).items():
            flat = list(v.values()) if isinstance(v, dict) else v if isinstance(v, list) else [v]
            inside.setdefault(k, []).extend(x == "inside" for x in flat if x != "n/a")
    # nominally 90%; the ranges come from one training realisation, whose own sampling error narrows their
    # coverage of new sets of large size a little (measured 67-100% here)
    for k in ("w1_rel", "std_ratio", "mean_bias_rms", "std_bias_rms", "autocorrelation", "spectral_ratio"):
        assert 0.6 <= np.mean(inside[k]) <= 1.0, (k, np.mean(inside[k]))
    whole = compare(sequences(series.isel(time=train)), test_seq, lags)
    if shape[0] * shape[1] <= 12:  # a few correlated frames vary less than a period: std ratio well below 1
        assert yard["ranges"]["std_ratio"][2] < whole["std_ratio"], (yard["ranges"]["std_ratio"], whole["std_ratio"])


def test_a_weak_candidate_is_below_the_same_size_range() -> None:
    """Fields with 0.6 of the real anomalies: below the range in standard deviation once there are enough of them;
    new real sequences of the same shape are inside."""
    series, train, test = _real_sets(20)
    test_seq = sequences(series.isel(time=test))
    yard = same_size(series, train, train, (16, 4), test_seq, [1], seed=0)

    def std_verdicts(scale: float) -> list[str]:
        return [
            verdict(compare(_fresh(20, (16, 4), d, scale), test_seq, [1]), yard["ranges"])["std_ratio"]
            for d in range(10)
        ]

    assert std_verdicts(0.6) == ["below"] * 10
    assert std_verdicts(1.0).count("inside") >= 6
