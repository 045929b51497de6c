"""The streamed figures of a set (pipeline/fieldstats.py) against the whole-array computations of peer libraries
(numpy, scipy, eofs, pipeline.metrics) on the same data, and a large set read in blocks against the same set held
whole."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from eofs.standard import Eof
from scipy.stats import wasserstein_distance

from pipeline import metrics
from pipeline.data.stats import area_weights
from pipeline.fieldstats import Distribution, summarise, wasserstein1

LAGS = [1, 2, 5]


def _set(cases: int = 3, frames: int = 40, seed: int = 0, nan: bool = False) -> xr.DataArray:
    """Red-noise sequences of a few large-scale patterns plus noise on a 12 x 16 grid (EOFs with a clear order)."""
    rng = np.random.default_rng(seed)
    lat, lon = np.linspace(-66, 66, 12), np.arange(16) * 22.5
    patterns = rng.standard_normal((4, 12, 16)) * np.array([3.0, 2.0, 1.4, 1.0])[:, None, None]
    amp = np.zeros((cases, frames, 4))
    for t in range(1, frames):
        amp[:, t] = 0.8 * amp[:, t - 1] + rng.standard_normal((cases, 4))
    x = np.einsum("cfk,kyx->cfyx", amp, patterns) + 0.3 * rng.standard_normal((cases, frames, 12, 16)) + 5.0
    if nan:
        x[:, :, 0, 0] = np.nan  # a masked cell, missing in every field
    return xr.DataArray(x, dims=("case", "frame", "latitude", "longitude"), coords={"latitude": lat, "longitude": lon})


def _flat(x: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    w = np.broadcast_to(area_weights(x["latitude"]).values[:, None], x.shape[2:])
    v, ww = x.values.reshape(-1), np.broadcast_to(w, x.shape).reshape(-1)
    ok = np.isfinite(v) & (ww > 0)
    return v[ok], ww[ok]


@pytest.mark.parametrize("nan", [False, True])
def test_a_small_set_has_the_whole_array_figures(nan: bool) -> None:
    x = _set(nan=nan)
    s = summarise(x, LAGS, modes=3)
    stacked = x.stack(field=("case", "frame"))
    np.testing.assert_allclose(s.mean, stacked.mean("field"), rtol=1e-12)
    np.testing.assert_allclose(s.std, stacked.std("field"), rtol=1e-12)
    v, w = _flat(x)
    assert s.pooled_std == pytest.approx(float(np.sqrt(np.cov(v, aweights=w))), rel=1e-12)
    assert s.autocorrelation == pytest.approx(
        metrics.autocorrelation(x, "frame", LAGS, stacked.mean("field")), rel=1e-12
    )
    qs = [0.001, 0.5, 0.99]
    np.testing.assert_array_equal(s.distribution.quantiles(qs), np.quantile(v, qs, weights=w, method="inverted_cdf"))
    if nan:
        assert s.spectrum is None and not s.complete
    else:
        np.testing.assert_allclose(s.spectrum, metrics.zonal_power_spectrum(x), rtol=1e-12)
    np.testing.assert_allclose(s.area_mean, metrics.area_mean(stacked.transpose("field", ...)).values, rtol=1e-12)
    assert (s.minimum, s.maximum) == (np.nanmin(x.values), np.nanmax(x.values))
    # EOFs: the eofs package on the valid cells, sqrt(cos latitude) weights
    f = stacked.transpose("field", ...).values.reshape(s.fields, -1)
    cells = np.flatnonzero(np.isfinite(f).all(axis=0))
    sw = np.sqrt(np.broadcast_to(area_weights(x["latitude"]).values[:, None], x.shape[2:])).ravel()[cells]
    solver = Eof(f[:, cells], weights=sw, center=True)
    e = solver.eofs(neofs=3)
    np.testing.assert_allclose(
        np.abs((s.eofs.patterns * (e / np.linalg.norm(e, axis=1, keepdims=True))).sum(1)), 1, atol=1e-12
    )
    np.testing.assert_allclose(s.eofs.fractions, solver.varianceFraction(neigs=3), rtol=1e-12)


@pytest.mark.parametrize("nan", [False, True])
def test_a_large_set_read_in_blocks_equals_it_held_whole(nan: bool) -> None:
    """Blocks of 3 frames (pairs across blocks, cases apart), a histogram of the values, EOFs by subspace
    iteration; from a lazy (dask) array, as the store is read."""
    x = _set(cases=2, frames=60, seed=1, nan=nan)
    whole = summarise(x, LAGS, modes=3)
    lazy = x.copy(data=da.from_array(x.values, chunks=(1, 7, 12, 16)))
    part = summarise(lazy, LAGS, modes=3, block_bytes=3 * 8 * 12 * 16, exact_values=0)
    assert part.distribution.values is None and whole.distribution.values is not None
    np.testing.assert_allclose(part.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(part.std, whole.std, rtol=1e-12)
    assert part.pooled_std == pytest.approx(whole.pooled_std, rel=1e-12)
    assert part.autocorrelation == pytest.approx(whole.autocorrelation, rel=1e-12)
    np.testing.assert_allclose(part.area_mean, whole.area_mean, rtol=1e-12)
    np.testing.assert_allclose(part.spread, whole.spread, rtol=1e-12)
    if not nan:
        np.testing.assert_allclose(part.spectrum, whole.spectrum, rtol=1e-12)
    res = part.distribution.resolution
    assert 0 < res < (whole.maximum - whole.minimum) / 60000
    qs = [0.001, 0.01, 0.5, 0.99, 0.999]
    assert np.abs(part.distribution.quantiles(qs) - whole.distribution.quantiles(qs)).max() <= res
    assert wasserstein1(part.distribution, whole.distribution) <= res
    np.testing.assert_allclose(np.abs((part.eofs.patterns * whole.eofs.patterns).sum(1)), 1, atol=1e-6)
    np.testing.assert_allclose(part.eofs.fractions, whole.eofs.fractions, rtol=1e-6)
    assert part.eofs.converged and whole.eofs.converged


def test_the_distance_of_binned_values_is_within_a_bin_width_of_scipys() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.gamma(2.0, size=5000), rng.normal(2.5, 1.0, size=300)
    wa, wb = rng.uniform(0.2, 1, a.size), rng.uniform(0.2, 1, b.size)
    exact = wasserstein_distance(a, b, wa, wb)
    ea, eb = Distribution(wa[np.argsort(a)], values=np.sort(a)), Distribution(wb[np.argsort(b)], values=np.sort(b))
    assert wasserstein1(ea, eb) == exact
    # the same values through the quantile-function integral (a tiny histogram range makes it exact for steps)
    edges = np.linspace(a.min(), a.max(), 4097)
    binned = Distribution(np.histogram(a, bins=edges, weights=wa)[0], edges=edges)
    assert abs(wasserstein1(binned, eb) - exact) <= binned.resolution
    assert abs(wasserstein1(eb, binned) - exact) <= binned.resolution
    # steps against steps through the integral equal scipy's
    assert wasserstein1(ea, Distribution(binned.weights, edges=edges)) <= binned.resolution


def test_eofs_that_did_not_converge_say_so(monkeypatch, caplog) -> None:
    """The subspace iteration stopped before its patterns settled: the summary and the log say so."""
    import pipeline.fieldstats as fs

    monkeypatch.setattr(fs, "EOF_MAX_PRODUCTS", 2)  # one product after the first: no second to compare with
    with caplog.at_level("WARNING", logger="pipeline.fieldstats"):
        s = summarise(_set(cases=1, frames=60, seed=2), LAGS, modes=2, exact_values=0)
    assert not s.eofs.converged and "without converging" in caplog.text
