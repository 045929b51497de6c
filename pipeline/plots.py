"""Figures: pure functions from xarray objects to PNG files (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import xarray as xr

__all__ = ["quicklook_regrid"]


def _first_frame(da: xr.DataArray) -> xr.DataArray:
    sel = {d: 0 for d in da.dims if d not in ("latitude", "longitude")}
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
            im = ax.pcolormesh(
                da["longitude"],
                da["latitude"],
                da.transpose("latitude", "longitude"),
                vmin=vmin,
                vmax=vmax,
                shading="nearest",
                cmap="viridis",
            )
            ax.set_title(f"{name}: {title}\n{da.sizes['latitude']} x {da.sizes['longitude']}", fontsize=9)
            ax.set_xlabel("longitude (deg E)")
            ax.set_ylabel("latitude (deg N)")
            fig.colorbar(im, ax=ax, label=units)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
