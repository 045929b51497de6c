"""Area-weighted statistics, the time split, and the exact normalise / denormalise pair.

Statistics are per variable (one variable per level), weighted by cos(latitude), computed on the training
period only, NaNs skipped. Everything stays lazy (dask): memory is bounded by a chunk, not the data.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr
from dask.delayed import Delayed

from pipeline.atomic import write_text_atomic
from pipeline.data.coords import DataError
from pipeline.data.times import calendar_of, format_time, in_period

__all__ = [
    "SPLIT_NAMES",
    "Moment",
    "Moments",
    "Stats",
    "area_weights",
    "block_moments",
    "chunk_moments",
    "compute_stats",
    "denormalise",
    "fold_moments",
    "merge_moments",
    "normalise",
    "partial_moments",
    "period_moments",
    "read_stats",
    "run_index",
    "split_labels",
    "split_periods",
    "split_steps",
    "stats_from_moments",
    "write_stats",
]

Stats = dict[str, dict[str, Any]]


def area_weights(lat: xr.DataArray) -> xr.DataArray:
    """cos(latitude), the relative area of a cell on a regular grid."""
    return np.cos(np.deg2rad(lat)).clip(min=0.0).rename("area_weight")


SPLIT_NAMES = ("none", "train", "val", "test")


def run_index(store: xr.Dataset) -> np.ndarray:
    """Per time step the index of its run in ``data.runs`` (the store's ``run`` coordinate); all 0 in a store of
    one run."""
    if "run" in store.coords:
        return store["run"].values
    return np.zeros(store.sizes["time"], dtype=np.int8)


def split_steps(store: xr.Dataset, split: str, run: int | None = None) -> np.ndarray:
    """The time steps of ``split`` in the normalised ``store`` (its ``split`` codes); with ``run`` (a place in
    ``data.runs``, the store's ``run`` code) that run's only."""
    steps = np.flatnonzero(store["split"].values == SPLIT_NAMES.index(split))
    return steps if run is None else steps[run_index(store)[steps] == run]


def split_labels(times: np.ndarray, periods: Mapping[str, tuple[dt.date, dt.date]]) -> xr.DataArray:
    """Per time step (any calendar) the code of its period as a CF flag variable (0 none, 1 train, 2 val, 3 test)."""
    codes = np.zeros(len(times), dtype="int8")
    for name, (a, b) in periods.items():
        codes[in_period(times, a, b)] = SPLIT_NAMES.index(name)
    attrs = {
        "long_name": "data split",
        "flag_values": list(range(len(SPLIT_NAMES))),
        "flag_meanings": " ".join(SPLIT_NAMES),
    }
    return xr.DataArray(codes, dims="time", attrs=attrs)


def split_periods(
    ds: xr.Dataset, periods: Mapping[str, tuple[dt.date, dt.date]], source: str = "dataset"
) -> dict[str, xr.Dataset]:
    """Select each [first, last] period (inclusive, by day, in the data's calendar); each must hold data."""
    if "time" not in ds.dims:
        msg = f"{source}: no time dimension to split into {list(periods)}"
        raise DataError(msg)
    t = ds["time"].values
    out = {}
    for name, (a, b) in periods.items():
        idx = np.flatnonzero(in_period(t, a, b))
        # a period of an increasing axis is contiguous: a slice keeps the store's chunks (whole chunks inside)
        contiguous = idx.size > 0 and idx[-1] - idx[0] + 1 == idx.size
        sel = ds.isel(time=slice(int(idx[0]), int(idx[-1]) + 1) if contiguous else idx)
        if sel.sizes["time"] == 0:
            msg = (
                f"data.split.{name} = [{a}, {b}] holds no time step of {source}, "
                f"whose time runs {format_time(t.min())[:10]} .. {format_time(t.max())[:10]} "
                f"({t.size} steps, {calendar_of(t)} calendar)"
            )
            raise DataError(msg)
        out[name] = sel
    return out


# Per variable: (sum of weights, weighted mean, weighted sum of squared deviations): partial moments that
# merge exactly (Chan, Golub & LeVeque 1979), so statistics computed in parts equal the one-pass result.
Moment = tuple[float, float, float]
Moments = dict[str, Moment]


def merge_moments(a: Moment, b: Moment) -> Moment:
    """Chan et al.'s pairwise update: the moments of the union of two disjoint samples."""
    wa, ma, qa = a
    wb, mb, qb = b
    w = wa + wb
    if w == 0:
        return (0.0, 0.0, 0.0)
    d = mb - ma
    return (w, ma + d * wb / w, qa + qb + d * d * wa * wb / w)


def fold_moments(items: Iterable[Moment]) -> Moment:
    """Merge moments in the order given, skipping empty ones (the same sequence gives the same bits)."""
    acc = (0.0, 0.0, 0.0)
    for m in items:
        if m[0] > 0:
            acc = merge_moments(acc, m)
    return acc


def block_moments(x: np.ndarray, weights: np.ndarray) -> Moment:
    """Moments of one block of values (``weights`` broadcast to it), NaNs skipped, in float64."""
    x = np.asarray(x, dtype=np.float64)
    ww = np.where(np.isfinite(x), np.broadcast_to(weights, x.shape), 0.0)
    total = float(ww.sum())
    if total == 0:
        return (0.0, 0.0, 0.0)
    mean = float(np.nansum(x * ww) / total)
    return (total, mean, float(np.nansum(ww * (x - mean) ** 2)))


def _weights_for(da: xr.DataArray, lat: xr.DataArray) -> np.ndarray:
    w = area_weights(lat).values.astype(np.float64)
    return w.reshape([w.size if d == "latitude" else 1 for d in da.dims])


def _time_slices(da: xr.DataArray) -> list[slice]:
    if "time" not in da.dims:
        return [slice(None)]
    # the variable's own chunks (a coordinate along time, such as a store's run labels, may be chunked otherwise)
    sizes = da.variable.chunksizes.get("time", (da.sizes["time"],)) if da.chunks is not None else (da.sizes["time"],)
    edges = np.concatenate([[0], np.cumsum(sizes)])
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(edges)]


def chunk_moments(ds: xr.Dataset) -> dict[str, list[Moment]]:
    """Area-weighted moments of every variable per time chunk (the dask chunks along time), in time order.

    Chunks are reduced in parallel, each task holding one; :func:`fold_moments` of a variable's list is
    :func:`partial_moments`.
    """
    tasks: dict[str, list[Delayed]] = {}
    for name, da in ds.data_vars.items():
        weights = _weights_for(da, ds["latitude"])
        blocks = [da.isel(time=sl).data for sl in _time_slices(da)] if "time" in da.dims else [da.data]
        tasks[str(name)] = [dask.delayed(block_moments)(b, weights) for b in blocks]
    return dask.compute(tasks)[0]


def partial_moments(ds: xr.Dataset) -> Moments:
    """Area-weighted moments of every variable, NaNs skipped, in one pass chunk by chunk (float64).

    Memory is bounded by one time chunk; the per-chunk moments are merged in time order with :func:`merge_moments`.
    """
    return {name: fold_moments(ms) for name, ms in chunk_moments(ds).items()}


def period_moments(
    ds: xr.Dataset, per_chunk: Mapping[str, Sequence[Moment]], chunk_edges: Sequence[int], mask: np.ndarray
) -> Moments:
    """The moments of the steps where ``mask`` holds, from the moments of every time chunk of ``ds`` (chunk
    ``k`` covers steps ``chunk_edges[k]`` to ``chunk_edges[k + 1]``).

    A chunk wholly inside the mask takes its moments from ``per_chunk``, a chunk partly inside (one at either
    end of a period) is computed again from ``ds``; merged in time order, this is bit for bit
    :func:`partial_moments` of ``ds.isel(time=slice(first, last + 1))`` for a period of contiguous steps.
    """
    out: Moments = {}
    for name, chunks in per_chunk.items():
        if len(chunks) != len(chunk_edges) - 1:
            msg = f"variable {name!r}: moments of {len(chunks)} chunks for {len(chunk_edges) - 1} time chunks"
            raise DataError(msg)
        da = ds[name]
        weights = _weights_for(da, ds["latitude"])
        items = []
        for m, (a, b) in zip(chunks, itertools.pairwise(chunk_edges), strict=True):
            inside = mask[a:b]
            if inside.all():
                items.append(tuple(m))
            elif inside.any():
                items.append(block_moments(da.isel(time=a + np.flatnonzero(inside)).values, weights))
        out[name] = fold_moments(items)
    return out


def stats_from_moments(
    moments: Moments, units: dict[str, str], source: str = "dataset", period: str = "the training period"
) -> Stats:
    """Mean and standard deviation (population, area-weighted) from merged moments; a variable without a valid
    value or without variation in ``period`` of ``source`` is an error naming both."""
    stats: Stats = {}
    for name, (w, mean, m2) in moments.items():
        std = float(np.sqrt(m2 / w)) if w > 0 else float("nan")
        if not w > 0:
            msg = f"{source}: variable {name!r} has no valid (non-NaN) value in {period}: no statistics"
            raise DataError(msg)
        if not np.isfinite(std) or std <= 0:
            msg = f"{source}: variable {name!r}: standard deviation over {period} is {std} (constant or not finite)"
            raise DataError(msg)
        stats[name] = {"mean": float(mean), "std": std, "units": units.get(name, "")}
    return stats


def compute_stats(train: xr.Dataset) -> Stats:
    """Area-weighted mean and standard deviation per variable, NaNs skipped.

    Variables are single-level (see :func:`pipeline.data.regrid.select`). One pass of partial moments,
    chunk by chunk (:func:`partial_moments`): numerically stable, memory bounded by a chunk.
    """
    units = {str(n): da.attrs.get("units", "") for n, da in train.data_vars.items()}
    return stats_from_moments(partial_moments(train), units)


def _coef(stats: Stats, name: str) -> tuple[float, float]:
    if name not in stats:
        msg = f"no statistics for variable {name!r}; stats.json has {sorted(stats)}"
        raise DataError(msg)
    return stats[name]["mean"], stats[name]["std"]


def normalise(ds: xr.Dataset, stats: Stats) -> xr.Dataset:
    """``(x - mean) / std`` per variable (and level); float32; attributes record the statistics."""
    out = {}
    for name, da in ds.data_vars.items():
        mean, std = _coef(stats, str(name))
        n = ((da - mean) / std).astype("float32")
        n.attrs = {
            **da.attrs,
            "units": "1",
            "normalised": "(x - mean) / std, see stats.json",
            "original_units": da.attrs.get("units", ""),
        }
        out[name] = n
    return xr.Dataset(out, attrs=ds.attrs)


def denormalise(ds: xr.Dataset, stats: Stats) -> xr.Dataset:
    """Exact inverse of :func:`normalise` (in float64), restoring the physical units."""
    out = {}
    for name, da in ds.data_vars.items():
        mean, std = _coef(stats, str(name))
        x = da.astype("float64") * std + mean
        attrs = {k: v for k, v in da.attrs.items() if k not in ("normalised", "original_units")}
        attrs["units"] = da.attrs.get("original_units", stats[str(name)].get("units", ""))
        x.attrs = attrs
        out[name] = x
    return xr.Dataset(out, attrs=ds.attrs)


def write_stats(stats: Stats, path: Path, extra: Mapping[str, Any] | None = None) -> None:
    payload = {"variables": stats, **(extra or {})}
    write_text_atomic(path, json.dumps(payload, indent=2))


def read_stats(path: str | os.PathLike[str]) -> Stats:
    p = Path(path)
    if not p.is_file():
        msg = f"statistics file {p} does not exist; run the normalise stage first"
        raise DataError(msg)
    return json.loads(p.read_text())["variables"]
