"""Loading: YAML files and dicts merged in order (later wins), validated into a :class:`Config`, and what
Snakemake is handed of it (``section_json``, ``resolved_config_path``).

A config with bad values raises one :class:`ConfigError` listing each bad value as ``key = value: expected``.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline.atomic import write_text_atomic
from pipeline.config.base import ConfigError
from pipeline.config.schema import Config

__all__ = ["load_config", "merge", "read_yaml", "resolved_config_path", "section_json"]


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """One config file as a mapping; a missing, malformed or non-mapping file is a :class:`ConfigError` naming it."""
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


# the password of a URI's user info (scheme://user:<password>@host), masked wherever an error echoes a value:
# tracking.uri refuses credentials, and its error must not print them (pipeline.tracking.redact_uri for the logs)
_URI_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@'\"]*):[^/\s'\"]*@")


def _shown(value: Any) -> str:
    """A bad value as an error echoes it: its repr, with any URI's password masked."""
    return _URI_PASSWORD.sub(r"\1:***@", repr(value))


def _format_errors(err: ValidationError, source: str) -> str:
    """Every error at once, one line each: ``key = value: expected`` (a check across keys names them itself)."""
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        # a bad mapping key (launch.extra_sbatch's option names) is reported at that key, without pydantic's '[key]'
        key = ".".join(str(p) for p in e["loc"] if p != "[key]") or "<top level>"
        if e["type"] == "extra_forbidden":
            lines.append(
                f"  - {key}: unknown key (value {_shown(e['input'])}); check the spelling against config/README.md"
            )
        elif e["type"] == "missing":
            lines.append(f"  - {key}: required key is missing")
        elif not e["loc"]:  # a check across sections: its message names the keys and values itself
            lines.append(f"  - {e['msg'].removeprefix('Value error, ')}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"  - {key} = {_shown(e['input'])}: {msg}")
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


def resolved_config_path(cfg: Config, write: bool = True) -> Path:
    """Write the validated config to ``<results>/<experiment>/config.resolved.yaml`` (if changed).

    Snakemake rules hand this one file to ``python -m pipeline <stage>``, so overrides given with
    ``--configfile`` or ``--config`` reach the stage exactly as Snakemake saw them. The path is
    stable, so the file itself never triggers reruns; ``section_json`` params do that per rule.
    ``write=False`` (a dry run) leaves the file alone: a ``snakemake -n --config ...`` beside a
    running workflow must not change the settings of that workflow's next jobs.
    """
    text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    path = cfg.exp_dir / "config.resolved.yaml"
    if write and (not path.exists() or path.read_text() != text):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)
    return path
