"""Samples against the real climate: how close generated fields are to the test period, beside how close
two real periods are to each other (the yardstick for "as close as real data is to itself").

Every figure is computed the same way for each set of generated sequences (unconditional clips, long
rollouts) and for the training period, each against the test period, per variable, in physical units:

- ``w1``: Wasserstein-1 distance between the distributions of grid-cell values (cos-latitude weights),
  also as a fraction of the test period's standard deviation (``w1_rel``); the p1, p50 and p99 of the
  values (``p1`` ...) beside the test period's (``test_p1`` ...);
- ``mean_bias_rms`` / ``std_bias_rms``: area-weighted RMS of the map of the mean (standard deviation)
  over all fields minus the test period's, with the maps themselves for the figure;
- ``spectral_ratio``: summed zonal power / the test period's, per wavenumber band;
- ``autocorrelation``: at lags 1..k along each sequence, of the anomalies about the set's own mean map
  over all its fields (:func:`pipeline.metrics.autocorrelation`), beside the test period's own;
- ``drift`` (rollouts): the area mean and spatial spread against lead frame, and the change of each
  from the first to the last quarter of the rollout, beside the same change over windows of the same
  length taken from the real series (its 5-95% range over windows).

Each set is summarised once (:mod:`pipeline.fieldstats`: a real period of a large store is read a block at a time,
its values kept as a fine histogram, so the peak memory follows the grid, not the period) and every figure comes
from the summaries.

For data with a seasonal cycle the real fields compared with the unconditional clips are those within
``evaluate.climatology_window_days`` of the clips' days of year (annual or seasonal means: all).

**Same-size yardsticks.** Most figures depend on how many fields a set holds and how they are arranged: the
per-cell standard deviation over a few strongly correlated frames is smaller than over a period, the distance
between a small sample's distribution and the period's is larger, the autocorrelation of short sequences is
biased. So each set is also compared with real sets **of its own shape**: ``draws`` sets of as many sequences
of as many consecutive training-period frames (for the unconditional clips, starting in their season), each
scored against the same test fields by the same code. Their 5%, 50% and 95% quantiles are the range real data
of that size gives, and ``verdict`` says for each figure whether the generated set is ``inside``, ``below`` or
``above`` it (:func:`same_size`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from pipeline import fieldstats, metrics
from pipeline.fieldstats import SetSummary, field_curves, summarise, wasserstein1

__all__ = [
    "QUANTILES",
    "as_json",
    "assess",
    "compare",
    "drift",
    "drift_yardstick",
    "flat_metrics",
    "held",
    "quantile_name",
    "quarter_change",
    "same_size",
    "sequences",
    "summary",
    "verdict",
]

QUANTILES = (0.01, 0.5, 0.99)
# the figures of :func:`compare` that get a same-size range and a verdict (scalars, or lists / dicts per lag / band)
FIGURES = (
    "w1_rel",
    "mean_bias_rms",
    "std_bias_rms",
    "std_ratio",
    "p1",
    "p50",
    "p99",
    "autocorrelation",
    "spectral_ratio",
)
DRAWS = 50  # real sets drawn per yardstick (a 5-95% range from fewer draws is too narrow)
MIN_WINDOWS = 20  # distinct training windows a same-size range needs


def sequences(series: xr.DataArray) -> xr.DataArray:
    """A real (time, lat, lon) series as one sequence: dims (case, frame, lat, lon)."""
    return series.rename({"time": "frame"}).expand_dims("case").drop_vars("time", errors="ignore")


def _rms(field: xr.DataArray) -> float:
    return float(np.sqrt(metrics.area_mean(field**2)))


def summary(data: xr.DataArray | SetSummary, lags: Sequence[int], modes: int = 0) -> SetSummary:
    """A set's figures (:func:`pipeline.fieldstats.summarise`), or the summary given."""
    return data if isinstance(data, SetSummary) else summarise(data, lags, modes)


def quantile_name(q: float) -> str:
    """``p1`` for 0.01, ``p0.1`` for 0.001, ``p99.9`` for 0.999."""
    return f"p{q * 100:g}"


