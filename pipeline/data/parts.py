"""One zarr v3 store built in parts along time, the way anemoi-datasets builds its data sets.

Three verbs, each its own job:

- ``init`` (:func:`init_store`) writes the whole store's metadata (variables, chunks, attributes) and its
  coordinates, then a plan, ``init.json``: the parts' time ranges, each a whole number of
  ``time_chunk``-step chunks, so that no two parts ever touch a chunk;
- each part (:func:`write_region`) writes its region of chunks (``to_zarr(region=...)``), then, last and
  atomically, its marker ``part-NNNN.done`` (:func:`write_marker`) (JSON: whatever the stage wants to keep, e.g. partial moments);
- ``finalise`` (:func:`finalise_store`) checks that every part of this plan left its marker,
  consolidates the metadata and moves the store into place, with any small files that belong to it (normalise's
  ``stats.json``) inside it: a store and its files are replaced in one rename, never one without the other.

Everything is built in ``<name>.parts/`` beside the final store (``init.json``, ``store.zarr`` until
finalise moves it, the markers). A part killed midway leaves no marker: it is run again and rewrites its
whole region; a part with a marker is complete and never redone; the final path only ever holds a finished
store. Init and finalise remove what an interrupted replacement left beside the store (``.<name>.old-*``,
``.<name>.tmp*``); they run under the store's exclusive lock and the parts under its shared lock
(:mod:`pipeline.data.lock`, taken by the stages).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from pipeline.atomic import write_text_atomic
from pipeline.data.coords import DataError
from pipeline.data.io import CONSOLIDATED_NOTE, compute_with_progress, move_into_place, zarr_ready
from pipeline.data.lock import clean_leftovers
from pipeline.data.times import time_seconds

__all__ = [
    "Build",
    "chunk_edges",
    "finalise_store",
    "init_store",
    "open_building",
    "part_ranges",
    "part_span",
    "read_markers",
    "read_plan",
    "write_marker",
    "write_region",
]


@dataclass(frozen=True)
class Build:
    """Where the store ``final`` is built: ``<final stem>.parts/`` with ``init.json``, ``store.zarr``, markers."""

    final: Path

    @property
    def root(self) -> Path:
        return self.final.with_name(f"{self.final.stem}.parts")

    @property
    def store(self) -> Path:
        return self.root / "store.zarr"

    @property
    def plan_path(self) -> Path:
        return self.root / "init.json"

    def marker(self, part: int) -> Path:
        return self.root / f"part-{part:04d}.done"

    @property
    def marker_pattern(self) -> Path:
        """:meth:`marker` with Snakemake's wildcard ``{part}`` (four digits) for the number."""
        return self.root / "part-{part}.done"


