"""Scoring shared by the sweep points (:mod:`pipeline.evaluate`) and the reference forecasts
(:mod:`pipeline.references`): which test clips, the truth on them, the metrics, and skill with
bootstrap intervals from per-clip scores.

Checkpoints and references must be scored on exactly the same clips and lead frames by the same
code, or their skill scores and paired differences mean nothing: :func:`pipeline.data.evalclips.pick_test_clips` is
the one place that picks the clips, :func:`score` the one place that scores a forecast.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from pipeline import metrics
from pipeline.config import Config
from pipeline.data.evalclips import EvalSet, read_eval_clips
from pipeline.tracking import StageRun

__all__ = [
    "REFERENCES",
    "REFERENCE_PARAMS",
    "SCALAR_METRICS",
    "SKILL",
    "SWEEP_PARAMS",
    "ScoreStream",
    "clip_statistics",
    "energy",
    "load_eval_clips",
    "log_scores",
    "score",
    "summarise",
]

# Scalar metrics per variable: MLflow metric names (``<metric>_<variable>``) and table columns.
SCALAR_METRICS = (
    "rmse",
    "bias",
    "crps",
    "spread",
    "spread_skill",
    "mean_sample",
    "mean_truth",
    "p99_sample",
    "p99_truth",
    "lag1_autocorr_sample",
    "lag1_autocorr_truth",
)

# MLflow params of every sweep and reference run: the same names everywhere, so the compare view lines them up.
SWEEP_PARAMS = (
    "checkpoint",
    "checkpoint_step",
    "sampler",
    "steps",
    "guidance_weight",
    "cfg_scale",
    "ensemble",
    "test_clips",
    "context_frames",
)

# The reference forecasts, computed once per experiment by the references stage.
REFERENCES = ("climatology-ensemble", "climatology-mean", "persistence")
# A reference's sweep params (its name goes in ``checkpoint``): the same names as a point's, so MLflow's compare
# view and the table line the references up beside the points.
REFERENCE_PARAMS = {"checkpoint_step": 0, "sampler": "reference", "steps": 0, "guidance_weight": 0.0, "cfg_scale": 1.0}

# Skill scores: name -> (score, reference). The probabilistic climatology is the reference for the CRPS,
# its mean (the best constant forecast for the squared error) for the RMSE.
SKILL = {
    "crpss_climatology": ("crps", "climatology-ensemble"),
    "crpss_persistence": ("crps", "persistence"),
    "rmse_ss_climatology": ("rmse", "climatology-mean"),
    "rmse_ss_persistence": ("rmse", "persistence"),
}


def load_eval_clips(cfg: Config, frames: int, variables: list[str] | None = None, split: str = "test") -> EvalSet:
    """The evaluation clips of ``split``, with their truth in physical units, read a batch at a time: ``val`` (``evaluate.val_clips`` /
    ``val_stride``), on which the sweep's best point is chosen, or ``test`` (``evaluate.test_clips`` /
    ``test_stride``), on which the chosen point is reported."""
    e = cfg.evaluate
    if e.context_frames >= frames:
        msg = f"evaluate.context_frames ({e.context_frames}) must be smaller than train.clip_frames ({frames})"
        raise ValueError(msg)
    return read_eval_clips(
        cfg.normalised_path, cfg.stats_path, split, frames, e.context_frames, *e.clips(split), variables=variables
    )


def score(forecast: xr.Dataset, truth: xr.Dataset, context: int) -> dict[str, Any]:
    """All metrics per variable on the lead frames (after the ``context`` given ones); physical units.

    A forecast with a ``member`` dim is an ensemble, one without is deterministic (CRPS = absolute
    error, spread 0). ``per_clip`` keeps the area-mean CRPS and squared error of the (ensemble mean)
    forecast per clip and lead frame: every headline score is a mean of these, so intervals and paired
    differences can be resampled from them later; RMSE = sqrt(mean squared error). The same as
    :class:`ScoreStream` given every clip at once.
    """
    stream = ScoreStream(context, forecast.sizes["clip"])
    stream.add(forecast, truth)
    return stream.result()


class _VariableSums:
    """What :class:`ScoreStream` keeps of one variable between batches."""

    def __init__(self, values: int, units: str) -> None:
        self.units = units
        self.crps: list[np.ndarray] = []
        self.se: list[np.ndarray] = []
        self.bias, self.var, self.err2 = metrics.RunningMean(), metrics.RunningMean(), metrics.RunningMean()
        self.mean_sample, self.mean_truth = metrics.RunningMean(), metrics.RunningMean()
        self.p99_sample = metrics.RunningQuantile(0.99, values)
        self.p99_truth = metrics.RunningQuantile(0.99, values)
        self.lag1_sample, self.lag1_truth = metrics.RunningLag1(), metrics.RunningLag1()
        self.spec_sample, self.spec_truth = metrics.RunningSpectrum(), metrics.RunningSpectrum()
        self.ranks: np.ndarray | None = None
        self.members = 0

    def add(self, full: xr.DataArray, truth_full: xr.DataArray, context: int) -> None:
        f, y = full.isel(frame=slice(context, None)), truth_full.isel(frame=slice(context, None))
        mean = f.mean("member") if "member" in f.dims else f
        self.members = f.sizes.get("member", 0)
        self.crps.append(
            metrics.area_mean(metrics.crps_ensemble(f, y), metrics.SPACE).transpose("clip", "frame").values
        )
        self.se.append(metrics.mse(f, y, dims=metrics.SPACE).transpose("clip", "frame").values)
        self.bias.add(mean - y)
        self.err2.add((mean - y) ** 2)
        if self.members:
            self.var.add(f.var("member", ddof=1))
        ranks = metrics.rank_histogram(f, y)
        self.ranks = ranks if self.ranks is None else self.ranks + ranks
        self.mean_sample.add(f)
        self.mean_truth.add(y)
        self.p99_sample.add(f.values)
        self.p99_truth.add(y.values)
        self.lag1_sample.add(full, "frame")
        self.lag1_truth.add(truth_full, "frame")
        if f.sizes["longitude"] >= 8:
            self.spec_sample.add(f)
            self.spec_truth.add(y)
        else:
            self.spec_sample.complete = False

    def result(self) -> dict[str, Any]:
        crps, se = np.concatenate(self.crps), np.concatenate(self.se)
        skill = float(np.sqrt(self.err2.value))
        spread = float(np.sqrt(self.var.value)) if self.members else 0.0
        m = self.members
        if not m:
            ratio = 0.0
        else:
            ratio = float(np.sqrt((m + 1) / m) * spread / skill) if skill > 0 else float("nan")
        r: dict[str, Any] = {
            "rmse": float(np.sqrt(se.mean())),
            "bias": self.bias.value,
            "crps": float(crps.mean()),
            "spread": spread,
            "spread_skill": ratio,
            "rank_histogram": self.ranks.tolist() if self.ranks is not None else [],
            "rmse_per_lead": np.sqrt(se.mean(axis=0)).tolist(),
            "crps_per_lead": crps.mean(axis=0).tolist(),
            "mean_sample": self.mean_sample.value,
            "mean_truth": self.mean_truth.value,
            "p99_sample": self.p99_sample.value,
            "p99_truth": self.p99_truth.value,
            "lag1_autocorr_sample": self.lag1_sample.value,
            "lag1_autocorr_truth": self.lag1_truth.value,
            "units": self.units,
            "per_clip": {"crps": crps.tolist(), "se": se.tolist()},
        }
        ps, pt = self.spec_sample.value, self.spec_truth.value
        if ps is not None and pt is not None:
            r["spectral_ratio"] = metrics.band_ratios(ps, pt)
            r["spectrum_sample"] = ps.values.tolist()
            r["spectrum_truth"] = pt.values.tolist()
        return r


class ScoreStream:
    """:func:`score` of a forecast given a batch of clips at a time, so a sweep point's memory holds one batch's
    ensemble instead of every clip's: the same figures as one call on all the clips, up to the order of the
    floating-point sums (``tests/test_skill.py``), with ``clips`` the number of clips all the batches hold (it
    bounds what the 99th percentiles keep). Ties in the rank histogram are broken at random per batch
    (continuous fields have none)."""

    def __init__(self, context: int, clips: int) -> None:
        self.context, self.clips = context, clips
        self.variables: dict[str, _VariableSums] = {}

    def add(self, forecast: xr.Dataset, truth: xr.Dataset) -> None:
        """Score a batch: ``forecast`` (clip, [member,] frame, latitude, longitude) per variable, ``truth`` the
        same clips (clip, frame, latitude, longitude); both in physical units, NaN where masked."""
        for name in forecast.data_vars:
            f = forecast[name]
            if str(name) not in self.variables:
                per_clip = f.size // f.sizes["clip"] // f.sizes["frame"] * max(f.sizes["frame"] - self.context, 0)
                units = f.attrs.get("units", "")
                self.variables[str(name)] = _VariableSums(per_clip * self.clips, units)
            self.variables[str(name)].add(f, truth[name], self.context)

    def result(self) -> dict[str, Any]:
        """Every variable's figures (the layout of :func:`score`)."""
        return {name: v.result() for name, v in self.variables.items()}