def held(series: xr.DataArray) -> xr.DataArray:
    """A series small enough to hold (four blocks of :func:`pipeline.fieldstats.summarise`) read once; a larger
    one left lazy, to be read a block at a time by each figure."""
    return series.compute() if series.size * 8 <= 4 * fieldstats.BLOCK_BYTES else series


def compare(
    candidate: xr.DataArray | SetSummary,
    test: xr.DataArray | SetSummary,
    lags: Sequence[int],
    quantiles: tuple[float, ...] = QUANTILES,
) -> dict:
    """The figures of one set of (case, frame, lat, lon) sequences against the test period, given as
    (case, frame, lat, lon) too (see :func:`sequences`), or as their summaries (:func:`summary`; then ``lags`` are
    the candidate's). Scalars and lists for JSON, plus the bias maps under ``maps`` (xarray, for the figure); the
    values' ``quantiles`` as ``p1`` ... beside ``test_p1`` ...; ``w1_error_bound``: how far ``w1`` may be from the
    exact values' distance (0 unless a set was too large to keep its values)."""
    c, t = summary(candidate, lags), summary(test, lags)
    if c.distribution.weights.sum() <= 0 or t.distribution.weights.sum() <= 0:
        msg = "realism: a set of fields has no finite values to compare"
        raise ValueError(msg)
    w1 = wasserstein1(c.distribution, t.distribution)
    cq, tq = c.distribution.quantiles(quantiles), t.distribution.quantiles(quantiles)
    mean_bias, std_bias = c.mean - t.mean, c.std - t.std
    out: dict = {
        "fields": c.fields,
        "w1": w1,
        "w1_rel": w1 / t.pooled_std if t.pooled_std > 0 else float("nan"),
        "w1_error_bound": c.distribution.resolution + t.distribution.resolution,
        "test_std": t.pooled_std,
        "mean_bias_rms": _rms(mean_bias),
        "std_bias_rms": _rms(std_bias),
        "std_ratio": float(metrics.area_mean(c.std) / metrics.area_mean(t.std)),
        "autocorrelation": list(c.autocorrelation),
        "maps": {"mean_bias": mean_bias, "std_bias": std_bias},
    }
    out |= {quantile_name(q): float(v) for q, v in zip(quantiles, cq, strict=True)}
    out |= {f"test_{quantile_name(q)}": float(v) for q, v in zip(quantiles, tq, strict=True)}
    if c.spectrum is not None and t.spectrum is not None:
        out["spectral_ratio"] = metrics.band_ratios(c.spectrum, t.spectrum)
    return out


def drift(rollouts: xr.DataArray, lead: str = "lead") -> dict[str, xr.DataArray]:
    """Area mean and area-weighted spatial standard deviation of each rollout against lead frame (rollouts: one
    dim besides ``lead`` and the grid; :func:`pipeline.fieldstats.field_curves`, as for the real series)."""
    case = next(d for d in rollouts.dims if d not in (lead, "latitude", "longitude"))
    names = {k: v for k, v in ((case, "case"), (lead, "frame")) if k != v}
    seq = rollouts.rename(names).transpose("case", "frame", "latitude", "longitude")
    template = rollouts.isel(latitude=0, longitude=0, drop=True).transpose(case, lead)
    mean, spread = (c.reshape(template.shape) for c in field_curves(seq))
    return {"area_mean": template.copy(data=mean), "spread": template.copy(data=spread)}


