"""Writing files so that a killed process never leaves a half-written one (stdlib only): every output is made
under a hidden temporary sibling name (:func:`temporary`) and renamed over its final name when complete. This is
the one place that name is made, so :mod:`pipeline.status` finds what is being written (:func:`temporaries`)."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

__all__ = ["copy_atomic", "temporaries", "temporary", "write_text_atomic"]


def temporary(path: str | os.PathLike[str]) -> Path:
    """The hidden sibling ``path`` is written under before its rename: ``.<name>.tmp-<pid>-<random>`` (unique per
    process and call, so two writers never share one)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """The temporary siblings of ``path`` that exist: outputs being written, or left by a killed writer."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.tmp-*")) if path.parent.is_dir() else []


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to a hidden temporary sibling, then rename it over ``path``."""
    path = Path(path)
    tmp = temporary(path)
    tmp.write_text(text)
    tmp.replace(path)
    return path


def copy_atomic(src: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Copy ``src`` to a hidden temporary sibling of ``path``, then rename it over ``path``."""
    path = Path(path)
    tmp = temporary(path)
    shutil.copyfile(src, tmp)
    tmp.replace(path)
    return path
