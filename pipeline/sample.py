"""Stage ``sample``: generation from the best (or a named) checkpoint.

- ``unconditional.zarr``: ``sample.unconditional`` clips (dims sample, frame, latitude, longitude),
  conditioned on the days of year of the first test clip;
- ``rollouts.zarr``: ``sample.rollouts`` long rollouts (dims rollout, lead, latitude, longitude, with a
  2-D ``time`` coordinate), each extended from real initial frames of the test period by
  reconstruction guidance, window = the training clip length, overlap = ``evaluate.context_frames``;
- per variable: an animation (GIF and MP4) of rollout 0, the truth for the same dates and their difference, maps of
  the first and last frame, and zonal power spectra of samples vs the test period;
- ``realism.json`` and ``<variable>_realism.png``: the samples against the real climate of the test period
  (distribution distance and quantiles, bias maps, spectra, autocorrelation, rollout drift), each beside
  the same figure for the training period against the test period (:mod:`pipeline.realism`).

Everything is denormalised to physical units with the variables' CF attributes, plus provenance
(checkpoint, sampler, steps, seed, guidance). The folder is written under a temporary name and
renamed when complete.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from pipeline import __version__, distributed, seeding
from pipeline.checkpoints import Inference, load_inference
from pipeline.config import Config
from pipeline.data.conditions import Conditioner, conditioner
from pipeline.data.coords import DataError
from pipeline.data.evalclips import as_dataset
from pipeline.data.io import atomic_path, open_store, write_zarr
from pipeline.data.stats import denormalise, read_stats, run_index, split_steps
from pipeline.data.times import climatology_candidates, day_of_year, regular_times
from pipeline.diffusion import ClassifierFreeGuidance, extend
from pipeline.diffusion.objective import randn
from pipeline.diffusion.samplers import get_sampler
from pipeline.plots import animate_rollout, first_last_maps, realism_figure, spectra_plot
from pipeline.realism import as_json, assess, flat_metrics
from pipeline.tracking import StageRun

__all__ = ["resolve_cfg_scale", "resolve_checkpoint", "resolve_guidance", "run_sample", "sample_task"]

log = logging.getLogger(__name__)


def resolve_checkpoint(cfg: Config) -> str:
    c = cfg.sample.checkpoint
    return c if c != "best" else str(cfg.read_best("checkpoint", "sample.checkpoint"))


def resolve_guidance(cfg: Config) -> float:
    w = cfg.sample.guidance_weight
    return float(w) if w != "best" else float(cfg.read_best("guidance_weight", "sample.guidance_weight"))


def resolve_cfg_scale(cfg: Config) -> float:
    """``sample.cfg_scale``, or the best point's (a best.json from before the cfg_scales axis: 1, no guidance)."""
    s = cfg.sample.cfg_scale
    if s != "best":
        return float(s)
    return float(cfg.read_best("cfg_scale", "sample.cfg_scale", default=1.0))


def _item_generator(seed: int, kind: int, index: int, device: torch.device) -> torch.Generator:
    """One generator per clip / rollout: the samples do not depend on how the work is split."""
    return torch.Generator(device=device).manual_seed(seeding.sampling(seed, kind, index))


def _batches(indices: range, size: int) -> list[list[int]]:
    items = list(indices)
    return [items[i : i + size] for i in range(0, len(items), size)]


def _gather(items: dict[int, np.ndarray], world: int) -> dict[int, np.ndarray]:
    """Every rank's ``{index: array}`` on rank 0 (the others get {})."""
    if world == 1:
        return items
    import torch.distributed as dist

    parts: list[Any] = [None] * world if dist.get_rank() == 0 else None  # type: ignore[assignment]
    dist.gather_object(items, parts, dst=0)
    return {k: v for p in (parts or []) for k, v in p.items()}


