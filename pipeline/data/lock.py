"""One writer per store: an OS file lock beside each store, and the leftovers of an interrupted replacement.

A store built in parts (:mod:`pipeline.data.parts`) is written by steps that may run as separate jobs: init,
one job per part, finalise. The lock ``<data dir>/.<store name>.lock`` (``.regridded.zarr.lock``) is taken with
``flock(2)``:

- init, finalise and the whole build in one process (``python -m pipeline prepare`` without a step flag) take it
  **exclusive**: no other writer of that store, no part, no reader at the same time;
- each part takes it **shared**: the parts of a build run at once, as parallel SLURM jobs do, but never beside an
  init (which would wipe the plan under them) or a finalise (which would move the store while they write);
- a stage that reads a store (normalise reads regridded.zarr) takes that store's lock shared, so that no
  prepare replaces it while it is read.

The OS releases a flock when its process ends, however it ends (SIGKILL, a SLURM time limit, an exception), so
there is no stale lock to clean up, unlike a pid file. A second writer **waits** for the lock, saying once
whom it waits for, for at most ``PIPELINE_LOCK_TIMEOUT`` seconds (default 60: covers an NFS server's lease
recovery after a holder's node died, and a ``pipeline status`` probing the lock), then stops with
:class:`StoreBusy` naming the holder (pid, host, SLURM job, step, start time: each holder writes a JSON line
into the lock file). ``PIPELINE_LOCK_TIMEOUT=0`` stops at once. Within one process the lock is re-entrant (the
whole build holds it exclusive while it runs its init, parts and finalise).

Shared filesystems: on NFS (v3 with lockd, v4) Linux emulates ``flock`` with byte-range locks held by the server,
so the lock holds across nodes, unless the mount says ``nolock`` or ``local_lock=flock|all`` (then it is
node-local: two nodes are not kept apart). Lustre locks across nodes only when mounted ``-o flock``; with
``localflock`` the lock is node-local, with ``noflock`` (older versions' default) ``flock`` fails. GPFS (Storage
Scale) and CephFS lock across nodes. Where ``flock`` fails the stage logs a warning and goes on without the
lock (the behaviour before locks existed): check ``mount`` on a compute node where jobs of one experiment may
run on several nodes at once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import functools
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

from pipeline.data.coords import DataError

__all__ = ["StoreBusy", "busy", "clean_leftovers", "leftovers", "lock_path", "locked", "store_lock"]

log = logging.getLogger(__name__)

TIMEOUT_VARIABLE = "PIPELINE_LOCK_TIMEOUT"
DEFAULT_TIMEOUT = 60.0
_POLL = 0.2  # seconds between tries while waiting
_UNSUPPORTED = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}

F = TypeVar("F", bound=Callable[..., Any])


class StoreBusy(DataError):
    """Another process writes the store (or reads it, for a writer that would replace it): the message names it."""


def lock_path(store: Path) -> Path:
    """The lock file of ``store``: a hidden file beside it, ``.<name>.lock``."""
    store = Path(store)
    return store.with_name(f".{store.name}.lock")


def leftovers(path: Path) -> list[Path]:
    """What an interrupted replacement of ``path`` left beside it: ``.<name>.old-*`` (the previous version, moved
    aside before the new one moved in) and ``.<name>.tmp*`` (a version being written)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return sorted(p for pattern in (".old-*", ".tmp*") for p in path.parent.glob(f".{path.name}{pattern}"))


def clean_leftovers(path: Path) -> list[Path]:
    """Remove :func:`leftovers` of ``path``; only under its exclusive lock (no writer is then midway). Returns them."""
    import shutil

    found = leftovers(path)
    for p in found:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
        log.info("removed %s, left by an interrupted replacement of %s", p, path.name)
    return found


def _timeout() -> float:
    text = os.environ.get(TIMEOUT_VARIABLE, "")
    try:
        return float(text) if text.strip() else DEFAULT_TIMEOUT
    except ValueError:
        msg = f"{TIMEOUT_VARIABLE} = {text!r}: expected a number of seconds (0 stops at once when a store is busy)"
        raise DataError(msg) from None


def _record(step: str, exclusive: bool) -> str:
    """This process as a holder of a lock: one JSON line."""
    now = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": now, "step": step}
    me |= {"mode": "exclusive" if exclusive else "shared", "command": " ".join(sys.argv)[:300]}
    if os.environ.get("SLURM_JOB_ID"):
        me["slurm_job"] = os.environ["SLURM_JOB_ID"]
    return json.dumps(me) + "\n"


