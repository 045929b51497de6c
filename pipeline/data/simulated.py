"""Simulated gridded data with day-to-day dynamics, made by a well-kept simulator package (no download).

``simulated:qg-turbulence``: upper-layer potential vorticity anomaly of pyqg-jax's two-layer
quasi-geostrophic model (a JAX port of pyqg; doubly periodic 1000 km box, 64 x 64 cells), forced by a
vertical shear of 5 cm/s (pyqg's default is 2.5 cm/s; twice that makes the eddies evolve from day to
day: lag-1-day autocorrelation about 0.96, 2 days about 0.86). After a one-year spin-up from seeded
noise, one frame every 2 days is kept. The box is written on a NOMINAL latitude/longitude grid
(1 degree per cell, 20N-84N x 0E-64E) with CF attributes so the pipeline's prepare stage reads it
like any NetCDF file; the coordinates are labels, not geography, and the field has no seasonal cycle.

Needs the optional dependency group ``simulated`` (``pip install -e '.[simulated]'``).
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np
import xarray as xr

from pipeline.data.coords import DataError

__all__ = ["SIMULATED_PREFIX", "SIMULATIONS", "cache_dir", "generate", "simulated_path"]

SIMULATED_PREFIX = "simulated:"

# name -> parameters (part of the cached file's name through a short digest, so a change re-makes it)
SIMULATIONS: dict[str, dict[str, float | int]] = {
    "qg-turbulence": {
        "nx": 64,
        "U1": 0.05,  # upper-layer mean flow, m/s (lower layer at rest)
        "dt": 3600.0,  # model time step, s
        "spinup_days": 365,
        "frame_days": 2,
        "frames": 480,  # 960 days: 2000-01-01 .. 2002-08-17
        "seed": 0,
    },
}


def cache_dir() -> Path:
    """Where simulated files are written once: ``$PIPELINE_DATA_CACHE``, else the user's cache folder."""
    env = os.environ.get("PIPELINE_DATA_CACHE")
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "climate-video-diffusion-pipeline" / "simulated"


def _simulator():
    try:
        import jax
        import pyqg_jax
    except ModuleNotFoundError as e:
        msg = f"simulated data needs the optional dependencies: pip install -e '.[simulated]' ({e})"
        raise DataError(msg) from e
    return jax, pyqg_jax


def _run_qg(p: dict[str, float | int]) -> np.ndarray:
    """Frames of upper-layer PV (frames, ny, nx), s-1."""
    jax, pyqg_jax = _simulator()
    jax.config.update("jax_enable_x64", True)  # float64 steps: the same bits from run to run on the CPU
    model = pyqg_jax.qg_model.QGModel(
        nx=int(p["nx"]), U1=float(p["U1"]), U2=0.0, precision=pyqg_jax.state.Precision.DOUBLE
    )
    stepped = pyqg_jax.steppers.SteppedModel(model=model, stepper=pyqg_jax.steppers.AB3Stepper(dt=float(p["dt"])))
    state = stepped.create_initial_state(jax.random.key(int(p["seed"])))
    per_day = round(86400.0 / float(p["dt"]))

    def advance(days: int):
        def body(c, _):
            c = jax.lax.fori_loop(0, per_day * days, lambda i, x: stepped.step_model(x), c)
            return c, c.state.q[0]

        return body

    with jax.default_device(jax.devices("cpu")[0]):
        state, _ = jax.jit(lambda s: jax.lax.scan(advance(1), s, None, length=int(p["spinup_days"])))(state)
        _, q = jax.jit(lambda s: jax.lax.scan(advance(int(p["frame_days"])), s, None, length=int(p["frames"])))(state)
    return np.asarray(q, dtype=np.float64)