def sample_task(cfg: Config) -> str | None:
    """Entry of each process of a multi-process ``sample`` job (launched by submitit): the ranks split
    the clips and rollouts, rank 0 writes and tracks. The environment (RANK, WORLD_SIZE, ...) is set
    by the launcher."""
    from pipeline.tracking import RunTarget, stage_run

    rt = distributed.init_runtime(gpus=True)
    try:
        with stage_run(RunTarget.of(cfg), "sample", rank=rt.rank) as run:
            out = run_sample(cfg, run, rank=rt.rank, world=rt.world)
        return str(out) if out is not None else None
    finally:
        distributed.leave_group()


def _realism(
    cfg: Config, unc: xr.Dataset, roll: xr.Dataset, real: xr.Dataset, split: np.ndarray, frames: int, out: Path
) -> dict[str, float]:
    """Samples against the real climate (:mod:`pipeline.realism`) -> ``realism.json`` and one figure per
    variable in ``out``; returns the MLflow scalars. The unconditional clips are compared with the test
    frames of their season (within ``evaluate.climatology_window_days`` of their days of year)."""
    times = real["time"].values
    test, train = np.flatnonzero(split == 3), np.flatnonzero(split == 1)
    first = np.arange(test[0], min(test[0] + frames, times.size))
    window = cfg.evaluate.climatology_window_days
    season = np.unique(np.concatenate(climatology_candidates(times, test, first, window)[0]))
    # the training frames of the clips' first day of year: where same-size real clips start
    train_season = np.unique(climatology_candidates(times, train, first[:1], window)[0][0])
    lags = list(range(1, max(2, min(5, max(frames, cfg.sample.rollout_frames) - 1)) + 1))
    periods = {"test": test, "train": train, "test_season": season, "train_season": train_season}
    result = assess(unc, roll, real, periods, lags, seeding.realism(cfg.seed))
    doc = {
        "reference": "test period",
        "yardstick": "train_period: the training period's fields against the test period's (real against real); "
        "same_size: the 5-95% range of each figure over real sets of the generated set's shape (as many sequences "
        "of as many consecutive training-period frames), and the verdict inside / below / above it",
        "test_fields": int(test.size),
        "unconditional_season_fields": int(season.size),
        "lags": lags,
        "variables": as_json(result),
    }
    (out / "realism.json").write_text(json.dumps(doc, indent=2))
    for v, res in result.items():
        realism_figure(v, res, unc[v].attrs.get("units", ""), out / f"{v}_realism.png")
    return flat_metrics(result)


@dataclass
class _Setup:
    """The model with its sampler, and the stores a sample run reads: what every step of the run shares."""

    tag: str  # the checkpoint
    guidance: float
    cfg_scale: float
    device: torch.device
    model: Any
    meta: Inference
    sampler: Callable[..., torch.Tensor]
    store: xr.Dataset  # normalised
    regridded: xr.Dataset  # physical: its variables' and coordinates' CF attributes
    stats: dict[str, Any]
    var_attrs: dict[str, dict[str, Any]]
    conditions: Conditioner  # day of year, static fields, forcings under sample.scenario

    @property
    def names(self) -> list[str]:
        return list(self.meta.variables)

    @property
    def frames(self) -> int:
        return self.meta.clip_frames


@dataclass
class _Plan:
    """When the samples are: the unconditional clips' dates, each rollout's first initial frame (store index) and
    valid times, and the normalised store the rollouts start from and are compared with (read where needed)."""

    times: np.ndarray
    test_idx: np.ndarray
    dates: np.ndarray
    store: xr.Dataset
    names: list[str]
    starts: np.ndarray
    rdates: list[np.ndarray]

    def frames(self, start: int, stop: int) -> np.ndarray:
        """Normalised frames ``start:stop`` of the store (fewer at its end): (time, C, lat, lon)."""
        return np.stack([self.store[n].isel(time=slice(start, stop)).values for n in self.names], axis=1)


@dataclass
class _Samples:
    """The denormalised samples with CF attributes, and the truth for the rollouts' dates."""

    unconditional: xr.Dataset
    rollouts: xr.Dataset
    truth: xr.Dataset


