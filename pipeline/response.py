"""The forced response of an emulator, judged against a held-out GCM run and against pattern scaling (issue 29).

**Pattern scaling** (Santer et al. 1990; Mitchell 2003; the baseline that beats deep emulators on most ClimateBench
variables, Watson-Parris et al. 2022) regresses each cell's value on the forcing over the training years,
``x(t, cell) = a(cell) + b(cell) F(t)``, here with ``F`` the network's own forcing input (log CO2), and predicts a
scenario from its forcing alone: it has the forced trend and no internal variability.

The scores compare a prediction with the held-out run over the same years: the error of the period-mean map (the
warming pattern: the baseline is the same for every candidate, so it cancels), the bias of the area mean, and the
error of the area mean's linear trend (K per decade). Intervals come from a moving-block bootstrap over the years,
the same resampled years for every candidate (paired), so the interval of a difference between candidates is
meaningful; with 38 years the blocks (5 years) keep the interannual persistence.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["block_indices", "fit_pattern_scaling", "predict_pattern_scaling", "response_scores"]


def fit_pattern_scaling(x: np.ndarray, forcing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares ``a`` and ``b`` (each (lat, lon)) of ``x`` (time, lat, lon) on ``forcing`` (time,), per cell;
    cells with a missing value at any step are NaN."""
    f = np.asarray(forcing, dtype=np.float64)
    if f.ndim != 1 or f.size != x.shape[0] or f.size < 3 or np.ptp(f) == 0:
        msg = f"pattern scaling needs a varying forcing of one value per step ({x.shape[0]}), got {f.shape}"
        raise ValueError(msg)
    design = np.stack([np.ones_like(f), f], axis=1)  # (time, 2)
    flat = np.asarray(x, dtype=np.float64).reshape(f.size, -1)
    coef, *_ = np.linalg.lstsq(design, np.nan_to_num(flat), rcond=None)
    coef[:, ~np.isfinite(flat).all(axis=0)] = np.nan
    return coef[0].reshape(x.shape[1:]), coef[1].reshape(x.shape[1:])


def predict_pattern_scaling(fit: tuple[np.ndarray, np.ndarray], forcing: np.ndarray) -> np.ndarray:
    """(time, lat, lon) predicted from the fitted ``a``, ``b`` at the forcing values ``forcing`` (time,)."""
    a, b = fit
    return a[None] + b[None] * np.asarray(forcing, dtype=np.float64)[:, None, None]


def block_indices(n: int, block: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, n) indices of a moving-block bootstrap of a series of ``n``: blocks of ``block`` consecutive
    steps starting anywhere, joined and cut to ``n``."""
    block = max(1, min(block, n))
    starts = rng.integers(0, n - block + 1, size=(resamples, -(-n // block)))
    idx = (starts[:, :, None] + np.arange(block)[None, None]).reshape(resamples, -1)
    return idx[:, :n]


def _weights(lat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    w = np.cos(np.deg2rad(np.asarray(lat, dtype=np.float64)))[:, None] * np.ones(shape[-1])
    return w / w.sum()


def _scores(pred: np.ndarray, truth: np.ndarray, w: np.ndarray, years: np.ndarray) -> dict[str, float]:
    ok = np.isfinite(truth).all(axis=0) & np.isfinite(pred).all(axis=0)
    ww = np.where(ok, w, 0.0)
    ww = ww / ww.sum()
    err = pred.mean(axis=0) - truth.mean(axis=0)
    area_p = np.nansum(pred * ww, axis=(1, 2))
    area_t = np.nansum(truth * ww, axis=(1, 2))
    trend = (np.polyfit(years, area_p, 1)[0] - np.polyfit(years, area_t, 1)[0]) * 10.0
    return {
        "map_rmse": float(np.sqrt(np.nansum(np.where(ok, err, 0.0) ** 2 * ww))),
        "area_bias": float(area_p.mean() - area_t.mean()),
        "trend_error": float(trend),
    }


def response_scores(
    truth: np.ndarray,
    candidates: dict[str, np.ndarray],
    lat: np.ndarray,
    years: np.ndarray,
    resamples: int = 1000,
    block: int = 5,
    confidence: float = 0.9,
    seed: int = 0,
) -> dict[str, Any]:
    """Scores (:func:`_scores`) of each candidate (time, lat, lon; an ensemble (member, time, lat, lon) is scored by
    its mean) against ``truth`` (time, lat, lon) over ``years``, each with a paired moving-block bootstrap interval;
    and, for every candidate after the first, the interval of its difference from the first."""
    w = _weights(lat, truth.shape)
    preds = {k: (v.mean(axis=0) if v.ndim == truth.ndim + 1 else v) for k, v in candidates.items()}
    rng = np.random.default_rng(seed)
    boot = block_indices(truth.shape[0], block, resamples, rng)
    lo, hi = (1 - confidence) / 2, 1 - (1 - confidence) / 2
    point = {k: _scores(p, truth, w, years) for k, p in preds.items()}
    draws = {k: [_scores(p[i], truth[i], w, years[i]) for i in boot] for k, p in preds.items()}
    out: dict[str, Any] = {"years": [int(years[0]), int(years[-1])], "confidence": confidence, "block": block}
    first = next(iter(preds))
    for k in preds:
        out[k] = {}
        for metric, value in point[k].items():
            d = np.array([s[metric] for s in draws[k]])
            out[k][metric] = {"value": value, "interval": [float(np.quantile(d, lo)), float(np.quantile(d, hi))]}
            if k != first and metric == "map_rmse":
                diff = d - np.array([s[metric] for s in draws[first]])
                out[k][f"{metric}_minus_{first}"] = {
                    "value": value - point[first][metric],
                    "interval": [float(np.quantile(diff, lo)), float(np.quantile(diff, hi))],
                }
    return out
