"""A sweep point as a climate model: its free-running rollouts over the scored period and its unconditional clips,
generated with the point's sampler, steps and guidance, then judged by :mod:`pipeline.climate` against the period
(validation when choosing, test when reporting) beside the training period.

The rollouts start from the period's first ``evaluate.context_frames`` real frames and run ``evaluate.climate.frames``
frames (by default the period's length) by reconstruction-guided extension, window after window, as ``sample``'s
rollouts do; only the generated frames are judged. The unconditional clips are dated at the period's start and
compared with the period's fields of their season (within ``evaluate.climatology_window_days``). Every rollout and
clip has its own seed (:func:`pipeline.seeding.climate`), the same at every point, so points differ by the model.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from pipeline import climate, seeding
from pipeline.config import Config
from pipeline.data.conditions import Conditioner, fractional_year, store_forcings
from pipeline.data.evalclips import as_dataset
from pipeline.data.io import open_store
from pipeline.data.stats import denormalise, read_stats, split_steps
from pipeline.data.times import climatology_candidates, regular_times
from pipeline.diffusion import ClassifierFreeGuidance, extend
from pipeline.diffusion.objective import randn
from pipeline.diffusion.samplers import get_sampler
from pipeline.response import pattern_scaling_candidates, response_scores

__all__ = ["ClimateData", "assess_point", "load_climate_data"]

log = logging.getLogger(__name__)


@dataclass
class ClimateData:
    """What a point's climate figures need from the stores: the rollouts' given frames (normalised: (frame, C, lat,
    lon)), the store in physical units (lazy: :func:`pipeline.climate.assess` reads one variable at a time, so the
    peak memory is one variable's series, not every variable of every split twice), the periods (indices into time:
    ``period``, ``train``, ``season``, ``train_season``), the rollouts' valid times and the clips' dates."""

    names: list[str]
    init: np.ndarray
    real: xr.Dataset
    periods: dict[str, np.ndarray]
    frames: int  # per rollout, the given ones included
    roll_times: np.ndarray
    clip_dates: np.ndarray
    stats: dict[str, Any]
    var_attrs: dict[str, dict[str, Any]]
    summaries: dict[tuple, Any] = field(default_factory=dict)  # the real periods' summaries, made once per point
    forcing: np.ndarray | None = None  # (time, k) the store's forcings (normalised, lagged ones too), where it has


def load_climate_data(cfg: Config, names: list[str], clip_frames: int, split: str) -> ClimateData:
    """The stores read once per sweep point; the rollouts cover the ``split`` period (``evaluate.climate.frames``
    frames, by default its length) of one run (with ``data.runs``: the first run with that split, whose forcings
    and boundary fields the rollouts are given)."""
    e = cfg.evaluate
    store = open_store(cfg.normalised_path)
    times = store["time"].values
    period, train = split_steps(store, split, cfg.data.split_run(split)), split_steps(store, "train")
    frames = e.climate.frames or int(period.size)
    if period.size == 0 or frames <= e.context_frames:
        msg = (
            f"climate figures: the {split} period (data.split.{split}) holds {period.size} frames, a rollout needs "
            f"more than the {e.context_frames} given (set evaluate.climate.frames, or evaluate.climate.members: 0)"
        )
        raise ValueError(msg)
    given = slice(int(period[0]), int(period[0]) + e.context_frames)
    init = np.stack([store[n].isel(time=given).values for n in names], axis=1)
    stats = read_stats(cfg.stats_path)
    var_attrs = {n: dict(store[n].attrs) for n in names}
    real = denormalise(store[names].reset_coords(drop=True), stats)  # lazy (dask): nothing read yet
    first = np.arange(period[0], min(period[0] + clip_frames, times.size))
    window = e.climatology_window_days
    periods = {
        "period": period,
        "train": train,
        "season": np.unique(np.concatenate(climatology_candidates(times, period, first, window)[0])),
        "train_season": np.unique(np.concatenate(climatology_candidates(times, train, first, window)[0])),
    }
    return ClimateData(
        names=names,
        init=init,
        real=real,
        periods=periods,
        frames=frames,
        roll_times=regular_times(times, times[period[0]], frames + clip_frames),
        clip_dates=regular_times(times, times[period[0]], clip_frames),
        stats=stats,
        var_attrs=var_attrs,
        forcing=store_forcings(store),
    )


@dataclass(frozen=True)
class _How:
    sampler: str
    steps: int
    guidance: float
    cfg_scale: float
    context: int
    clip_frames: int
    conditions: Conditioner  # day of year, static fields and forcings for any dates


def _generators(seed: int, kind: int, items: list[int], device: torch.device) -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(seeding.climate(seed, kind, i)) for i in items]


def _rollouts(model: Any, sample: Any, cd: ClimateData, how: _How, cfg: Config, device: torch.device) -> np.ndarray:
    """``evaluate.climate.members`` free rollouts from the period's first real frames: (member, C, frame, H, W)."""
    c = cfg.evaluate.climate
    m = how.context
    init = torch.from_numpy(np.nan_to_num(cd.init[:m]).transpose(1, 0, 2, 3)).float().to(device)
    out = []
    windows = -(-(cd.frames - m) // (how.clip_frames - m))  # extension windows per rollout
    bar = tqdm(total=windows * -(-c.members // c.batch_size), desc="climate rollouts (windows)", disable=None)
    for first in range(0, c.members, c.batch_size):
        batch = list(range(first, min(first + c.batch_size, c.members)))

        def cond_for(window_start: int, window: int, n: int = len(batch)) -> dict[str, torch.Tensor] | None:
            last = cd.roll_times[cd.frames - 1]  # the last window's frames past it are dropped
            return how.conditions([cd.roll_times[window_start : window_start + window]] * n, device, [last] * n)

        x = extend(
            model,
            functools.partial(sample, steps=how.steps),
            init[None].expand(len(batch), *init.shape).contiguous(),
            cd.frames,
            how.clip_frames,
            how.guidance,
            overlap=m,
            cond_for_window=cond_for,
            generator=_generators(cfg.seed, 1, batch, device),
            callback=lambda _: bar.update(1),
        )
        out.append(x.float().cpu().numpy())
        log.info("climate rollouts %d-%d of %d: %d frames each", batch[0] + 1, batch[-1] + 1, c.members, cd.frames)
    bar.close()
    return np.concatenate(out)


def _unconditional(
    model: Any, sample: Any, cd: ClimateData, how: _How, cfg: Config, device: torch.device
) -> np.ndarray:
    """``evaluate.climate.unconditional`` clips dated at the period's start: (sample, C, frame, H, W)."""
    c = cfg.evaluate.climate
    shape = (len(cd.names), how.clip_frames, *cd.init.shape[2:])
    out = []
    for first in range(0, c.unconditional, c.batch_size):
        batch = list(range(first, min(first + c.batch_size, c.unconditional)))
        gens = _generators(cfg.seed, 0, batch, device)
        cond = how.conditions([cd.clip_dates] * len(batch), device)
        z = randn((len(batch), *shape), gens, device, torch.float32)
        out.append(sample(model, z, how.steps, cond=cond, generator=gens).float().cpu().numpy())
    return np.concatenate(out)


def _physical(arr: np.ndarray, cd: ClimateData, case: str, times: np.ndarray | None) -> xr.Dataset:
    """(case, C, frame, H, W) normalised -> physical Dataset (case, frame, lat, lon), ``time`` along frame."""
    lat, lon = cd.real["latitude"], cd.real["longitude"]
    coords: dict[str, Any] = {"latitude": lat, "longitude": lon}
    if times is not None:
        coords["time"] = ("frame", times)
    ds = as_dataset(arr, cd.names, (case, "frame", "latitude", "longitude"), coords, attrs=cd.var_attrs)
    return denormalise(ds, cd.stats)


def forced_response(rollouts: xr.Dataset, cd: ClimateData, given: int, seed: int) -> dict[str, Any]:
    """Per variable: the rollouts' period-mean map, area mean and trend against the real period
    (:func:`pipeline.response.response_scores`), beside pattern scaling fitted on the training steps (regressed on
    the normalised forcing, the network's input: the same predictions as on the raw forcing): on the store's first
    forcing, and, where the network also reads lagged responses or other forcings, on all of them
    (``pattern_scaling_lagged``). Trends are per decade of the data's calendar."""
    period = cd.periods["period"][given : cd.frames]
    train = cd.periods["train"]
    f = cd.forcing
    years = fractional_year(np.asarray(cd.real["time"].values)[period])
    out = {}
    for n in cd.names:
        x_train = cd.real[n].isel(time=train).values.astype(np.float64)
        truth = cd.real[n].isel(time=period).values.astype(np.float64)
        cands = {"rollouts": rollouts[n].values[:, : period.size].astype(np.float64)}
        cands.update(pattern_scaling_candidates(x_train, f[train], f[period]))
        out[n] = response_scores(truth, cands, cd.real["latitude"].values, years, resamples=500, seed=seed)
    return out


def assess_point(
    cfg: Config, model: Any, cd: ClimateData, sampler: str, steps: int, guidance: float, cfg_scale: float,
    conditions: Conditioner, clip_frames: int, device: torch.device,
) -> dict[str, Any]:  # fmt: skip
    """Generate the point's rollouts and clips at one guidance weight and scale and judge them
    (:func:`pipeline.climate.assess`); JSON-ready, with the settings."""
    e = cfg.evaluate
    how = _How(sampler, steps, guidance, cfg_scale, e.context_frames, clip_frames, conditions)
    sample = get_sampler(sampler, langevin_snr=e.langevin_snr, langevin_steps=e.langevin_steps)
    base = model if cfg_scale == 1.0 else ClassifierFreeGuidance.from_scale(model, cfg_scale)
    with torch.no_grad():
        roll = _rollouts(base, sample, cd, how, cfg, device)
        unc = _unconditional(base, sample, cd, how, cfg, device)
    m = e.context_frames
    rollouts = _physical(roll[:, :, m:], cd, "member", cd.roll_times[m : cd.frames])
    clips = _physical(unc, cd, "sample", None)
    generated = cd.frames - m
    lags = list(range(1, max(1, min(5, generated - 1)) + 1))
    result = climate.assess(rollouts, clips, cd.real, cd.periods, lags, e.climate.eof_modes, cd.summaries)
    if cd.forcing is not None:  # the forced response over the period, beside pattern scaling
        result["response"] = forced_response(rollouts, cd, m, cfg.seed)
    log.info(
        "climate %s-%d w=%g cfg=%g: score %.3g (%d rollouts x %d frames, %d clips), stable %s",
        sampler, steps, guidance, cfg_scale, result["score"], e.climate.members, generated, e.climate.unconditional,
        result["stable"],
    )  # fmt: skip
    return {
        "members": e.climate.members,
        "frames": generated,
        "given_frames": m,
        "unconditional": e.climate.unconditional,
        "period_frames": int(cd.periods["period"].size),
        "lags": lags,
        **result,
    }