def _setup(cfg: Config) -> _Setup:
    """Resolve the checkpoint and the guidance ('best': from the sweep), load the model (wrapped in classifier-free
    guidance where its scale is not 1) and open the stores."""
    s = cfg.sample
    tag = resolve_checkpoint(cfg)
    guidance = resolve_guidance(cfg)
    cfg_scale = resolve_cfg_scale(cfg)
    if torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    model, meta = load_inference(cfg.inference_file(tag), device, s.precision)
    store = open_store(cfg.normalised_path)
    regridded = open_store(cfg.regridded_path)
    stats = read_stats(cfg.stats_path)
    sampler = get_sampler(s.sampler, langevin_snr=s.langevin_snr, langevin_steps=s.langevin_steps)
    scenario = {**cfg.data.scenario_of("test"), **s.scenario}
    run = _boundary_run(cfg, scenario, list(store.attrs.get("boundary_fields", [])))
    if cfg_scale != 1.0:  # classifier-free guidance of every sample (train.cond_drop > 0, checked with the config)
        model = ClassifierFreeGuidance.from_scale(model, cfg_scale)
    return _Setup(
        tag=tag,
        guidance=guidance,
        cfg_scale=cfg_scale,
        device=device,
        model=model,
        meta=meta,
        sampler=sampler,
        store=store,
        regridded=regridded,
        stats=stats,
        var_attrs={n: {k: v for k, v in regridded[n].attrs.items()} for n in meta.variables},
        conditions=conditioner(meta.model_config, store, cfg.stats_path, cfg.data.forcings, scenario, run),
    )


def _boundary_run(cfg: Config, scenario: dict[str, str], boundary: list[str]) -> str | None:
    """The run whose boundary fields (if the store has any) the samples read: the test split's run where the
    scenario is its own, else the run driven by ``sample.scenario``; an error where no run of the store is (its
    ocean would be another scenario's)."""
    test = cfg.data.run_of("test")
    if scenario == cfg.data.run_scenarios()[test]:
        return test
    run = cfg.data.run_of_scenario(scenario) if cfg.data.runs else None
    if boundary and run is None:
        msg = f"sample.scenario {cfg.sample.scenario}: the boundary fields {boundary} are read from the store's run "
        msg += f"of the scenario, and no run of the store is driven by {scenario} (its runs: "
        msg += f"{ {k or 'data': v for k, v in cfg.data.run_scenarios().items()} }): set sample.scenario to one of them"
        raise DataError(msg)
    return run


def _plan(cfg: Config, su: _Setup) -> _Plan:
    """The unconditional clips are dated like the first test clip; the rollouts start from real frames spread over
    the test period, the last early enough to have truth for its whole length if it fits."""
    s, store = cfg.sample, su.store
    times = store["time"].values
    test_idx = split_steps(store, "test", cfg.data.split_run("test"))  # with runs, the first run's with one
    dates = regular_times(times, times[test_idx[0]], su.frames)  # datetime64 or cftime, in the data's calendar
    last = max(test_idx[0], test_idx[-1] - max(s.rollout_frames, cfg.evaluate.context_frames) + 1)
    starts = np.linspace(test_idx[0], last, s.rollouts).round().astype(int)
    # valid times of each rollout, on past the data's end in its calendar (the last window may overshoot)
    rdates = [regular_times(times, times[int(start)], s.rollout_frames + su.frames) for start in starts]
    return _Plan(times=times, test_idx=test_idx, dates=dates, store=store, names=su.names, starts=starts, rdates=rdates)