def generate(name: str = "qg-turbulence", overrides: dict[str, float | int] | None = None) -> xr.Dataset:
    """The simulated data set ``name`` as a CF-1.8 dataset (deterministic: the same parameters, the same values).

    ``overrides`` replaces some of its parameters (e.g. a short run in tests).
    """
    p = _parameters(name, overrides)
    jax, pyqg_jax = _simulator()
    q = _run_qg(p) * 1e6  # 1e-6 s-1
    q = q - q.mean(axis=(1, 2), keepdims=True)  # PV anomaly about each frame's box mean (which the model conserves)
    attrs = {
        "long_name": "upper-layer quasi-geostrophic potential vorticity anomaly (simulated)",
        "units": "1e-6 s-1",
    }
    return xr.Dataset(
        {"q": (("time", "latitude", "longitude"), q.astype(np.float32), attrs)},
        coords=_coordinates(p),
        attrs=_global_attrs(name, p, f"pyqg-jax {pyqg_jax.__version__} (jax {jax.__version__})"),
    )


def _parameters(name: str, overrides: dict[str, float | int] | None) -> dict[str, float | int]:
    """The parameters of ``name`` with ``overrides`` applied; an unknown name or parameter is refused."""
    if name not in SIMULATIONS:
        msg = f"unknown simulated data set {name!r}; known: {sorted(SIMULATIONS)}"
        raise DataError(msg)
    unknown = set(overrides or {}) - set(SIMULATIONS[name])
    if unknown:
        msg = f"unknown parameters {sorted(unknown)} for {name!r}; it has {sorted(SIMULATIONS[name])}"
        raise DataError(msg)
    return {**SIMULATIONS[name], **(overrides or {})}


def _coordinates(p: dict[str, float | int]) -> dict[str, tuple[str, np.ndarray, dict[str, str]]]:
    """CF time (days since 2000-01-01) and the NOMINAL latitude/longitude labels of the box's cells."""
    n = int(p["nx"])
    lat = 20.5 + np.arange(n, dtype=np.float64)
    lon = 0.5 + np.arange(n, dtype=np.float64)
    time = np.arange(int(p["frames"]), dtype=np.float64) * float(p["frame_days"])
    time_attrs = {
        "standard_name": "time",
        "units": "days since 2000-01-01 00:00:00",
        "calendar": "proleptic_gregorian",
        "axis": "T",
    }
    lat_attrs = {
        "standard_name": "latitude",
        "units": "degrees_north",
        "axis": "Y",
        "long_name": "nominal latitude (model y, 1 cell = 1 degree)",
    }
    lon_attrs = {
        "standard_name": "longitude",
        "units": "degrees_east",
        "axis": "X",
        "long_name": "nominal longitude (model x, periodic box)",
    }
    return {
        "time": ("time", time, time_attrs),
        "latitude": ("latitude", lat, lat_attrs),
        "longitude": ("longitude", lon, lon_attrs),
    }


def _global_attrs(name: str, p: dict[str, float | int], simulator: str) -> dict[str, str]:
    """CF global attributes saying plainly that the data is simulated, by what and with which parameters."""
    return {
        "Conventions": "CF-1.8",
        "title": f"{name}: two-layer quasi-geostrophic turbulence (SIMULATED, not observations)",
        "source": f"simulated by {simulator}",
        "institution": "climate-video-diffusion-pipeline, pipeline.data.simulated",
        "comment": "Doubly periodic 1000 km box on a nominal lat/lon grid; no seasonal cycle. Parameters: "
        + ", ".join(f"{k}={v}" for k, v in p.items()),
        "history": f"{dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ} pipeline.data.simulated.generate({name!r})",
    }


def simulated_path(spec: str) -> Path:
    """``simulated:<name>``: the NetCDF file of that data set, made once into :func:`cache_dir` (atomic)."""
    import hashlib
    import uuid

    name = spec[len(SIMULATED_PREFIX) :]
    if name not in SIMULATIONS:
        msg = f"unknown simulated data set {spec!r}; known: {[SIMULATED_PREFIX + k for k in sorted(SIMULATIONS)]}"
        raise DataError(msg)
    jax, pyqg_jax = _simulator()
    key = repr((sorted(SIMULATIONS[name].items()), pyqg_jax.__version__, jax.__version__))
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    path = cache_dir() / f"{name}-{digest}.nc"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        ds = generate(name)
        ds.attrs.pop("history")  # the same bytes for the same parameters
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4")
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
