"""prepare + normalise at scale: monthly 0.25-degree 6-hourly NetCDF files in 1 and 2 parts.

Writes a year (or ``--months``) of 0.25-degree (721 x 1440), 6-hourly data for two variables (``tas``,
regridded bilinearly, and ``pr``, conservatively, both float32) as one NetCDF file per month, then for
each input length and part count runs the data stages as a cluster would: ``prepare --init``, every
``prepare --part N`` at once, ``prepare --finalise``, and the same for ``normalise``, each step its own
``python -m pipeline`` process. Prints, per input length and part count: input MB, wall time of each
stage (parts running side by side), MB/s of input through prepare and its ratio to a memory copy
measured in the same run, the peak RSS of each part's process (it stays flat as the input grows: memory
is bounded by a chunk), and whether the stores and statistics of 2 parts equal those of 1 part bit for bit.

    python benchmarks/prepare_scale.py [--months 1 3 12] [--parts 1 2] [--out DIR] [--resolution 1.0]
"""

from __future__ import annotations

import argparse
import calendar
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.data.io import open_store  # noqa: E402

TIME = "/usr/bin/time"  # GNU time: the peak RSS of each stage's process
LAT = np.linspace(-90, 90, 721)
LON = np.arange(1440) * 0.25


def write_month(folder: Path, month: int) -> Path:
    """Month ``month`` (1-12) of 2001, 6-hourly, as one NetCDF file (written chunk by chunk)."""
    path = folder / f"tas_pr_2001{month:02d}.nc"
    if path.exists():
        return path
    days = calendar.monthrange(2001, month)[1]
    time_ = pd.date_range(f"2001-{month:02d}-01", periods=4 * days, freq="6h")
    base = (np.cos(np.deg2rad(LAT))[:, None] * np.sin(2 * np.deg2rad(LON))[None, :]).astype("float32")
    rng = da.random.default_rng(month)
    shape, chunks = (time_.size, LAT.size, LON.size), (8, LAT.size, LON.size)
    tas = 280 + 20 * base[None] + rng.standard_normal(shape, chunks=chunks, dtype="float32")
    pr = 1e-5 * (1.5 + base[None] + 0.1 * rng.standard_normal(shape, chunks=chunks, dtype="float32"))
    ds = xr.Dataset(
        {
            "tas": (("time", "latitude", "longitude"), tas, {"units": "K", "standard_name": "air_temperature"}),
            "pr": (
                ("time", "latitude", "longitude"),
                pr,
                {"units": "kg m-2 s-1", "standard_name": "precipitation_flux"},
            ),
        },
        coords={
            "time": time_,
            "latitude": ("latitude", LAT, {"standard_name": "latitude", "units": "degrees_north"}),
            "longitude": ("longitude", LON, {"standard_name": "longitude", "units": "degrees_east"}),
        },
    )
    tmp = path.with_name(f".{path.name}.tmp")
    ds.to_netcdf(tmp, encoding={"time": {"units": "hours since 2001-01-01"}})
    tmp.rename(path)
    return path


def _config(files: list[Path], results: Path, parts: int, resolution: float, time_chunk: int) -> Path:
    """The default config on ``files``: global target grid, the period split 70/15/15 by days."""
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    start = dt.date(2001, 1, 1)
    end = start + dt.timedelta(days=sum(calendar.monthrange(2001, m + 1)[1] for m in range(len(files))) - 1)
    n = (end - start).days + 1
    a, b = start + dt.timedelta(days=int(0.7 * n) - 1), start + dt.timedelta(days=int(0.85 * n) - 1)
    one = dt.timedelta(days=1)
    cfg.update(experiment="scale", results_dir=str(results), tracking={"enabled": False})
    cfg["data"] = {
        "source": {"paths": [str(f) for f in files]},
        "variables": [{"name": "tas", "regrid": "bilinear"}, {"name": "pr", "regrid": "conservative"}],
        "grid": {"resolution": resolution},
        "split": {"train": [start, a], "val": [a + one, b], "test": [b + one, end]},
        "time_chunk": time_chunk,
        "parts": parts,
    }
    path = results / "config.yaml"
    results.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(commands: list[list[str]], cwd: Path) -> tuple[float, list[float]]:
    """Run the commands at once; the wall time and each process's peak RSS in MB.

    Each runs under GNU time (``/usr/bin/time -f %M``): a child's own rusage, not inflated by this process's
    memory as a child forked from here would be (its high-water mark before exec counts).
    """
    t0 = time.perf_counter()
    procs = []
    for k, c in enumerate(commands):
        rss = cwd / f".rss-{k}"
        procs.append((rss, subprocess.Popen([TIME, "-f", "%M", "-o", str(rss), *c], cwd=cwd, stderr=subprocess.PIPE)))
    peaks = []
    for rss, p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            msg = f"{' '.join(map(str, p.args))} failed:\n{err.decode()[-3000:]}"
            raise RuntimeError(msg)
        peaks.append(int(rss.read_text().split()[-1]) / 1024)  # kB
    return time.perf_counter() - t0, peaks


