"""Stage ``evaluate``: sweep points (checkpoint x sampler x steps, each for every guidance weight), and
``collect`` of the sweep. ``python -m pipeline evaluate`` without a point runs the missing points as one
submitit job array (see :mod:`pipeline.launch`).

For each of the first ``test_clips`` clips of the held-out test period, the first ``context_frames``
frames are given and an ensemble of ``ensemble`` members generates the rest with reconstruction
guidance. Metrics are computed per variable in physical units (denormalised): area-weighted RMSE
of the ensemble mean and bias, fair CRPS, spread/skill, rank histogram, skill per lead frame,
zonal power spectra of samples vs truth (ratio per band), lag-1 temporal autocorrelation, mean
and 99th percentile of the sample distribution vs truth.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from pipeline import metrics
from pipeline.atomic import write_text_atomic
from pipeline.config import Config
from pipeline.data.clips import ClipDataset
from pipeline.data.io import open_store
from pipeline.data.stats import denormalise, read_stats
from pipeline.data.times import format_time
from pipeline.diffusion import SAMPLERS, ReconstructionGuidance
from pipeline.diffusion.guidance import frame_mask
from pipeline.tracking import StageRun, stage_run
from pipeline.train import load_inference

__all__ = ["SCALAR_METRICS", "SWEEP_PARAMS", "collect", "evaluate_point", "missing_points", "point_path"]

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

# MLflow params of every sweep run: the same names at every point, so the compare view lines them up.
SWEEP_PARAMS = (
    "checkpoint",
    "checkpoint_step",
    "sampler",
    "steps",
    "guidance_weight",
    "ensemble",
    "test_clips",
    "context_frames",
)

log = logging.getLogger(__name__)


def point_path(cfg: Config, checkpoint: str, sampler: str, steps: int) -> Path:
    return cfg.eval_dir / checkpoint / f"{sampler}-{steps}.json"


def _device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _to_xr(arr: np.ndarray, names: list[str], lat: np.ndarray, lon: np.ndarray, member: bool) -> xr.Dataset:
    """(clip, [member,] C, frame, lat, lon) numpy -> Dataset of one variable per channel."""
    dims = (
        ("clip", "member", "frame", "latitude", "longitude") if member else ("clip", "frame", "latitude", "longitude")
    )
    return xr.Dataset(
        {n: (dims, np.take(arr, i, axis=2 if member else 1)) for i, n in enumerate(names)},
        coords={"latitude": lat, "longitude": lon},
    )


def generate_extensions(
    model: Any,
    clips: list[dict[str, torch.Tensor]],
    context: int,
    ensemble: int,
    sampler: str,
    steps: int,
    guidance: float,
    seed: int,
    device: torch.device,
    day_of_year: bool,
) -> np.ndarray:
    """Ensemble completions of each clip from its first ``context`` frames: (clip, member, C, T, H, W)."""
    out = []
    for i, c in enumerate(clips):
        x = c["x"][None].to(device).expand(ensemble, *c["x"].shape).contiguous()
        known = x * c["mask"][None].to(device)
        mask = frame_mask(x.shape[2], context, x)
        guided = ReconstructionGuidance(model, known, mask, guidance)
        g = torch.Generator(device=device).manual_seed(seed * 7919 + i)
        z = torch.randn(x.shape, generator=g, device=device)
        cond = {"doy": c["doy"][None].to(device).expand(ensemble, -1)} if day_of_year else None
        out.append(SAMPLERS[sampler](guided, z, steps, cond=cond, generator=g).float().cpu().numpy())
    return np.stack(out)


def score(forecast: xr.Dataset, truth: xr.Dataset, context: int) -> dict[str, Any]:
    """All metrics per variable on the generated (lead) frames; physical units."""
    result: dict[str, Any] = {}
    lead_f = forecast.isel(frame=slice(context, None))
    lead_t = truth.isel(frame=slice(context, None))
    for name in forecast.data_vars:
        f, y = lead_f[name], lead_t[name]
        spread, _skill, ratio = metrics.spread_skill(f, y)
        crps = metrics.crps_ensemble(f, y)
        r: dict[str, Any] = {
            "rmse": float(metrics.rmse(f, y)),
            "bias": float(metrics.bias(f, y)),
            "crps": float(metrics.area_mean(crps, list(crps.dims))),
            "spread": spread,
            "spread_skill": ratio,
            "rank_histogram": metrics.rank_histogram(f, y).tolist(),
            "rmse_per_lead": metrics.rmse(f, y, dims=["clip", "latitude", "longitude"]).values.tolist(),
            "crps_per_lead": metrics.area_mean(crps, ["clip", "latitude", "longitude"]).values.tolist(),
            "mean_sample": float(metrics.area_mean(f, list(f.dims))),
            "mean_truth": float(metrics.area_mean(y, list(y.dims))),
            "p99_sample": float(np.nanquantile(f.values, 0.99)),
            "p99_truth": float(np.nanquantile(y.values, 0.99)),
            "lag1_autocorr_sample": metrics.lag1_autocorrelation(forecast[name], "frame"),
            "lag1_autocorr_truth": metrics.lag1_autocorrelation(truth[name], "frame"),
            "units": forecast[name].attrs.get("units", ""),
        }
        if not bool(f.isnull().any()) and f.sizes["longitude"] >= 8:
            r["spectral_ratio"] = metrics.spectral_ratio(f, y.broadcast_like(f))
            r["spectrum_sample"] = metrics.zonal_power_spectrum(f).values.tolist()
            r["spectrum_truth"] = metrics.zonal_power_spectrum(y).values.tolist()
        result[str(name)] = r
    return result


def _guided_run(
    cfg: Config,
    checkpoint: str,
    sampler: str,
    steps: int,
    weight: float,
    common: dict[str, Any],
    model: Any,
    meta: dict[str, Any],
    clips: list[dict[str, torch.Tensor]],
    device: torch.device,
    truth: xr.Dataset,
    physical: Callable[[np.ndarray], xr.Dataset],
) -> dict[str, Any]:
    """Generate and score one guidance weight of a point, as its own MLflow child run. ``truth`` is the
    clips in physical units; ``physical`` turns the ensemble into the same (masked, denormalised)."""
    e = cfg.evaluate
    t0 = time.perf_counter()
    point = f"{checkpoint}/{sampler}-{steps}"
    with stage_run(
        cfg.tracking_uri,
        cfg.experiment,
        cfg.exp_dir,
        "evaluate",
        enabled=cfg.tracking.enabled,
        tags={"sweep_point": point, "guidance_weight": weight},
        run_name=f"evaluate {checkpoint} {sampler}-{steps} w{weight:g}",
    ) as run:
        with torch.no_grad():
            ens = generate_extensions(
                model,
                clips,
                e.context_frames,
                e.ensemble,
                sampler,
                steps,
                weight,
                cfg.seed,
                device,
                bool(meta["model_config"].get("day_of_year")),
            )
        gen_s = time.perf_counter() - t0
        result = {
            "guidance_weight": weight,
            "samples_per_s": len(clips) * e.ensemble / gen_s,
            "seconds": time.perf_counter() - t0,
            "variables": score(physical(ens), truth, e.context_frames),
        }
        run.log_params({**{k: common[k] for k in SWEEP_PARAMS if k in common}, "guidance_weight": weight})
        flat = {"samples_per_s": result["samples_per_s"], "seconds": result["seconds"]}
        for v, r in result["variables"].items():
            for k in SCALAR_METRICS:
                flat[f"{k}_{v}"] = r[k]
            for lead, (a, b) in enumerate(zip(r["rmse_per_lead"], r["crps_per_lead"], strict=True), start=1):
                run.log_metrics({f"rmse_lead_{v}": a, f"crps_lead_{v}": b}, step=lead)
        run.log_metrics(flat)
        run.set_tags({"checkpoint_file": str(cfg.checkpoint_dir / "inference" / f"{checkpoint}.pt")})
        run.log_dict({**common, **result}, "result.json")
    log.info(
        "evaluate %s w=%g: %s",
        point,
        weight,
        {v: {k: round(r[k], 4) for k in ("rmse", "crps", "spread_skill")} for v, r in result["variables"].items()},
    )
    return result


def evaluate_point(cfg: Config, checkpoint: str, sampler: str, steps: int) -> Path:
    """One sweep point, every guidance weight of ``evaluate.guidance_weights``; writes the point's JSON."""
    t0 = time.perf_counter()
    e = cfg.evaluate
    device = _device()
    path = cfg.checkpoint_dir / "inference" / f"{checkpoint}.pt"
    model, meta = load_inference(path, device)
    frames = int(meta["clip_frames"])
    if e.context_frames >= frames:
        msg = f"evaluate.context_frames ({e.context_frames}) must be smaller than train.clip_frames ({frames})"
        raise ValueError(msg)
    ds = ClipDataset(cfg.normalised_path, "test", frames, 1, variables=meta["variables"])
    n = min(e.test_clips, len(ds))
    idx = np.linspace(0, len(ds) - 1, n).round().astype(int)  # spread over the test period
    clips = [ds[int(i)] for i in idx]
    store = open_store(cfg.normalised_path)
    common = {
        "checkpoint": checkpoint,
        "checkpoint_step": int(meta["step"]),
        "sampler": sampler,
        "steps": steps,
        "ensemble": e.ensemble,
        "test_clips": n,
        "context_frames": e.context_frames,
        "clip_frames": frames,
        "clip_starts": [format_time(store["time"].values[int(c["start"])]) for c in clips],
    }
    # the truth in physical units, once for every weight
    masks = np.stack([c["mask"].numpy() for c in clips]).astype(bool)
    lat, lon = store["latitude"].values, store["longitude"].values
    stats = read_stats(cfg.stats_path)
    names = meta["variables"]
    raw = np.where(masks, np.stack([c["x"].numpy() for c in clips]), np.nan)
    truth = denormalise(_to_xr(raw, names, lat, lon, False), stats)

    def physical(ens: np.ndarray) -> xr.Dataset:
        return denormalise(_to_xr(np.where(masks[:, None], ens, np.nan), names, lat, lon, True), stats)

    results = [
        _guided_run(cfg, checkpoint, sampler, steps, w, common, model, meta, clips, device, truth, physical)
        for w in e.guidance_weights
    ]
    out = point_path(cfg, checkpoint, sampler, steps)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps({**common, "seconds": time.perf_counter() - t0, "results": results}, indent=2))
    return out


