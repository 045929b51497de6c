"""Curvilinear regridding: accuracy on an analytic field on a rotated-pole grid, and throughput at 0.1 deg.

Accuracy: a CORDEX EUR-style rotated grid (pole 39.25N 162W) holding
``280 + 10 cos(lat) sin(2 lon) + 5 sin(lat)`` (geographic lat/lon) is regridded to a regular grid over
Europe; bilinear is compared with the field at the target points, conservative with the exact cell
means (closed form), and the area mean of the output with the exact area mean over the same cells.

Throughput: a 0.1-deg rotated grid (EUR-11-like, ~ 430 x 420 cells at 0.11 deg is the real one; here
``--cells`` per side) with ``--steps`` time steps, streamed from zarr to a 0.25-deg target; weights are
built once (timed separately) and applied chunk by chunk.

    python benchmarks/regrid_curvilinear.py [--cells 600] [--steps 48]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pyproj
import xarray as xr

from pipeline.data.coords import standardise
from pipeline.data.curvilinear import _apply, bilinear_weights, conservative_weights
from pipeline.data.regrid import regrid, target_grid

POLE = {
    "grid_mapping_name": "rotated_latitude_longitude",
    "grid_north_pole_latitude": 39.25,
    "grid_north_pole_longitude": -162.0,
}
OUT = Path(__file__).parent / "out"


def field(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    la, lo = np.deg2rad(lat), np.deg2rad(lon)
    return 280.0 + 10.0 * np.cos(la) * np.sin(2 * lo) + 5.0 * np.sin(la)


def cell_mean(lat: np.ndarray, lon: np.ndarray, res: float) -> np.ndarray:
    p1, p2 = (np.deg2rad(lat + s * res / 2)[:, None] for s in (-1, 1))
    l1, l2 = (np.deg2rad(lon + s * res / 2)[None, :] for s in (-1, 1))
    area = np.sin(p2) - np.sin(p1)
    cos2 = (p2 / 2 + np.sin(2 * p2) / 4 - p1 / 2 - np.sin(2 * p1) / 4) / area
    return (
        280.0 + 10.0 * cos2 * (np.cos(2 * l1) - np.cos(2 * l2)) / (2 * (l2 - l1)) + 5.0 * (np.sin(p1) + np.sin(p2)) / 2
    )


def rotated(step: float, n_lat: int, n_lon: int, steps: int, values: bool = True) -> xr.Dataset:
    rlat = -23.375 + step * np.arange(n_lat)
    rlon = -28.375 + step * np.arange(n_lon)
    if values:
        tr = pyproj.Transformer.from_crs(pyproj.CRS.from_cf(POLE), "EPSG:4326", always_xy=True)
        lon, lat = tr.transform(*np.meshgrid(rlon, rlat))
        data = np.broadcast_to(field(np.asarray(lat), np.asarray(lon))[None], (steps, n_lat, n_lon))
    else:
        data = np.random.default_rng(0).standard_normal((steps, n_lat, n_lon))
    return xr.Dataset(
        {
            "tas": (("time", "rlat", "rlon"), data.astype(np.float32), {"units": "K", "grid_mapping": "rotated_pole"}),
            "rotated_pole": ((), 0, POLE),
        },
        coords={
            "time": ("time", np.arange(steps), {"standard_name": "time"}),
            "rlat": ("rlat", rlat, {"standard_name": "grid_latitude", "units": "degrees"}),
            "rlon": ("rlon", rlon, {"standard_name": "grid_longitude", "units": "degrees"}),
        },
    )


def accuracy() -> None:
    ds = standardise(rotated(0.11, 400, 420, 1), "EUR-11-like")
    res = 0.5
    tg = target_grid(res, (40.0, 60.0), (-5.0, 25.0))
    lat, lon = tg["latitude"].values, tg["longitude"].values
    weights = np.cos(np.deg2rad(lat))[:, None] * np.ones(lon.size)[None]
    for method, exact in (("bilinear", field(lat[:, None], lon[None, :])), ("conservative", cell_mean(lat, lon, res))):
        out = regrid(ds, tg, {"tas": method})["tas"].isel(time=0).values
        err = np.abs(out - exact)
        area_err = abs(np.average(out, weights=weights) - np.average(exact, weights=weights))
        print(
            f"{method:<13} rotated 0.11 deg -> 0.5 deg over Europe: max error {err.max():.2e} K, area-mean error {area_err:.2e} K, NaN cells {int(np.isnan(out).sum())}"
        )


def throughput(cells: int, steps: int) -> None:
    import dask

    OUT.mkdir(exist_ok=True)
    path = OUT / f"rotated_0p1_{cells}x{steps}.zarr"
    if not path.exists():
        rotated(0.1, cells, cells, steps, values=False).chunk({"time": 8}).to_zarr(
            path, zarr_format=3, consolidated=True
        )
    ds = standardise(xr.open_zarr(path), "0.1 deg rotated")
    tg = target_grid(0.25, (35.0, 70.0), (-10.0, 40.0))
    nbytes = ds["tas"].nbytes
    print(
        f"field: {steps} x {cells} x {cells} float32 on a 0.1-deg rotated grid ({nbytes / 1e6:.0f} MB, zarr, 8-step chunks) -> 0.25 deg"
    )
    for method in ("bilinear", "conservative"):
        t0 = time.perf_counter()
        w = (
            bilinear_weights(ds["latitude"].values, ds["longitude"].values, tg)
            if method == "bilinear"
            else conservative_weights(ds["cell_corners"].values, tg)
        )
        tw = time.perf_counter() - t0
        t0 = time.perf_counter()
        with dask.config.set(scheduler="threads"):
            regrid(ds, tg, {"tas": method}).compute()
        dt = time.perf_counter() - t0
        need = np.asarray(w.sum(axis=1)).ravel() * (1 - 1e-5) if method == "bilinear" else np.full(w.shape[0], 0.5)
        shape = (tg.sizes["latitude"], tg.sizes["longitude"])
        t0 = time.perf_counter()
        for k in range(0, steps, 8):  # weights built: read a chunk, apply, next
            _apply(ds["tas"].isel(time=slice(k, k + 8)).values, w, need, shape)
        da_ = time.perf_counter() - t0
        print(
            f"{method:<13} weights {tw:5.1f} s ({w.nnz} non-zeros); whole regrid {dt:5.1f} s = {nbytes / 1e6 / dt:6.1f} MB/s; "
            f"read + apply with weights built {nbytes / 1e6 / da_:6.1f} MB/s"
        )
    t0 = time.perf_counter()
    data = ds["tas"].values
    tl = time.perf_counter() - t0
    t0 = time.perf_counter()
    data.copy()
    print(
        f"reference: reading the store {nbytes / 1e6 / tl:7.1f} MB/s; memory copy {nbytes / 1e6 / (time.perf_counter() - t0):7.1f} MB/s"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=600)
    ap.add_argument("--steps", type=int, default=48)
    args = ap.parse_args()
    accuracy()
    throughput(args.cells, args.steps)


if __name__ == "__main__":
    main()
