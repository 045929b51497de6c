"""Climate skill metrics: pure functions on xarray objects (no I/O).

Conventions: an ensemble forecast has a ``member`` dimension; a deterministic forecast (a reference
such as persistence) and the truth do not; all have ``latitude`` and ``longitude`` (and any others,
e.g. ``clip``, ``frame``). Spatial means are area-weighted by cos(latitude) and skip NaN cells (masks).
The fair CRPS and the weighted (R)MSE come from the ``scores`` package; confidence intervals come from
resampling cases (a paired bootstrap when the same resamples serve two forecasts).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import xarray as xr
from scores.continuous import mse as _scores_mse
from scores.probability import crps_for_ensemble

from pipeline.data.stats import area_weights

__all__ = [
    "RunningLag1",
    "RunningMean",
    "RunningQuantile",
    "RunningSpectrum",
    "area_mean",
    "autocorrelation",
    "band_ratios",
    "bias",
    "bootstrap_indices",
    "crps_ensemble",
    "lag1_autocorrelation",
    "lagged_autocorrelation",
    "mse",
    "percentile_interval",
    "rank_histogram",
    "rmse",
    "skill_score",
    "spectral_ratio",
    "spread_skill",
    "zonal_power_spectrum",
]

SPACE = ("latitude", "longitude")


def _weights(da: xr.DataArray) -> xr.DataArray:
    return area_weights(da["latitude"])


def area_mean(da: xr.DataArray, dims: Sequence[str] | None = None) -> xr.DataArray:
    """cos(latitude)-weighted mean over ``dims`` (default: latitude, longitude), NaNs skipped."""
    dims = list(SPACE if dims is None else dims)
    return da.weighted(_weights(da)).mean(dims)


def mse(
    forecast: xr.DataArray, truth: xr.DataArray, dims: Sequence[str] | None = None, member_dim: str = "member"
) -> xr.DataArray:
    """Area-weighted mean squared error of the ensemble mean (of ``forecast`` itself if it has no members)
    over ``dims`` (default: every dim but the member dim), NaN cells skipped (``scores.continuous.mse``)."""
    mean = forecast.mean(member_dim) if member_dim in forecast.dims else forecast
    dims = list(mean.dims) if dims is None else list(dims)
    return _scores_mse(mean, truth, reduce_dims=dims, weights=_weights(truth))


def rmse(
    forecast: xr.DataArray, truth: xr.DataArray, dims: Sequence[str] | None = None, member_dim: str = "member"
) -> xr.DataArray:
    """Area-weighted RMSE of the ensemble mean: the square root of :func:`mse` (taken after averaging
    over ``dims``)."""
    return np.sqrt(mse(forecast, truth, dims, member_dim))


def bias(
    forecast: xr.DataArray, truth: xr.DataArray, dims: Sequence[str] | None = None, member_dim: str = "member"
) -> xr.DataArray:
    """Area-weighted mean of (ensemble mean - truth)."""
    mean = forecast.mean(member_dim) if member_dim in forecast.dims else forecast
    diff = mean - truth
    return area_mean(diff, list(diff.dims) if dims is None else list(dims))


def crps_ensemble(
    forecast: xr.DataArray, truth: xr.DataArray, member_dim: str = "member", fair: bool = True
) -> xr.DataArray:
    """Pointwise CRPS: ``mean_i |x_i - y| - sum_ij |x_i - x_j| / (2 K)`` (``scores.probability.crps_for_ensemble``).

    ``fair=True`` (Ferro 2014): ``K = m (m - 1)``, unbiased for the CRPS of the distribution the members
    are drawn from; ``fair=False``: ``K = m^2``, the CRPS of the empirical distribution. A forecast without
    ``member_dim`` is deterministic: its CRPS is the absolute error (the CRPS of a point mass), so
    deterministic references sit on the same scale as ensembles. Reduce with :func:`area_mean` for a score.
    """
    if member_dim not in forecast.dims:
        return abs(forecast - truth)
    m = forecast.sizes[member_dim]
    if fair and m < 2:
        msg = f"the fair CRPS needs at least 2 members, got {m}"
        raise ValueError(msg)
    method = "fair" if fair else "ecdf"
    return crps_for_ensemble(forecast, truth, member_dim, method=method, preserve_dims="all")


def spread_skill(forecast: xr.DataArray, truth: xr.DataArray, member_dim: str = "member") -> tuple[float, float, float]:
    """(spread, skill, ratio): spread = sqrt(area mean of the unbiased ensemble variance), skill = RMSE
    of the ensemble mean, ratio = sqrt((m + 1) / m) * spread / skill (Fortin et al. 2014; 1 when reliable).
    A deterministic forecast (no ``member_dim``) has spread 0 and ratio 0."""
    if member_dim not in forecast.dims:
        return 0.0, float(rmse(forecast, truth, member_dim=member_dim)), 0.0
    m = forecast.sizes[member_dim]
    var = forecast.var(member_dim, ddof=1)
    spread = float(np.sqrt(area_mean(var, list(var.dims))))
    skill = float(rmse(forecast, truth, member_dim=member_dim))
    ratio = float(np.sqrt((m + 1) / m) * spread / skill) if skill > 0 else float("nan")
    return spread, skill, ratio


def rank_histogram(
    forecast: xr.DataArray, truth: xr.DataArray, member_dim: str = "member", seed: int = 0
) -> np.ndarray:
    """Counts of the truth's rank among the members (0..m), ties broken at random; NaN cells skipped.
    A deterministic forecast counts as one member (2 bins: truth below, above)."""
    if member_dim not in forecast.dims:
        forecast = forecast.expand_dims({member_dim: 1})
    f = forecast.transpose(member_dim, ...).values.reshape(forecast.sizes[member_dim], -1)
    y = (
        truth.broadcast_like(forecast.isel({member_dim: 0}))
        .transpose(*forecast.isel({member_dim: 0}).dims)
        .values.reshape(-1)
    )
    ok = np.isfinite(y) & np.isfinite(f).all(axis=0)
    f, y = f[:, ok], y[ok]
    below = (f < y).sum(axis=0)
    ties = (f == y).sum(axis=0)
    rng = np.random.default_rng(seed)
    ranks = below + np.floor(rng.random(y.size) * (ties + 1)).astype(int)
    return np.bincount(ranks, minlength=f.shape[0] + 1)


def zonal_power_spectrum(field: xr.DataArray) -> xr.DataArray:
    """Power per zonal wavenumber k (FFT along longitude), area-weighted over latitude and averaged over
    every other dim. Needs a complete (no NaN) field; k = 0 .. nlon // 2."""
    running = RunningSpectrum()
    running.add(field)
    if running.value is None:
        msg = "zonal_power_spectrum needs a field without NaN cells"
        raise ValueError(msg)
    return running.value


