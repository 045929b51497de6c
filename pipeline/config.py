"""The experiment configuration: one YAML (plus override files), validated into typed objects.

Every key has a description and a default here; ``config/README.md`` walks through them. A wrong
key, type or value raises :class:`ConfigError` naming the key, the bad value and what was
expected, before any work starts.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import itertools
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "Config",
    "ConfigError",
    "config_hash",
    "load_config",
    "merge",
    "read_yaml",
    "resolved_config_path",
    "section_json",
]


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who edits the YAML."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Section):
    paths: list[str] = Field(
        default_factory=lambda: ["bundled:eofs/hgt_djf.nc"],
        description="Input files: paths or glob patterns (NetCDF, zarr stores, GRIB with cfgrib), relative to "
        "the working directory, or 'bundled:eofs/<file>' for the real data shipped with the eofs package.",
    )
    engine: str | None = Field(None, description="xarray engine; null picks one from the file type.")

    @field_validator("paths")
    @classmethod
    def _nonempty(cls, v: list[str]) -> list[str]:
        if not v:
            msg = "must list at least one input file"
            raise ValueError(msg)
        return v


class VariableConfig(_Section):
    name: str = Field(description="Variable name in the source files.")
    levels: list[float] | None = Field(
        None, description="Vertical levels to keep (in the source's units, e.g. hPa); null keeps all."
    )
    regrid: Literal["conservative", "bilinear"] = Field(
        "bilinear", description="'conservative' for fluxes and cell means, 'bilinear' for smooth fields."
    )


class GridConfig(_Section):
    resolution: float = Field(5.0, description="Target grid spacing in degrees (both directions).")
    lat_bounds: tuple[float, float] | None = Field(
        None, description="[south, north] cell edges of the target grid in degrees; null = global (-90, 90)."
    )
    lon_bounds: tuple[float, float] | None = Field(
        None, description="[west, east] cell edges in degrees east (west > east crosses the dateline); null = global."
    )
    nan_threshold: float = Field(
        0.5,
        description="Conservative only: a target cell is NaN unless at least this fraction of it is "
        "covered by valid (non-NaN) source cells.",
    )

    @field_validator("resolution")
    @classmethod
    def _positive(cls, v: float) -> float:
        if not v > 0:
            msg = f"must be > 0 degrees, got {v}"
            raise ValueError(msg)
        return v

    @field_validator("lat_bounds")
    @classmethod
    def _lat(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not (-90 <= v[0] < v[1] <= 90):
            msg = f"must be [south, north] with -90 <= south < north <= 90, got {list(v)}"
            raise ValueError(msg)
        return v

    @field_validator("nan_threshold")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not 0 <= v <= 1:
            msg = f"must be a fraction in [0, 1], got {v}"
            raise ValueError(msg)
        return v

    @property
    def is_global_lon(self) -> bool:
        return self.lon_bounds is None


class SplitConfig(_Section):
    train: tuple[dt.date, dt.date] = Field(description="[first, last] day of the training period (inclusive).")
    val: tuple[dt.date, dt.date] = Field(description="[first, last] day of the validation period.")
    test: tuple[dt.date, dt.date] = Field(description="[first, last] day of the test period.")

    @model_validator(mode="after")
    def _ordered(self) -> SplitConfig:
        for name in ("train", "val", "test"):
            a, b = getattr(self, name)
            if a > b:
                msg = f"{name}: first day {a} is after last day {b}"
                raise ValueError(msg)
        spans = sorted((getattr(self, n), n) for n in ("train", "val", "test"))
        for (s1, n1), (s2, n2) in itertools.pairwise(spans):
            if s2[0] <= s1[1]:
                msg = f"periods {n1} {list(map(str, s1))} and {n2} {list(map(str, s2))} overlap"
                raise ValueError(msg)
        return self


class DataConfig(_Section):
    source: SourceConfig = Field(default_factory=SourceConfig, description="Where the raw data is.")
    variables: list[VariableConfig] = Field(
        description="Variables to train on, each with its levels and regrid method."
    )
    grid: GridConfig = Field(default_factory=GridConfig, description="The target regular lat-lon grid.")
    split: SplitConfig = Field(description="Time periods for training, validation and test.")
    time_chunk: int = Field(8, description="Time steps per zarr chunk: about one training clip.")

    @field_validator("variables")
    @classmethod
    def _unique(cls, v: list[VariableConfig]) -> list[VariableConfig]:
        names = [x.name for x in v]
        if not names:
            msg = "must list at least one variable"
            raise ValueError(msg)
        if len(set(names)) != len(names):
            msg = f"variable names repeat: {names}"
            raise ValueError(msg)
        return v

    @field_validator("time_chunk")
    @classmethod
    def _chunk(cls, v: int) -> int:
        if v < 1:
            msg = f"must be >= 1, got {v}"
            raise ValueError(msg)
        return v


class TrackingConfig(_Section):
    uri: str | None = Field(
        None,
        description="MLflow tracking URI; null = SQLite at <results_dir>/mlflow.db. 'http://host:port' for a server.",
    )
    enabled: bool = Field(True, description="false turns MLflow off (stages still run).")


class Config(_Section):
    experiment: str = Field(description="Experiment name: the results folder and the MLflow experiment.")
    results_dir: str = Field("results", description="Folder for all outputs, relative to the working directory.")
    seed: int = Field(0, description="Seed for every random choice; same config + hardware gives the same numbers.")
    data: DataConfig = Field(description="Data preparation: source, variables, grid, split.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow.")

    @field_validator("experiment")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or any(c in v for c in "/\\ ") or v.startswith("."):
            msg = f"must be a plain folder name (no '/', spaces or leading '.'), got {v!r}"
            raise ValueError(msg)
        return v

    # Paths every stage agrees on ------------------------------------------------------------
    @property
    def exp_dir(self) -> Path:
        return Path(self.results_dir) / self.experiment

    @property
    def data_dir(self) -> Path:
        return self.exp_dir / "data"

    @property
    def regridded_path(self) -> Path:
        return self.data_dir / "regridded.zarr"

    @property
    def normalised_path(self) -> Path:
        return self.data_dir / "normalised.zarr"

    @property
    def stats_path(self) -> Path:
        return self.data_dir / "stats.json"

    @property
    def tracking_uri(self) -> str:
        if self.tracking.uri:
            return self.tracking.uri
        return f"sqlite:///{(Path(self.results_dir) / 'mlflow.db').resolve()}"


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        msg = f"config file {p} does not exist"
        raise ConfigError(msg)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        msg = f"config file {p} is not valid YAML: {e}"
        raise ConfigError(msg) from e
    if not isinstance(data, dict):
        msg = f"config file {p} must hold a mapping of keys, got {type(data).__name__}"
        raise ConfigError(msg)
    return data


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge (mappings merge key by key; anything else in ``override`` replaces)."""
    out = copy.deepcopy(dict(base))
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<top level>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  - {key}: unknown key (value {e['input']!r}); check the spelling against config/README.md")
        elif e["type"] == "missing":
            lines.append(f"  - {key}: required key is missing")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"  - {key} = {e['input']!r}: {msg}")
    return "\n".join(lines)