def part_ranges(n_time: int, time_chunk: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` ranges of time steps ``[start, stop)``, each a whole number of chunks (as even as can be)."""
    chunks = math.ceil(n_time / time_chunk)
    if parts > chunks:
        msg = (
            f"data.parts = {parts} is more than the data's {chunks} time chunks ({n_time} steps in chunks of "
            f"data.time_chunk = {time_chunk}): a part is a whole number of chunks; lower data.parts"
        )
        raise DataError(msg)
    edges = [min(n_time, (k * chunks // parts) * time_chunk) for k in range(parts + 1)]
    return [(edges[k], edges[k + 1]) for k in range(parts)]


def init_store(
    build: Build, template: xr.Dataset, time_chunk: int, parts: int, info: dict[str, Any], codec: str = "zstd"
) -> dict:
    """Start a build afresh: the store's metadata (``codec``: ``data.codec``) and coordinates from ``template``
    (lazy: no data is computed), then the plan (``info`` kept in it for the parts and finalise). Returns the plan."""
    clean_leftovers(build.final)
    if build.root.exists():
        shutil.rmtree(build.root)  # an earlier build's store and markers: none of them belongs to this plan
    build.root.mkdir(parents=True)
    ds = zarr_ready(template, time_chunk, codec=codec)
    ds.to_zarr(build.store, mode="w", zarr_format=3, consolidated=False, compute=False)
    t = time_seconds(ds["time"].values)
    ranges = part_ranges(t.size, time_chunk, parts)
    plan = {
        "build": uuid.uuid4().hex,  # markers name it: a marker of an earlier build never counts
        "time_chunk": time_chunk,
        "steps": int(t.size),
        "parts": [
            {"start": a, "stop": b, "first": float(t[a]), "last": float(t[b - 1])} for a, b in ranges
        ],  # first, last: seconds since 1970 in the data's calendar (pipeline.data.times.time_seconds)
        **info,
    }
    write_text_atomic(build.plan_path, json.dumps(plan, indent=1))  # last: the build exists once its plan does
    return plan


def read_plan(build: Build, parts: int | None = None) -> dict:
    """The plan of the build; with ``parts`` (data.parts now), it must have been made for that many."""
    if not build.plan_path.is_file():
        msg = f"{build.plan_path} does not exist: initialise the build of {build.final.name} first (--init)"
        raise DataError(msg)
    plan = json.loads(build.plan_path.read_text())
    if parts is not None and len(plan["parts"]) != parts:
        msg = (
            f"{build.plan_path} plans {len(plan['parts'])} parts but data.parts is {parts}: "
            f"initialise the build again (--init)"
        )
        raise DataError(msg)
    return plan


def open_building(build: Build) -> xr.Dataset:
    """The store being built (no consolidated metadata yet), lazily."""
    if not build.store.exists():
        msg = (
            f"{build.store} does not exist: initialise the build (--init) first"
            if not build.final.exists()
            else f"{build.store} does not exist: finalise moved it to {build.final}; to build that store again "
            "run every step (--init, each --part, --finalise, or the stage without them)"
        )
        raise DataError(msg)
    return xr.open_zarr(build.store, consolidated=False, zarr_format=3)


def part_span(plan: dict, part: int) -> dict:
    """Part ``part`` of the plan: ``start``, ``stop`` (steps), ``first``, ``last`` (seconds)."""
    n = len(plan["parts"])
    if not 0 <= part < n:
        msg = f"part {part} does not exist: data.parts is {n}, so parts are numbered 0 to {n - 1}"
        raise DataError(msg)
    return plan["parts"][part]


def write_region(build: Build, plan: dict, part: int, ds: xr.Dataset) -> None:
    """Write ``ds`` (the part's time steps, lazy) into the part's region of the store.

    The part is complete only once :func:`write_marker` has run.
    """
    p = part_span(plan, part)
    start, stop = p["start"], p["stop"]
    store = open_building(build)
    if ds.sizes["time"] != stop - start or not np.array_equal(
        time_seconds(ds["time"].values), time_seconds(store["time"].values[start:stop])
    ):
        msg = (
            f"part {part}: its {ds.sizes['time']} time steps are not the store's steps {start} to {stop - 1}: "
            f"the source files changed since the build was initialised; initialise it again (--init)"
        )
        raise DataError(msg)
    region = zarr_ready(ds, plan["time_chunk"])
    region = region.drop_vars([n for n, v in region.variables.items() if "time" not in v.dims or n == "time"])
    job = region.to_zarr(
        build.store, region={"time": slice(start, stop)}, mode="r+", zarr_format=3, consolidated=False, compute=False
    )
    compute_with_progress(job, f"{build.final.name} part {part}")


def write_marker(build: Build, plan: dict, part: int, payload: dict[str, Any]) -> Path:
    """The part's completion marker (JSON holding ``payload``), written atomically: the last thing a part does."""
    p = part_span(plan, part)
    marker = {"build": plan["build"], "part": part, "start": p["start"], "stop": p["stop"], **payload}
    return write_text_atomic(build.marker(part), json.dumps(marker))


def chunk_edges(plan: dict) -> list[int]:
    """The store's time chunks as edges: chunk ``k`` holds steps ``edges[k]`` to ``edges[k + 1] - 1``."""
    return [*range(0, plan["steps"], plan["time_chunk"]), plan["steps"]]


def read_markers(build: Build, plan: dict) -> list[dict]:
    """Every part's marker, in order; a part without a marker of this build is an error naming it."""
    markers, missing = [], []
    for k in range(len(plan["parts"])):
        path = build.marker(k)
        m = json.loads(path.read_text()) if path.is_file() else None
        if m is None or m.get("build") != plan["build"]:
            missing.append(k)
        markers.append(m)
    if missing:
        msg = (
            f"{build.final.name}: part(s) {missing} of {len(plan['parts'])} have not completed (no marker of this "
            f"build in {build.root}); run them (--part N) before finalising"
        )
        raise DataError(msg)
    return markers


def _link(path: Path, target: Path) -> None:
    """Make ``path`` a relative symbolic link to ``target`` (atomically: a link made aside, renamed over it)."""
    rel = os.path.relpath(target, path.parent)
    clean_leftovers(path)  # a link made aside by a finalise killed before renaming it
    if path.is_symlink() and os.readlink(path) == rel:
        return
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    os.symlink(rel, tmp)
    tmp.replace(path)


def finalise_store(
    build: Build, files: Mapping[str, Callable[[Path], object]] | None = None, links: Mapping[Path, str] | None = None
) -> tuple[dict, list[dict]]:
    """Check that every part completed, consolidate the metadata, move the store to ``build.final``.

    ``files``: name -> a function writing that file, called with its path inside the store once the metadata is
    consolidated (zarr reads the consolidated metadata and ignores it), so that it moves into place with the store,
    in the same rename. ``links``: path -> name of one of those files; each path is made a symbolic link to
    ``<final>/<name>`` before the move, so that at every moment it resolves to the file of the store in place
    (or to nothing, while no store is): normalise's ``stats.json``, never the statistics of another store.

    Returns the plan and the parts' markers.
    """
    plan = read_plan(build)
    markers = read_markers(build, plan)
    for name in files or {}:  # by a finalise killed before its move; written again below, after zarr lists the store
        (build.store / name).unlink(missing_ok=True)
    open_building(build)  # a clear error where the store is gone
    clean_leftovers(build.final)  # of a finalise killed while it replaced the store
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=CONSOLIDATED_NOTE)
        zarr.consolidate_metadata(str(build.store), zarr_format=3)
    for name, write in (files or {}).items():
        write(build.store / name)
    for path, name in (links or {}).items():
        _link(Path(path), build.final / name)
    move_into_place(build.store, build.final)
    return plan, markers