def spectral_ratio(
    sample: xr.DataArray, truth: xr.DataArray, bands: Sequence[tuple[int, int]] | None = None
) -> dict[str, float]:
    """Ratio of summed zonal power, samples / truth, per wavenumber band [lo, hi] (inclusive)."""
    return band_ratios(zonal_power_spectrum(sample), zonal_power_spectrum(truth), bands)


def band_ratios(ps: xr.DataArray, pt: xr.DataArray, bands: Sequence[tuple[int, int]] | None = None) -> dict[str, float]:
    """:func:`spectral_ratio` of two zonal power spectra (:func:`zonal_power_spectrum`)."""
    kmax = int(ps["wavenumber"].max())
    if bands is None:
        edges = sorted({1, max(2, kmax // 4), max(3, kmax // 2), kmax})
        bands = [(lo, hi) for lo, hi in itertools.pairwise(edges)]
    out = {}
    for lo, hi in bands:
        sel = {"wavenumber": slice(lo, hi)}
        out[f"k{lo}-{hi}"] = float(ps.sel(sel).sum() / pt.sel(sel).sum())
    return out


def lag1_autocorrelation(x: xr.DataArray, dim: str = "frame") -> float:
    """Area-weighted mean over grid cells of the lag-1 autocorrelation along ``dim`` (anomalies about the
    mean along ``dim``, pooled over all other dims)."""
    running = RunningLag1()
    running.add(x, dim)
    return running.value


def autocorrelation(x: xr.DataArray, dim: str, lags: Sequence[int], mean: xr.DataArray) -> list[float]:
    """Autocorrelation at each lag along ``dim`` of the anomalies about a fixed ``mean`` field (for example
    the test period's mean map): ``sum a_t a_(t+k) / sum a_t^2``, both sums over every pair inside one
    sequence, every other dim and the grid cells (cos-latitude weighted), NaNs skipped. A fixed mean (not
    each sequence's own) keeps short sequences comparable with long ones; ``nan`` where a lag does not
    fit in the sequences."""
    a = (x - mean).transpose(dim, ...)
    w = np.broadcast_to(_weights(x).broadcast_like(a.isel({dim: 0})).values, a.shape[1:])
    v = a.values
    den = np.nansum(w * v * v)
    out = []
    for k in lags:
        if not 0 < k < v.shape[0]:
            out.append(float("nan"))
            continue
        num = np.nansum(w * v[k:] * v[:-k]) / (v.shape[0] - k)
        out.append(float(num / (den / v.shape[0])) if den > 0 else float("nan"))
    return out


def skill_score(score: np.ndarray | float, reference: np.ndarray | float) -> np.ndarray:
    """``1 - score / reference`` for negatively oriented scores (CRPSS, RMSE skill score): 1 is perfect, 0 is
    as good as the reference, negative is worse."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 - np.asarray(score, dtype=np.float64) / np.asarray(reference, dtype=np.float64)


def bootstrap_indices(cases: int, resamples: int, seed: int, block: int = 1) -> np.ndarray:
    """``(resamples, cases)`` case indices drawn with replacement. Scoring every forecast on the same array
    makes the bootstrap paired: the spread of a difference then holds only what differs between forecasts,
    not which cases happened to be hard.

    ``block`` > 1 is the moving-block bootstrap (Kuensch 1989): runs of ``block`` consecutive cases are drawn
    (starts uniform over the ``cases - block + 1`` possible runs) and joined until ``cases`` are drawn, so
    cases that follow each other closely in time (autocorrelated scores) stay together and the interval
    is not too narrow. ``block`` = 1 is the ordinary case bootstrap."""
    if cases < 1:
        msg = f"the bootstrap needs at least one case, got {cases}"
        raise ValueError(msg)
    if not 1 <= block <= cases:
        msg = f"the bootstrap block must hold 1 to {cases} cases (evaluate.bootstrap_block), got {block}"
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    if block == 1:
        return rng.integers(0, cases, size=(resamples, cases))
    runs = -(-cases // block)
    starts = rng.integers(0, cases - block + 1, size=(resamples, runs))
    return (starts[:, :, None] + np.arange(block)).reshape(resamples, -1)[:, :cases]


def energy_score(forecast: np.ndarray, truth: np.ndarray, weights: np.ndarray, fair: bool = True) -> np.ndarray:
    """The energy score (Gneiting & Raftery 2007), the multivariate CRPS, per case: ``forecast`` (case, member, D)
    ensembles of vectors, ``truth`` (case, D), each dimension weighted by ``weights`` (D,) inside the norm (area
    weights of grid cells): ``mean_i ||x_i - y|| - sum_ij ||x_i - x_j|| / (2 K)`` with K = m (m - 1) (``fair``,
    unbiased for the distribution the members are drawn from) or m^2. In one dimension it is the CRPS. Dimensions
    where the truth is NaN (masked cells) are left out of the case's norms."""
    x, y = np.asarray(forecast, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    m = x.shape[1]
    out = np.empty(x.shape[0])
    for c in range(x.shape[0]):
        ok = np.isfinite(y[c]) & (weights > 0)
        w = np.sqrt(weights[ok])
        xc, yc = x[c][:, ok] * w, y[c][ok] * w
        skill = np.linalg.norm(xc - yc, axis=-1).mean()
        spread = sum(np.linalg.norm(xc - xc[i], axis=-1).sum() for i in range(m))
        out[c] = skill - spread / (2 * (m * (m - 1) if fair and m > 1 else m * m))
    return out


def stationary_indices(cases: int, resamples: int, seed: int, mean_block: float) -> np.ndarray:
    """``(resamples, cases)`` case indices of the stationary bootstrap (Politis & Romano 1994), through ``arch``:
    runs of consecutive cases (wrapping around) of geometric length with mean ``mean_block``, so autocorrelated
    cases stay together without a fixed block. Shared by every forecast, it is paired like
    :func:`bootstrap_indices`; ``mean_block`` 1 is the ordinary case bootstrap."""
    from arch.bootstrap import StationaryBootstrap

    if cases < 1:
        msg = f"the bootstrap needs at least one case, got {cases}"
        raise ValueError(msg)
    if mean_block <= 1.0:
        return np.random.default_rng(seed).integers(0, cases, size=(resamples, cases))
    bs = StationaryBootstrap(min(float(mean_block), float(cases)), np.arange(cases), seed=np.random.default_rng(seed))
    return np.stack([np.asarray(bs.index) for _ in bs.bootstrap(resamples)])


def automatic_block(series: np.ndarray) -> float:
    """The stationary bootstrap's mean block length for the columns of ``series`` (cases, k): Politis & White's
    (2004, as corrected by Patton, Politis & White 2009) automatic choice, from ``arch``; the median over columns,
    between 1 and the number of cases. Fewer than 8 cases: 1 (too few to estimate a dependence from)."""
    from arch.bootstrap import optimal_block_length

    x = np.asarray(series, dtype=np.float64).reshape(len(series), -1)
    x = x[:, np.all(np.isfinite(x), axis=0) & (np.nanstd(x, axis=0) > 0)]
    if x.shape[0] < 8 or x.shape[1] == 0:
        return 1.0
    lengths = optimal_block_length(x)["stationary"].to_numpy()
    return float(np.clip(np.median(lengths), 1.0, x.shape[0]))


def lagged_autocorrelation(series: np.ndarray, lag: int = 1) -> float:
    """Sample autocorrelation of a 1-D series at ``lag`` (anomalies about the series mean, divided by the
    lag-0 sum of squares, as in the usual ACF estimate); NaN for a constant or too short series."""
    x = np.asarray(series, dtype=np.float64)
    a = x - x.mean()
    den = float(np.sum(a * a))
    if x.size <= lag or den == 0.0:
        return float("nan")
    return float(np.sum(a[lag:] * a[:-lag]) / den)


def percentile_interval(samples: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Equal-tailed percentile interval over the first axis (the resamples) at level ``confidence``."""
    tail = (1.0 - confidence) / 2.0
    return np.quantile(samples, tail, axis=0), np.quantile(samples, 1.0 - tail, axis=0)


# Running counterparts of the figures above, for a set fed in batches (the sweep scores a point batch by batch, so
# its memory does not grow with the number of clips): each gives the whole set's figure up to the order of the
# floating-point sums (tests/test_metrics.py).


class RunningMean:
    """The cos(latitude)-weighted mean over every dim of all the arrays added (:func:`area_mean`), NaNs skipped."""

    def __init__(self) -> None:
        self.total, self.weight = 0.0, 0.0

    def add(self, da: xr.DataArray) -> None:
        w = da.weighted(_weights(da))
        self.total += float(w.sum(list(da.dims)))
        self.weight += float(w.sum_of_weights(list(da.dims)))

    @property
    def value(self) -> float:
        return self.total / self.weight if self.weight > 0 else float("nan")


class RunningQuantile:
    """``np.nanquantile(all values, q)`` (linear interpolation) from the largest values only: given an upper
    bound on the number of values, it keeps the ``(1 - q)`` share of them that the quantile can fall among."""

    def __init__(self, q: float, at_most: int) -> None:
        self.q, self.n = q, 0
        self.keep = at_most - int(np.floor(q * max(at_most - 1, 0))) + 1
        self.top = np.empty(0)

    def add(self, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[~np.isnan(v)]
        self.n += v.size
        both = np.concatenate([self.top, v])
        self.top = both if both.size <= self.keep else np.partition(both, both.size - self.keep)[-self.keep :]

    @property
    def value(self) -> float:
        if self.n == 0:
            return float("nan")
        top = np.sort(self.top)
        h = (self.n - 1) * self.q
        lo = int(np.floor(h))
        first = self.n - top.size  # the global rank of top[0]
        if lo < first:
            msg = f"RunningQuantile was given more than its bound of values ({self.n})"
            raise ValueError(msg)
        a = top[lo - first]
        if lo + 1 >= self.n:
            return float(a)
        b, t = top[lo + 1 - first], h - lo
        return float(b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t)  # numpy's _lerp


class RunningLag1:
    """:func:`lag1_autocorrelation` along ``frame`` of arrays added in batches along any other dim."""

    def __init__(self) -> None:
        self.num: xr.DataArray | None = None
        self.den: xr.DataArray | None = None

    def add(self, x: xr.DataArray, dim: str = "frame") -> None:
        a = x - x.mean(dim)
        lead, lag = a.isel({dim: slice(1, None)}).values, a.isel({dim: slice(None, -1)}).values
        axis = x.get_axis_num(dim)
        dims = [d for d in x.dims if d != dim]
        coords = {k: v for k, v in x.coords.items() if dim not in v.dims}
        num = xr.DataArray(np.nansum(lead * lag, axis=axis), dims=dims, coords=coords)
        den = xr.DataArray(np.nansum(a.values**2, axis=axis), dims=dims, coords=coords)
        other = [d for d in dims if d not in SPACE]
        num, den = num.sum(other), den.sum(other)
        self.num = num if self.num is None else self.num + num
        self.den = den if self.den is None else self.den + den

    @property
    def value(self) -> float:
        return float(area_mean(self.num / self.den)) if self.num is not None else float("nan")


class RunningSpectrum:
    """:func:`zonal_power_spectrum` of arrays added in batches (the mean over every dim but latitude and
    longitude); ``complete`` is False once an array with a NaN cell was added (then there is no spectrum)."""

    def __init__(self) -> None:
        self.total: xr.DataArray | None = None
        self.count, self.complete = 0, True

    def add(self, field: xr.DataArray) -> None:
        if not self.complete or bool(field.isnull().any()):
            self.complete = False
            return
        n = field.sizes["longitude"]
        spec = xr.apply_ufunc(
            lambda a: np.abs(np.fft.rfft(a, axis=-1)) ** 2 / n**2,
            field,
            input_core_dims=[["longitude"]],
            output_core_dims=[["wavenumber"]],
        ).assign_coords(wavenumber=np.arange(n // 2 + 1))
        spec = spec.weighted(_weights(field)).mean("latitude")
        other = [d for d in spec.dims if d != "wavenumber"]
        cases = int(np.prod([spec.sizes[d] for d in other]))
        total = spec.sum(other) if other else spec
        self.total = total if self.total is None else self.total + total
        self.count += cases

    @property
    def value(self) -> xr.DataArray | None:
        return self.total / self.count if self.complete and self.total is not None else None
