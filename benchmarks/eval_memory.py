"""Peak memory of a sweep point's climate figures against the store's size (issue 28 item 4).

    python benchmarks/eval_memory.py [--variables 6] [--grid 64 128] [--days 730 1460] [--block-mb 4] [--keep]
    python benchmarks/eval_memory.py --scoring [--batch 32] ...   # a sweep point's scoring instead

For each store length, writes a synthetic normalised store (``--variables`` fields on ``--grid``, a train/test split
at half the length, the way the data stages write it), then in a fresh process each: builds what a sweep point's
climate figures read (:func:`pipeline.point_climate.load_climate_data`: the store in physical units, lazy, and the
rollouts' given frames) and runs :func:`pipeline.climate.assess` on stand-in rollouts and clips, printing the peak
resident memory (``ru_maxrss``) beside the store's size. The figures read each period a block at a time
(:mod:`pipeline.fieldstats`, blocks of 64 MB, a period of up to 64 MB held whole; ``--block-mb`` scales both down so
that stores that fit here behave as decades of a large grid do). ``eager`` is the same with the whole store read
into memory first (every variable of every split, float32, and again in float64), every period held whole: its
figures are exact, the streamed ones' distances and quantiles within a histogram bin of them
(``tests/test_fieldstats.py``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _weather(rng: np.random.Generator, days: int, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Unit-variance stand-in weather: 12 smooth large-scale patterns (zonal wavenumbers 1-3, meridional 1-2) with
    AR(1) amplitudes of falling variance, plus small-scale noise: EOFs with a clear order, as real fields have."""
    y, x = np.deg2rad(lat)[:, None], np.deg2rad(lon)[None, :]
    patterns = np.stack(
        [np.cos(k * x + rng.uniform(0, 2 * np.pi)) * np.cos(m * y) for k in (1, 2, 3) for m in (1, 2) for _ in (0, 1)]
    )
    amp = np.zeros((days, patterns.shape[0]))
    noise = rng.standard_normal(amp.shape) * np.sqrt(1 - 0.9**2)
    for t in range(1, days):
        amp[t] = 0.9 * amp[t - 1] + noise[t]
    f = np.einsum("tk,kyx->tyx", amp / np.sqrt(np.arange(1, patterns.shape[0] + 1)), patterns)
    f += 0.3 * rng.standard_normal(f.shape)
    return (f / f.std()).astype(np.float32)


