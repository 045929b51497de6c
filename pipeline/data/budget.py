"""What a build needs, from metadata alone: the target grid's size, a part job's peak memory, the stores' sizes.

Estimated before anything is allocated (``check-config``, the Snakefile's parse-time check, ``prepare --init``),
so that a grid no job can hold is a config error naming the setting that sizes it, not a ``MemoryError``
in a job. A part (:func:`pipeline.prepare.prepare_part`) regrids its steps as dask tasks of one time chunk
of one variable each, and reads the chunks back for their moments: its peak is the interpreter, the
regridding weights, and per task in flight the source chunk's copies and the regridded chunk's working
copies (the two products, the NaN-masked pass, the moments in float64). A part runs as many tasks at
once as its memory holds (:meth:`Budget.workers`), so a part fits wherever a single task does.

The per-value constants were measured (peak RSS of a part regridding 1 to 0.1 degree, float32, with
missing values, conservative and bilinear, 1 and 2 threads: 36-37 bytes per regridded value in flight,
about 0.2 GiB for the interpreter) and rounded up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import xarray as xr

__all__ = ["Budget", "estimate", "human"]

GIB = 2**30
INTERPRETER = GIB // 2  # python with numpy, xarray, dask, zarr and the pipeline imported
PER_TARGET_VALUE = 40  # bytes per regridded value in flight: products, NaN-masked pass, float64 moments
PER_SOURCE_VALUE = 4  # copies of each source value in flight: read, contiguous, valid mask, filled


def human(n: float) -> str:
    """Bytes in binary units: ``1.5 GiB``."""
    unit = "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            break
        n /= 1024
    return f"{n:.3g} {unit}"


@dataclass(frozen=True)
class Budget:
    """The sizes of one build (bytes, counts), and the memory of a part's job (``limit``)."""

    grid: tuple[int, int]  # target latitude x longitude
    steps: int
    variables: int
    time_chunk: int
    part_tasks: int  # tasks (time chunks x variables) of the largest part
    task: int  # one task in flight: one time chunk of one variable
    weights: int
    store: int  # the regridded store, uncompressed
    normalised: int  # the normalised store (float32), uncompressed
    limit: int

    @property
    def cells(self) -> int:
        return self.grid[0] * self.grid[1]

    def peak(self, workers: int) -> int:
        """A part's peak memory with ``workers`` tasks at once."""
        return INTERPRETER + self.weights + min(workers, self.part_tasks) * self.task

    @property
    def fits(self) -> bool:
        """Whether a part's job holds one task at a time."""
        return self.peak(1) <= self.limit

    def workers(self, cpus: int) -> int:
        """Tasks a part runs at once: at most ``cpus`` and what the limit holds, at least one."""
        room = (self.limit - INTERPRETER - self.weights) // max(self.task, 1)
        return int(max(1, min(cpus, self.part_tasks, room)))


def _weights(ds: xr.Dataset, nlat: int, nlon: int, methods: set[str]) -> int:
    """Bytes of the regridding weights while they are built (the larger phase) and applied."""
    if ds.attrs.get("grid_kind") == "curvilinear":  # sparse target x source, a few entries per row, and corners
        return 200 * (nlat * nlon + ds.sizes["y"] * ds.sizes["x"])
    if ds.attrs.get("grid_kind") == "unstructured":  # the same, cell outlines of ~50 points, the triangulation
        return 1000 * (nlat * nlon + ds.sizes["cell"])
    slat, slon = ds.sizes["latitude"], ds.sizes["longitude"]
    size = 16 * 8 * (nlat + nlon)  # banded sparse matrices: a few entries per row, a few copies
    if "conservative" in methods:  # built from dense overlap matrices, three at a time at most
        size += 3 * 8 * (nlat * (slat + 2) + nlon * slon)
    return size


def estimate(
    ds: xr.Dataset,
    target: xr.Dataset,
    methods: set[str],
    time_chunk: int,
    part_steps: int,
    limit_gb: float,
) -> Budget:
    """The budget of regridding ``ds`` (selected, standardised, lazy) onto ``target`` by ``methods``, in chunks
    of ``time_chunk`` steps, the largest part having ``part_steps`` steps, in jobs of ``limit_gb`` GB."""
    nlat, nlon = target.sizes["latitude"], target.sizes["longitude"]
    horizontal = {"curvilinear": ("y", "x"), "unstructured": ("cell",)}.get(
        ds.attrs.get("grid_kind"), ("latitude", "longitude")
    )
    source_cells = math.prod(ds.sizes[d] for d in horizontal)
    steps = ds.sizes.get("time", 1)
    chunk = min(time_chunk, steps)
    out_bytes = [4 if da.dtype == np.float32 else 8 for da in ds.data_vars.values()]
    in_bytes = [max(da.dtype.itemsize, 4) for da in ds.data_vars.values()]
    task = chunk * (PER_TARGET_VALUE * nlat * nlon + PER_SOURCE_VALUE * max(in_bytes) * source_cells)
    return Budget(
        grid=(nlat, nlon),
        steps=steps,
        variables=len(out_bytes),
        time_chunk=time_chunk,
        part_tasks=math.ceil(part_steps / time_chunk) * len(out_bytes),
        task=task,
        weights=_weights(ds, nlat, nlon, methods),
        store=steps * nlat * nlon * sum(out_bytes),
        normalised=steps * nlat * nlon * 4 * len(out_bytes),
        limit=int(limit_gb * 1e9),
    )