def _alive(rec: dict) -> bool:
    """False only for a process of this host that is known to have ended (another host's cannot be checked)."""
    if rec.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(rec["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, KeyError, TypeError):
        return True
    return True


def _records(path: Path) -> list[dict]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        lines = []
    recs = []
    for line in lines:
        with contextlib.suppress(ValueError):
            recs.append(json.loads(line))
    return recs


def _holders(path: Path) -> str:
    """The holders the lock file names, in words (those of ended processes of this host left out)."""
    recs = _records(path)
    if not recs:  # a holder writes its record just after it takes the lock: look again once
        time.sleep(_POLL)
        recs = _records(path)
    words = [
        f"{r.get('step', '?')} (pid {r.get('pid')} on {r.get('host')}"
        + (f", SLURM job {r['slurm_job']}" if r.get("slurm_job") else "")
        + f", since {r.get('since')}, {r.get('mode', '?')} lock)"
        for r in recs
        if _alive(r)
    ]
    if not words:
        return "another process (it wrote no record into the lock file)"
    return ", ".join(words[:3]) + (f" and {len(words) - 3} more" if len(words) > 3 else "")


def _try(f: IO[str], exclusive: bool, path: Path) -> bool:
    """One non-blocking try; True when held (or when the filesystem cannot lock: then said once, and not held)."""
    try:
        fcntl.flock(f, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno not in _UNSUPPORTED:
            raise
        log.warning(
            "%s: this filesystem does not lock files (flock: %s); other writers of the store are NOT kept out "
            "(Lustre: mount with -o flock; NFS: without nolock or local_lock)",
            path,
            e.strerror,
        )
    return True


def _acquire(path: Path, exclusive: bool, step: str) -> IO[str]:
    """Open and lock ``path``, waiting up to the timeout; write this process's record into it."""
    timeout = _timeout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = path.open("a+")
    except OSError as e:
        msg = f"cannot create the lock file {path} ({e.strerror or e}): is the results folder writable?"
        raise DataError(msg) from None
    store = path.name.removeprefix(".").removesuffix(".lock")
    t0, said = time.monotonic(), False
    while not _try(f, exclusive, path):
        waited = time.monotonic() - t0
        if waited >= timeout:
            f.close()
            msg = (
                f"{store} in {path.parent} is in use by {_holders(path)}; {step} waited {waited:.0f} s and stops. "
                f"Let that process end (or stop it: its lock goes with it, even if it is killed), then run this "
                f"again; {TIMEOUT_VARIABLE} sets how many seconds to wait (now {timeout:g})"
            )
            raise StoreBusy(msg)
        if not said:
            log.warning(
                "%s is in use by %s: %s waits up to %g s (%s)", store, _holders(path), step, timeout, TIMEOUT_VARIABLE
            )
            said = True
        time.sleep(min(_POLL, max(timeout - waited, 0.0)))
    if said:
        log.info("%s: lock of %s taken after %.1f s", step, store, time.monotonic() - t0)
    if exclusive:
        f.truncate(0)  # the records of earlier holders (killed ones): none of them holds it now
    f.write(_record(step, exclusive))
    f.flush()
    return f


_held: dict[Path, tuple[IO[str], bool]] = {}  # this process's locks: path -> (file, exclusive)


@contextlib.contextmanager
def store_lock(store: Path, *, exclusive: bool, step: str) -> Iterator[None]:
    """Hold the lock of ``store`` (exclusive, or shared) while the block runs; ``step`` names this holder.

    Re-entrant within a process: a lock this process holds already (exclusive, or shared for a shared request)
    is not taken again. Raises :class:`StoreBusy` when another process keeps it past the timeout."""
    path = lock_path(Path(store)).absolute()
    if path in _held:
        if exclusive and not _held[path][1]:
            msg = f"{step}: asks for the exclusive lock of {path} while this process holds it shared"
            raise RuntimeError(msg)
        yield
        return
    f = _acquire(path, exclusive, step)
    _held[path] = (f, exclusive)
    try:
        yield
    finally:
        del _held[path]
        with contextlib.suppress(OSError):  # the last holder (a shared one gets it exclusive) leaves no record
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            f.truncate(0)
        f.close()  # releases the lock


def locked(store: str, *, exclusive: bool, reads: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Decorate a step of a stage whose first argument is the config: it runs holding the lock of the store
    ``cfg.<store>`` (``exclusive``, or shared for a part) and a shared lock of each store ``cfg.<reads>`` it reads."""

    def wrap(fn: F) -> F:
        step = f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}"

        @functools.wraps(fn)
        def run(cfg: Any, *args: Any, **kwargs: Any) -> Any:
            with contextlib.ExitStack() as stack:
                for attr in reads:  # the store read first, always: one order, no deadlock
                    stack.enter_context(store_lock(getattr(cfg, attr), exclusive=False, step=step))
                stack.enter_context(store_lock(getattr(cfg, store), exclusive=exclusive, step=step))
                return fn(cfg, *args, **kwargs)

        return run  # type: ignore[return-value]

    return wrap


def busy(store: Path) -> str | None:
    """Who holds the lock of ``store`` now, in words, or None; for ``pipeline status``: a probe that takes the
    lock for an instant if it is free and writes nothing (None also where the filesystem cannot tell)."""
    path = lock_path(Path(store))
    try:
        with path.open("rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return _holders(path)
            except OSError:
                return None
            fcntl.flock(f, fcntl.LOCK_UN)
    except OSError:
        return None
    return None
