"""Stage ``normalise``: training-period statistics, the normalised store, ``stats.json``.

In ``data.parts`` parts over time (:mod:`pipeline.data.parts`), like ``prepare``: :func:`init_normalise`
merges the moments per chunk that prepare's parts kept in their markers into the area-weighted statistics
of the training period (recomputing only the chunks the period's ends cut) and writes the normalised
store's metadata; each :func:`normalise_part` normalises its region; :func:`finalise_normalise` checks,
consolidates and writes ``stats.json``. :func:`run_normalise` does all of them in this process.

``stats.json`` lives inside the store (``normalised.zarr/stats.json``) and moves into place with it in one
rename; ``<data dir>/stats.json``, what readers read, is a symbolic link to it: a store and the statistics that
invert it are replaced together, and a finalise killed midway leaves either pair or none, never a mix. Every
step holds the normalised store's lock (exclusive; shared for a part) and the regridded store's, shared, since
it reads that one (:mod:`pipeline.data.lock`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import xarray as xr

from pipeline.config import Config
from pipeline.data.conditions import ForcingTable, forcing_features, normalise_static
from pipeline.data.coords import DataError
from pipeline.data.io import directory_bytes, open_store
from pipeline.data.lock import locked
from pipeline.data.parts import (
    Build,
    chunk_edges,
    finalise_store,
    init_store,
    part_span,
    read_markers,
    read_plan,
    write_marker,
    write_region,
)
from pipeline.data.stats import (
    SPLIT_NAMES,
    normalise,
    period_moments,
    split_labels,
    split_periods,
    stats_from_moments,
    write_stats,
)
from pipeline.tracking import StageRun

__all__ = ["finalise_normalise", "init_normalise", "normalise_part", "run_normalise"]

log = logging.getLogger(__name__)


@locked("normalised_path", exclusive=True, reads=("regridded_path",))
def init_normalise(cfg: Config) -> Path:
    """Statistics of the training period from the regridded store's moments per chunk, then the normalised
    store's metadata and coordinates (with the ``split`` flags) and the plan of its parts (holding the
    statistics). Returns the plan's path."""
    ds = open_store(cfg.regridded_path)
    made = Build(cfg.regridded_path)
    plan = read_plan(made)
    if plan["data_config_hash"] != ds.attrs.get("data_config_hash"):
        msg = (
            f"the markers in {made.root} belong to another build than {cfg.regridded_path}: "
            f"run prepare again (python -m pipeline prepare)"
        )
        raise DataError(msg)
    markers = read_markers(made, plan)
    per_chunk = {name: [m for marker in markers for m in marker["moments"][name]] for name in ds.data_vars}
    labels = _split_labels(cfg, ds)  # each period of each run must hold data
    train = labels.values == 1
    moments = period_moments(ds, per_chunk, chunk_edges(plan), train)
    units = {str(n): da.attrs.get("units", "") for n, da in ds.data_vars.items()}
    stats = stats_from_moments(moments, units, str(cfg.regridded_path), f"the training period {_train_key(cfg)}")
    norm = normalise(ds, stats).assign_coords(split=labels)
    if cfg.data.runs:
        norm = norm.assign_coords(run=ds["run"])
    conditions = _conditions(cfg, ds, train)
    norm = norm.assign_coords({k: v["field"] for k, v in conditions.items()})
    norm.attrs.update(
        {
            "stats_file": cfg.stats_path.name,
            "data_config_hash": cfg.data.content_hash(),
            "static_fields": [k for k in conditions if k.startswith("static_")],
            "forcings": [k for k in conditions if k.startswith("forcing_")],
            "boundary_fields": boundary_fields(cfg, ds),
        }
    )
    extra = {
        "split": _split_record(cfg),
        "steps": {k: int((labels.values == code).sum()) for code, k in enumerate(SPLIT_NAMES) if code},
        "weighting": "cos(latitude)",
        "source": str(cfg.regridded_path),
        "conditions": {k: {n: v[n] for n in v if n != "field"} for k, v in conditions.items()},
    }
    build = Build(cfg.normalised_path)
    init_store(build, norm, cfg.data.time_chunk, cfg.data.parts, {"stats": stats, "stats_extra": extra}, cfg.data.codec)
    log.info("normalise: statistics %s; initialised %s", stats, build.store)
    return build.plan_path


