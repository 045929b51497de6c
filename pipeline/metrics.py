"""Climate skill metrics: pure functions on xarray objects (no I/O).

Conventions: an ensemble forecast has a ``member`` dimension; the truth does not; both have
``latitude`` and ``longitude`` (and any others, e.g. ``clip``, ``frame``). Spatial means are
area-weighted by cos(latitude) and skip NaN cells (masks).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import xarray as xr

__all__ = [
    "area_mean",
    "bias",
    "crps_ensemble",
    "lag1_autocorrelation",
    "rank_histogram",
    "rmse",
    "spectral_ratio",
    "spread_skill",
    "zonal_power_spectrum",
]

SPACE = ("latitude", "longitude")


def _weights(da: xr.DataArray) -> xr.DataArray:
    return np.cos(np.deg2rad(da["latitude"])).clip(min=0.0)


def area_mean(da: xr.DataArray, dims: Sequence[str] | None = None) -> xr.DataArray:
    """cos(latitude)-weighted mean over ``dims`` (default: latitude, longitude), NaNs skipped."""
    dims = list(SPACE if dims is None else dims)
    return da.weighted(_weights(da)).mean(dims)


def rmse(
    forecast: xr.DataArray, truth: xr.DataArray, dims: Sequence[str] | None = None, member_dim: str = "member"
) -> xr.DataArray:
    """Area-weighted RMSE of the ensemble mean (of ``forecast`` itself if it has no members).

    The square root is taken after averaging over ``dims`` (default: every dim but the member dim).
    """
    mean = forecast.mean(member_dim) if member_dim in forecast.dims else forecast
    err2 = (mean - truth) ** 2
    dims = [d for d in err2.dims] if dims is None else list(dims)
    return np.sqrt(area_mean(err2, dims))


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
    """Pointwise ensemble CRPS: ``mean_i |x_i - y| - c * sum_ij |x_i - x_j|``.

    ``fair=True`` (Ferro 2014): ``c = 1 / (2 m (m - 1))``, unbiased for the CRPS of the distribution the
    members are drawn from; ``fair=False``: ``c = 1 / (2 m^2)``, the CRPS of the empirical distribution.
    Reduce with :func:`area_mean` for a score.
    """
    m = forecast.sizes[member_dim]
    if fair and m < 2:
        msg = f"the fair CRPS needs at least 2 members, got {m}"
        raise ValueError(msg)
    skill = abs(forecast - truth).mean(member_dim)
    other = forecast.rename({member_dim: f"{member_dim}_2"})
    spread = abs(forecast - other).sum([member_dim, f"{member_dim}_2"])
    c = 1.0 / (2 * m * (m - 1)) if fair else 1.0 / (2 * m * m)
    return skill - c * spread


def spread_skill(forecast: xr.DataArray, truth: xr.DataArray, member_dim: str = "member") -> tuple[float, float, float]:
    """(spread, skill, ratio): spread = sqrt(area mean of the unbiased ensemble variance), skill = RMSE
    of the ensemble mean, ratio = sqrt((m + 1) / m) * spread / skill (Fortin et al. 2014; 1 when reliable)."""
    m = forecast.sizes[member_dim]
    var = forecast.var(member_dim, ddof=1)
    spread = float(np.sqrt(area_mean(var, list(var.dims))))
    skill = float(rmse(forecast, truth, member_dim=member_dim))
    ratio = float(np.sqrt((m + 1) / m) * spread / skill) if skill > 0 else float("nan")
    return spread, skill, ratio


def rank_histogram(
    forecast: xr.DataArray, truth: xr.DataArray, member_dim: str = "member", seed: int = 0
) -> np.ndarray:
    """Counts of the truth's rank among the members (0..m), ties broken at random; NaN cells skipped."""
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
    if bool(field.isnull().any()):
        msg = "zonal_power_spectrum needs a field without NaN cells"
        raise ValueError(msg)
    n = field.sizes["longitude"]
    spec = xr.apply_ufunc(
        lambda a: np.abs(np.fft.rfft(a, axis=-1)) ** 2 / n**2,
        field,
        input_core_dims=[["longitude"]],
        output_core_dims=[["wavenumber"]],
    )
    spec = spec.assign_coords(wavenumber=np.arange(n // 2 + 1))
    spec = spec.weighted(_weights(field)).mean("latitude")
    other = [d for d in spec.dims if d != "wavenumber"]
    return spec.mean(other) if other else spec


def spectral_ratio(
    sample: xr.DataArray, truth: xr.DataArray, bands: Sequence[tuple[int, int]] | None = None
) -> dict[str, float]:
    """Ratio of summed zonal power, samples / truth, per wavenumber band [lo, hi] (inclusive)."""
    ps, pt = zonal_power_spectrum(sample), zonal_power_spectrum(truth)
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
    a = x - x.mean(dim)
    num = a.isel({dim: slice(1, None)}).values * a.isel({dim: slice(None, -1)}).values
    den = a.values**2
    axis = x.get_axis_num(dim)
    num_s = xr.DataArray(
        np.nansum(num, axis=axis),
        dims=[d for d in x.dims if d != dim],
        coords={k: v for k, v in x.coords.items() if dim not in v.dims},
    )
    den_s = xr.DataArray(np.nansum(den, axis=axis), dims=num_s.dims, coords=num_s.coords)
    other = [d for d in num_s.dims if d not in SPACE]
    r = num_s.sum(other) / den_s.sum(other)
    return float(area_mean(r))