def run_stages(config: Path, parts: int, cwd: Path) -> dict[str, tuple[float, list[float]]]:
    """init, the parts side by side, finalise, for prepare then normalise: (wall s, peak RSS MB per process)."""
    out = {}
    base = [sys.executable, "-m", "pipeline"]
    for stage in ("prepare", "normalise"):
        out[f"{stage} init"] = _run([[*base, stage, "--config", str(config), "--init"]], cwd)
        out[f"{stage} parts"] = _run(
            [[*base, stage, "--config", str(config), "--part", str(k)] for k in range(parts)], cwd
        )
        out[f"{stage} finalise"] = _run([[*base, stage, "--config", str(config), "--finalise"]], cwd)
    return out


def memory_copy_rate(nbytes: int = 1 << 29) -> float:
    """MB/s of copying a 512 MiB float32 array in memory (the best of three)."""
    a = np.ones(nbytes // 4, dtype=np.float32)
    best = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        b = a.copy()
        best = min(best, time.perf_counter() - t0)
        del b
    return nbytes / 1e6 / best


def same_data(a: Path, b: Path) -> bool:
    """Stores (values, coordinates, attributes but the time stamp) and statistics equal bit for bit."""
    for name in ("regridded.zarr", "normalised.zarr"):
        x, y = open_store(a / name), open_store(b / name)
        x.attrs.pop("history", None)
        y.attrs.pop("history", None)
        if not x.identical(y) or not all(np.array_equal(x[v].values, y[v].values, equal_nan=True) for v in x.data_vars):
            return False
    sa, sb = (json.loads((d / "stats.json").read_text()) for d in (a, b))
    return sa["variables"] == sb["variables"] and sa["steps"] == sb["steps"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--months", type=int, nargs="+", default=[1, 3, 12], help="input lengths to run, in months")
    ap.add_argument("--parts", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, default=None, help="working folder (default: a temporary one, removed)")
    ap.add_argument("--resolution", type=float, default=1.0, help="target grid spacing in degrees")
    ap.add_argument("--time-chunk", type=int, default=8, help="data.time_chunk (steps per chunk)")
    args = ap.parse_args()
    if not Path(TIME).is_file():
        sys.exit(f"{TIME} (GNU time) measures each process's peak RSS: install it (apt-get install time)")
    with tempfile.TemporaryDirectory(dir=args.out) as d:
        work = Path(d)
        (work / "src").mkdir()
        t0 = time.perf_counter()
        files = [write_month(work / "src", m + 1) for m in range(max(args.months))]
        print(f"wrote {len(files)} monthly files in {time.perf_counter() - t0:.0f} s ({os.cpu_count()} CPU cores)")
        copy = memory_copy_rate()
        print(f"memory copy: {copy:.0f} MB/s")
        head = ("months", "input MB", "parts", "prepare s", "MB/s", "/ copy", "parts' own s", "part MB/s", "/ copy")
        head += ("normalise s", "peak RSS MB: init", "prepare parts", "normalise parts", "= 1 part")
        widths = (6, 9, 6, 10, 6, 7, 14, 10, 7, 12, 18, 14, 16, 9)
        print("".join(f"{h:>{w}}" for h, w in zip(head, widths, strict=True)))
        for months in sorted(args.months):
            nbytes = sum(2 * 4 * LAT.size * LON.size * 4 * calendar.monthrange(2001, m + 1)[1] for m in range(months))
            first = None
            for parts in args.parts:
                results = work / f"results-{months}-{parts}"
                cfg = _config(files[:months], results, parts, args.resolution, args.time_chunk)
                r = run_stages(cfg, parts, work)
                prep = sum(r[f"prepare {s}"][0] for s in ("init", "parts", "finalise"))
                norm = sum(r[f"normalise {s}"][0] for s in ("init", "parts", "finalise"))
                data = results / "scale" / "data"
                markers = sorted((data / "regridded.parts").glob("part-*.done"))
                own = [json.loads(m.read_text()) for m in markers]
                slowest = max(m["seconds"] for m in own)
                same = "-" if first is None else ("yes" if same_data(first, data) else "NO")
                first = first or data
                row = (
                    months,
                    f"{nbytes / 1e6:.0f}",
                    parts,
                    f"{prep:.1f}",
                    f"{nbytes / 1e6 / prep:.0f}",
                    f"{nbytes / 1e6 / prep / copy:.1%}",
                    "/".join(f"{m['seconds']:.1f}" for m in own),
                    f"{nbytes / 1e6 / slowest:.0f}",
                    f"{nbytes / 1e6 / slowest / copy:.1%}",
                    f"{norm:.1f}",
                    f"{r['prepare init'][1][0]:.0f}",
                    "/".join(f"{x:.0f}" for x in r["prepare parts"][1]),
                    "/".join(f"{x:.0f}" for x in r["normalise parts"][1]),
                    same,
                )
                print("".join(f"{v!s:>{w}}" for v, w in zip(row, widths, strict=True)), flush=True)
        print(
            "prepare s, normalise s: wall time of init + parts side by side + finalise, each a new process; "
            "part MB/s: input over the slowest part's own time (in its process, without start-up)"
        )


if __name__ == "__main__":
    main()