def energy(forecast: np.ndarray, truth: np.ndarray, lat: np.ndarray, context: int) -> dict[str, Any]:
    """The fair energy score of every clip and lead frame over all variables and grid cells together, in
    normalised units (each variable in units of its training standard deviation, cells weighted by area, weights
    summing to 1, so a score is an RMS-like distance): ``forecast`` (clip, [member,] C, T, H, W) and ``truth``
    (clip, C, T, H, W) normalised, NaN where masked. ``{"energy_score": mean, "per_clip": (clip, lead)}``: the
    multivariate score beside the per-variable CRPS (neither ``scores`` nor xskillscore has one)."""
    f = forecast if forecast.ndim == 6 else forecast[:, None]
    c, t, h, w = truth.shape[1:]
    weights = np.broadcast_to(np.cos(np.deg2rad(lat)).clip(min=0.0)[None, :, None], (c, h, w)).ravel()
    weights = weights / weights.sum()
    per = np.stack(
        [
            metrics.energy_score(
                f[:, :, :, k].reshape(f.shape[0], f.shape[1], -1), truth[:, :, k].reshape(truth.shape[0], -1), weights
            )
            for k in range(context, t)
        ],
        axis=1,
    )
    return {"energy_score": float(per.mean()), "per_clip": per.tolist()}


