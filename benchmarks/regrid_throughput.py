"""Regridding throughput at 0.25 deg (721 x 1440), >= 100 time steps.

Prints MB/s (input bytes / wall time) for: a plain memory copy of the loaded array, xarray's own
``.interp`` (linear) and this pipeline's regrid (bilinear and conservative, via xarray-regrid), each
to a 1-deg grid, streaming the field from a zarr store, with how much the peak resident memory
grew during the measurement (each in its own process).

    python benchmarks/regrid_throughput.py [--steps 120] [--chunk 10]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr

STORE = Path(__file__).parent / "out" / "field_0p25deg.zarr"


def make_store(steps: int, chunk: int) -> Path:
    """A 0.25-deg float32 field written once to zarr, streamed from there by each measurement."""
    path = STORE.with_name(f"{STORE.stem}_{steps}x{chunk}.zarr")
    if path.exists():
        return path
    lat = np.linspace(90, -90, 721)  # ERA5 convention: descending, poles included
    lon = np.arange(1440) * 0.25
    base = (np.cos(np.deg2rad(lat))[:, None] * np.sin(2 * np.deg2rad(lon))[None, :]).astype("float32")
    noise = da.random.default_rng(0).standard_normal((steps, 721, 1440), chunks=(chunk, 721, 1440), dtype="float32")
    ds = xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), base[None] + 0.1 * noise, {"units": "K"})},
        coords={"time": np.arange(steps), "latitude": lat, "longitude": lon},
    )
    ds.to_zarr(path, zarr_format=3, consolidated=False)
    return path


def _measure(name: str, path: Path, q: mp.Queue) -> None:
    import dask

    from pipeline.data.coords import standardise
    from pipeline.data.regrid import regrid, target_grid

    ds = xr.open_zarr(path, zarr_format=3, consolidated=False)
    nbytes = ds["t2m"].nbytes
    tg = target_grid(1.0)
    if name == "memory copy":
        data = ds["t2m"].values  # loaded before the clock starts: a pure copy in memory
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if name == "memory copy":
        out = data.copy()
    elif name == "xarray .interp (linear)":
        out = ds.interp(latitude=tg["latitude"], longitude=tg["longitude"], method="linear").compute()
    else:
        method = name.split()[-1]
        with dask.config.set(scheduler="threads"):
            out = regrid(standardise(ds), tg, {"t2m": method}).compute()
    dt = time.perf_counter() - t0
    del out
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    q.put((name, nbytes, dt, base_rss / 1024, (peak - base_rss) / 1024))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--chunk", type=int, default=10)
    args = ap.parse_args()
    path = make_store(args.steps, args.chunk)
    print(
        f"field: {args.steps} x 721 x 1440 float32 ({args.steps * 721 * 1440 * 4 / 1e6:.0f} MB) in zarr, "
        f"chunks of {args.chunk} steps, target 1.0 deg; each row a fresh process"
    )
    print(f"{'method':<34}{'seconds':>9}{'MB/s':>9}{'peak RSS growth MB':>20}{'RSS before MB':>15}")
    ctx = mp.get_context("spawn")
    for name in ("memory copy", "xarray .interp (linear)", "pipeline regrid bilinear", "pipeline regrid conservative"):
        q = ctx.Queue()
        p = ctx.Process(target=_measure, args=(name, path, q))
        p.start()
        res = q.get()
        p.join()
        _, nbytes, dt, base, peak = res
        print(f"{name:<34}{dt:>9.2f}{nbytes / 1e6 / dt:>9.0f}{peak:>20.0f}{base:>15.0f}")


if __name__ == "__main__":
    main()
