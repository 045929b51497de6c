"""The clips a forecast is scored on, as numpy and as xarray: which clips of a period (:func:`pick_test_clips`, the
one place that picks them, for the sweep and the references alike), their truth in physical units
(:func:`read_eval_clips`), and the conversion of (clip, [member,] C, T, H, W) arrays to Datasets of one variable per
channel (:func:`clip_dataset`, :func:`as_dataset`)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import xarray as xr

from pipeline.data.clips import ClipDataset
from pipeline.data.io import open_store
from pipeline.data.stats import denormalise, read_stats
from pipeline.data.times import format_time

__all__ = ["EvalClips", "EvalSet", "as_dataset", "clip_dataset", "pick_test_clips", "read_eval_clips"]


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

    def __len__(self) -> int:
        return len(self.starts)

    def read(self, part: slice = slice(None)) -> EvalClips:
        """The clips of ``part`` (views of these arrays, no copy)."""
        return replace(
            self,
            clips=self.clips[part],
            starts=self.starts[part],
            labels=self.labels[part],
            masks=self.masks[part],
            raw=self.raw[part],
            truth=self.truth.isel(clip=part),
        )

    def batches(self, size: int) -> Iterator[tuple[int, EvalClips]]:
        return batches(self, size)

    def physical(self, forecast: np.ndarray) -> xr.Dataset:
        """A normalised forecast (clip, [member,] C, T, H, W) masked like the truth and in physical units."""
        member = forecast.ndim == 6
        masked = np.where(self.masks[:, None] if member else self.masks, forecast, np.nan)
        return denormalise(clip_dataset(masked, self.names, self.lat, self.lon, member), self.stats)


@dataclass(frozen=True)
class EvalSet:
    """The clips one evaluation scores on, read from the store a batch at a time (:meth:`batches`), so an
    evaluation's memory holds one batch of truth whatever the length of the period; what a stage records about
    the set (starts, labels, names, grid) is known without reading a clip."""

    source: ClipDataset
    indices: np.ndarray  # into ``source``
    starts: np.ndarray  # store time index of each clip's first frame
    labels: list[str]
    names: list[str]
    frames: int
    context: int
    lat: np.ndarray
    lon: np.ndarray
    stats: dict[str, Any]

    def __len__(self) -> int:
        return len(self.indices)

    def read(self, part: slice = slice(None)) -> EvalClips:
        """The clips of ``part`` (all by default) in memory, with their truth."""
        clips = [self.source[int(i)] for i in self.indices[part]]
        masks = np.stack([c["mask"].numpy() for c in clips]).astype(bool)
        raw = np.where(masks, np.stack([c["x"].numpy() for c in clips]), np.nan)
        return EvalClips(
            clips=clips,
            starts=self.starts[part],
            labels=self.labels[part],
            names=self.names,
            frames=self.frames,
            context=self.context,
            masks=masks,
            raw=raw,
            truth=denormalise(clip_dataset(raw, self.names, self.lat, self.lon, False), self.stats),
            lat=self.lat,
            lon=self.lon,
            stats=self.stats,
        )

    def batches(self, size: int) -> Iterator[tuple[int, EvalClips]]:
        return batches(self, size)


def batches(clips: EvalClips | EvalSet, size: int) -> Iterator[tuple[int, EvalClips]]:
    """``(first, part)``: the clips ``size`` at a time (``clips.read``), ``first`` the index of the part's first
    clip in the set (what seeds its members)."""
    for first in range(0, len(clips), size):
        yield first, clips.read(slice(first, first + size))


def read_eval_clips(
    store_path: str | os.PathLike[str],
    stats_path: str | os.PathLike[str],
    split: str,
    frames: int,
    context: int,
    which: int | str = "all",
    stride: int = 1,
    variables: list[str] | None = None,
) -> EvalSet:
    """The clips of ``split`` in the normalised store that :func:`pick_test_clips` picks (``which``, ``stride``),
    ``context`` frames of each given, with their truth in physical units (statistics at ``stats_path``), read
    when :meth:`EvalSet.batches` (or :meth:`EvalSet.read`) asks for them."""
    ds = ClipDataset(store_path, split, frames, 1, variables=variables)
    if len(ds) < 1:
        msg = f"the {split} period (data.split.{split}) holds no clip of {frames} frames in {store_path}"
        raise ValueError(msg)
    indices = pick_test_clips(len(ds), which, stride)
    store = open_store(store_path)
    starts = np.asarray(ds.starts[indices], dtype=int)
    return EvalSet(
        source=ds,
        indices=indices,
        starts=starts,
        labels=[format_time(store["time"].values[s]) for s in starts],
        names=list(ds.variables),
        frames=frames,
        context=context,
        lat=store["latitude"].values,
        lon=store["longitude"].values,
        stats=read_stats(stats_path),
    )
