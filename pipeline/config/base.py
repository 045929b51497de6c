"""What every part of the configuration shares: its error, its one per-value check, and its content hash.

Every range check of the schema is a :func:`_bounded` type (or a ``Literal``), so a bad value fails
against its own key; :func:`pipeline.config.loading.load_config` then lists every bad value at once
as ``key = value: expected`` and raises :class:`ConfigError`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import AfterValidator, BaseModel, ConfigDict

__all__ = ["ConfigError", "config_hash"]


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who edits the YAML."""


def _bounded(ok: Callable[[Any], bool], expected: str) -> AfterValidator:
    """A check of one value, reported against its own key (``train.lr = -1: must be > 0``), so every bad
    value of a config is listed at once, each with only its own value."""

    def check(v: Any) -> Any:
        if not ok(v):
            msg = f"must be {expected}"
            raise ValueError(msg)
        return v

    return AfterValidator(check)


class _Section(BaseModel):
    """A config section: unknown keys are errors (a misspelt key must not be silently ignored), values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def config_hash(section: BaseModel | Mapping[str, Any]) -> str:
    """Short content hash of a config section (for provenance and rerun triggers)."""
    data = section.model_dump(mode="json") if isinstance(section, BaseModel) else section
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]
