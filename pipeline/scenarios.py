"""Stage ``response``: the emulator of a scenario experiment judged against its held-out runs and against pattern
scaling (issue 29; ``config/experiments/scenarios-hadcm3.yaml``).

After the sweep has chosen the checkpoint on validation, for every run and every held-out period of it (validation
or test): ``sample.rollouts`` free rollouts from the period's first ``evaluate.context_frames`` real frames, under
the run's own forcing, at the sweep's best guidance weight (``sample.sampler``, ``sample.steps``); pattern scaling
fitted on the training years (:mod:`pipeline.response`); and "the last training decade" of the run held (no further
change) as the naive reference. Scores over the generated years with paired block-bootstrap intervals, and, with
two runs, the difference map between their periods (generated vs real); per variable of the network. Writes
``<experiment>/response/`` (``response.json``: ``variables.<name>.periods`` and ``.difference``;
``response_<name>.png``), logged to MLflow.

    python -m pipeline response --config config/config.yaml --config config/experiments/scenarios-hadcm3.yaml
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.atomic import write_text_atomic
from pipeline.checkpoints import load_inference
from pipeline.config import Config
from pipeline.data.conditions import conditioner, fractional_year, store_forcings
from pipeline.data.io import atomic_path, open_store
from pipeline.data.stats import read_stats, run_index, split_steps
from pipeline.data.times import regular_times
from pipeline.diffusion import extend
from pipeline.diffusion.samplers import get_sampler
from pipeline.response import pattern_scaling_candidates, response_scores
from pipeline.sample import resolve_checkpoint, resolve_guidance
from pipeline.tracking import StageRun

__all__ = ["run_response"]

log = logging.getLogger(__name__)


def _rollouts(
    cfg: Config, model, meta, norm, idx: np.ndarray, run: str | None, members: int, steps: int, guidance: float
):
    """``members`` rollouts over the period ``idx`` (of the run ``run``) from its first given frames under the run's
    forcings and boundary fields, every variable of the network (normalised: member, C, T, H, W)."""
    m = cfg.evaluate.context_frames
    times = norm["time"].values
    dates = regular_times(times, times[idx[0]], idx.size + meta.clip_frames)
    scenario = cfg.data.run_scenarios()[run]
    cond = conditioner(meta.model_config, norm, cfg.stats_path, cfg.data.forcings, scenario, run)
    init = np.stack([np.nan_to_num(norm[v].values[idx[:m]]) for v in meta.variables])[None]  # (1, C, m, H, W)
    init = torch.from_numpy(np.repeat(init, members, axis=0)).float()
    gens = [torch.Generator().manual_seed(1000 + k) for k in range(members)]
    sampler = functools.partial(get_sampler(cfg.sample.sampler), steps=steps)
    with torch.no_grad():
        out = extend(
            model, sampler, init, idx.size, meta.clip_frames, guidance, overlap=m,
            cond_for_window=lambda s, w: cond([dates[s : s + w]] * members, "cpu", [dates[idx.size - 1]] * members),
            generator=gens,
        )  # fmt: skip
    return out.numpy()


def _plot(path: Path, lat, lon, series: dict, maps: dict, units: str) -> None:
    """Maps in the first row; in the second, per period ``(years, {label: (values, plot keywords)})``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(maps) + 0, figsize=(4.2 * len(maps), 7), squeeze=False)
    vmax = max(float(np.nanmax(np.abs(v))) for v in maps.values())
    for ax, (title, field) in zip(axes[0], maps.items(), strict=True):
        im = ax.pcolormesh(lon, lat, field, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label=units)
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


