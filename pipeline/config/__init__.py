"""The experiment configuration: one YAML (plus override files), validated into typed objects.

Every key has a description and a default in :mod:`pipeline.config.schema`; ``config/README.md`` walks
through them. A wrong key, type or value raises :class:`ConfigError` naming the key, the bad value and
what was expected, before any work starts.

- :mod:`~pipeline.config.base`: :class:`ConfigError`, the one per-value check, the content hash.
- :mod:`~pipeline.config.schema`: the value types, the sampler names, the sections and :class:`Config`.
- :mod:`~pipeline.config.layout`: where results go (``cfg.exp_dir``, ``cfg.eval_checkpoints()``, ...).
- :mod:`~pipeline.config.loading`: reading, merging and validating files; what Snakemake is handed.
"""

from __future__ import annotations

from pipeline.config.base import ConfigError, config_hash
from pipeline.config.layout import ResultsLayout
from pipeline.config.loading import load_config, merge, read_yaml, resolved_config_path, section_json
from pipeline.config.schema import (
    SAMPLER_NAMES,
    SAMPLER_PATTERN,
    AtLeastOne,
    AtLeastZero,
    Config,
    CoordinateNames,
    DataConfig,
    DiffusionConfig,
    DistillConfig,
    EvaluateConfig,
    Fraction,
    GridConfig,
    LaunchConfig,
    ModelConfig,
    NonNegative,
    Positive,
    PowerOfTwo,
    SampleConfig,
    SamplerName,
    SourceConfig,
    SplitConfig,
    TeacherSamplers,
    TrackingConfig,
    TrainConfig,
    VariableConfig,
)

__all__ = [
    "SAMPLER_NAMES",
    "SAMPLER_PATTERN",
    "AtLeastOne",
    "AtLeastZero",
    "Config",
    "ConfigError",
    "CoordinateNames",
    "DataConfig",
    "DiffusionConfig",
    "DistillConfig",
    "EvaluateConfig",
    "Fraction",
    "GridConfig",
    "LaunchConfig",
    "ModelConfig",
    "NonNegative",
    "Positive",
    "PowerOfTwo",
    "ResultsLayout",
    "SampleConfig",
    "SamplerName",
    "SourceConfig",
    "SplitConfig",
    "TeacherSamplers",
    "TrackingConfig",
    "TrainConfig",
    "VariableConfig",
    "config_hash",
    "load_config",
    "merge",
    "read_yaml",
    "resolved_config_path",
    "section_json",
]