def clip_statistics(
    per_clip: Mapping[str, Any], refs: Mapping[str, Mapping[str, Any]], idx: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Scores and skill of one forecast and variable on resampled clips.

    ``per_clip`` and each reference's: ``{"crps": (clip, lead), "se": (clip, lead)}``; ``idx`` (B, clips):
    resampled clip indices, the same for the forecast and its references (paired). Returns
    ``name -> (overall (B,), per lead (B, lead))`` for crps, rmse and every :data:`SKILL` whose reference
    is in ``refs``. Skill is ``1 - mean score / mean reference score`` on the same resampled clips.
    """

    def scores_of(pc: Mapping[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        crps = np.asarray(pc["crps"], dtype=np.float64)[idx].mean(axis=1)
        se = np.asarray(pc["se"], dtype=np.float64)[idx].mean(axis=1)
        return {"crps": (crps.mean(axis=-1), crps), "rmse": (np.sqrt(se.mean(axis=-1)), np.sqrt(se))}

    out = scores_of(per_clip)
    for name, (metric, ref) in SKILL.items():
        if ref in refs:
            r = scores_of(refs[ref])[metric]
            out[name] = (metrics.skill_score(out[metric][0], r[0]), metrics.skill_score(out[metric][1], r[1]))
    return out


def summarise(
    per_clip: Mapping[str, Any],
    refs: Mapping[str, Mapping[str, Any]],
    idx: np.ndarray | None = None,
    confidence: float = 0.9,
) -> dict[str, Any]:
    """Point estimates of crps, rmse and skill (``name``, ``name_per_lead``) and, given bootstrap indices
    ``idx``, their intervals (``name_lo``, ``name_hi``, ``name_per_lead_lo``, ``name_per_lead_hi``)."""
    n = len(per_clip["crps"])
    est = clip_statistics(per_clip, refs, np.arange(n)[None])
    boot = clip_statistics(per_clip, refs, idx) if idx is not None else None
    out: dict[str, Any] = {}
    for k, (total, lead) in est.items():
        out[k] = float(total[0])
        out[f"{k}_per_lead"] = lead[0].tolist()
        if boot is not None:
            lo, hi = metrics.percentile_interval(boot[k][0], confidence)
            llo, lhi = metrics.percentile_interval(boot[k][1], confidence)
            out |= {f"{k}_lo": float(lo), f"{k}_hi": float(hi)}
            out |= {f"{k}_per_lead_lo": llo.tolist(), f"{k}_per_lead_hi": lhi.tolist()}
    return out


def log_scores(run: StageRun, params: Mapping[str, Any], variables: Mapping[str, Mapping[str, Any]]) -> None:
    """One sweep point or reference as MLflow params and metrics, under the same names for every run:
    the SWEEP_PARAMS, ``<metric>_<variable>`` for the scalar metrics and skill scores, and per lead
    frame (as the step) ``rmse_lead_<variable>``, ``crps_lead_<variable>`` and the skill scores."""
    run.log_params({k: params[k] for k in SWEEP_PARAMS})
    flat: dict[str, float] = {}
    for v, r in variables.items():
        for k in (*SCALAR_METRICS, *SKILL):
            if k in r:
                flat[f"{k}_{v}"] = r[k]
        per_lead = {"rmse": r["rmse_per_lead"], "crps": r["crps_per_lead"]}
        per_lead |= {k: r[f"{k}_per_lead"] for k in SKILL if f"{k}_per_lead" in r}
        for lead in range(len(r["rmse_per_lead"])):
            run.log_metrics({f"{k}_lead_{v}": vals[lead] for k, vals in per_lead.items()}, step=lead + 1)
    run.log_metrics(flat)
