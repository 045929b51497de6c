"""Opening raw climate files lazily, provenance, and atomic zarr v3 writes.

The only module that does file I/O of climate data (NetCDF, GRIB, zarr).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import itertools
import json
import os
import shutil
import stat
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import xarray as xr

from pipeline.atomic import temporary, write_text_atomic
from pipeline.data.coords import DataError
from pipeline.data.times import check_time_axes, decode_time, find_time, format_time, time_seconds

__all__ = [
    "BUNDLED_PREFIX",
    "CONSOLIDATED_NOTE",
    "TimeGrid",
    "atomic_path",
    "compute_with_progress",
    "directory_bytes",
    "file_provenance",
    "files_for",
    "move_into_place",
    "open_source",
    "open_store",
    "resolve_paths",
    "source_index",
    "writable_folder",
    "write_zarr",
    "zarr_ready",
]

BUNDLED_PREFIX = "bundled:"
# zarr's warning that consolidated metadata is an extension of zarr v3 (the pipeline writes it on purpose)
CONSOLIDATED_NOTE = "Consolidated metadata is currently not part"


def _bundled(spec: str) -> Path:
    """``bundled:<package>/<file>``: real data shipped inside an installed package (no download)."""
    pkg, _, name = spec[len(BUNDLED_PREFIX) :].partition("/")
    known = {"eofs": "examples/example_data", "iris_sample_data": "sample_data"}
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
    """Expand globs, bundled and simulated references; every pattern must match something."""
    out: list[Path] = []
    for pat in patterns:
        if pat.startswith(BUNDLED_PREFIX):
            out.append(_bundled(pat))
            continue
        if pat.startswith("simulated:"):  # made once by a simulator package into a cache folder (no download)
            from pipeline.data.simulated import simulated_path

            out.append(simulated_path(pat))
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


class TimeGrid(NamedTuple):
    """Chunks of ``size`` steps of a time axis (``seconds``: :func:`pipeline.data.times.time_seconds` of it)."""

    seconds: np.ndarray
    size: int

    def chunks_from(self, first: float, steps: int) -> tuple[int, ...]:
        """Chunk sizes for ``steps`` consecutive steps of the axis from time ``first``, each within one grid chunk."""
        offset = int(np.searchsorted(self.seconds, first)) % self.size
        head = min(steps, self.size - offset)
        rest = steps - head
        return (head, *(self.size,) * (rest // self.size), *((rest % self.size,) if rest % self.size else ()))


def _open_one(
    path: Path,
    kwargs: dict[str, Any],
    time_reference: str | None,
    grid: TimeGrid | None = None,
    time_coordinate: str | None = None,
) -> xr.Dataset:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = xr.open_dataset(path, **kwargs)
    except (OSError, ValueError, TypeError, KeyError) as e:
        msg = f"could not open {path} as climate data ({type(e).__name__}: {e})"
        raise DataError(msg) from e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. xarray's note on an unpadded reference year ('hours since 1-1-1')
        ds = decode_time(ds, str(path), time_reference, time_coordinate)
    if grid is None:
        return ds
    # opened unchunked (lazily indexed): each dask task reads only its steps of one grid chunk, whatever the
    # file's own layout, so joining files merges pieces only where a chunk spans two files; the file handle is
    # inlined in each read task (no shared root task, which makes dask read ahead and hold more chunks)
    t = find_time(ds)
    if t is None or ds[t].size == 0:
        return ds.chunk({}, inline_array=True)
    dim = ds[t].dims[0]
    chunks = grid.chunks_from(float(time_seconds(ds[t].values[:1])[0]), ds.sizes[dim])
    return ds.chunk({dim: chunks}, inline_array=True)


def _check_same_coords(named: list[tuple[str, xr.Dataset]], skip: set[str]) -> None:
    """Index coordinates shared by the files (other than ``skip``) must be equal, e.g. the same grid."""
    first_name, first = named[0]
    for name, ds in named[1:]:
        for c in set(first.indexes) & set(ds.indexes) - skip:
            a, b = first[c].values, ds[c].values
            same = a.shape == b.shape and (
                np.array_equal(a, b) or (a.dtype.kind in "fiu" and np.allclose(a, b, rtol=1e-9, atol=1e-9))
            )
            if not same:
                msg = f"{first_name} and {name} differ in coordinate {c!r} ({a.size} vs {b.size} values): not one grid"
                raise DataError(msg)


def _join_time(parts: list[tuple[str, xr.Dataset]], overlap: str) -> xr.Dataset:
    ordered = check_time_axes(parts, overlap)
    if len(ordered) == 1:
        return ordered[0]
    dim = ordered[0][find_time(ordered[0])].dims[0]
    _check_same_coords(parts, {dim})
    kwargs: dict[str, Any] = {"data_vars": "minimal", "coords": "minimal", "compat": "override", "join": "override"}
    try:
        return xr.concat(ordered, dim=dim, combine_attrs="override", **kwargs)
    except ValueError as e:
        msg = f"could not join {[n for n, _ in parts]} along time ({e})"
        raise DataError(msg) from e


def _open_kwargs(paths: list[Path], engine: str | None, chunks: dict | None) -> dict[str, Any]:
    engines = {_engine(p, engine) for p in paths}
    if len(engines) > 1:
        msg = f"inputs mix formats {sorted(map(str, engines))}: {[str(p) for p in paths]}"
        raise DataError(msg)
    eng = engines.pop()
    kwargs: dict[str, Any] = {
        "chunks": chunks,
        "mask_and_scale": True,
        "decode_times": False,  # decoded by decode_time: every CF calendar, months since, clear errors
        "decode_timedelta": False,
        "engine": eng,
    }
    if eng == "cfgrib":
        kwargs["backend_kwargs"] = {"indexpath": ""}  # never write .idx files next to the user's data
    return kwargs


def open_source(
    paths: list[Path],
    engine: str | None = None,
    time_reference: str | None = None,
    overlap: str = "error",
    grid: TimeGrid | None = None,
    time_coordinate: str | None = None,
) -> xr.Dataset:
    """Open one or many files lazily (dask), decoding packed integers and time in any CF calendar.

    Each file's time is decoded by :func:`pipeline.data.times.decode_time` (``time_reference`` completes
    units without a reference date; ``time_coordinate`` names the variable holding the time where the
    time dimension's own coordinate has no units). Files holding the same variables are joined along time in time
    order after :func:`pipeline.data.times.check_time_axes` (overlaps, per ``overlap``, and gaps);
    files of different variables are then merged, and must share their time steps and grid.
    Dask chunks are the files' own, or with ``grid`` the chunks of that time axis (cut where files begin).
    """
    kwargs = _open_kwargs(paths, engine, {} if grid is None else None)
    parts = [(str(p), _open_one(p, kwargs, time_reference, grid, time_coordinate)) for p in paths]
    if len(parts) == 1:
        return parts[0][1]
    groups: dict[tuple[str, ...], list[tuple[str, xr.Dataset]]] = {}
    static = []
    for name, ds in parts:
        t = find_time(ds)
        if t is None:
            static.append((name, ds))
            continue
        dim = ds[t].dims[0]
        groups.setdefault(tuple(sorted(str(v) for v, da in ds.data_vars.items() if dim in da.dims)), []).append(
            (name, ds)
        )
    joined = [(", ".join(n for n, _ in members), _join_time(members, overlap)) for members in groups.values()]
    for (a, da), (b, db) in itertools.pairwise(joined):
        ta, tb = da[find_time(da)].values, db[find_time(db)].values
        if ta.shape != tb.shape or not np.all(ta == tb):
            msg = (
                f"files of different variables hold different time steps: {a} has {ta.size} "
                f"({format_time(ta[0])} .. {format_time(ta[-1])}), {b} has {tb.size} "
                f"({format_time(tb[0])} .. {format_time(tb[-1])})"
            )
            raise DataError(msg)
    everything = joined + static
    if len(everything) == 1:
        return everything[0][1]
    _check_same_coords(everything, set())
    try:
        return xr.merge([d for _, d in everything], compat="override", join="override", combine_attrs="override")
    except ValueError as e:
        msg = f"could not merge {[n for n, _ in everything]} ({e})"
        raise DataError(msg) from e


# bump when what an index entry holds changes
INDEX_VERSION = 1


def _time_span(
    path: Path, engine: str | None, time_reference: str | None, time_coordinate: str | None = None
) -> dict[str, Any]:
    """First and last time of a file (seconds since 1970 in its calendar), its step count; None without time."""
    ds = _open_one(path, _open_kwargs([path], engine, {}), time_reference, None, time_coordinate)
    try:
        t = find_time(ds)
        s = time_seconds(ds[t].values) if t is not None else np.zeros(0)
        if s.size == 0:
            return {"first": None, "last": None, "steps": 0}
        return {"first": float(s.min()), "last": float(s.max()), "steps": int(s.size)}
    finally:
        ds.close()


def source_index(
    paths: list[Path],
    engine: str | None = None,
    time_reference: str | None = None,
    cache: Path | None = None,
    time_coordinate: str | None = None,
) -> list[dict[str, Any]]:
    """The time span of every input file: ``path``, ``first``, ``last`` (seconds since 1970 in the files'
    calendar; None for a file without time steps), ``steps`` and ``stamp`` (size, modification time).

    Each file's time coordinate is read once: with ``cache`` (a JSON file) an entry is kept while its
    file's size and modification time stay the same, so later calls only stat the files. A part of the
    data then opens just the files it needs (:func:`files_for`).
    """
    settings = {"version": INDEX_VERSION, "engine": engine, "time_reference": time_reference}
    if time_coordinate is not None:  # (absent otherwise: indexes written before the key existed stay valid)
        settings["time_coordinate"] = time_coordinate
    known: dict[str, Any] = {}
    if cache is not None and cache.is_file():
        try:
            saved = json.loads(cache.read_text())
        except (OSError, ValueError):
            saved = {}
        if saved.get("settings") == settings:
            known = saved.get("files", {})
    files: dict[str, Any] = {}
    for p in paths:
        key = str(Path(p).resolve())
        st = Path(p).stat()
        stamp = [st.st_size, st.st_mtime_ns]
        entry = known.get(key)
        if entry is None or entry.get("stamp") != stamp:
            entry = {"stamp": stamp, **_time_span(Path(p), engine, time_reference, time_coordinate)}
        files[key] = entry
    if cache is not None and files != {k: known.get(k) for k in files}:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(cache, json.dumps({"settings": settings, "files": files}))
    return [{"path": k, **v} for k, v in files.items()]


def files_for(index: list[dict[str, Any]], first: float, last: float) -> list[Path]:
    """The files of ``index`` holding any time in [first, last] (seconds, as in the index), and those without time."""
    return [Path(e["path"]) for e in index if e["first"] is None or (e["first"] <= last and e["last"] >= first)]


def open_store(path: str | os.PathLike[str]) -> xr.Dataset:
    p = Path(path)
    if not p.exists():
        msg = f"store {p} does not exist; run the stage that makes it first"
        raise DataError(msg)
    return xr.open_zarr(p, consolidated=True, zarr_format=3)


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


def writable_folder(path: Path) -> Path:
    """Check that the folder ``path`` (which need not exist yet) can be made and written to; returns its nearest
    existing folder. By a real probe (a file created and removed there), not only by permissions: root passes any
    permission check, and a read-only filesystem fails only the probe."""
    path = Path(path).absolute()
    existing = path
    while True:
        try:
            if existing.exists():
                break
        except OSError:  # an ancestor that cannot be searched: found out below
            pass
        existing = existing.parent
    if not existing.is_dir():
        msg = f"cannot create {path}: {existing} is a file, not a folder"
        raise DataError(msg)
    if not os.access(existing, os.W_OK | os.X_OK):
        st = existing.stat()
        msg = (
            f"cannot write to {path}: {existing} is not writable for this process (permissions "
            f"{stat.filemode(st.st_mode)}, owner uid {st.st_uid}, this process uid {os.geteuid()})"
        )
        raise DataError(msg)
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=existing)
        os.close(fd)
        Path(probe).unlink()
    except OSError as e:
        msg = f"cannot write to {path}: creating a file in {existing} fails ({e.strerror or e})"
        raise DataError(msg) from None
    return existing


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success move it to ``final`` (replacing it).

    A killed job leaves only ``.<name>.tmp-*`` folders (:func:`pipeline.atomic.temporary`), never a ``final`` that
    looks complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(final)
    try:
        yield tmp
        move_into_place(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


def move_into_place(src: Path, final: Path) -> None:
    """Rename ``src`` to ``final`` (same filesystem), replacing what is there; ``final`` is never half made."""
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        final.rename(old)
    src.rename(final)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def _clean_encoding(ds: xr.Dataset) -> xr.Dataset:
    """Drop encodings inherited from the source (chunks, compressors, packing) before writing."""
    ds = ds.copy()
    for v in ds.variables.values():
        keep = {k: v.encoding[k] for k in ("units", "calendar") if k in v.encoding}
        v.encoding = keep
    return ds


CODECS = ("zstd", "lz4", "none")  # data.codec


def compressors(codec: str) -> tuple[Any, ...]:
    """The zarr v3 compressors of ``data.codec``: ``zstd`` (level 0, zarr's default), ``lz4`` (Blosc, byte
    shuffle: faster to decode, a little larger), ``none`` (no compression: the fastest read where disk bandwidth
    is ample; normalised float fields compress by only about 10%)."""
    import zarr.codecs as zc

    if codec == "zstd":
        return (zc.ZstdCodec(level=0),)
    if codec == "lz4":
        return (zc.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),)
    if codec == "none":
        return ()
    msg = f"data.codec: {codec!r} is not one of {list(CODECS)}"
    raise ValueError(msg)


def zarr_ready(ds: xr.Dataset, time_chunk: int, codec: str | None = None) -> xr.Dataset:
    """``ds`` as the pipeline stores it: chunks of ``time_chunk`` steps, whole in space, the source's encodings
    dropped, NaN as the fill value of floats; with ``codec`` (:func:`compressors`) the data variables' compression,
    for a new store (a region written into an existing store keeps the store's)."""
    chunks = {d: (min(time_chunk, n) if d == "time" else -1) for d, n in ds.sizes.items()}
    ds = _clean_encoding(ds)
    # small non-index coordinates (valid_time, 2-D latitude) in memory: a chunked datetime coordinate with a
    # units encoding but no dtype cannot be encoded lazily
    ds = ds.assign_coords({k: v.load() for k, v in ds.coords.items() if k not in ds.indexes})
    ds = ds.assign({k: v.chunk({d: chunks[d] for d in v.dims}) for k, v in ds.data_vars.items()})
    for name, var in ds.data_vars.items():
        if np.issubdtype(var.dtype, np.floating):
            var.encoding["_FillValue"] = np.nan
        if codec is not None:
            var.encoding["compressors"] = compressors(codec)
        ds[name] = var
    return ds


def compute_with_progress(job: Any, desc: str, progress: bool | None = None) -> None:
    """``job.compute()`` (a dask object), with a progress bar on a terminal (``progress=None``) or as asked."""
    if sys.stderr.isatty() if progress is None else progress:
        from tqdm.dask import TqdmCallback

        with TqdmCallback(desc=desc, leave=False):
            job.compute()
        return
    job.compute()


def write_zarr(ds: xr.Dataset, path: Path, time_chunk: int, progress: bool | None = None) -> int:
    """Write ``ds`` as a zarr v3 store chunked ``time_chunk`` along time, whole in space; atomic.

    Returns the bytes written. ``progress=None`` shows a bar only on a terminal.
    """
    ds = zarr_ready(ds, time_chunk)
    with atomic_path(path) as tmp:
        with warnings.catch_warnings():  # zarr notes that consolidated metadata is an extension of v3
            warnings.filterwarnings("ignore", message=CONSOLIDATED_NOTE)
            job = ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=True, compute=False)
        compute_with_progress(job, f"writing {Path(path).name}", progress)
    return directory_bytes(path)