def boundary_fields(cfg: Config, ds: xr.Dataset) -> list[str]:
    """The store's variables (one per level) of the config's boundary variables (``data.variables[].boundary``)."""
    given = {v.name for v in cfg.data.variables if v.boundary}
    return [str(n) for n, da in ds.data_vars.items() if da.attrs.get("source_variable", str(n)) in given]


def _run_codes(cfg: Config, ds: xr.Dataset) -> list[tuple[str | None, np.ndarray]]:
    """(run name, its steps as a boolean mask) of each run; one (None, all) where the data has no runs."""
    if not cfg.data.runs:
        return [(None, np.ones(ds.sizes["time"], dtype=bool))]
    return [(r.name, ds["run"].values == i) for i, r in enumerate(cfg.data.runs)]


def _split_labels(cfg: Config, ds: xr.Dataset) -> xr.DataArray:
    """The split code of every step from each run's periods; each period must hold data."""
    times = ds["time"].values
    codes = np.zeros(times.size, dtype=np.int8)
    attrs: dict = {}
    for run, mask in _run_codes(cfg, ds):
        periods = cfg.data.periods(run)
        label = f"{cfg.regridded_path} (run {run})" if run else str(cfg.regridded_path)
        split_periods(ds.isel(time=np.flatnonzero(mask)), periods, label)
        labels = split_labels(times[mask], periods)
        codes[mask], attrs = labels.values, labels.attrs
    return xr.DataArray(codes, dims="time", attrs=attrs)


def _train_key(cfg: Config) -> str:
    if not cfg.data.runs:
        a, b = cfg.data.periods()["train"]
        return f"data.split.train = [{a}, {b}]"
    return "data.runs[].split.train"


def _split_record(cfg: Config) -> dict:
    """The periods as stats.json records them: {split: [first, last]}, or per run {run: {split: [first, last]}}."""

    def record(run: str | None) -> dict:
        return {k: [str(a), str(b)] for k, (a, b) in cfg.data.periods(run).items()}

    return {r.name: record(r.name) for r in cfg.data.runs} if cfg.data.runs else record(None)


def _forcing_values(cfg: Config, ds: xr.Dataset, table: ForcingTable, tau: float | None) -> np.ndarray:
    """A forcing's transformed series (or its lagged response of e-folding time ``tau``) at every step, each run's
    from its own column of the table."""
    v = np.empty(ds.sizes["time"])
    scenarios = cfg.data.run_scenarios()
    for run, mask in _run_codes(cfg, ds):
        v[mask] = table.values(ds["time"].values[mask], scenarios[run][table.name], tau)
    return v


