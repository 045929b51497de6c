"""Opening raw climate files lazily, provenance, and atomic zarr v3 writes.

The only module that does file I/O of climate data (NetCDF, GRIB, zarr).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import shutil
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from pipeline.data.coords import DataError

__all__ = [
    "BUNDLED_PREFIX",
    "atomic_path",
    "directory_bytes",
    "file_provenance",
    "open_source",
    "open_store",
    "resolve_paths",
    "write_zarr",
]

BUNDLED_PREFIX = "bundled:"


def _bundled(spec: str) -> Path:
    """``bundled:<package>/<file>``: real data shipped inside an installed package (no download)."""
    pkg, _, name = spec[len(BUNDLED_PREFIX) :].partition("/")
    known = {"eofs": "examples/example_data"}
    if pkg not in known:
        msg = f"unknown bundled data set {spec!r}; known packages: {sorted(known)} (e.g. 'bundled:eofs/hgt_djf.nc')"
        raise DataError(msg)
    try:
        root = resources.files(pkg) / known[pkg]
    except ModuleNotFoundError as e:
        msg = f"{spec}: the package {pkg!r} that ships this data is not installed (pip install {pkg})"
        raise DataError(msg) from e
    path = Path(str(root / name))
    if not path.exists():
        have = sorted(p.name for p in Path(str(root)).iterdir())
        msg = f"{spec}: {pkg} ships no file {name!r}; it has {have}"
        raise DataError(msg)
    return path


def resolve_paths(patterns: list[str]) -> list[Path]:
    """Expand globs and bundled references; every pattern must match something."""
    out: list[Path] = []
    for pat in patterns:
        if pat.startswith(BUNDLED_PREFIX):
            out.append(_bundled(pat))
            continue
        hits = sorted(glob.glob(os.path.expanduser(pat)))
        if not hits:
            msg = f"input {pat!r} matches no file (working directory {Path.cwd()})"
            raise DataError(msg)
        out.extend(Path(h) for h in hits)
    return out


def _engine(path: Path, engine: str | None) -> str:
    if engine:
        return engine
    if path.is_dir() or path.suffix == ".zarr":
        return "zarr"
    if path.suffix.lower() in (".grib", ".grb", ".grib2", ".grb2"):
        return "cfgrib"
    with path.open("rb") as f:
        magic = f.read(8)
    if magic[:3] == b"CDF" or magic[:4] == b"\x89HDF":
        return "netcdf4"  # netCDF3 and netCDF4; explicit, so xarray does not import every backend
    msg = f"{path}: not a NetCDF, GRIB or zarr input (first bytes {magic!r}); set data.source.engine if it is another format"
    raise DataError(msg)


def open_source(paths: list[Path], engine: str | None = None) -> xr.Dataset:
    """Open one or many files lazily (dask), decoding packed integers (scale_factor, add_offset)."""
    engines = {_engine(p, engine) for p in paths}
    if len(engines) > 1:
        msg = f"inputs mix formats {sorted(map(str, engines))}: {[str(p) for p in paths]}"
        raise DataError(msg)
    eng = engines.pop()
    kwargs: dict[str, Any] = {"chunks": {}, "mask_and_scale": True, "decode_times": True, "engine": eng}
    if eng == "cfgrib":
        kwargs["backend_kwargs"] = {"indexpath": ""}  # never write .idx files next to the user's data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if len(paths) == 1:
                return xr.open_dataset(paths[0], **kwargs)
            return xr.open_mfdataset(paths, combine="by_coords", **kwargs)
    except (OSError, ValueError, TypeError, KeyError) as e:
        names = ", ".join(str(p) for p in paths)
        msg = f"could not open {names} as climate data ({type(e).__name__}: {e})"
        raise DataError(msg) from e


def open_store(path: str | os.PathLike[str]) -> xr.Dataset:
    p = Path(path)
    if not p.exists():
        msg = f"store {p} does not exist; run the stage that makes it first"
        raise DataError(msg)
    return xr.open_zarr(p, consolidated=False, zarr_format=3)


def _quick_hash(path: Path, block: int = 1 << 20) -> str:
    """sha256 of the size, first and last MiB: cheap on TB files, changes when they do."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(block))
        if size > 2 * block:
            f.seek(-block, os.SEEK_END)
            h.update(f.read(block))
    return h.hexdigest()[:16]


def file_provenance(paths: list[Path]) -> list[dict[str, Any]]:
    out = []
    for p in paths:
        files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
        size = sum(q.stat().st_size for q in files)
        mtime = max(q.stat().st_mtime for q in files) if files else 0.0
        digest = (
            _quick_hash(p)
            if p.is_file()
            else hashlib.sha256("".join(f"{q.relative_to(p)}:{q.stat().st_size}" for q in files).encode()).hexdigest()[
                :16
            ]
        )
        out.append(
            {
                "path": str(p.resolve()),
                "bytes": size,
                "mtime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mtime)),
                "quick_sha256": digest,
            }
        )
    return out


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success move it to ``final`` (replacing it).

    A killed job leaves only ``.<name>.tmp-*`` folders, never a ``final`` that looks complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        old = None
        if final.exists():
            old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
            final.rename(old)
        tmp.rename(final)
        if old is not None:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


def _clean_encoding(ds: xr.Dataset) -> xr.Dataset:
    """Drop encodings inherited from the source (chunks, compressors, packing) before writing."""
    ds = ds.copy()
    for v in ds.variables.values():
        keep = {k: v.encoding[k] for k in ("units", "calendar") if k in v.encoding}
        v.encoding = keep
    return ds


def write_zarr(ds: xr.Dataset, path: Path, time_chunk: int, progress: bool | None = None) -> int:
    """Write ``ds`` as a zarr v3 store chunked ``time_chunk`` along time, whole in space; atomic.

    Returns the bytes written. ``progress=None`` shows a bar only on a terminal.
    """
    chunks = {d: (min(time_chunk, n) if d == "time" else -1) for d, n in ds.sizes.items()}
    ds = _clean_encoding(ds).chunk(chunks)
    for name, var in ds.data_vars.items():
        if np.issubdtype(var.dtype, np.floating):
            var.encoding["_FillValue"] = np.nan
        ds[name] = var
    show = sys.stderr.isatty() if progress is None else progress
    with atomic_path(path) as tmp:
        job = ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False, compute=False)
        if show:
            from tqdm.dask import TqdmCallback

            with TqdmCallback(desc=f"writing {Path(path).name}", leave=False):
                job.compute()
        else:
            job.compute()
    return directory_bytes(path)