def _difference(x: np.ndarray, periods: dict, keys: list[str], lat, lon, m: int) -> dict:
    """The first period's mean minus the second's: generated and pattern-scaled against the real difference."""
    a, b = (periods[k] for k in keys)
    real = x[a["idx"]][m:].mean(axis=0) - x[b["idx"]][m:].mean(axis=0)
    w = np.cos(np.deg2rad(lat))[:, None] * np.ones(lon.size)
    diffs = {"emulator": a["gen"][:, m:].mean(axis=(0, 1)) - b["gen"][:, m:].mean(axis=(0, 1))}
    diffs.update({k: a["ps"][k][m:].mean(axis=0) - b["ps"][k][m:].mean(axis=0) for k in a["ps"]})
    out = {"periods": keys, "real_area_mean": float((real * w).sum() / w.sum())}
    for k, d in diffs.items():
        corr = np.corrcoef((d * np.sqrt(w)).ravel(), (real * np.sqrt(w)).ravel())[0, 1]
        out[k] = {
            "area_mean": float((d * w).sum() / w.sum()),
            "rmse": float(np.sqrt(((d - real) ** 2 * w).sum() / w.sum())),
            "pattern_correlation": float(corr),
        }
    return out


def _figure(path: Path, x, periods: dict, runs, train, years, lat, lon, m: int, units: str) -> None:
    """The last period's warming maps (real, emulator, pattern scaling; against the run's last 30 training years)
    and each period's area-mean series."""
    k = list(periods)[-1]
    p_ = periods[k]
    base = x[np.flatnonzero((runs == runs[p_["idx"][0]]) & train)[-30:]].mean(axis=0)
    maps = {
        f"{k}: real warming": x[p_["idx"]][m:].mean(axis=0) - base,
        "emulator (mean of members)": p_["gen"][:, m:].mean(axis=(0, 1)) - base,
        **{k.replace("_", " "): v[m:].mean(axis=0) - base for k, v in p_["ps"].items()},
    }
    w = np.cos(np.deg2rad(lat))[:, None] * np.ones(lon.size)

    def area(a: np.ndarray) -> np.ndarray:
        return (a * w).sum(axis=(-2, -1)) / w.sum()

    series = {}
    for kk, pp in periods.items():
        series[f"{kk}: area mean ({units})"] = (years[pp["idx"]], {
            "real": (area(x[pp["idx"]]), {"color": "k", "lw": 2}),
            "emulator members": (area(pp["gen"]), {"color": "tab:red", "alpha": 0.4, "lw": 1}),
            **{k.replace("_", " "): (area(v), {"color": c, "lw": 2})
               for (k, v), c in zip(pp["ps"].items(), ("tab:blue", "tab:green", "tab:purple"), strict=False)},
        })  # fmt: skip
    _plot(path, lat, lon, series, maps, units)


def _held_out(cfg: Config, norm) -> list[tuple[str, np.ndarray, str | None]]:
    """Every run's held-out periods (validation, test): ``(key, steps, run)``, those with frames to generate."""
    m = cfg.evaluate.context_frames
    out = []
    for i, run in enumerate([r.name for r in cfg.data.runs] or [None]):
        for split in ("val", "test"):
            idx = split_steps(norm, split, i)
            if idx.size > m + 2:
                out.append((f"{run or 'data'} {split}", idx, run))
    return out


