"""The emulator of a scenario experiment (config/experiments/scenarios-hadcm3.yaml) judged against its held-out runs
and against pattern scaling (issue 29).

After the workflow has run (the sweep chose the checkpoint on validation), for every run and every held-out period
of it (validation or test): ``--members`` free rollouts from the period's first ``evaluate.context_frames`` real
years, under the run's own forcing, at the sweep's best guidance weight; pattern scaling fitted on the training years
(:mod:`pipeline.response`); and "the last training decade" (no further change) as the naive reference. Scores over
the generated years, with paired block-bootstrap intervals, and the difference map between the two runs' periods
(generated vs real). Writes ``<experiment>/response/response.json`` and ``response.png``.

    python benchmarks/scenario_emulator.py --config config/config.yaml --config config/experiments/scenarios-hadcm3.yaml
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np
import torch

from pipeline.checkpoints import load_inference
from pipeline.config import load_config
from pipeline.data.conditions import ForcingTable, conditioner
from pipeline.data.io import open_store
from pipeline.data.stats import SPLIT_NAMES, read_stats
from pipeline.data.times import regular_times
from pipeline.diffusion import extend
from pipeline.diffusion.samplers import get_sampler
from pipeline.response import fit_pattern_scaling, predict_pattern_scaling, response_scores
from pipeline.sample import resolve_checkpoint, resolve_guidance


def forcing_series(cfg, times: np.ndarray, runs: np.ndarray) -> np.ndarray:
    """The first forcing's transformed series at every step, each run's from its column (pattern scaling's x)."""
    f = cfg.data.forcings[0]
    table = ForcingTable(f.name, f.table, f.transform)
    out = np.empty(times.size)
    for i, (run, scenario) in enumerate(cfg.data.run_scenarios().items()):
        mask = runs == i if run is not None else np.ones(times.size, dtype=bool)
        out[mask] = table.values(times[mask], scenario[f.name])
    return out


def rollouts(cfg, model, meta, norm, idx: np.ndarray, scenario: dict, members: int, steps: int, guidance: float):
    """``members`` rollouts over the period ``idx`` from its first given frames (normalised: member, T, H, W)."""
    m, name = cfg.evaluate.context_frames, meta.variables[0]
    times = norm["time"].values
    dates = regular_times(times, times[idx[0]], idx.size + meta.clip_frames)
    cond = conditioner(meta.model_config, norm, cfg.stats_path, cfg.data.forcings, scenario)
    init = np.nan_to_num(norm[name].values[idx[:m]])[None, None]  # (1, C, m, H, W)
    init = torch.from_numpy(np.repeat(init, members, axis=0)).float()
    gens = [torch.Generator().manual_seed(1000 + k) for k in range(members)]
    sampler = functools.partial(get_sampler(cfg.sample.sampler), steps=steps)
    with torch.no_grad():
        out = extend(
            model, sampler, init, idx.size, meta.clip_frames, guidance, overlap=m,
            cond_for_window=lambda s, w: cond([dates[s : s + w]] * members, "cpu"), generator=gens,
        )  # fmt: skip
    return out[:, 0].numpy()


def plot(path: Path, lat, lon, series: dict, maps: dict) -> None:
    """Maps in the first row; in the second, per period ``(years, {label: (values, plot keywords)})``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(maps) + 0, figsize=(4.2 * len(maps), 7), squeeze=False)
    vmax = max(float(np.nanmax(np.abs(v))) for v in maps.values())
    for ax, (title, field) in zip(axes[0], maps.items(), strict=True):
        im = ax.pcolormesh(lon, lat, field, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="K")
    for ax, (title, (years, lines)) in zip(axes[1], series.items(), strict=False):
        for label, (y, kw) in lines.items():
            ax.plot(years, y.T, label=label, **kw)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("year")
    for ax in axes[1][len(series) :]:
        ax.axis("off")
    handles, labels = axes[1][0].get_legend_handles_labels()
    keep = dict(zip(labels, handles, strict=True))
    axes[1][0].legend(keep.values(), keep.keys(), fontsize=7)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def difference(x: np.ndarray, periods: dict, keys: list[str], lat, lon, m: int) -> dict:
    """The first period's mean minus the second's: generated and pattern-scaled against the real difference."""
    a, b = (periods[k] for k in keys)
    real = x[a["idx"]][m:].mean(axis=0) - x[b["idx"]][m:].mean(axis=0)
    w = np.cos(np.deg2rad(lat))[:, None] * np.ones(lon.size)
    diffs = {
        "emulator": a["gen"][:, m:].mean(axis=(0, 1)) - b["gen"][:, m:].mean(axis=(0, 1)),
        "pattern_scaling": a["ps"][m:].mean(axis=0) - b["ps"][m:].mean(axis=0),
    }
    out = {"periods": keys, "real_area_mean": float((real * w).sum() / w.sum())}
    for k, d in diffs.items():
        corr = np.corrcoef((d * np.sqrt(w)).ravel(), (real * np.sqrt(w)).ravel())[0, 1]
        out[k] = {
            "area_mean": float((d * w).sum() / w.sum()),
            "rmse": float(np.sqrt(((d - real) ** 2 * w).sum() / w.sum())),
            "pattern_correlation": float(corr),
        }
    return out


def figure(path: Path, x, periods: dict, runs, train, years, lat, lon, m: int) -> None:
    """The last period's warming maps (real, emulator, pattern scaling; against the run's last 30 training years)
    and each period's area-mean series."""
    k = list(periods)[-1]
    p_ = periods[k]
    base = x[np.flatnonzero((runs == runs[p_["idx"][0]]) & train)[-30:]].mean(axis=0)
    maps = {
        f"{k}: real warming": x[p_["idx"]][m:].mean(axis=0) - base,
        "emulator (mean of members)": p_["gen"][:, m:].mean(axis=(0, 1)) - base,
        "pattern scaling": p_["ps"][m:].mean(axis=0) - base,
    }
    w = np.cos(np.deg2rad(lat))[:, None] * np.ones(lon.size)

    def area(a: np.ndarray) -> np.ndarray:
        return (a * w).sum(axis=(-2, -1)) / w.sum()

    series = {}
    for kk, pp in periods.items():
        series[f"{kk}: area mean (K)"] = (years[pp["idx"]], {
            "real": (area(x[pp["idx"]]), {"color": "k", "lw": 2}),
            "emulator members": (area(pp["gen"]), {"color": "tab:red", "alpha": 0.4, "lw": 1}),
            "pattern scaling": (area(pp["ps"]), {"color": "tab:blue", "lw": 2}),
        })  # fmt: skip
    plot(path, lat, lon, series, maps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", action="append", required=True)
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default sample.steps)")
    args = p.parse_args()
    cfg = load_config([Path(c) for c in args.config])
    tag, guidance = resolve_checkpoint(cfg), resolve_guidance(cfg)
    model, meta = load_inference(cfg.inference_file(tag))
    norm, reg = open_store(cfg.normalised_path), open_store(cfg.regridded_path)
    name, stats = meta.variables[0], read_stats(cfg.stats_path)
    mean, std = stats[name]["mean"], stats[name]["std"]
    times, split = norm["time"].values, norm["split"].values
    runs = norm["run"].values if "run" in norm.coords else np.zeros(times.size, dtype=np.int8)
    years = np.array([t.year for t in times])
    lat, lon = reg["latitude"].values, reg["longitude"].values
    x = reg[name].values.astype(np.float64)
    forcing = forcing_series(cfg, times, runs)
    train = split == 1
    fit = fit_pattern_scaling(x[train], forcing[train])
    m = cfg.evaluate.context_frames
    out, periods = {"checkpoint": tag, "guidance_weight": guidance, "members": args.members, "runs": {}}, {}
    names = [r.name for r in cfg.data.runs] or ["data"]
    for i, run in enumerate(names):
        scenario = cfg.data.run_scenarios()[run if cfg.data.runs else None]
        for code in (2, 3):
            idx = np.flatnonzero((runs == i) & (split == code))
            if idx.size <= m:
                continue
            gen = rollouts(cfg, model, meta, norm, idx, scenario, args.members, args.steps or cfg.sample.steps,
                           guidance) * std + mean  # fmt: skip
            last = np.flatnonzero((runs == i) & train)[-10:]
            cands = {
                "emulator": gen[:, m:],
                "pattern_scaling": predict_pattern_scaling(fit, forcing[idx])[m:],
                "last_training_decade": np.repeat(x[last].mean(axis=0)[None], idx.size - m, axis=0),
            }
            scores = response_scores(x[idx][m:], cands, lat, years[idx][m:], seed=cfg.seed)
            key = f"{run} {SPLIT_NAMES[code]}"
            out["runs"][key] = scores
            periods[key] = {"idx": idx, "gen": gen, "ps": predict_pattern_scaling(fit, forcing[idx])}
            print(key, json.dumps({k: v for k, v in scores.items() if isinstance(v, dict)}, indent=1))
    keys = list(periods)
    if len(keys) == 2:  # the difference between the two held-out periods (the same years)
        out["difference"] = difference(x, periods, keys, lat, lon, m)
        print("difference", json.dumps(out["difference"], indent=1))
    folder = cfg.exp_dir / "response"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "response.json").write_text(json.dumps(out, indent=1))
    if keys:
        figure(folder / "response.png", x, periods, runs, train, years, lat, lon, m)
    print(f"-> {folder}")


if __name__ == "__main__":
    main()
