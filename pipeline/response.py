"""The forced response of an emulator, judged against a held-out GCM run and against pattern scaling (issue 29).

**Pattern scaling** (Santer et al. 1990; Mitchell 2003; the baseline that beats deep emulators on most ClimateBench
variables, Watson-Parris et al. 2022) regresses each cell's value on the forcing over the training years,
``x(t, cell) = a(cell) + b(cell) F(t)``, here with ``F`` the network's own forcing input (log CO2), and predicts a
scenario from its forcing alone: it has the forced trend and no internal variability. Where the network is also
given the forcing's lagged responses (``data.forcings[].memory``), **lagged pattern scaling** regresses each cell on
all of them: the linear model of the network's own inputs, the one to beat.

The scores compare a prediction with the held-out run over the same years: the error of the period-mean map (the
warming pattern: the baseline is the same for every candidate, so it cancels), the bias of the area mean, and the
error of the area mean's linear trend (K per decade). Intervals come from a moving-block bootstrap over the years,
the same resampled years for every candidate (paired), so the interval of a difference between candidates is
meaningful; with 38 years the blocks (5 years) keep the interannual persistence.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "block_indices",
    "fit_pattern_scaling",
    "pattern_scaling_candidates",
    "predict_pattern_scaling",
    "response_scores",
]


def fit_pattern_scaling(x: np.ndarray, forcing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares ``a`` (lat, lon) and ``b`` of ``x`` (time, lat, lon) on ``forcing``, per cell: ``b`` is
    (lat, lon) for one forcing series (time,), (k, lat, lon) for ``k`` regressors (time, k) such as a forcing and its
    lagged responses; cells with a missing value at any step are NaN."""
    f = np.asarray(forcing, dtype=np.float64)
    f2 = f[:, None] if f.ndim == 1 else f
    if f2.ndim != 2 or f2.shape[0] != x.shape[0] or f2.shape[0] < f2.shape[1] + 2 or np.any(np.ptp(f2, axis=0) == 0):
        msg = f"pattern scaling needs varying forcings of one value per step ({x.shape[0]}), got {f.shape}"
        raise ValueError(msg)
    design = np.concatenate([np.ones((f2.shape[0], 1)), f2], axis=1)  # (time, 1 + k)
    flat = np.asarray(x, dtype=np.float64).reshape(f2.shape[0], -1)
    coef, *_ = np.linalg.lstsq(design, np.nan_to_num(flat), rcond=None)
    coef[:, ~np.isfinite(flat).all(axis=0)] = np.nan
    b = coef[1:].reshape(f2.shape[1], *x.shape[1:])
    return coef[0].reshape(x.shape[1:]), (b[0] if f.ndim == 1 else b)


def predict_pattern_scaling(fit: tuple[np.ndarray, np.ndarray], forcing: np.ndarray) -> np.ndarray:
    """(time, lat, lon) predicted from the fitted ``a``, ``b`` at the forcing values ``forcing`` ((time,) or
    (time, k), as fitted)."""
    a, b = fit
    f = np.asarray(forcing, dtype=np.float64)
    if f.ndim == 1:
        return a[None] + b[None] * f[:, None, None]
    return a[None] + np.einsum("tk,kij->tij", f, b)


def pattern_scaling_candidates(x_train: np.ndarray, f_train: np.ndarray, f_pred: np.ndarray) -> dict[str, np.ndarray]:
    """Pattern scaling fitted on ``x_train`` (time, lat, lon) and predicted at ``f_pred``: ``pattern_scaling`` on
    the first column of the forcings (time, k), and ``pattern_scaling_lagged`` on all ``k`` where there are more."""
    f_train, f_pred = np.atleast_2d(f_train.T).T, np.atleast_2d(f_pred.T).T
    out = {"pattern_scaling": predict_pattern_scaling(fit_pattern_scaling(x_train, f_train[:, 0]), f_pred[:, 0])}
    if f_train.shape[1] > 1:
        out["pattern_scaling_lagged"] = predict_pattern_scaling(fit_pattern_scaling(x_train, f_train), f_pred)
    return out


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