def _score_periods(cfg: Config, model, meta, guidance: float) -> tuple[dict[str, Any], dict[str, Any], dict]:
    """Every run's held-out periods: rollouts (once, every variable), then per variable pattern scaling and the
    last training decade, all scored against the real run: ``scores[variable][period]``,
    ``periods[variable][period]`` (what the figures draw) and what they share."""
    norm, reg = open_store(cfg.normalised_path), open_store(cfg.regridded_path)
    stats = read_stats(cfg.stats_path)
    times, split = norm["time"].values, norm["split"].values
    runs = run_index(norm)
    lat, lon = reg["latitude"].values, reg["longitude"].values
    # the store's normalised forcings (time, k), each run's from its own column (normalise): linear transforms of
    # the raw ones, so pattern scaling predicts the same values
    forcing = store_forcings(norm)
    train = split == 1
    m, s = cfg.evaluate.context_frames, cfg.sample
    years = fractional_year(times)
    held = _held_out(cfg, norm)
    gens = {key: _rollouts(cfg, model, meta, norm, idx, run, s.rollouts, s.steps, guidance)
            for key, idx, run in held}  # fmt: skip
    scores: dict[str, Any] = {}
    periods: dict[str, Any] = {}
    for c, name in enumerate(meta.variables):
        x = reg[name].values.astype(np.float64)
        scores[name], periods[name] = {}, {}
        fitted = pattern_scaling_candidates(x[train], forcing[train], forcing)  # fitted once, at every step
        for key, idx, _ in held:
            gen = gens[key][:, c] * stats[name]["std"] + stats[name]["mean"]
            last = np.flatnonzero((runs == runs[idx[0]]) & train)[-10:]
            ps = {k: v[idx] for k, v in fitted.items()}
            cands = {
                "emulator": gen[:, m:],
                **{k: v[m:] for k, v in ps.items()},
                "last_training_decade": np.repeat(x[last].mean(axis=0)[None], idx.size - m, axis=0),
            }
            scores[name][key] = response_scores(x[idx][m:], cands, lat, years[idx][m:], seed=cfg.seed)
            periods[name][key] = {"idx": idx, "gen": gen, "ps": ps, "x": x}  # every pattern scaling, by name
            log.info("response %s %s: %s", name, key, {k: v["map_rmse"]["value"] for k, v in scores[name][key].items()
                                                        if isinstance(v, dict) and "map_rmse" in v})  # fmt: skip
    units = {name: str(reg[name].attrs.get("units", "")) for name in meta.variables}
    data = {"runs": runs, "train": train, "years": years, "lat": lat, "lon": lon, "m": m, "units": units,
            "forcings": list(norm.attrs["forcings"])}  # fmt: skip
    return scores, periods, data


def _regressors(forcings: list[str]) -> dict[str, list[str]]:
    """The store's forcing series each pattern scaling regresses on (:func:`pattern_scaling_candidates`)."""
    return {"pattern_scaling": forcings[:1], **({"pattern_scaling_lagged": forcings} if len(forcings) > 1 else {})}


def run_response(cfg: Config, run: StageRun) -> Path:
    """Generate each held-out period (every variable at once), score each variable, write ``response.json`` and
    ``response_<variable>.png``, log to MLflow."""
    if not cfg.data.forcings:
        msg = "response: the experiment has no data.forcings: there is no forced response to judge"
        raise ValueError(msg)
    tag, guidance = resolve_checkpoint(cfg), resolve_guidance(cfg)
    model, meta = load_inference(cfg.inference_file(tag))
    scores, periods, d = _score_periods(cfg, model, meta, guidance)
    out: dict[str, Any] = {"checkpoint": tag, "guidance_weight": guidance, "members": cfg.sample.rollouts,
                           "regressors": _regressors(d["forcings"]), "variables": {}}  # fmt: skip
    folder = cfg.response_dir
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        for name in meta.variables:
            keys = list(periods[name])
            out["variables"][name] = {"periods": scores[name]}
            if cfg.data.runs and len(keys) == 2:  # the two runs' held-out periods (the same years): difference
                x = periods[name][keys[0]]["x"]
                out["variables"][name]["difference"] = _difference(x, periods[name], keys, d["lat"], d["lon"], d["m"])
            if keys:
                _figure(
                    tmp / f"response_{name}.png", periods[name][keys[0]]["x"], periods[name], d["runs"], d["train"],
                    d["years"], d["lat"], d["lon"], d["m"], f"{name}, {d['units'][name]}",
                )  # fmt: skip
        write_text_atomic(tmp / "response.json", json.dumps(out, indent=1))
    run.log_params({"checkpoint": tag, "guidance_weight": guidance, "members": cfg.sample.rollouts})
    flat = {f"{name}_{k.replace(' ', '_')}_{cand}_{metric}": v["value"] for name, per in scores.items()
            for k, sc in per.items() for cand, c in sc.items() if isinstance(c, dict)
            for metric, v in c.items() if isinstance(v, dict) and "value" in v}  # fmt: skip
    run.log_metrics({k: float(v) for k, v in flat.items() if np.isfinite(v)})
    for p in sorted(folder.iterdir()):
        run.log_artifact(p)
    return folder