def _generate_unconditional(cfg: Config, su: _Setup, plan: _Plan, rank: int, world: int) -> dict[int, np.ndarray]:
    """This rank's unconditional clips in batches, each with its own seed; every rank's on rank 0."""
    s = cfg.sample
    shape = (len(su.names), su.frames, su.store["latitude"].size, su.store["longitude"].size)
    mine: dict[int, np.ndarray] = {}
    for batch in tqdm(_batches(range(rank, s.unconditional, world), s.batch_size), desc="unconditional", disable=None):
        gens = [_item_generator(cfg.seed, 0, i, su.device) for i in batch]
        cond = su.conditions([plan.dates] * len(batch), su.device)
        with torch.no_grad():
            z = randn((len(batch), *shape), gens, su.device, torch.float32)
            x = su.sampler(su.model, z, s.steps, cond=cond, generator=gens).float().cpu().numpy()
        mine.update(zip(batch, x, strict=True))
    return _gather(mine, world)


def _generate_rollouts(cfg: Config, su: _Setup, plan: _Plan, rank: int, world: int) -> dict[int, np.ndarray]:
    """This rank's rollouts in batches, each with its own seed, extended by reconstruction guidance from
    ``evaluate.context_frames`` real initial frames: {rollout: (lead, C, lat, lon)}, every rank's on rank 0."""
    s, m = cfg.sample, cfg.evaluate.context_frames
    mine: dict[int, np.ndarray] = {}
    for batch in tqdm(_batches(range(rank, s.rollouts, world), s.batch_size), desc="rollouts", disable=None):
        init = np.stack([np.nan_to_num(plan.frames(a, a + m)).transpose(1, 0, 2, 3) for a in plan.starts[batch]])

        def cond_for(window_start: int, window: int, batch: list[int] = batch) -> dict[str, torch.Tensor] | None:
            ends = [plan.rdates[r][s.rollout_frames - 1] for r in batch]  # a last window's extra frames are dropped
            return su.conditions([plan.rdates[r][window_start : window_start + window] for r in batch], su.device, ends)

        with torch.no_grad():
            out = extend(
                su.model,
                functools.partial(su.sampler, steps=s.steps),
                torch.from_numpy(init).float().to(su.device),
                s.rollout_frames,
                su.frames,
                su.guidance,
                overlap=m,
                cond_for_window=cond_for,
                generator=[_item_generator(cfg.seed, 1, r, su.device) for r in batch],
            )
        mine.update(zip(batch, out.cpu().numpy().transpose(0, 2, 1, 3, 4), strict=True))  # (lead, C, lat, lon)
        log.info("rollouts %s: %d frames each", [r + 1 for r in batch], s.rollout_frames)
    return _gather(mine, world)


def _truth(cfg: Config, plan: _Plan) -> np.ndarray:
    """The data for each rollout's dates, NaN past the data's end: (rollout, lead, C, lat, lon)."""
    truth = []
    runs = run_index(plan.store)
    for start in plan.starts:
        stop = int(start) + cfg.sample.rollout_frames
        other = np.flatnonzero(runs[int(start) : stop] != runs[int(start)])  # the truth ends with its run
        avail = plan.frames(int(start), stop if other.size == 0 else int(start) + int(other[0]))
        pad = np.full((cfg.sample.rollout_frames - avail.shape[0], *avail.shape[1:]), np.nan, dtype=np.float32)
        truth.append(np.concatenate([avail, pad]))
    return np.stack(truth)