def quarter_change(curves: np.ndarray) -> np.ndarray:
    """Mean of the last quarter minus the mean of the first quarter of each curve (last axis)."""
    q = max(1, curves.shape[-1] // 4)
    return curves[..., -q:].mean(axis=-1) - curves[..., :q].mean(axis=-1)


def drift_yardstick(rollouts: xr.DataArray, real: xr.DataArray, lead: str = "lead") -> dict[str, float | list | None]:
    """The rollouts' change of area mean and spread from the first to the last quarter (mean over rollouts, and
    each rollout's), beside the same change over every window of as many frames in the real (time, lat, lon)
    series (its 5%, 50% and 95% quantiles; None where the series is shorter than a rollout). A rollout is one
    window: ``{k}_inside`` counts the rollouts whose own change lies in the real 5-95% range (about 90% of them for
    rollouts that drift as real data does). The mean over rollouts is compared with the same single-window range,
    which is wider than the range of a mean of independent windows: the rollouts share their start, so no real
    sample has their shape."""
    frames = rollouts.sizes[lead]
    gen = drift(rollouts, lead)
    real_curves = dict(zip(("area_mean", "spread"), field_curves(real), strict=True))  # a block at a time
    out: dict[str, float | list | None] = {"frames": frames}
    for k, curve in gen.items():
        each = quarter_change(curve.values).reshape(-1)
        out[f"{k}_change"] = float(each.mean())
        out[f"{k}_change_per_rollout"] = each.tolist()
        series = real_curves[k]
        if series.size < frames:
            out[f"real_{k}_change_q05_q50_q95"] = None
            continue
        windows = np.lib.stride_tricks.sliding_window_view(series, frames)
        q = np.quantile(quarter_change(windows), [0.05, 0.5, 0.95])
        out[f"real_{k}_change_q05_q50_q95"] = q.tolist()
        out[f"{k}_inside"] = f"{int(((each >= q[0]) & (each <= q[2])).sum())} of {each.size}"
    return out


def _valid_starts(train: np.ndarray, starts: np.ndarray, frames: int) -> np.ndarray:
    """The ``starts`` whose ``frames`` consecutive time steps all lie in the training period ``train``."""
    inside = np.zeros(int(max(train.max(), starts.max())) + frames + 1, dtype=bool)
    inside[train] = True
    run = np.convolve(inside, np.ones(frames, dtype=int), mode="valid")  # training steps in each window
    return np.array([s for s in np.unique(starts) if s < run.size and run[s] == frames], dtype=int)


def _quantiles(values: list) -> list:
    """5%, 50% and 95% over draws of a scalar figure, or of each lag / band of a list / dict figure."""
    if isinstance(values[0], dict):
        return {k: _quantiles([v[k] for v in values]) for k in values[0]}
    return np.nanquantile(np.asarray(values, dtype=np.float64), [0.05, 0.5, 0.95], axis=0).T.tolist()


def _verdict(x: object, q: list) -> object:
    if isinstance(x, dict):
        return {k: _verdict(x[k], q[k]) for k in x}
    if isinstance(x, list):
        return [_verdict(a, b) for a, b in zip(x, q, strict=True)]
    lo, _, hi = q
    if not np.isfinite(x) or not np.isfinite(lo):
        return "n/a"
    return "below" if x < lo else ("above" if x > hi else "inside")


def verdict(figures: dict, ranges: dict) -> dict:
    """For each figure with a range: ``inside``, ``below`` or ``above`` the 5-95% range real data of the same
    size gives (per lag or band for list and dict figures)."""
    return {k: _verdict(figures[k], q) for k, q in ranges.items() if k in figures}


def same_size(
    series: xr.DataArray,
    train: np.ndarray,
    starts: np.ndarray,
    shape: tuple[int, int],
    test: xr.DataArray,
    lags: list[int],
    seed: int = 0,
    draws: int = DRAWS,
) -> dict:
    """The range of every :data:`FIGURES` figure over ``draws`` real sets of ``shape`` = (sequences, frames):
    windows of consecutive training-period frames starting at ``starts`` (without repeats while there are enough),
    each compared with ``test`` like a candidate. ``{"draws", "cases", "frames", "ranges": {figure: [q05, q50,
    q95]}, "windows": distinct windows}``; no ranges where the training period holds fewer than
    :data:`MIN_WINDOWS` such windows (the draws would overlap so much that their range says nothing)."""
    cases, frames = shape
    test = summary(test, lags)  # once for every draw
    valid = _valid_starts(train, starts, frames)
    out: dict = {"draws": 0, "cases": cases, "frames": frames, "windows": int(valid.size), "ranges": {}}
    if valid.size < MIN_WINDOWS:
        return out
    rng = np.random.default_rng(seed)
    figures = []
    for _ in range(draws):
        pick = rng.choice(valid, size=cases, replace=valid.size < cases)
        real = [
            series.isel(time=slice(int(s), int(s) + frames)).reset_coords(drop=True).drop_vars("time") for s in pick
        ]
        cand = xr.concat([r.rename({"time": "frame"}) for r in real], "case")
        figures.append(compare(cand, test, lags))
    keys = [k for k in FIGURES if all(k in f for f in figures)]
    return out | {"draws": draws, "ranges": {k: _quantiles([f[k] for f in figures]) for k in keys}}


def assess(
    unconditional: xr.Dataset,
    rollouts: xr.Dataset,
    real: xr.Dataset,
    periods: dict[str, np.ndarray],
    lags: list[int],
    seed: int = 0,
) -> dict[str, dict]:
    """Every figure, per variable: ``unconditional`` (sample, frame, lat, lon) against the test-period fields
    ``periods["test_season"]`` (indices into ``real``'s time: those of the clips' season), ``rollouts`` (rollout,
    lead, lat, lon) and the training period (``periods["train"]``) against the whole test period
    (``periods["test"]``); the test period's own autocorrelation; the rollouts' drift beside the real series' (all
    of ``real``). The generated sets also get same-size ranges (:func:`same_size`; the unconditional clips' windows
    start at ``periods["train_season"]``) and a ``verdict``. Per variable: ``{set: figures}``, ``test_period`` and
    ``drift``; bias maps and drift curves stay xarray."""
    train = periods["train"]
    out: dict[str, dict] = {}
    for v in unconditional.data_vars:
        series = held(real[v])  # lazy where ``real`` is a large store: each period is read a block at a time
        test = summary(series.isel(time=periods["test"]), lags)
        season = summary(series.isel(time=periods["test_season"]), lags)
        unc = unconditional[v].rename({"sample": "case"})
        roll = rollouts[v].rename({"rollout": "case", "lead": "frame"}).drop_vars("time")
        sets = {
            "unconditional": (unc, season),
            "rollouts": (roll, test),
            "train_period": (series.isel(time=train), test),
        }
        res = {name: compare(summary(c, lags), t, lags) for name, (c, t) in sets.items()}
        for name, cand, starts in (("unconditional", unc, periods["train_season"]), ("rollouts", roll, train)):
            shape = (cand.sizes["case"], cand.sizes["frame"])
            yard = same_size(series, train, starts, shape, sets[name][1], lags, seed)
            res[name]["same_size"] = yard | {"verdict": verdict(res[name], yard["ranges"])}
        res["test_period"] = {"autocorrelation": list(test.autocorrelation)}
        res["drift"] = drift_yardstick(rollouts[v], series) | {"curves": drift(rollouts[v])}
        out[str(v)] = res
    return out


def as_json(result: dict[str, dict]) -> dict[str, dict]:
    """:func:`assess`'s result without the maps and curves (what goes to realism.json)."""
    drop = {"maps", "curves"}
    return {v: {k: {m: x for m, x in r.items() if m not in drop} for k, r in res.items()} for v, res in result.items()}


def flat_metrics(result: dict[str, dict]) -> dict[str, float]:
    """Scalars for MLflow: ``realism_<figure>_<set>_<variable>`` (and lag-1 autocorrelation, drift changes)."""
    flat: dict[str, float] = {}
    for v, res in result.items():
        for name in ("unconditional", "rollouts", "train_period"):
            r = res[name]
            for k in ("w1", "w1_rel", "mean_bias_rms", "std_bias_rms", "std_ratio"):
                flat[f"realism_{k}_{name}_{v}"] = r[k]
            flat[f"realism_lag1_autocorrelation_{name}_{v}"] = r["autocorrelation"][0]
            verdicts = r.get("same_size", {}).get("verdict", {})
            for k in ("w1_rel", "std_ratio", "mean_bias_rms", "std_bias_rms"):
                if k in verdicts and verdicts[k] != "n/a":  # 1: inside the same-size real range, 0: outside
                    flat[f"realism_{k}_{name}_inside_{v}"] = float(verdicts[k] == "inside")
        flat[f"realism_lag1_autocorrelation_test_period_{v}"] = res["test_period"]["autocorrelation"][0]
        for k in ("area_mean_change", "spread_change"):
            flat[f"realism_drift_{k}_{v}"] = res["drift"][k]
    return {k: float(x) for k, x in flat.items() if x is not None and np.isfinite(x)}
