"""Figures: pure functions from xarray objects to PNG files (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.animation import FuncAnimation, PillowWriter

__all__ = ["animate_side_by_side", "first_last_maps", "quicklook_regrid", "spectra_plot", "sweep_summary"]


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


def sweep_summary(table, metric: str, path: Path) -> Path:
    """Per variable: ``metric`` vs sampling steps per sampler (last checkpoint), and vs checkpoint step;
    one line per sampler and guidance weight."""
    variables = sorted(table["variable"].unique())
    fig, axes = plt.subplots(len(variables), 2, figsize=(10, 3.4 * len(variables)), squeeze=False)
    last = table["checkpoint_step"].max()
    several = table["guidance_weight"].nunique() > 1

    def label(sampler: str, weight: float, suffix: str = "") -> str:
        return f"{sampler}{suffix} w={weight:g}" if several else f"{sampler}{suffix}"

    for row, v in enumerate(variables):
        tv = table[table["variable"] == v]
        ax = axes[row, 0]
        for (sampler, w), g in tv[tv["checkpoint_step"] == last].groupby(["sampler", "guidance_weight"]):
            g = g.sort_values("steps")
            ax.plot(g["steps"], g[metric], marker="o", label=label(sampler, w))
        ax.set_xscale("log")
        ax.set_xlabel("sampling steps (NFE)")
        ax.set_ylabel(f"{metric} ({v})")
        ax.set_title(f"{v}: {metric} vs steps, checkpoint step {last}", fontsize=9)
        ax.legend(fontsize=8)
        ax = axes[row, 1]
        most = tv["steps"].max()
        for (sampler, w), g in tv[tv["steps"] == most].groupby(["sampler", "guidance_weight"]):
            g = g.sort_values("checkpoint_step")
            ax.plot(g["checkpoint_step"], g[metric], marker="o", label=label(sampler, w, f"-{most}"))
        ax.set_xlabel("checkpoint (training step)")
        ax.set_ylabel(f"{metric} ({v})")
        ax.set_title(f"{v}: {metric} vs checkpoint", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _map(ax, da: xr.DataArray, vmin: float, vmax: float, title: str):
    im = ax.pcolormesh(
        da["longitude"],
        da["latitude"],
        da.transpose(*(("y", "x") if da["latitude"].ndim == 2 else ("latitude", "longitude"))),
        vmin=vmin,
        vmax=vmax,
        shading="nearest",
        cmap="viridis",
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