def _assemble(
    cfg: Config, su: _Setup, plan: _Plan, unc_parts: dict[int, np.ndarray], roll_parts: dict[int, np.ndarray]
) -> _Samples:
    """The gathered clips and rollouts (in index order) and the truth as denormalised data sets."""
    s = cfg.sample
    names, attrs = su.names, su.var_attrs
    unc = np.stack([unc_parts[i] for i in range(s.unconditional)])
    # (rollout, C, lead, lat, lon)
    roll_arr = np.stack([roll_parts[r] for r in range(s.rollouts)]).transpose(0, 2, 1, 3, 4)
    truth_arr = _truth(cfg, plan).transpose(0, 2, 1, 3, 4)
    common = {"latitude": su.store["latitude"], "longitude": su.store["longitude"]}
    unc_ds = denormalise(
        as_dataset(
            unc,
            names,
            ("sample", "frame", "latitude", "longitude"),
            {**common, "doy": ("frame", day_of_year(plan.dates))},
            attrs=attrs,
        ),
        su.stats,
    )
    roll_coords = {
        **common,
        "lead": np.arange(s.rollout_frames),
        "time": (
            ("rollout", "lead"),
            np.stack([d[: s.rollout_frames] for d in plan.rdates]),
            {"standard_name": "time", "long_name": "valid time"},
        ),
        "init_time": ("rollout", plan.times[plan.starts]),
    }
    dims = ("rollout", "lead", "latitude", "longitude")
    roll_ds = denormalise(as_dataset(roll_arr, names, dims, roll_coords, attrs=attrs), su.stats)
    truth_ds = denormalise(as_dataset(truth_arr, names, dims, roll_coords, attrs=attrs), su.stats)
    return _Samples(unconditional=unc_ds, rollouts=roll_ds, truth=truth_ds)


def _annotate(cfg: Config, su: _Setup, samples: _Samples, world: int) -> None:
    """CF attributes of the variables and coordinates, and the provenance, on the written data sets."""
    s = cfg.sample
    for ds in (samples.unconditional, samples.rollouts):
        for n in su.names:
            ds[n].attrs.update({k: v for k, v in su.var_attrs[n].items() if k not in ("units",)})
            ds[n].attrs["units"] = su.var_attrs[n].get("units", su.stats[n].get("units", ""))
        ds["latitude"].attrs.update(su.regridded["latitude"].attrs)
        ds["longitude"].attrs.update(su.regridded["longitude"].attrs)
        ds.attrs.update(
            {
                "Conventions": "CF-1.8",
                "title": f"{cfg.experiment}: samples of the video diffusion model",
                "source": f"pipeline {__version__}, checkpoint {su.tag} (step {su.meta.step})",
                "sampler": s.sampler,
                "sampling_steps": s.steps,
                "network_precision": "bf16" if distributed.use_bf16(s.precision, su.device.type == "cuda") else "fp32",
                "seed": cfg.seed,
                "guidance_weight": su.guidance,
                "cfg_scale": su.cfg_scale,
                "processes": world,
                "checkpoint_file": str(cfg.inference_file(su.tag)),
                "forcing_scenario": json.dumps(su.conditions.scenario),
                "history": f"{dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ} pipeline sample",
            }
        )
    samples.rollouts["lead"].attrs = {"long_name": "frames since the first initial frame", "units": "1"}


def _plot(names: list[str], samples: _Samples, test_truth: xr.Dataset, out: Path) -> None:
    """Per variable: the animation of rollout 0 beside its truth, first and last frame maps, zonal spectra."""
    unc_ds, roll_ds, truth_ds = samples.unconditional, samples.rollouts, samples.truth
    for n in names:
        animate_rollout(
            roll_ds[n].isel(rollout=0),
            truth_ds[n].isel(rollout=0),
            roll_ds["time"].values[0],
            [out / f"{n}_rollout.gif", out / f"{n}_rollout.mp4"],
        )
        first_last_maps(
            {"rollout 0": roll_ds[n].isel(rollout=0), "unconditional 0": unc_ds[n].isel(sample=0)},
            out / f"{n}_first_last.png",
        )
        spectra_plot(roll_ds[n], unc_ds[n], test_truth[n], out / f"{n}_spectra.png")


def _manifest(cfg: Config, su: _Setup, out: Path) -> None:
    """``manifest.json``: the settings the samples were made with and the folder's files (written last)."""
    s = cfg.sample
    (out / "manifest.json").write_text(
        json.dumps(
            {
                "checkpoint": su.tag,
                "sampler": s.sampler,
                "steps": s.steps,
                "seed": cfg.seed,
                "guidance_weight": su.guidance,
                "cfg_scale": su.cfg_scale,
                "unconditional": s.unconditional,
                "rollouts": s.rollouts,
                "rollout_frames": s.rollout_frames,
                "forcing_scenario": su.conditions.scenario,
                "files": sorted(p.name for p in out.iterdir()),
            },
            indent=2,
        )
    )


