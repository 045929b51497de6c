"""Stage ``prepare``: open the raw files, select variables and levels, regrid, write the zarr store."""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
import time
from pathlib import Path

import xarray as xr

from pipeline import __version__
from pipeline.config import Config, ConfigError, config_hash
from pipeline.data.coords import DataError, fill_units, standardise
from pipeline.data.io import file_provenance, open_source, open_store, resolve_paths, write_zarr
from pipeline.data.regrid import check_covers, regrid, select, target_grid
from pipeline.data.stats import split_periods
from pipeline.plots import quicklook_regrid
from pipeline.tracking import StageRun

__all__ = ["check_data", "open_selected", "run_prepare"]

log = logging.getLogger(__name__)


def _as_config_error(key: str, fn, *args):
    try:
        return fn(*args)
    except DataError as e:
        msg = f"{key}: {e}"
        raise ConfigError(msg) from None


def _names(cfg: Config) -> dict[str, str] | None:
    c = cfg.data.source.coordinates
    return None if c is None else c.model_dump()


def open_selected(cfg: Config) -> tuple[xr.Dataset, list[Path]]:
    """Open the sources lazily, standardise coordinates, select variables and levels.

    Raises :class:`ConfigError` naming the config key whose value does not fit the data.
    """
    paths = _as_config_error("data.source.paths", resolve_paths, cfg.data.source.paths)
    label = paths[0].name if len(paths) == 1 else f"{len(paths)} files ({paths[0].name}, ...)"
    ds = _as_config_error(
        "data.source.paths",
        open_source,
        paths,
        cfg.data.source.engine,
        cfg.data.source.time_reference,
        cfg.data.source.overlap,
    )
    ds = fill_units(_as_config_error("data.source", standardise, ds, label, _names(cfg)), label)
    ds = _as_config_error("data.variables", select, ds, [(v.name, v.levels) for v in cfg.data.variables], label)
    return ds, paths


def check_data(cfg: Config) -> tuple[xr.Dataset, list[Path], xr.Dataset]:
    """Validate the config against the data's metadata (no data values are read).

    Returns the selected source, its files and the target grid.
    """
    ds, paths = open_selected(cfg)
    periods = {k: getattr(cfg.data.split, k) for k in ("train", "val", "test")}
    _as_config_error("data.split", split_periods, ds, periods, "the source data")
    g = cfg.data.grid
    target = _as_config_error("data.grid", target_grid, g.resolution, g.lat_bounds, g.lon_bounds)
    _as_config_error("data.grid", check_covers, ds, target, "source")
    return ds, paths, target


def run_prepare(cfg: Config, run: StageRun) -> Path:
    t0 = time.perf_counter()
    ds, paths, target = check_data(cfg)
    g = cfg.data.grid
    by_source = {v.name: v.regrid for v in cfg.data.variables}
    methods = {str(k): by_source[da.attrs.get("source_variable", str(k))] for k, da in ds.data_vars.items()}
    # regular sources: the separable weights are cached beside the store (built once per experiment)
    out = regrid(ds, target, methods, nan_threshold=g.nan_threshold, cache_dir=cfg.data_dir, source=paths[0].name)
    out["time"].attrs.update(ds["time"].attrs)
    provenance = file_provenance(paths)
    out.attrs.update(
        {
            "Conventions": "CF-1.8",
            "title": f"{cfg.experiment}: regridded training data",
            "source_files": str([p["path"] for p in provenance]),
            "source_provenance": str(provenance),
            "data_config_hash": config_hash(cfg.data),
            "pipeline_version": __version__,
            "history": f"{dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ} pipeline {__version__} prepare: regridded to "
            f"{g.resolution} deg ({', '.join(f'{k}: {v}' for k, v in methods.items())})",
        }
    )
    bytes_read = int(ds.nbytes)
    written = write_zarr(out, cfg.regridded_path, cfg.data.time_chunk)
    elapsed = time.perf_counter() - t0
    cells = int(out.sizes["time"] * out.sizes["latitude"] * out.sizes["longitude"]) * len(out.data_vars)
    metrics = {
        "bytes_read": bytes_read,
        "bytes_written": written,
        "cells_out": cells,
        "time_steps": out.sizes["time"],
        "seconds": elapsed,
        "throughput_MBps": bytes_read / 1e6 / max(elapsed, 1e-9),
    }
    log.info(
        "prepare: %s", ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
    )
    run.log_params({"data": cfg.data.model_dump(mode="json")})
    run.log_metrics(metrics)
    run.set_tags(
        {
            "data_config_hash": config_hash(cfg.data),
            "source_hashes": ",".join(p["quick_sha256"] for p in provenance),
            "output": str(cfg.regridded_path),
        }
    )
    run.log_dict(cfg.model_dump(mode="json"), "config.json")
    with tempfile.TemporaryDirectory() as d:
        run.log_artifact(quicklook_regrid(ds, open_store(cfg.regridded_path), Path(d) / "quicklook_regrid.png"))
    return cfg.regridded_path
