"""Video clips from the normalised zarr store, for torch.

A clip is ``(channels = variables, frames, lat, lon)`` float32 with NaN cells set to 0 and a mask
(1 = valid) so the loss can leave them out, plus the day of year of each frame
(:func:`pipeline.data.times.day_of_year`, on a 365.25-day year in every calendar) and the conditions the
store holds: static fields (``"static"``, (S, lat, lon): the arrays the store's ``static_fields``
attribute names), scalar forcings per frame (``"forcing"``, (frames, F): its ``forcings`` attribute's
time series) and boundary fields (``"boundary"``, (K, frames, lat, lon): the variables its ``boundary_fields``
attribute names, given to the network at every frame and never generated; missing cells, such as land in a
sea-surface temperature, set to 0). Clips never cross the boundary of their split, nor of a run: a store that holds several runs
(scenarios) has a ``run`` coordinate along time, and each run's part of a split is a period of its own. Reads are whole time chunks: a clip of ``T`` frames touches at
most ``ceil(T / chunk) + 1`` chunks, and the chunk cache keeps the last few decoded chunks so
neighbouring clips reuse them.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Iterator

import cftime
import numpy as np
import torch
import zarr
from torch.utils.data import Dataset, Sampler

from pipeline import seeding
from pipeline.data.coords import DataError
from pipeline.data.stats import SPLIT_NAMES
from pipeline.data.times import day_of_year

__all__ = ["ClipDataset", "ClipSampler"]


class ClipDataset(Dataset):
    """Clips of ``frames`` consecutive time steps of one split, starting every ``stride`` steps.

    Args:
        store: the normalised zarr store (with a ``split`` coordinate).
        split: ``"train"``, ``"val"`` or ``"test"``.
        frames: clip length.
        stride: step between clip starts.
        variables: channel order; default all data variables but the boundary fields, sorted.
        cache_chunks: decoded time chunks kept per variable (per worker process).
    """

    def __init__(
        self,
        store: str | os.PathLike[str],
        split: str,
        frames: int,
        stride: int = 1,
        variables: list[str] | None = None,
        cache_chunks: int = 8,
    ):
        self.store = str(store)
        self.split = split
        self.frames = int(frames)
        self.stride = int(stride)
        if self.frames < 1 or self.stride < 1:
            msg = f"clip frames ({frames}) and stride ({stride}) must be >= 1"
            raise DataError(msg)
        with warnings.catch_warnings():  # Snakemake's .snakemake_timestamp inside a directory output
            warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy")
            root = zarr.open_group(self.store, mode="r")
        self._read_variables(root, variables)
        codes = np.asarray(root["split"][:])
        if split not in SPLIT_NAMES[1:]:
            msg = f"split must be one of {list(SPLIT_NAMES[1:])}, got {split!r}"
            raise DataError(msg)
        idx = np.flatnonzero(codes == SPLIT_NAMES.index(split))
        self.runs = np.asarray(root["run"][:]) if "run" in root else np.zeros(codes.size, dtype=np.int8)
        self.periods = _periods(idx, self.runs)
        if "run" not in root and len(self.periods) > 1:
            msg = f"{self.store}: the {split} split is not one contiguous period (and the store has no run coordinate)"
            raise DataError(msg)
        longest = max((b - a for a, b in self.periods), default=0)
        if longest < self.frames:
            msg = f"{self.store}: the {split} split's longest period has {longest} time steps, fewer than a clip "
            msg += f"({self.frames} frames)"
            raise DataError(msg)
        self.first = int(idx[0])
        self.length = int(idx.size)
        self.starts = np.concatenate([np.arange(a, b - self.frames + 1, self.stride) for a, b in self.periods])
        self._read_conditions(root)
        time = root["time"]
        units = time.attrs.get("units", "")
        calendar = time.attrs.get("calendar", "standard")
        self.doy = day_of_year(cftime.num2date(np.asarray(time[:]), units, calendar))
        self.shape = root[self.variables[0]].shape
        self.chunk = root[self.variables[0]].chunks[0]
        self.cache_chunks = cache_chunks
        self._root: zarr.Group | None = None  # opened lazily in each worker process
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()

    def _read_variables(self, root: zarr.Group, variables: list[str] | None) -> None:
        """The clip's variables (``variables``, default all but the boundary fields) and the boundary fields."""
        names = sorted(
            k for k, a in root.arrays() if tuple(a.metadata.dimension_names or ()) == ("time", "latitude", "longitude")
        )
        self.boundary_names = list(root.attrs.get("boundary_fields", []))
        absent = [b for b in self.boundary_names if b not in names]
        if absent:
            msg = f"{self.store}: its boundary_fields attribute names {absent}, which are not arrays over "
            msg += "(time, latitude, longitude) in it"
            raise DataError(msg)
        generated = [n for n in names if n not in self.boundary_names]
        self.variables = list(variables) if variables is not None else generated
        missing = [v for v in self.variables if v not in generated]
        if missing:
            msg = f"{self.store}: no clip variable(s) {missing}; it has {generated}"
            if self.boundary_names:
                msg += f" and the boundary fields {self.boundary_names} (given, never generated)"
            raise DataError(msg)

    def _read_conditions(self, root: zarr.Group) -> None:
        """The static fields (S, lat, lon; missing cells 0) and forcing series (time, F) the store's attributes name."""
        self.static_names = list(root.attrs.get("static_fields", []))
        self.forcing_names = list(root.attrs.get("forcings", []))
        for kind, names, dims in (("static_fields", self.static_names, ("latitude", "longitude")),
                                  ("forcings", self.forcing_names, ("time",))):  # fmt: skip
            bad = [k for k in names if k not in root or tuple(root[k].metadata.dimension_names or ()) != dims]
            if bad:
                msg = f"{self.store}: its {kind} attribute names {bad}, which are not arrays over {dims} in it"
                raise DataError(msg)
        self.static = (
            np.stack([np.nan_to_num(np.asarray(root[k][:], dtype=np.float32)) for k in self.static_names])
            if self.static_names
            else None
        )
        self.forcing = (
            np.stack([np.asarray(root[k][:], dtype=np.float32) for k in self.forcing_names], axis=-1)
            if self.forcing_names
            else None
        )
        if self.forcing is not None and not np.isfinite(self.forcing).all():
            msg = f"{self.store}: forcing series {self.forcing_names} have missing values"
            raise DataError(msg)

    def __len__(self) -> int:
        return len(self.starts)

    def _chunk(self, name: str, c: int) -> np.ndarray:
        key = (name, c)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        if self._root is None:
            self._root = zarr.open_group(self.store, mode="r")
        data = np.asarray(self._root[name][c * self.chunk : (c + 1) * self.chunk], dtype=np.float32)
        self._cache[key] = data
        if len(self._cache) > self.cache_chunks * (len(self.variables) + len(self.boundary_names)):
            self._cache.popitem(last=False)
        return data

    def _fill(self, out: np.ndarray, name: str, start: int) -> None:
        """Frames ``start .. start + frames`` of ``name`` into ``out`` (T, H, W), straight from the cached chunks:
        no concatenated block, no stacked copy."""
        stop, done = start + self.frames, 0
        for c in range(start // self.chunk, (stop - 1) // self.chunk + 1):
            chunk = self._chunk(name, c)
            a = max(start, c * self.chunk) - c * self.chunk
            b = min(stop, (c + 1) * self.chunk) - c * self.chunk
            out[done : done + b - a] = chunk[a:b]
            done += b - a

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        start = int(self.starts[i])
        x = np.empty((len(self.variables), self.frames, *self.shape[1:]), dtype=np.float32)  # (C, T, H, W)
        for k, v in enumerate(self.variables):
            self._fill(x[k], v, start)
        mask = np.isfinite(x)  # bool: a quarter of the bytes a float mask moves from a worker to the trainer
        if not mask.all():
            np.copyto(x, 0.0, where=~mask)
        item = {
            "x": torch.from_numpy(x),
            "mask": torch.from_numpy(mask),
            "doy": torch.from_numpy(self.doy[start : start + self.frames].copy()),
            "start": torch.tensor(start),
        }
        if self.static is not None:
            item["static"] = torch.from_numpy(self.static)
        if self.forcing is not None:
            item["forcing"] = torch.from_numpy(self.forcing[start : start + self.frames].copy())
        if self.boundary_names:
            b = np.empty((len(self.boundary_names), self.frames, *self.shape[1:]), dtype=np.float32)
            for k, v in enumerate(self.boundary_names):
                self._fill(b[k], v, start)
            item["boundary"] = torch.from_numpy(np.nan_to_num(b, nan=0.0))
        return item

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_root"] = None
        state["_cache"] = OrderedDict()
        return state


def _periods(idx: np.ndarray, runs: np.ndarray) -> list[tuple[int, int]]:
    """The ``[first, stop)`` periods of the time indices ``idx``: runs of consecutive steps of one run."""
    if idx.size == 0:
        return []
    breaks = np.flatnonzero((np.diff(idx) != 1) | (np.diff(runs[idx]) != 0)) + 1
    return [(int(p[0]), int(p[-1]) + 1) for p in np.split(idx, breaks)]


class ClipSampler(Sampler[int]):
    """An endless, deterministic stream of clip indices for one rank, resumable at any position.

    Epoch ``e`` is a permutation of all clips seeded by ``(seed, e)``; rank ``r`` of ``world`` takes
    every ``world``-th index from ``r`` (the tail that does not divide evenly is dropped, so all
    ranks take the same number). ``start`` skips the first ``start`` indices of this rank's stream:
    after ``k`` optimizer steps, ``start = k * grad_accum * micro_batch``.

    ``block`` > 1 (``train.shuffle_block``) shuffles blocks of ``block`` consecutive clips, and the clips inside
    each block, instead of all clips at once: clips that follow each other in the stream then share their store
    chunks, which a loader worker's chunk cache keeps (a 16-frame clip otherwise decompresses two chunks per
    variable for itself). The price is gradient noise: a micro batch's clips come from one or two blocks, whose
    clips overlap in time and are correlated, so a batch carries less independent information than a fully
    shuffled one (its gradient's variance is higher; the learning rate or batch may need to follow). Every epoch is
    still a permutation of all clips, so every clip is seen once per epoch.
    """

    def __init__(
        self, n: int, seed: int, rank: int = 0, world: int = 1, start: int = 0, shuffle: bool = True, block: int = 1
    ):
        if n < world:
            msg = f"{n} clips cannot be shared by {world} ranks"
            raise DataError(msg)
        if block < 1:
            msg = f"train.shuffle_block must be >= 1, got {block}"
            raise DataError(msg)
        self.n, self.seed, self.rank, self.world, self.start, self.shuffle = n, seed, rank, world, start, shuffle
        self.block = block
        self.per_rank = n // world

    def _epoch(self, e: int) -> np.ndarray:
        if not self.shuffle:
            perm = np.arange(self.n)
        else:
            g = torch.Generator().manual_seed(seeding.derive(self.seed, e))
            if self.block == 1:  # the original stream, bit for bit (resumed runs depend on it)
                perm = torch.randperm(self.n, generator=g).numpy()
            else:
                blocks = [np.arange(b, min(b + self.block, self.n)) for b in range(0, self.n, self.block)]
                order = torch.randperm(len(blocks), generator=g).numpy()
                perm = np.concatenate([blocks[b][torch.randperm(blocks[b].size, generator=g).numpy()] for b in order])
        return perm[: self.per_rank * self.world][self.rank :: self.world]

    def __iter__(self) -> Iterator[int]:
        e, off = divmod(self.start, self.per_rank)
        while True:
            for i in self._epoch(e)[off:]:
                yield int(i)
            e, off = e + 1, 0

    def __len__(self) -> int:  # endless; DataLoader only needs this for its progress hints
        return 2**62
