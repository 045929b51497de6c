"""The clips a forecast is scored on, as numpy and as xarray: which clips of a period (:func:`pick_test_clips`, the
one place that picks them, for the sweep and the references alike), their truth in physical units
(:func:`read_eval_clips`), and the conversion of (clip, [member,] C, T, H, W) arrays to Datasets of one variable per
channel (:func:`clip_dataset`, :func:`as_dataset`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr

from pipeline.data.clips import ClipDataset
from pipeline.data.io import open_store
from pipeline.data.stats import denormalise, read_stats
from pipeline.data.times import format_time

__all__ = ["EvalClips", "as_dataset", "clip_dataset", "pick_test_clips", "read_eval_clips"]


def pick_test_clips(available: int, test_clips: int | str, stride: int = 1) -> np.ndarray:
    """Indices of the test clips (into the test period's clips starting every step): ``'all'`` takes every
    ``stride``-th clip start; a number N takes N starts spread evenly over the period (at most all)."""
    if available < 1:
        msg = "the test period holds no clip"
        raise ValueError(msg)
    if test_clips == "all":
        return np.arange(0, available, stride)
    n = min(int(test_clips), available)
    return np.unique(np.linspace(0, available - 1, n).round().astype(int))


def as_dataset(
    arr: np.ndarray,
    names: list[str],
    dims: tuple[str, ...],
    coords: Mapping[str, Any],
    channel_axis: int = 1,
    attrs: Mapping[str, Mapping[str, Any]] | None = None,
) -> xr.Dataset:
    """A numpy array with one channel per variable along ``channel_axis`` -> a Dataset of one variable per
    channel with dims ``dims`` (the array's other axes, in order) and each variable's ``attrs``."""
    ds = xr.Dataset({n: (dims, np.take(arr, i, axis=channel_axis)) for i, n in enumerate(names)}, coords=coords)
    for n in names:
        ds[n].attrs = dict((attrs or {}).get(n, {}))
    return ds


def clip_dataset(arr: np.ndarray, names: list[str], lat: np.ndarray, lon: np.ndarray, member: bool) -> xr.Dataset:
    """(clip, [member,] C, frame, lat, lon) numpy -> Dataset of one variable per channel."""
    space = ("frame", "latitude", "longitude")
    dims = ("clip", "member", *space) if member else ("clip", *space)
    return as_dataset(arr, names, dims, {"latitude": lat, "longitude": lon}, channel_axis=2 if member else 1)


@dataclass(frozen=True)
class EvalClips:
    """The test clips one evaluation scores on: normalised clips for the model, the truth in physical units."""

    clips: list[dict[str, torch.Tensor]]
    starts: np.ndarray  # store time index of each clip's first frame
    labels: list[str]  # first time of each clip, formatted (the JSON files' ``clip_starts``)
    names: list[str]
    frames: int
    context: int
    masks: np.ndarray  # (clip, C, T, H, W), True = valid
    raw: np.ndarray  # (clip, C, T, H, W) normalised truth, NaN where masked
    truth: xr.Dataset  # physical units, NaN where masked
    lat: np.ndarray
    lon: np.ndarray
    stats: dict[str, Any]

    def physical(self, forecast: np.ndarray) -> xr.Dataset:
        """A normalised forecast (clip, [member,] C, T, H, W) masked like the truth and in physical units."""
        member = forecast.ndim == 6
        masked = np.where(self.masks[:, None] if member else self.masks, forecast, np.nan)
        return denormalise(clip_dataset(masked, self.names, self.lat, self.lon, member), self.stats)


def read_eval_clips(
    store_path: str | os.PathLike[str],
    stats_path: str | os.PathLike[str],
    split: str,
    frames: int,
    context: int,
    which: int | str = "all",
    stride: int = 1,
    variables: list[str] | None = None,
) -> EvalClips:
    """The clips of ``split`` in the normalised store that :func:`pick_test_clips` picks (``which``, ``stride``),
    ``context`` frames of each given, with their truth in physical units (statistics at ``stats_path``)."""
    ds = ClipDataset(store_path, split, frames, 1, variables=variables)
    if len(ds) < 1:
        msg = f"the {split} period (data.split.{split}) holds no clip of {frames} frames in {store_path}"
        raise ValueError(msg)
    clips = [ds[int(i)] for i in pick_test_clips(len(ds), which, stride)]
    store = open_store(store_path)
    starts = np.array([int(c["start"]) for c in clips])
    masks = np.stack([c["mask"].numpy() for c in clips]).astype(bool)
    raw = np.where(masks, np.stack([c["x"].numpy() for c in clips]), np.nan)
    lat, lon = store["latitude"].values, store["longitude"].values
    stats = read_stats(stats_path)
    return EvalClips(
        clips=clips,
        starts=starts,
        labels=[format_time(store["time"].values[s]) for s in starts],
        names=list(ds.variables),
        frames=frames,
        context=context,
        masks=masks,
        raw=raw,
        truth=denormalise(clip_dataset(raw, list(ds.variables), lat, lon, False), stats),
        lat=lat,
        lon=lon,
        stats=stats,
    )