def _write(cfg: Config, su: _Setup, plan: _Plan, samples: _Samples) -> dict[str, float]:
    """The stores, realism assessment, figures and manifest, under a temporary name renamed when complete;
    returns the realism scalars for MLflow."""
    unc_ds, roll_ds = samples.unconditional, samples.rollouts
    with atomic_path(cfg.samples_dir) as tmp:
        tmp.mkdir(parents=True)
        write_zarr(unc_ds, tmp / "unconditional.zarr", time_chunk=su.frames)
        write_zarr(roll_ds, tmp / "rollouts.zarr", time_chunk=su.frames)
        if cfg.sample.netcdf:
            unc_ds.to_netcdf(tmp / "unconditional.nc")
            roll_ds.drop_vars("time").assign_coords(valid_time=roll_ds["time"]).to_netcdf(tmp / "rollouts.nc")
        # lazy (dask): the realism figures read one variable at a time, the maps the test period
        real = denormalise(su.store[su.names].reset_coords(drop=True), su.stats)
        test_truth = real.isel(time=plan.test_idx).rename({"time": "frame"}).drop_vars("frame").compute()
        realism = _realism(cfg, unc_ds, roll_ds, real, su.store["split"].values, su.frames, tmp)
        _plot(su.names, samples, test_truth, tmp)
        _manifest(cfg, su, tmp)
    return realism


def _track(
    cfg: Config, run: StageRun, su: _Setup, samples: _Samples, realism: dict[str, float], gen_s: float, t0: float
) -> int:
    """Parameters, metrics (generation speed, time since ``t0``, mean of each variable, realism) and the small
    files into the stage's MLflow run; returns the number of frames generated."""
    s = cfg.sample
    n_frames = s.unconditional * su.frames + s.rollouts * s.rollout_frames
    run.log_params(
        {
            "sample": s.model_dump(),
            "checkpoint": su.tag,
            "checkpoint_step": su.meta.step,
            "guidance_weight": su.guidance,
            "cfg_scale": su.cfg_scale,
            "forcing_scenario": su.conditions.scenario,
        }
    )
    run.log_metrics(
        {
            "frames_per_s": n_frames / gen_s,
            "seconds": time.perf_counter() - t0,
            **{f"mean_{n}": float(samples.rollouts[n].mean()) for n in su.names},
            **realism,
        }
    )
    for p in sorted(cfg.samples_dir.iterdir()):
        if p.suffix in (".gif", ".mp4", ".png", ".json"):
            run.log_artifact(p)
    return n_frames


def run_sample(cfg: Config, run: StageRun, rank: int = 0, world: int = 1) -> Path | None:
    """Generate, write and log the samples. With ``world`` > 1 (a process group is initialised), rank
    ``rank`` generates clips and rollouts ``rank, rank + world, ...``; rank 0 gathers, writes and
    returns the folder, the other ranks return None."""
    t0 = time.perf_counter()
    su = _setup(cfg)
    gen_t0 = time.perf_counter()
    plan = _plan(cfg, su)
    unc_parts = _generate_unconditional(cfg, su, plan, rank, world)
    roll_parts = _generate_rollouts(cfg, su, plan, rank, world)
    gen_s = time.perf_counter() - gen_t0
    if rank != 0:
        return None
    samples = _assemble(cfg, su, plan, unc_parts, roll_parts)
    _annotate(cfg, su, samples, world)
    realism = _write(cfg, su, plan, samples)
    n_frames = _track(cfg, run, su, samples, realism, gen_s, t0)
    log.info("sample: %d frames in %.1f s -> %s", n_frames, gen_s, cfg.samples_dir)
    return cfg.samples_dir