def missing_points(cfg: Config, force: bool = False) -> list[tuple[str, str, int]]:
    """The sweep's points without a result file (all of them with ``force``)."""
    points = [
        (ckpt, sampler, steps)
        for ckpt in cfg.eval_checkpoints()
        for sampler in cfg.evaluate.samplers
        for steps in cfg.evaluate.steps
    ]
    return [p for p in points if force or not point_path(cfg, *p).exists()]


def collect(cfg: Config, run: StageRun) -> Path:
    """One table (CSV + parquet) of the sweep, summary plots, and ``best.json`` (primary metric)."""
    import pandas as pd

    from pipeline.plots import sweep_summary

    rows = []
    for ckpt, sampler, steps in missing_points(cfg, force=True):
        res = json.loads(point_path(cfg, ckpt, sampler, steps).read_text())
        by_weight = {r["guidance_weight"]: r for r in res["results"]}
        for w in cfg.evaluate.guidance_weights:
            if w not in by_weight:
                msg = f"{point_path(cfg, ckpt, sampler, steps)} has no result for guidance weight {w}: rerun the point"
                raise ValueError(msg)
            for v, r in by_weight[w]["variables"].items():
                rows.append(
                    {
                        "checkpoint": ckpt,
                        "checkpoint_step": res["checkpoint_step"],
                        "sampler": sampler,
                        "steps": steps,
                        "guidance_weight": w,
                        "variable": v,
                        "samples_per_s": by_weight[w]["samples_per_s"],
                        **{k: r[k] for k in SCALAR_METRICS},
                    }
                )
    table = pd.DataFrame(rows)
    out = cfg.eval_dir
    table.to_csv(out / "summary.csv", index=False)
    table.to_parquet(out / "summary.parquet", index=False)
    primary = cfg.evaluate.primary_metric
    # variables in different units: rank by the metric normalised by each variable's std
    stats = read_stats(cfg.stats_path)
    table["score"] = table[primary] / table["variable"].map(lambda v: stats[v]["std"])
    per_point = table.groupby(["checkpoint", "sampler", "steps", "guidance_weight"], as_index=False)["score"].mean()
    best = per_point.sort_values("score").iloc[0]
    best_info = {
        "checkpoint": best["checkpoint"],
        "sampler": best["sampler"],
        "steps": int(best["steps"]),
        "guidance_weight": float(best["guidance_weight"]),
        "primary_metric": primary,
        "score": float(best["score"]),
        "file": str(cfg.checkpoint_dir / "inference" / f"{best['checkpoint']}.pt"),
    }
    write_text_atomic(out / "best.json", json.dumps(best_info, indent=2))
    plot = sweep_summary(table, primary, out / "summary.png")
    for p in (out / "summary.csv", out / "summary.parquet", out / "best.json", plot):
        run.log_artifact(p)
        run.log_to_parent(p, "evaluation")
    run.log_metrics({f"best_{primary}_score": best_info["score"], "points": len(per_point)})
    run.set_tags(
        {
            "best_checkpoint": best_info["checkpoint"],
            "best_sampler": f"{best_info['sampler']}-{best_info['steps']}",
            "best_guidance_weight": best_info["guidance_weight"],
        }
    )
    log.info("best: %s", best_info)
    return out / "best.json"
