"""Figures: pure functions from xarray objects to PNG files (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.animation import FuncAnimation, PillowWriter

__all__ = [
    "animate_side_by_side",
    "first_last_maps",
    "quicklook_regrid",
    "realism_figure",
    "scorecard",
    "spectra_plot",
    "sweep_summary",
]


def _first_frame(da: xr.DataArray) -> xr.DataArray:
    sel = {d: 0 for d in da.dims if d not in ("latitude", "longitude", "y", "x")}
    return da.isel(sel)


def quicklook_regrid(before: xr.Dataset, after: xr.Dataset, path: Path) -> Path:
    """Maps of the first frame (first level) of each variable before and after regridding."""
    names = list(after.data_vars)
    fig, axes = plt.subplots(len(names), 2, figsize=(10, 3.2 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        b, a = _first_frame(before[name]).load(), _first_frame(after[name]).load()
        vmin = float(min(b.min(), a.min()))
        vmax = float(max(b.max(), a.max()))
        units = before[name].attrs.get("units", "")
        for col, (da, title) in enumerate(
            ((b, "source grid"), (a, f"regridded ({after[name].attrs.get('regrid_method', '')})"))
        ):
            ax = axes[row, col]
            size = " x ".join(str(n) for n in da.shape)
            im = _map(ax, da, vmin, vmax, f"{name}: {title}\n{size}")
            fig.colorbar(im, ax=ax, label=units)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


_REF_STYLE = {"climatology-ensemble": "--", "climatology-mean": ":", "persistence": "-."}


def _errorbar(ax, x, g, metric: str, label: str) -> None:
    """Points with their bootstrap interval (columns ``<metric>_lo``, ``<metric>_hi`` where present)."""
    if f"{metric}_lo" in g:
        yerr = np.stack([g[metric] - g[f"{metric}_lo"], g[f"{metric}_hi"] - g[metric]])
        ax.errorbar(x, g[metric], yerr=yerr, marker="o", capsize=3, label=label)
    else:
        ax.plot(x, g[metric], marker="o", label=label)


def sweep_summary(table, metric: str, path: Path) -> Path:
    """Per variable: ``metric`` vs sampling steps per sampler (last checkpoint), and vs checkpoint step;
    one line per sampler and guidance weight, with bootstrap confidence bars; the reference forecasts
    (rows of ``kind`` reference) as horizontal lines with a band for their interval."""
    variables = sorted(table["variable"].unique())
    fig, axes = plt.subplots(len(variables), 2, figsize=(10, 3.6 * len(variables)), squeeze=False)
    kind = table["kind"] if "kind" in table else "checkpoint"
    points, refs = table[kind == "checkpoint"], table[kind == "reference"]
    last = points["checkpoint_step"].max()
    several = points["guidance_weight"].nunique() > 1

    def label(sampler: str, weight: float, suffix: str = "") -> str:
        return f"{sampler}{suffix} w={weight:g}" if several else f"{sampler}{suffix}"

    def references(ax, v: str) -> None:
        for _, r in refs[refs["variable"] == v].iterrows():
            ls = _REF_STYLE.get(r["checkpoint"], "--")
            line = ax.axhline(r[metric], color="grey", ls=ls, lw=1, label=r["checkpoint"])
            if f"{metric}_lo" in r:
                ax.axhspan(r[f"{metric}_lo"], r[f"{metric}_hi"], color=line.get_color(), alpha=0.08, lw=0)

    for row, v in enumerate(variables):
        tv = points[points["variable"] == v]
        ax = axes[row, 0]
        for (sampler, w), g in tv[tv["checkpoint_step"] == last].groupby(["sampler", "guidance_weight"]):
            g = g.sort_values("steps")
            _errorbar(ax, g["steps"], g, metric, label(sampler, w))
        references(ax, v)
        ax.set_xscale("log")
        ax.set_xlabel("sampling steps (NFE)")
        ax.set_ylabel(f"{metric} ({v})")
        ax.set_title(f"{v}: {metric} vs steps, checkpoint step {last}", fontsize=9)
        ax.legend(fontsize=7)
        ax = axes[row, 1]
        most = tv["steps"].max()
        for (sampler, w), g in tv[tv["steps"] == most].groupby(["sampler", "guidance_weight"]):
            g = g.sort_values("checkpoint_step")
            _errorbar(ax, g["checkpoint_step"], g, metric, label(sampler, w, f"-{most}"))
        references(ax, v)
        ax.set_xlabel("checkpoint (training step)")
        ax.set_ylabel(f"{metric} ({v})")
        ax.set_title(f"{v}: {metric} vs checkpoint (bars and bands: bootstrap intervals)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# scorecard rows: (metric label, skill key) per variable; skill against climatology
_CARD_ROWS = (("CRPS", "crpss_climatology"), ("RMSE", "rmse_ss_climatology"))


def scorecard(panels: list[tuple[str, dict]], confidence: float, path: Path) -> Path:
    """WeatherBench-2-style scorecard: one panel per forecast (title, {variable: summary}); rows variable x
    metric, columns lead frame, colour = skill against climatology (CRPSS against the climatological
    ensemble, RMSE skill score against the climatological mean; blue better, red worse, white = as good),
    annotated; hatched where the bootstrap interval includes 0 (no significant difference)."""
    from matplotlib.patches import Rectangle

    rows = [(v, name, key) for v in next(iter([p[1] for p in panels])) for name, key in _CARD_ROWS]
    leads = len(panels[0][1][rows[0][0]][f"{rows[0][2]}_per_lead"])
    values = [np.array([s[v][f"{k}_per_lead"] for v, _, k in rows]) for _, s in panels]
    lim = float(np.clip(np.nanmax(np.abs(np.concatenate([x.ravel() for x in values]))), 0.1, 1.0))
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(2.5 + (0.6 + 0.9 * leads) * len(panels), 1.6 + 0.55 * len(rows)),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    for ax, (title, summ), val in zip(axes[0], panels, values, strict=True):
        im = ax.imshow(val, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        for r, (v, _, k) in enumerate(rows):
            lo, hi = summ[v][f"{k}_per_lead_lo"], summ[v][f"{k}_per_lead_hi"]
            for c in range(leads):
                dark = abs(val[r, c]) > 0.6 * lim
                ax.text(c, r, f"{val[r, c]:+.2f}", ha="center", va="center", fontsize=8, color="w" if dark else "k")
                if lo[c] <= 0 <= hi[c]:
                    ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, hatch="///", ec="0.5", lw=0))
        ax.set_xticks(range(leads), [str(i + 1) for i in range(leads)])
        ax.set_yticks(range(len(rows)), [f"{v} {name}" for v, name, _ in rows])
        ax.set_xlabel("lead frame", fontsize=8)
        ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=list(axes[0]), label="skill vs climatology\n(CRPSS, RMSE skill score)", shrink=0.9)
    fig.supxlabel(f"hatched: the {confidence:.0%} bootstrap interval includes 0", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _map(ax, da: xr.DataArray, vmin: float, vmax: float, title: str, cmap: str = "viridis"):
    im = ax.pcolormesh(
        da["longitude"],
        da["latitude"],
        da.transpose(*(("y", "x") if da["latitude"].ndim == 2 else ("latitude", "longitude"))),
        vmin=vmin,
        vmax=vmax,
        shading="nearest",
        cmap=cmap,
    )
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("longitude (deg E)")
    ax.set_ylabel("latitude (deg N)")
    return im


def animate_side_by_side(
    sample: xr.DataArray, truth: xr.DataArray, times: np.ndarray, path: Path, fps: int = 4
) -> Path:
    """GIF of a generated sequence (lead, lat, lon) beside the truth for the same dates (blank where none)."""
    name = sample.name or "field"
    units = sample.attrs.get("units", "")
    vals = np.concatenate([sample.values.ravel(), truth.values[np.isfinite(truth.values)].ravel()])
    vmin, vmax = float(np.nanmin(vals)), float(np.nanmax(vals))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    lead = sample.dims[0]

    def draw(i: int) -> None:
        for ax in axes:
            ax.clear()
        when = str(times[i])[:16]
        im = _map(axes[0], sample.isel({lead: i}), vmin, vmax, f"generated {name}  frame {i}  {when}")
        t = truth.isel({lead: i})
        if bool(np.isfinite(t.values).any()):
            _map(axes[1], t, vmin, vmax, f"truth {name}  {when}")
        else:
            axes[1].set_title("truth: beyond the data", fontsize=9)
            axes[1].axis("off")
        if not hasattr(fig, "_cbar"):
            fig._cbar = fig.colorbar(im, ax=list(axes), label=units)

    anim = FuncAnimation(fig, draw, frames=sample.sizes[lead])
    path.parent.mkdir(parents=True, exist_ok=True)
    anim.save(path, writer=PillowWriter(fps=fps))
    plt.close(fig)
    return path


def first_last_maps(fields: dict[str, xr.DataArray], path: Path) -> Path:
    """Maps of the first and last frame of each (frame, lat, lon) field."""
    fig, axes = plt.subplots(len(fields), 2, figsize=(10, 3.4 * len(fields)), squeeze=False)
    for row, (label, da) in enumerate(fields.items()):
        d0 = da.dims[0]
        vmin, vmax = float(da.min()), float(da.max())
        for col, i in enumerate((0, da.sizes[d0] - 1)):
            im = _map(axes[row, col], da.isel({d0: i}), vmin, vmax, f"{label}: {da.name} frame {i}")
            fig.colorbar(im, ax=axes[row, col], label=da.attrs.get("units", ""))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def spectra_plot(rollouts: xr.DataArray, unconditional: xr.DataArray, truth: xr.DataArray, path: Path) -> Path:
    """Zonal power spectra (area-weighted over latitude) of samples and truth."""
    from pipeline.metrics import zonal_power_spectrum

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, da in (("truth (test period)", truth), ("rollouts", rollouts), ("unconditional", unconditional)):
        if bool(da.isnull().any()):
            continue
        spec = zonal_power_spectrum(da)
        ax.loglog(spec["wavenumber"][1:], spec[1:], marker="o", ms=3, label=label)
    ax.set_xlabel("zonal wavenumber")
    ax.set_ylabel(f"power ({rollouts.attrs.get('units', '')}^2)")
    ax.set_title(f"{rollouts.name}: zonal power spectrum", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


_SETS = {"unconditional": "unconditional clips", "rollouts": "rollouts", "train_period": "train period (real)"}


def realism_figure(name: str, res: dict, units: str, path: Path) -> Path:
    """One variable's samples against the test period (:func:`pipeline.realism.assess`): mean and standard
    deviation bias maps of each set beside the training period's (the real yardstick), the p1/p50/p99 of
    values, the zonal spectral ratio per band, autocorrelation against lag and the rollouts' drift."""
    fig = plt.figure(figsize=(16, 11))
    grid = fig.add_gridspec(3, 4)
    for row, key in enumerate(("mean_bias", "std_bias")):
        lim = max(float(np.nanmax(np.abs(res[s]["maps"][key]))) for s in _SETS) or 1.0
        for col, (s, label) in enumerate(_SETS.items()):
            ax = fig.add_subplot(grid[row, col])
            rms = res[s][f"{key}_rms"]
            im = _map(ax, res[s]["maps"][key], -lim, lim, f"{label}: {key.replace('_', ' ')} (RMS {rms:.3g})", "RdBu_r")
        fig.colorbar(im, ax=ax, label=f"{units} (minus test period)")
    ax = fig.add_subplot(grid[0, 3])
    bands = list(res["unconditional"].get("spectral_ratio", {}))
    for i, s in enumerate(_SETS):
        ratios = res[s].get("spectral_ratio", {})
        ax.bar(np.arange(len(bands)) + (i - 1) * 0.27, [ratios.get(b, np.nan) for b in bands], 0.27, label=_SETS[s])
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(bands)), bands, fontsize=8)
    ax.set_title("zonal power / test period's, per wavenumber band", fontsize=9)
    ax.legend(fontsize=7)
    ax = fig.add_subplot(grid[1, 3])
    x = np.arange(3)
    for i, s in enumerate(_SETS):
        diff = [res[s][f"p{p}"] - res[s][f"test_p{p}"] for p in (1, 50, 99)]
        ax.bar(x + (i - 1) * 0.27, diff, 0.27, label=f"{_SETS[s]} (W1 {res[s]['w1_rel']:.2f} std)")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xticks(x, ["p1", "p50", "p99"])
    ax.set_ylabel(f"{units} (minus test period)")
    ax.set_title("quantiles of the values minus the test period's\n(W1: Wasserstein-1 distance / test std)", fontsize=9)
    ax.legend(fontsize=7)
    ax = fig.add_subplot(grid[2, 0])
    for s, label in (*_SETS.items(), ("test_period", "test period")):
        acf = res[s]["autocorrelation"]
        ax.plot(np.arange(1, len(acf) + 1), acf, "o-", label=label, color="k" if s == "test_period" else None)
    ax.set_xlabel("lag (frames)")
    ax.set_title("autocorrelation (anomalies about each set's mean map)", fontsize=9)
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.legend(fontsize=7)
    d = res["drift"]
    for col, key in ((1, "area_mean"), (2, "spread")):
        ax = fig.add_subplot(grid[2, col])
        curves = d["curves"][key]
        for r in range(curves.shape[0]):
            ax.plot(np.arange(curves.shape[-1]), curves.values[r], lw=1)
        real = d[f"real_{key}_change_q05_q50_q95"]
        span = "" if real is None else f"; real windows 5-95%: [{real[0]:.3g}, {real[2]:.3g}]"
        ax.set_title(f"rollouts' {key.replace('_', ' ')}: change {d[f'{key}_change']:.3g}{span}", fontsize=8)
        ax.set_xlabel("lead frame")
        ax.set_ylabel(units)
    fig.suptitle(f"{name}: samples against the test period, beside the training period (real yardstick)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