def _conditions(cfg: Config, ds: xr.Dataset, train: np.ndarray) -> dict[str, dict]:
    """The normalised static fields (from the regridded store's ``static_<name>`` coordinates) and forcing series
    (from their tables at the store's times), each with its ``mean`` and ``std`` (the training period's for a
    forcing, the area-weighted ones over the grid for a static field) and how it was made: what ``stats.json``
    records under ``conditions``."""
    out: dict[str, dict] = {}
    for s in cfg.data.static:
        name = f"static_{s.name}"
        if name not in ds.coords:
            msg = f"{cfg.regridded_path} has no static field {name} (data.static changed?): run prepare again"
            raise DataError(msg)
        field, moments = normalise_static(ds[name].load())
        field.attrs = {**ds[name].attrs, "normalised": "(x - mean) / std over the grid (area-weighted), stats.json"}
        out[name] = {"field": field, **moments, "source": s.source}
    tables = {f.name: ForcingTable(f.name, f.table, f.transform) for f in cfg.data.forcings}
    for name, f, tau in forcing_features(cfg.data.forcings):
        v = _forcing_values(cfg, ds, tables[f.name], tau)
        mean, std = float(v[train].mean()), float(v[train].std())
        if not std > 0:
            msg = f"data.forcings: forcing {name!r} is constant over the training period: it cannot inform the network"
            raise DataError(msg)
        field = xr.DataArray(((v - mean) / std).astype(np.float32), dims="time")
        scenario = {str(run): s[f.name] for run, s in cfg.data.run_scenarios().items()}
        lag = {} if tau is None else {"memory_years": tau}
        field.attrs = {"long_name": f"forcing {name}, normalised" + ("" if tau is None else f" (lagged {tau:g} y)"),
                       "scenario": json.dumps(scenario), "transform": f.transform, **lag}  # fmt: skip
        out[f"forcing_{name}"] = {"field": field, "mean": mean, "std": std, "scenario": scenario,
                                  "transform": f.transform, "table": f.table, **lag}  # fmt: skip
    return out


@locked("normalised_path", exclusive=False, reads=("regridded_path",))  # the parts of one build run at once
def normalise_part(cfg: Config, part: int) -> Path:
    """Normalise part ``part``'s steps of the regridded store into its region. Returns the marker's path."""
    t0 = time.perf_counter()
    build = Build(cfg.normalised_path)
    plan = read_plan(build, cfg.data.parts)
    span = part_span(plan, part)
    ds = open_store(cfg.regridded_path).isel(time=slice(span["start"], span["stop"]))
    write_region(build, plan, part, normalise(ds, plan["stats"]))
    seconds = time.perf_counter() - t0
    marker = write_marker(build, plan, part, {"bytes_read": int(ds.nbytes), "seconds": seconds})
    log.info("normalise part %d: %.4g MB in %.1f s -> %s", part, ds.nbytes / 1e6, seconds, marker)
    return marker


@locked("normalised_path", exclusive=True)
def finalise_normalise(cfg: Config, run: StageRun) -> Path:
    """Check every part completed, consolidate, write ``stats.json`` into the store, make ``<data dir>/stats.json``
    a link to it, move the store into place (with its statistics: one rename); log."""
    t0 = time.perf_counter()
    build = Build(cfg.normalised_path)
    plan = read_plan(build)
    stats, extra = plan["stats"], plan["stats_extra"]
    write = {cfg.stats_path.name: lambda path: write_stats(stats, path, extra)}
    plan, markers = finalise_store(build, write, {cfg.stats_path: cfg.stats_path.name})
    part_seconds = [m["seconds"] for m in markers]
    metrics = {
        "bytes_read": sum(m["bytes_read"] for m in markers),
        "bytes_written": directory_bytes(cfg.normalised_path),
        "parts": len(markers),
        "seconds": sum(part_seconds) + time.perf_counter() - t0,
        "slowest_part_seconds": max(part_seconds),
        **{f"steps_{k}": v for k, v in extra["steps"].items()},
    }
    for name, s in stats.items():
        metrics[f"mean_{name}"] = s["mean"]
        metrics[f"std_{name}"] = s["std"]
    log.info("normalise: %s", metrics)
    run.log_params({"data.split": extra["split"], "data.time_chunk": cfg.data.time_chunk})
    run.log_metrics(metrics)
    run.set_tags({"input": str(cfg.regridded_path), "data_config_hash": cfg.data.content_hash()})
    run.log_artifact(cfg.stats_path)
    return cfg.normalised_path


@locked("normalised_path", exclusive=True, reads=("regridded_path",))
def run_normalise(cfg: Config, run: StageRun) -> Path:
    """The whole stage in this process: init, every part in turn, finalise."""
    init_normalise(cfg)
    for part in range(cfg.data.parts):
        normalise_part(cfg, part)
    return finalise_normalise(cfg, run)
