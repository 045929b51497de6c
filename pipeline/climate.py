"""Climate fidelity of a sweep point: its long free-running rollouts and unconditional clips judged as a climate
simulation against a real period, each figure beside the same figure for the training period against that period
(the noise floor: how close two real periods are to each other), as a ratio to it.

Per variable, in physical units, for each generated set (``rollouts``: ``members`` free runs over the period from
its first real frames; ``unconditional``: clips dated at the period's start, against the period's fields of their
season) and for the training period's fields in the same role (the ``yardstick``):

- ``mean_bias_rms`` (the time-mean bias map's area-weighted RMS) and ``std_ratio`` (area-mean standard deviation
  over the period's), the ACE-style headline, and ``std_bias_rms``;
- ``w1_rel`` (Wasserstein-1 distance of the values' distributions over the period's standard deviation) and the
  extremes ``p0.1``, ``p1``, ``p99``, ``p99.9`` beside the period's;
- ``spectral_ratio`` (zonal power per wavenumber band over the period's) and the lag-k ``autocorrelation`` beside
  the period's own;
- the leading EOFs (``eofs`` package, sqrt(cos latitude) weights): each mode's ``eof_pattern_correlation`` with the
  period's (absolute: an EOF's sign is arbitrary) and its explained variance beside the period's;
- rollouts only: the seasonal cycle's amplitude and phase (the annual harmonic of the area mean) where the data are
  sub-annual and the rollout spans a year; ``stability`` (rollouts that stay finite, values inside the training
  period's range); ``drift`` of the area mean and spread beside real windows of the rollout's length
  (:func:`pipeline.realism.drift_yardstick`).

Each figure becomes an error (0 = identical to the period: the bias RMS, ``|log std_ratio|``, the distance, the mean
absolute quantile difference over the period's standard deviation, the mean ``|log|`` spectral ratio, the mean
absolute autocorrelation difference, the mean ``1 - |pattern correlation|``, the mean explained-variance
difference, the relative amplitude error, the phase error in years); the **ratio** is the generated set's error
over the training period's (1 = as close as two real periods are). Drift's ratio is the distance of the change from
the real windows' median over half their 5-95% range (1 = at the range's edge). The **climate score** is the
geometric mean of every ratio over sets and variables (lower is better; infinite where a rollout is unstable).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from pipeline import metrics
from pipeline.data.times import day_of_year, time_seconds
from pipeline.fieldstats import SetSummary, summarise
from pipeline.realism import compare, drift_yardstick, held, quantile_name, summary

__all__ = [
    "EXTREMES",
    "assess",
    "climate_score",
    "eof_figures",
    "errors",
    "flat_metrics",
    "ratios",
    "seasonal_cycle",
    "stability",
]

EXTREMES = (0.001, 0.01, 0.99, 0.999)
YEAR_DAYS = 365.25
_TINY = 1e-12  # an error at or below this is zero (two identical sets)


def eof_figures(
    candidate: xr.DataArray | SetSummary, real: xr.DataArray | SetSummary, modes: int
) -> dict[str, list[float]]:
    """The leading ``modes`` EOFs of two (case, frame, lat, lon) sets or their summaries (anomalies about each
    set's own mean map, sqrt(cos latitude) weights, each over the cells valid in every one of its fields; see
    :mod:`pipeline.fieldstats`): each mode's absolute pattern correlation (cos-latitude weighted, uncentred, over
    the cells both sets cover) with the same mode of ``real``, and both sets' explained variance fractions.
    Fewer modes where a set has too few fields."""
    c, r = summary(candidate, [], modes), summary(real, [], modes)
    if c.eofs is None or r.eofs is None:
        msg = "climate: no grid cell is valid in every field, so no EOF can be computed"
        raise ValueError(msg)
    n = min(len(c.eofs.fractions), len(r.eofs.fractions))
    both, ci, ri = np.intersect1d(c.eofs.cells, r.eofs.cells, return_indices=True)
    if both.size == 0:
        msg = "climate: the two sets share no grid cell valid in every field, so their EOFs cannot be compared"
        raise ValueError(msg)
    ec, er = c.eofs.patterns[:n, ci], r.eofs.patterns[:n, ri]
    ec = ec / np.linalg.norm(ec, axis=1, keepdims=True)
    er = er / np.linalg.norm(er, axis=1, keepdims=True)
    return {
        "eof_pattern_correlation": np.abs((ec * er).sum(axis=1)).tolist(),
        "eof_explained_variance": c.eofs.fractions[:n].tolist(),
        "real_eof_explained_variance": r.eofs.fractions[:n].tolist(),
        "eofs_converged": bool(c.eofs.converged and r.eofs.converged),
    }


def seasonal_cycle(values: np.ndarray, times: np.ndarray) -> dict[str, float] | None:
    """The annual harmonic of a series (any shape whose last axis matches ``times``, e.g. (member, frame)) fitted
    by least squares: ``amplitude`` (half the peak-to-trough range) and ``phase_day`` (the day of year of its
    maximum, on a 365.25-day year). None where the data are not sub-annual (a step of half a year or more) or
    span less than a year."""
    t = np.asarray(times)
    if t.size < 3:
        return None
    sec = time_seconds(t)
    step, span = float(np.median(np.diff(sec))) / 86400, float(sec[-1] - sec[0]) / 86400
    if step >= YEAR_DAYS / 2 or span < YEAR_DAYS - step:
        return None
    angle = 2 * np.pi * day_of_year(t).astype(np.float64) / YEAR_DAYS
    y = np.asarray(values, dtype=np.float64).reshape(-1, t.size)
    a = np.broadcast_to(angle, y.shape).ravel()
    ok = np.isfinite(y.ravel())
    design = np.column_stack([np.ones(a.size), np.cos(a), np.sin(a)])[ok]
    (_, b, c), *_ = np.linalg.lstsq(design, y.ravel()[ok], rcond=None)
    phase = (np.arctan2(c, b) % (2 * np.pi)) * YEAR_DAYS / (2 * np.pi)
    return {"amplitude": float(np.hypot(b, c)), "phase_day": float(phase)}


def stability(rollouts: xr.DataArray, real: xr.DataArray | SetSummary) -> dict[str, Any]:
    """Whether (member, frame, lat, lon) rollouts stay finite (the fraction of members finite throughout) and inside
    the real series' range (the fraction of finite values within its minimum and maximum; the series or its
    summary); ``stable`` when every member is finite."""
    v = rollouts.values
    finite_members = np.isfinite(v.reshape(v.shape[0], -1)).all(axis=1)
    r = summary(real, [])
    lo, hi = r.minimum, r.maximum
    fv = v[np.isfinite(v)]
    inside = float(((fv >= lo) & (fv <= hi)).mean()) if fv.size else 0.0
    return {
        "finite_fraction": float(finite_members.mean()),
        "inside_range_fraction": inside,
        "real_range": [lo, hi],
        "stable": bool(finite_members.all()),
    }


def _figures(
    candidate: xr.DataArray | SetSummary, real: xr.DataArray | SetSummary, lags: list[int], modes: int
) -> dict[str, Any]:
    """Every figure of one set against the real period (both (case, frame, lat, lon), or their summaries made
    with ``lags`` and ``modes``), JSON-ready."""
    c, r = summary(candidate, lags, modes), summary(real, lags, modes)
    out = {k: x for k, x in compare(c, r, lags, EXTREMES).items() if k != "maps"}
    out["real_autocorrelation"] = list(r.autocorrelation)
    return out | eof_figures(c, r, modes)


def _mean_abs(values: list[float]) -> float:
    finite = [abs(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def errors(fig: dict[str, Any]) -> dict[str, float]:
    """A set's figures (:func:`_figures`, with ``seasonal`` / ``real_seasonal`` where present) as errors against
    the real period: 0 = identical, larger = further."""
    std = fig["test_std"]
    out = {
        "mean_bias_rms": fig["mean_bias_rms"],
        "std_ratio": abs(float(np.log(fig["std_ratio"]))) if fig["std_ratio"] > 0 else float("inf"),
        "std_bias_rms": fig["std_bias_rms"],
        "w1_rel": fig["w1_rel"],
        "extremes": _mean_abs([(fig[quantile_name(q)] - fig[f"test_{quantile_name(q)}"]) / std for q in EXTREMES])
        if std > 0
        else float("nan"),
        "autocorrelation": _mean_abs(
            [a - b for a, b in zip(fig["autocorrelation"], fig["real_autocorrelation"], strict=True)]
        ),
        "eof_patterns": _mean_abs([1 - c for c in fig["eof_pattern_correlation"]]),
        "eof_variance": _mean_abs(
            [a - b for a, b in zip(fig["eof_explained_variance"], fig["real_eof_explained_variance"], strict=True)]
        ),
    }
    if "spectral_ratio" in fig:
        out["spectra"] = _mean_abs(
            [float(np.log(r)) if r > 0 else float("inf") for r in fig["spectral_ratio"].values()]
        )
    gen, real = fig.get("seasonal"), fig.get("real_seasonal")
    if gen and real and real["amplitude"] > 0:
        out["seasonal_amplitude"] = abs(gen["amplitude"] - real["amplitude"]) / real["amplitude"]
        d = abs(gen["phase_day"] - real["phase_day"]) % YEAR_DAYS
        out["seasonal_phase"] = min(d, YEAR_DAYS - d) / YEAR_DAYS
    return out


def ratios(err: dict[str, float], yard: dict[str, float]) -> dict[str, float]:
    """Each error over the yardstick's (the training period's) error: 1 = as close as two real periods."""
    out = {}
    for k, e in err.items():
        y = yard.get(k)
        if y is None or not np.isfinite(e) or not np.isfinite(y):
            out[k] = float("inf") if not np.isfinite(e) else float("nan")
            continue
        out[k] = 1.0 if e <= _TINY and y <= _TINY else float(e / max(y, _TINY))
    return out


def _drift_ratios(d: dict[str, Any]) -> dict[str, float]:
    """The rollouts' drift of area mean and spread: distance from the real windows' median change over half their
    5-95% range (no ratio where the series is shorter than a rollout)."""
    out = {}
    for k in ("area_mean", "spread"):
        q = d.get(f"real_{k}_change_q05_q50_q95")
        if q is not None and q[2] > q[0]:
            out[f"drift_{k}"] = abs(d[f"{k}_change"] - q[1]) / ((q[2] - q[0]) / 2)
    return out


def _set(
    cand: xr.DataArray | SetSummary,
    real: xr.DataArray | SetSummary,
    yard: xr.DataArray | SetSummary,
    lags: list[int],
    modes: int,
    cycles: tuple[dict, dict, dict] | None = None,
) -> dict[str, Any]:
    """One generated set and its yardstick (the training period in its place) against the real period; with
    ``cycles`` (the set's, the period's and the training period's seasonal cycle) also the seasonal figures."""
    real = summary(real, lags, modes)  # once for both
    fig, yfig = _figures(cand, real, lags, modes), _figures(yard, real, lags, modes)
    if cycles is not None:
        gen, period, train = cycles
        fig |= {"seasonal": gen, "real_seasonal": period}
        yfig |= {"seasonal": train, "real_seasonal": period}
    err, yerr = errors(fig), errors(yfig)
    return {"figures": fig, "yardstick": yfig, "errors": err, "yardstick_errors": yerr, "ratios": ratios(err, yerr)}


def assess(
    rollouts: xr.Dataset,
    unconditional: xr.Dataset,
    real: xr.Dataset,
    periods: dict[str, np.ndarray],
    lags: list[int],
    modes: int,
    memo: dict[tuple, SetSummary] | None = None,
) -> dict[str, Any]:
    """Every figure, per variable (:mod:`pipeline.climate`): ``rollouts`` (member, frame, lat, lon; coordinate
    ``time`` along frame: the frames' valid times) against the real period ``periods["period"]`` (indices into
    ``real``'s time), ``unconditional`` (sample, frame, lat, lon) against ``periods["season"]`` (the period's
    fields of their season), each beside the training period (``periods["train"]``; for the clips its fields of
    their season, ``periods["train_season"]``). Returns ``{"variables": {v: {...}}, "score": float, "stable":
    bool}``. A real period is summarised once per ``memo`` (a dict the caller keeps for this one ``real``, as
    :class:`pipeline.point_climate.ClimateData` does, keyed by the variable, the period's time indices, lags and
    modes): a period equal to another (``train_season`` is ``train`` where the data have no seasonal cycle) or asked
    again (a point's other guidance weights) is read once."""
    times = real["time"].values
    memo = {} if memo is None else memo
    out: dict[str, Any] = {}
    for v in rollouts.data_vars:
        series = held(real[v])  # lazy where ``real`` is a large store: each period is read a block at a time

        def real_summary(k: str, lags: list[int], v: str = str(v), series: xr.DataArray = series) -> SetSummary:
            key = (v, periods[k].tobytes(), tuple(lags), modes)
            if key not in memo:
                memo[key] = summarise(series.isel(time=periods[k]), lags, modes)
            return memo[key]

        period, train = (real_summary(k, lags) for k in ("period", "train"))
        roll = rollouts[v].rename({"member": "case"}).drop_vars("time", errors="ignore")
        cycles = (
            seasonal_cycle(metrics.area_mean(roll).values, rollouts["time"].values),
            *(seasonal_cycle(s.area_mean, times[periods[k]]) for s, k in ((period, "period"), (train, "train"))),
        )
        res = {"rollouts": _set(roll, period, train, lags, modes, cycles if all(cycles) else None)}
        unc = unconditional[v].rename({"sample": "case"}).drop_vars("time", errors="ignore")
        unc_lags = [k for k in lags if k < unc.sizes["frame"]] or [1]
        season, train_season = (real_summary(k, unc_lags) for k in ("season", "train_season"))
        res["unconditional"] = _set(unc, season, train_season, unc_lags, modes)
        res["stability"] = stability(rollouts[v], train)
        drift = drift_yardstick(rollouts[v].drop_vars("time", errors="ignore"), series, lead="frame")
        res["drift"] = drift
        res["rollouts"]["ratios"] |= _drift_ratios(drift)
        out[str(v)] = res
    return {
        "variables": out,
        "score": climate_score(out),
        "stable": all(r["stability"]["stable"] for r in out.values()),
    }


def climate_score(variables: dict[str, Any]) -> float:
    """The geometric mean of every finite ratio over sets and variables (infinite where a rollout is unstable or
    a ratio is infinite): lower is better, 1 = as close to the period as the training period is."""
    values = []
    for res in variables.values():
        if not res["stability"]["stable"]:
            return float("inf")
        for name in ("rollouts", "unconditional"):
            values += [x for x in res[name]["ratios"].values() if not np.isnan(x)]
    if not values:
        return float("nan")
    if not np.all(np.isfinite(values)):
        return float("inf")
    return float(np.exp(np.mean(np.log(np.maximum(values, _TINY)))))


def flat_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Scalars for MLflow: ``climate_score``, ``climate_<set>_<figure>_ratio_<variable>`` and ``..._error_...`` for
    every figure, the headline figures ``climate_<set>_<figure>_<variable>`` and the stability fractions."""
    flat: dict[str, float] = {"climate_score": result["score"]}
    for v, res in result["variables"].items():
        for name in ("rollouts", "unconditional"):
            r = res[name]
            flat |= {f"climate_{name}_{k}_ratio_{v}": x for k, x in r["ratios"].items()}
            flat |= {f"climate_{name}_{k}_error_{v}": x for k, x in r["errors"].items()}
            for k in ("mean_bias_rms", "std_ratio", "w1_rel"):
                flat[f"climate_{name}_{k}_{v}"] = r["figures"][k]
            flat[f"climate_{name}_eof1_pattern_correlation_{v}"] = r["figures"]["eof_pattern_correlation"][0]
        for k in ("finite_fraction", "inside_range_fraction"):
            flat[f"climate_rollouts_{k}_{v}"] = res["stability"][k]
    for v, res in result.get("response", {}).items():  # the forced response (experiments with forcings)
        for cand in [c for c, r in res.items() if isinstance(r, dict) and "map_rmse" in r]:  # every candidate
            flat |= {
                f"response_{cand}_{k}_{v}": res[cand][k]["value"] for k in ("map_rmse", "area_bias", "trend_error")
            }
    return {k: float(x) for k, x in flat.items() if x is not None and np.isfinite(x)}
