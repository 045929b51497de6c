"""The clip loader at ERA5-like size (issue 28 item 1): clips/s and MB/s beside the raw read of the same bytes.

    python benchmarks/loader.py [--days 365] [--grid 128 256] [--variables 6] [--frames 16] [--workers 0 2]
                                [--codecs zstd none lz4] [--time-chunks 16 4] [--blocks 1 16]

Writes a synthetic normalised store (smooth fields plus noise, float32, as normalised fields are: about as
compressible as real ones) for each codec and time chunk, the way the data stages write it (``pipeline.data.io
.zarr_ready`` with ``data.codec``), then serves shuffled training clips through ``ClipDataset`` and a torch
``DataLoader`` as training does (``ClipSampler``, at each ``train.shuffle_block``), at each worker count. Prints per store: its size on disk, the raw
read rate (every chunk read once, in order, by zarr), and clips/s and MB/s of the loader; the loader reads the same
bytes in clip order, so the ratio says what clip assembly, decompression of chunks read twice and worker transport
cost. Same clips bit for bit across codecs (checked).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
import zarr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import train_throughput  # noqa: E402

from pipeline.data.clips import ClipDataset  # noqa: E402
from pipeline.data.io import zarr_ready  # noqa: E402


def synthetic(days: int, h: int, w: int, variables: int, seed: int = 0) -> xr.Dataset:
    """Normalised-looking fields: a few travelling waves plus 10% noise, float32, a train split throughout."""
    rng = np.random.default_rng(seed)
    t = np.arange(days)[:, None, None]
    la = np.linspace(-1, 1, h)[None, :, None]
    lo = np.linspace(0, 2 * np.pi, w, endpoint=False)[None, None, :]
    data = {}
    for v in range(variables):
        k = 1 + v % 4
        f = np.sin(k * lo - 0.3 * t + v) * np.cos(np.pi * la * (1 + v % 3)) + 0.5 * np.sin(0.05 * t + la)
        data[f"v{v}"] = (("time", "latitude", "longitude"), (f + 0.1 * rng.standard_normal(f.shape)).astype("float32"))
    split = np.ones(days, dtype=np.int8)
    return xr.Dataset(
        data | {"split": ("time", split)},
        coords={
            "time": pd.date_range("2001-01-01", periods=days, freq="D"),
            "latitude": np.linspace(-89, 89, h),
            "longitude": np.arange(w) * 360.0 / w,
        },
    )


def write(ds: xr.Dataset, path: Path, time_chunk: int, codec: str) -> int:
    out = zarr_ready(ds, time_chunk, codec=codec)
    out.to_zarr(path, mode="w", zarr_format=3, consolidated=False)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def raw_read(path: Path, names: list[str]) -> float:
    """MB/s of reading every chunk once, in order (decompressed bytes)."""
    g = zarr.open_group(path, mode="r")
    t0 = time.perf_counter()
    n = 0
    for name in names:
        a = g[name]
        for i in range(0, a.shape[0], a.chunks[0]):
            n += np.asarray(a[i : i + a.chunks[0]]).nbytes
    return n / 1e6 / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--grid", type=int, nargs=2, default=[128, 256])
    ap.add_argument("--variables", type=int, default=6)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--codecs", nargs="+", default=["zstd", "none", "lz4"])
    ap.add_argument("--time-chunks", type=int, nargs="+", default=[16, 4])
    ap.add_argument("--blocks", type=int, nargs="+", default=[1, 16], help="train.shuffle_block values")
    args = ap.parse_args()
    h, w = args.grid
    ds = synthetic(args.days, h, w, args.variables)
    clip_mb = args.variables * args.frames * h * w * 4 / 1e6
    print(
        f"{args.days} days x {args.variables} variables x {h} x {w}, clips of {args.frames} frames ({clip_mb:.1f} MB)"
    )
    print(
        f"{'codec':<6}{'chunk':>6}{'block':>6}{'MB on disk':>12}{'raw MB/s':>10}"
        + "".join(f"{f'w={k} clips/s':>15}{'MB/s':>7}" for k in args.workers)
    )
    first = None
    with tempfile.TemporaryDirectory() as tmp:
        for codec in args.codecs:
            for chunk in args.time_chunks:
                path = Path(tmp) / f"{codec}-{chunk}.zarr"
                size = write(ds, path, chunk, codec)
                clips = ClipDataset(path, "train", args.frames)
                sample = clips[len(clips) // 2]["x"].numpy()
                if first is None:
                    first = sample
                assert np.array_equal(sample, first), f"{codec}/{chunk}: a different clip"
                raw = raw_read(path, clips.variables)
                for block in args.blocks:
                    row = f"{codec:<6}{chunk:>6}{block:>6}{size / 1e6:>12.0f}{raw:>10.0f}"
                    for k in args.workers:
                        ds_k = ClipDataset(path, "train", args.frames)
                        rate = train_throughput.loader_rate(ds_k, args.batch, k, args.batches, block)
                        row += f"{rate:>15.1f}{rate * clip_mb:>7.0f}"
                    print(row, flush=True)
                shutil.rmtree(path)


if __name__ == "__main__":
    main()