def write_experiment(folder: Path, days: int, variables: int, h: int, w: int) -> Path:
    """A config whose normalised store and statistics are synthetic: ``days`` daily frames, half train, half test."""
    from pipeline.config import load_config
    from pipeline.data.io import zarr_ready
    from pipeline.data.stats import SPLIT_NAMES, write_stats

    names = [f"v{i}" for i in range(variables)]
    times = pd.date_range("2000-01-01", periods=days, freq="D")
    half = times[days // 2]
    folder.mkdir(parents=True, exist_ok=True)
    cfg_file = folder / "config.yaml"
    c = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    c |= {"results_dir": str(folder / "results"), "experiment": "memory"}
    c["data"]["split"] = {
        "train": [str(times[0].date()), str((half - pd.Timedelta(days=1)).date())],
        "val": [str(half.date()), str(half.date())],
        "test": [str((half + pd.Timedelta(days=1)).date()), str(times[-1].date())],
    }
    c["evaluate"]["climatology_window_days"] = 15
    c["evaluate"]["climate"]["frames"] = 26  # 2 given + 24 generated per stand-in rollout
    cfg_file.write_text(yaml.safe_dump(c))
    cfg = load_config([cfg_file])
    rng = np.random.default_rng(0)
    lat, lon = np.linspace(-88, 88, h), np.linspace(0, 360, w, endpoint=False)
    codes = np.where(times < half, SPLIT_NAMES.index("train"), SPLIT_NAMES.index("test"))
    codes[days // 2] = SPLIT_NAMES.index("val")
    ds = xr.Dataset(
        {n: (("time", "latitude", "longitude"), _weather(rng, days, lat, lon)) for n in names},
        coords={"time": times, "latitude": lat, "longitude": lon, "split": ("time", codes)},
    )
    for n in names:
        ds[n].attrs = {"units": "1", "original_units": "K", "normalised": 1}
    zarr_ready(ds, cfg.data.time_chunk).to_zarr(cfg.normalised_path, zarr_format=3, consolidated=True, mode="w")
    write_stats({n: {"mean": 280.0, "std": 5.0, "units": "K"} for n in names}, cfg.stats_path)
    return cfg_file


def measure(cfg_file: Path, eager: bool, block_mb: float | None = None) -> dict[str, float]:
    """In this process: the climate figures of stand-in rollouts (4 x 24 frames) and clips (8 x 4 frames), the
    real periods read ``block_mb`` at a time (and kept whole up to that size; default: pipeline.fieldstats')."""
    from pipeline import climate, fieldstats

    if block_mb is not None:
        fieldstats.BLOCK_BYTES = int(block_mb * 2**20)
        fieldstats.EXACT_VALUES = fieldstats.BLOCK_BYTES // 8
    from pipeline.config import load_config
    from pipeline.point_climate import load_climate_data

    cfg = load_config([cfg_file])
    names = sorted(xr.open_zarr(cfg.normalised_path, zarr_format=3).data_vars)
    cd = load_climate_data(cfg, names, 4, "test")
    real = cd.real.load() if eager else cd.real  # eager: every variable of every split, float64, as before
    held = np.stack([real[n].values.astype(np.float32) for n in names], axis=1) if eager else None  # and float32
    rng = np.random.default_rng(1)
    h, w = cd.init.shape[2:]
    lat, lon = real["latitude"], real["longitude"]
    roll = xr.Dataset(
        {
            n: (("member", "frame", "latitude", "longitude"), 280 + 5 * rng.standard_normal((4, 24, h, w)))
            for n in names
        },
        coords={"latitude": lat, "longitude": lon, "time": ("frame", cd.roll_times[2:26])},
    )
    unc = xr.Dataset(
        {n: (("sample", "frame", "latitude", "longitude"), 280 + 5 * rng.standard_normal((8, 4, h, w))) for n in names},
        coords={"latitude": lat, "longitude": lon},
    )
    result = climate.assess(roll, unc, real, cd.periods, [1, 2], 2)
    del held
    return {"score": result["score"], "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure_scoring(cfg_file: Path, batch: int) -> dict[str, float]:
    """In this process: a sweep point's scoring of every test clip (4 frames, 2 given) with stand-in 4-member
    ensembles (each clip's truth plus seeded noise, in place of the model), ``batch`` clips at a time as
    :func:`pipeline.evaluate._score` does (``evaluate.score_batch``; 0: every clip at once, as before)."""
    from pipeline.config import load_config
    from pipeline.scoring import ScoreStream, energy, load_eval_clips

    cfg = load_config([cfg_file])
    names = sorted(xr.open_zarr(cfg.normalised_path, zarr_format=3).data_vars)
    test = load_eval_clips(cfg, 4, names, split="test")
    stream, energies = ScoreStream(2, len(test)), []
    for first, part in test.batches(batch or len(test)):
        ens = np.stack([
            np.nan_to_num(part.raw[i])[None]
            + 0.3 * np.random.default_rng(first + i).standard_normal((4, *part.raw.shape[1:]), dtype=np.float32)
            for i in range(len(part.clips))
        ])  # fmt: skip
        stream.add(part.physical(ens), part.truth)
        energies.append(energy(ens, part.raw, part.lat, 2)["energy_score"] * len(part.clips))
    crps = stream.result()[names[0]]["crps"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"clips": len(test), "crps": crps, "energy": sum(energies) / len(test), "peak_rss_mb": peak}


def scoring_table(folder: Path, args: argparse.Namespace) -> None:
    """Peak RSS of a point's scoring, every clip at once against ``--batch`` at a time, per test period length."""
    print(f"{'days':>6} {'clips':>6} {'truth MB':>9} {'all at once MB':>15} {f'{args.batch} at a time MB':>16}  CRPS")
    for days in args.days:
        cfg_file = write_experiment(folder / str(days), days, args.variables, *args.grid)
        out = {}
        for batch in (0, args.batch):
            cmd = [sys.executable, __file__, "--measure", str(cfg_file), "--score-batch", str(batch)]
            out[batch] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        truth_mb = out[0]["clips"] * 4 * args.variables * args.grid[0] * args.grid[1] * 4 / 1e6
        same = abs(out[0]["crps"] - out[args.batch]["crps"]) <= 1e-9 * abs(out[0]["crps"])
        print(
            f"{days:>6} {out[0]['clips']:>6} {truth_mb:>9.0f} {out[0]['peak_rss_mb']:>15.0f} "
            f"{out[args.batch]['peak_rss_mb']:>16.0f}  {out[0]['crps']:.6f} ({'same' if same else 'DIFFERENT'})",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variables", type=int, default=6)
    ap.add_argument("--grid", type=int, nargs=2, default=[64, 128])
    ap.add_argument("--days", type=int, nargs="+", default=[730, 1460])
    ap.add_argument("--keep", action="store_true", help="keep the stores (printed)")
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # internal: one measurement in this process
    ap.add_argument("--eager", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--scoring", action="store_true", help="a sweep point's scoring instead of its climate figures")
    ap.add_argument("--batch", type=int, default=32, help="with --scoring: clips scored at a time")
    ap.add_argument("--score-batch", type=int, help=argparse.SUPPRESS)  # internal
    ap.add_argument(
        "--block-mb",
        type=float,
        default=None,
        help="climate figures: read the real periods this many MB at a time, keeping a set whole up to this size "
        "(default: pipeline.fieldstats.BLOCK_BYTES, 64 MB; smaller shows at small stores what 64 MB does at large)",
    )
    args = ap.parse_args()
    if args.measure:
        if args.score_batch is not None:
            print(json.dumps(measure_scoring(args.measure, args.score_batch)))
        else:
            print(json.dumps(measure(args.measure, args.eager, args.block_mb)))
        return
    folder = Path(tempfile.mkdtemp(prefix="eval-memory-"))
    if args.scoring:
        scoring_table(folder, args)
        if not args.keep:
            import shutil

            shutil.rmtree(folder)
        return
    print(f"{'days':>6} {'store MB':>9} {'lazy peak MB':>13} {'eager peak MB':>14}  climate score lazy / eager")
    for days in args.days:
        cfg_file = write_experiment(folder / str(days), days, args.variables, *args.grid)
        store_mb = days * args.variables * args.grid[0] * args.grid[1] * 4 / 1e6
        out = {}
        for eager in (False, True):
            cmd = [sys.executable, __file__, "--measure", str(cfg_file)] + (["--eager"] if eager else [])
            cmd += ["--block-mb", str(args.block_mb)] if args.block_mb is not None and not eager else []
            out[eager] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        print(
            f"{days:>6} {store_mb:>9.0f} {out[False]['peak_rss_mb']:>13.0f} {out[True]['peak_rss_mb']:>14.0f}  "
            f"{out[False]['score']:.6f} / {out[True]['score']:.6f}",
            flush=True,
        )
    if args.keep:
        print(f"stores kept in {folder}")
    else:
        import shutil

        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
