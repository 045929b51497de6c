"""Skill metrics against hand-computed values and independent libraries (xskillscore, scores)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from pipeline.metrics import (
    area_mean,
    bias,
    crps_ensemble,
    lag1_autocorrelation,
    rank_histogram,
    rmse,
    spectral_ratio,
    spread_skill,
    zonal_power_spectrum,
)


def _grid(members: int | None, frames: int = 3, seed: int = 0, nlat: int = 6, nlon: int = 8) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    lat = np.linspace(-75, 75, nlat)
    lon = np.arange(nlon) * 360 / nlon
    dims = ("frame", "latitude", "longitude")
    shape = (frames, nlat, nlon)
    if members is not None:
        dims, shape = ("member", *dims), (members, *shape)
    return xr.DataArray(rng.standard_normal(shape), dims=dims, coords={"latitude": lat, "longitude": lon})


def test_crps_by_hand() -> None:
    # members 0 and 2, truth 1: mean|x-y| = 1; sum_ij |xi-xj| = 4
    f = xr.DataArray([0.0, 2.0], dims="member")
    y = xr.DataArray(1.0)
    assert float(crps_ensemble(f, y, fair=False)) == pytest.approx(1 - 4 / 8)
    assert float(crps_ensemble(f, y, fair=True)) == pytest.approx(1 - 4 / 4)


def test_crps_against_xskillscore_and_scores() -> None:
    import scores.probability as sp
    import xskillscore as xs

    f, y = _grid(5, seed=1), _grid(None, seed=2)
    ours_ecdf = crps_ensemble(f, y, fair=False)
    np.testing.assert_allclose(ours_ecdf.values, xs.crps_ensemble(y, f, dim=[]).values, rtol=1e-10)
    ours_fair = crps_ensemble(f, y, fair=True)
    ref = sp.crps_for_ensemble(f, y, "member", method="fair", preserve_dims=["frame", "latitude", "longitude"])
    np.testing.assert_allclose(ours_fair.values, ref.transpose(*ours_fair.dims).values, rtol=1e-10)


def test_weighted_rmse_against_xskillscore() -> None:
    import xskillscore as xs

    f, y = _grid(4, seed=3), _grid(None, seed=4)
    w = np.cos(np.deg2rad(y["latitude"])).broadcast_like(y)
    ref = xs.rmse(f.mean("member"), y, dim=["frame", "latitude", "longitude"], weights=w)
    assert float(rmse(f, y)) == pytest.approx(float(ref), rel=1e-12)
    per_frame = rmse(f, y, dims=["latitude", "longitude"])
    ref_pf = xs.rmse(f.mean("member"), y, dim=["latitude", "longitude"], weights=w.isel(frame=0))
    np.testing.assert_allclose(per_frame.values, ref_pf.values, rtol=1e-12)


def test_perfect_forecast_scores_zero_and_minimum_crps() -> None:
    y = _grid(None, seed=5)
    perfect = y.expand_dims(member=4).copy()
    assert float(rmse(perfect, y)) == 0.0
    assert float(bias(perfect, y)) == 0.0
    assert float(area_mean(crps_ensemble(perfect, y), ["frame", "latitude", "longitude"])) == pytest.approx(
        0.0, abs=1e-15
    )
    noisy = perfect + 0.1 * _grid(4, seed=6)
    assert float(area_mean(crps_ensemble(noisy, y), ["frame", "latitude", "longitude"])) > 0


def test_constant_ensemble_has_zero_spread() -> None:
    y = _grid(None, seed=7)
    const = (y + 1.0).expand_dims(member=3).copy()
    spread, skill, ratio = spread_skill(const, y)
    assert (
        spread == pytest.approx(0.0, abs=1e-12)
        and skill == pytest.approx(1.0)
        and ratio == pytest.approx(0.0, abs=1e-12)
    )
    assert float(bias(const, y)) == pytest.approx(1.0)


def test_spread_skill_reliable_ensemble_near_one() -> None:
    truth = _grid(None, frames=40, seed=8, nlat=10, nlon=20)
    ens = _grid(8, frames=40, seed=9, nlat=10, nlon=20)  # truth and members from the same distribution
    _, _, ratio = spread_skill(ens, truth)
    assert ratio == pytest.approx(1.0, abs=0.05)


def test_rank_histogram_flat_for_exchangeable_members() -> None:
    truth = _grid(None, frames=50, seed=10, nlat=10, nlon=20)
    ens = _grid(9, frames=50, seed=11, nlat=10, nlon=20)
    counts = rank_histogram(ens, truth)
    n = counts.sum()
    assert counts.size == 10 and n == truth.size
    expected = n / counts.size
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 27.9  # 99.9th percentile of chi-squared with 9 degrees of freedom
    # an under-dispersive ensemble is U-shaped
    u = rank_histogram(0.3 * ens, truth)
    assert u[0] + u[-1] > 4 * expected


def test_zonal_spectrum_of_a_single_wave() -> None:
    lon = np.arange(32) * 360 / 32
    lat = np.array([0.0, 30.0])
    field = xr.DataArray(
        np.cos(np.deg2rad(3 * lon))[None, :].repeat(2, 0),
        dims=("latitude", "longitude"),
        coords={"latitude": lat, "longitude": lon},
    )
    spec = zonal_power_spectrum(field)
    assert int(np.argmax(spec.values)) == 3
    assert float(spec.sel(wavenumber=3)) == pytest.approx(0.25)  # |FFT|^2 / n^2 of a unit cosine: (1/2)^2
    assert float(spec.drop_sel(wavenumber=3).sum()) < 1e-20
    ratio = spectral_ratio(field * 2, field, bands=[(1, 16)])
    assert ratio["k1-16"] == pytest.approx(4.0)


def test_lag1_autocorrelation() -> None:
    rng = np.random.default_rng(0)
    n = 4000
    phi = 0.7
    x = np.zeros(n)
    for i in range(1, n):
        x[i] = phi * x[i - 1] + rng.standard_normal()
    da = xr.DataArray(
        x[:, None, None] * np.ones((1, 2, 3)),
        dims=("frame", "latitude", "longitude"),
        coords={"latitude": [0.0, 10.0], "longitude": [0.0, 1.0, 2.0]},
    )
    assert lag1_autocorrelation(da) == pytest.approx(phi, abs=0.05)
    white = da.copy(data=rng.standard_normal(da.shape))
    assert abs(lag1_autocorrelation(white)) < 0.05


def test_bias_and_rank_histogram_against_xskillscore() -> None:
    import xskillscore as xs

    f, y = _grid(5, seed=12) + 0.3, _grid(None, seed=13)
    w = np.cos(np.deg2rad(y["latitude"])).broadcast_like(y)
    ref = xs.me(f.mean("member"), y, dim=["frame", "latitude", "longitude"], weights=w)
    assert float(bias(f, y)) == pytest.approx(float(ref), rel=1e-12)
    # continuous values: no ties, so the random tie-breaking plays no part
    ref_hist = xs.rank_histogram(y, f, dim=["frame", "latitude", "longitude"], member_dim="member")
    np.testing.assert_array_equal(rank_histogram(f, y), ref_hist.values)


def test_lag1_autocorrelation_against_the_textbook_estimator_and_pandas() -> None:
    import pandas as pd

    rng = np.random.default_rng(3)
    x = np.cumsum(rng.standard_normal(64))  # one cell: the pooled estimator is the textbook one
    da = xr.DataArray(
        x[:, None, None], dims=("frame", "latitude", "longitude"), coords={"latitude": [10.0], "longitude": [0.0]}
    )
    a = x - x.mean()
    textbook = float((a[1:] * a[:-1]).sum() / (a**2).sum())
    assert lag1_autocorrelation(da) == pytest.approx(textbook, rel=1e-12)
    # pandas' autocorr (Pearson of the lagged pairs) differs only in its mean and normalisation
    assert lag1_autocorrelation(da) == pytest.approx(pd.Series(x).autocorr(1), abs=0.05)


def test_zonal_spectrum_against_scipy_periodogram() -> None:
    from scipy.signal import periodogram

    field = _grid(None, frames=1, seed=14, nlat=1, nlon=16).isel(frame=0)
    ours = zonal_power_spectrum(field).values
    _, p = periodogram(
        field.values[0], fs=1.0, window="boxcar", detrend=False, scaling="spectrum", return_onesided=False
    )
    # two-sided |X_k|^2 / n^2 per wavenumber: the same numbers as ours for k = 0 .. n/2
    np.testing.assert_allclose(ours, p[: ours.size], rtol=1e-12)
    # Parseval: the two-sided spectrum sums to the mean square
    assert float(p.sum()) == pytest.approx(float((field.values**2).mean()), rel=1e-12)


def test_energy_score_is_the_crps_in_one_dimension_and_a_distance_for_one_member() -> None:
    """The fair energy score against closed forms: in one dimension it is the fair CRPS (computed by ``scores``);
    a one-member forecast scores the weighted distance to the truth; masked dimensions are left out; and over
    variables and cells (pipeline.scoring.energy) a perfect copy of the truth scores 0."""
    from pipeline.metrics import crps_ensemble, energy_score
    from pipeline.scoring import energy

    rng = np.random.default_rng(0)
    ens, obs = rng.normal(size=(20, 6)), rng.normal(size=20)
    crps = crps_ensemble(xr.DataArray(ens, dims=("case", "member")), xr.DataArray(obs, dims=("case",))).values
    np.testing.assert_allclose(energy_score(ens[:, :, None], obs[:, None], np.ones(1)), crps, rtol=1e-12)
    x, y, w = rng.normal(size=(3, 1, 5)), rng.normal(size=(3, 5)), rng.uniform(0.1, 1.0, 5)
    np.testing.assert_allclose(energy_score(x, y, w), np.sqrt(((x[:, 0] - y) ** 2 * w).sum(axis=1)), rtol=1e-12)
    y[0, 2] = np.nan  # a masked cell: the norm of the others
    expect = np.sqrt(((x[0, 0] - y[0]) ** 2 * w)[[0, 1, 3, 4]].sum())
    assert energy_score(x, y, w)[0] == pytest.approx(expect, rel=1e-12)
    truth = rng.normal(size=(2, 2, 4, 3, 5))  # (clip, C, T, H, W)
    perfect = energy(np.repeat(truth[:, None], 3, axis=1), truth, np.linspace(-60, 60, 3), context=2)
    assert perfect["energy_score"] == pytest.approx(0.0, abs=1e-12) and np.shape(perfect["per_clip"]) == (2, 2)
    noisy = energy(truth[:, None] + rng.normal(size=(2, 3, 2, 4, 3, 5)), truth, np.linspace(-60, 60, 3), context=2)
    assert noisy["energy_score"] > 0.1
