"""Where a sample stage's rollouts drift, beside real windows that start where they start (issue 27, item 5).

    python benchmarks/rollout_drift.py --config config/config.yaml --config config/experiments/qg-turbulence.yaml

Reads what the workflow wrote (``samples/rollouts.zarr``, ``data/regridded.zarr``; nothing is generated) and prints,
per variable and rollout, the change of the area mean (and of the spatial spread) from the rollout's first quarter to
its last, which is the drift that ``samples/realism.json`` judges, beside three real references:

- **every window** of the rollout's length in the real series (its 5%, 50%, 95%): the range ``realism.json`` uses;
- **windows that start where the rollout starts**: the 20% of windows (at least 20) whose first
  ``evaluate.context_frames`` frames have the area mean closest to the rollout's given frames. A slowly varying area
  mean reverts toward its climate, so a rollout that starts low is expected to rise: this range says how much real
  data from such a start does;
- **the truth**: the real series over the rollout's own dates, where the data reach that far.

and where the rollout ends up: its last quarter's area mean beside the 5-95% range of every real run of as many
frames (a level, not a change, so the start does not enter). A drift outside the first range but inside the second
is the start's, not the model's; a settled level outside its range is the model's climate.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import load_config
from pipeline.data.io import open_store
from pipeline.fieldstats import field_curves
from pipeline.realism import quarter_change  # the change realism.json judges

QUANTILES = (0.05, 0.5, 0.95)
NEAREST = 0.2  # the fraction of real windows whose start is closest to a rollout's


def references(series: np.ndarray, frames: int, given: int, start_level: float) -> dict[str, list[float]]:
    """For one rollout of ``frames`` frames whose ``given`` first frames have the area mean ``start_level``: the
    changes of every real window of that length, of those that start nearest that level, and the levels of every
    real last quarter; each as its 5%, 50%, 95%."""
    windows = np.lib.stride_tricks.sliding_window_view(series, frames)
    change = quarter_change(windows)
    starts = windows[:, :given].mean(axis=1)
    k = max(20, int(NEAREST * len(windows)))
    near = np.argsort(np.abs(starts - start_level))[: min(k, len(windows))]
    q = max(1, frames // 4)
    levels = np.lib.stride_tricks.sliding_window_view(series, q).mean(axis=1)
    return {
        "every_window": np.quantile(change, QUANTILES).tolist(),
        "same_start": np.quantile(change[near], QUANTILES).tolist(),
        "level": np.quantile(levels, QUANTILES).tolist(),
    }


def report(rollouts: xr.DataArray, real: xr.DataArray, given: int) -> list[dict]:
    """One row per rollout and curve (area mean, spread): its change, settled level and the references."""
    times = real["time"].values
    frames = rollouts.sizes["lead"]
    gen = dict(
        zip(("area_mean", "spread"), field_curves(rollouts.rename({"rollout": "case", "lead": "frame"})), strict=True)
    )
    obs = dict(zip(("area_mean", "spread"), field_curves(real), strict=True))
    rows = []
    for name in ("area_mean", "spread"):
        curves = gen[name].reshape(rollouts.sizes["rollout"], frames)
        for r, curve in enumerate(curves):
            start = int(np.searchsorted(times, rollouts["init_time"].values[r]))
            if start >= len(times) or times[start] != rollouts["init_time"].values[r]:
                raise SystemExit(f"rollout {r}: its init_time {rollouts['init_time'].values[r]} is not in the store")
            truth = obs[name][start : start + frames]
            given_level = float(obs[name][start : start + given].mean())
            refs = references(obs[name], frames, given, given_level)
            q = max(1, frames // 4)
            rows.append(
                {
                    "curve": name,
                    "rollout": r,
                    "start": str(times[start])[:10],
                    "given_level": given_level,
                    "change": float(quarter_change(curve)),
                    "truth_change": float(quarter_change(truth)) if len(truth) == frames else float("nan"),
                    "settled_level": float(curve[-q:].mean()),
                    **refs,
                }
            )
    return rows


def _where(x: float, q: list[float]) -> str:
    return "below" if x < q[0] else ("above" if x > q[2] else "inside")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", action="append", default=None)
    args = ap.parse_args()
    cfg = load_config(args.config or ["config/config.yaml"])
    exp = cfg.exp_dir
    path = exp / "samples" / "rollouts.zarr"
    if not path.exists():
        raise SystemExit(f"{path}: no rollouts (run the workflow's sample stage)")
    rollouts, real = xr.open_zarr(path), open_store(exp / "data" / "regridded.zarr")
    given = cfg.evaluate.context_frames
    fmt = "[{:+.3f}, {:+.3f}, {:+.3f}]"
    for v in rollouts.data_vars:
        print(
            f"{cfg.experiment}: {v}, {rollouts.sizes['rollout']} rollouts of {rollouts.sizes['lead']} frames "
            f"({given} given), change first to last quarter"
        )
        for row in report(rollouts[v], real[v], given):
            print(
                f"  {row['curve']:9s} rollout {row['rollout']} from {row['start']} (given {row['given_level']:+.3f}): "
                f"change {row['change']:+.3f} ({_where(row['change'], row['every_window'])} every window "
                + fmt.format(*row["every_window"])
                + f"; {_where(row['change'], row['same_start'])} windows from the same start "
                + fmt.format(*row["same_start"])
                + f"); truth {row['truth_change']:+.3f}; settled level {row['settled_level']:+.3f} "
                + f"({_where(row['settled_level'], row['level'])} real levels "
                + fmt.format(*row["level"])
                + ")"
            )


if __name__ == "__main__":
    main()