def load_config(sources: Iterable[str | os.PathLike[str] | Mapping[str, Any]] | Mapping[str, Any]) -> Config:
    """Merge config files / dicts in order (later wins) and validate."""
    if isinstance(sources, Mapping):
        sources = [sources]
    merged: dict[str, Any] = {}
    names = []
    for s in sources:
        if isinstance(s, Mapping):
            merged = merge(merged, s)
            names.append("<dict>")
        else:
            merged = merge(merged, read_yaml(s))
            names.append(str(s))
    try:
        return Config.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, " + ".join(names))) from None


def config_hash(section: BaseModel | Mapping[str, Any]) -> str:
    """Short content hash of a config section (for provenance and rerun triggers)."""
    data = section.model_dump(mode="json") if isinstance(section, BaseModel) else section
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def section_json(cfg: Config, *keys: str) -> str:
    """Canonical JSON of some config sections (dotted keys): a rule's ``params`` so that a changed
    setting shows as a rerun reason for exactly the rules that use it."""
    data = cfg.model_dump(mode="json")
    out = {}
    for key in keys:
        node: Any = data
        for part in key.split("."):
            node = node[part]
        out[key] = node
    return json.dumps(out, sort_keys=True)


def resolved_config_path(cfg: Config) -> Path:
    """Write the validated config to ``<results>/<experiment>/config.resolved.yaml`` (if changed).

    Snakemake rules hand this one file to ``python -m pipeline <stage>``, so overrides given with
    ``--configfile`` or ``--config`` reach the stage exactly as Snakemake saw them. The path is
    stable, so the file itself never triggers reruns; ``section_json`` params do that per rule.
    """
    text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    path = cfg.exp_dir / "config.resolved.yaml"
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(text)
        tmp.replace(path)
    return path
