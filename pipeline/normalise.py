"""Stage ``normalise``: training-period statistics, the normalised store, ``stats.json``."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pipeline.config import Config, config_hash
from pipeline.data.io import open_store, write_zarr
from pipeline.data.stats import compute_stats, normalise, split_labels, split_periods, write_stats
from pipeline.tracking import StageRun

__all__ = ["run_normalise"]

log = logging.getLogger(__name__)


def run_normalise(cfg: Config, run: StageRun) -> Path:
    t0 = time.perf_counter()
    ds = open_store(cfg.regridded_path)
    periods = {k: getattr(cfg.data.split, k) for k in ("train", "val", "test")}
    parts = split_periods(ds, periods, str(cfg.regridded_path))
    stats = compute_stats(parts["train"])
    norm = normalise(ds, stats)
    norm = norm.assign_coords(split=split_labels(ds["time"].values, periods))
    norm.attrs.update({"stats_file": cfg.stats_path.name, "data_config_hash": config_hash(cfg.data)})
    written = write_zarr(norm, cfg.normalised_path, cfg.data.time_chunk)
    extra = {
        "split": {k: [str(a), str(b)] for k, (a, b) in periods.items()},
        "steps": {k: int(v.sizes["time"]) for k, v in parts.items()},
        "weighting": "cos(latitude)",
        "source": str(cfg.regridded_path),
    }
    write_stats(stats, cfg.stats_path, extra)
    elapsed = time.perf_counter() - t0
    metrics = {
        "bytes_read": int(ds.nbytes),
        "bytes_written": written,
        "seconds": elapsed,
        **{f"steps_{k}": v for k, v in extra["steps"].items()},
    }
    for name, s in stats.items():
        metrics[f"mean_{name}"] = s["mean"]
        metrics[f"std_{name}"] = s["std"]
    log.info("normalise: %s", metrics)
    run.log_params({"data.split": extra["split"], "data.time_chunk": cfg.data.time_chunk})
    run.log_metrics(metrics)
    run.set_tags({"input": str(cfg.regridded_path), "data_config_hash": config_hash(cfg.data)})
    run.log_artifact(cfg.stats_path)
    return cfg.normalised_path
