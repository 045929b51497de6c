"""Config validation: every bad value of a config is reported at once, each against its own key with only its
own value, by one mechanism (constrained types), for every section."""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError, load_config
from tests.conftest import REPO

BASE = str(REPO / "config" / "config.yaml")


def _errors(override: dict) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config([BASE, override])
    return [ln.strip() for ln in str(e.value).splitlines()[1:]]


def test_every_bad_value_is_listed_each_with_its_key_and_value_only() -> None:
    lines = _errors({"train": {"steps": 0, "lr": -1, "ema_decay": 1.0}, "launch": {"nodes": 0, "mem_gb": 0}})
    assert lines == [
        "- train.steps = 0: must be >= 1",
        "- train.lr = -1: must be > 0",
        "- train.ema_decay = 1.0: must be in [0, 1)",
        "- launch.nodes = 0: must be >= 1",
        "- launch.mem_gb = 0: must be > 0",
    ]


@pytest.mark.parametrize(
    ("section", "key", "value", "words"),
    [
        ("train", "keep_every", -1, "must be >= 0"),
        ("train", "min_lr_ratio", 1.5, "must be between 0 and 1"),
        ("launch", "gpus_per_node", -1, "must be >= 0"),
        ("launch", "tasks_per_node", 0, "must be >= 1"),
        ("evaluate", "ensemble", 1, "must be >= 2"),
        ("evaluate", "steps", [], "must be a non-empty list"),
        ("evaluate", "steps", [10, 0], "must be >= 1"),
        ("evaluate", "bootstrap", 50, "must be >= 100"),
        ("evaluate", "confidence", 1.0, "must be between 0 and 1"),
        ("evaluate", "reference_members", 1, "must be >= 2"),
        ("evaluate", "climatology_window_days", -3, "must be >= 0"),
        ("sample", "steps", 0, "must be >= 1"),
    ],
)
def test_each_range_is_checked(section: str, key: str, value, words: str) -> None:
    (line,) = _errors({section: {key: value}})
    assert line.startswith(f"- {section}.{key}") and words in line, line


def test_good_values_pass() -> None:
    cfg = load_config([BASE, {"train": {"keep_every": 0, "warmup_steps": 0}, "launch": {"gpus_per_node": 4}}])
    assert cfg.train.keep_every == 0 and cfg.launch.gpus_per_node == 4


def test_the_students_sampler_is_refused_for_a_teacher() -> None:
    """`distilled` is DDIM on a distilled student: named for a teacher it would be DDIM under another label."""
    (sweep,) = _errors({"evaluate": {"samplers": ["ddim", "distilled"]}})
    assert "evaluate.samplers = ['ddim', 'distilled']" in sweep and "distill.enabled" in sweep
    (sample,) = _errors({"sample": {"sampler": "distilled", "checkpoint": "best"}})
    assert "sample.sampler = 'distilled'" in sample and "student-NNNN" in sample
    assert load_config([BASE, {"sample": {"sampler": "distilled", "checkpoint": "student-0004"}}]).sample.sampler


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ({"evaluate": {"select_by": "climate", "climate": {"members": 0}}}, "evaluate.climate.members = 0"),
        ({"evaluate": {"climate": {"frames": 2}}}, "evaluate.climate.frames = 2"),
        ({"train": {"context_probability": 0.5, "context_max_frames": 4}}, "train.context_max_frames = 4"),
        ({"train": {"context_probability": 0.5, "context_max_frames": 1}}, "evaluate.context_frames = 2"),
    ],
)
def test_climate_choice_and_trained_context_are_checked(override: dict, words: str) -> None:
    (line,) = _errors(override)
    assert words in line, line


def test_climate_members_must_give_a_spread() -> None:
    (line,) = _errors({"evaluate": {"climate": {"members": 1}}})
    assert line.startswith("- evaluate.climate.members = 1") and ">= 2" in line, line
    cfg = load_config([BASE, {"evaluate": {"select_by": "both"}, "train": {"context_probability": 0.5}}])
    assert cfg.evaluate.climate.members == 4 and cfg.train.context_max_frames is None


RUN_A = {
    "name": "A",
    "paths": ["a.nc"],
    "split": {"train": ["1900-01-01", "1949-12-31"], "val": ["1950-01-01", "1959-12-31"]},
}
RUN_B = {"name": "B", "paths": ["b.nc"], "split": {"test": ["1950-01-01", "1959-12-31"]}}
CO2 = {"name": "co2", "table": "t.csv"}


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"runs": [RUN_A, RUN_B]}, "with runs, data.source.paths must be [] and data.split null"),
        ({"source": {"paths": []}, "split": None, "runs": [RUN_A]}, "no run has a test period"),
        ({"source": {"paths": []}, "split": None, "runs": [RUN_A, RUN_A | {"name": "A"}, RUN_B]}, "names repeat"),
        ({"source": {"paths": []}, "split": None, "runs": [RUN_A, RUN_B], "parts": 2}, "built in one part"),
        ({"source": {"paths": []}, "split": None, "runs": [RUN_A, RUN_B], "forcings": [CO2 | {"scenario": "x"}]},
         "each run's column is runs[].scenario"),
        ({"forcings": [CO2]}, "scenario (the table's column of the training data) is required"),
        ({"source": {"paths": []}}, "must list at least one input file (or give data.runs)"),
        ({"static": [{"name": "orog", "source": "file"}]}, "source: file needs path and variable"),
        ({"source": {"paths": []}, "split": None,
          "runs": [RUN_A | {"split": {"train": ["1950-01-01", "1940-01-01"]}}, RUN_B]}, "is after last day"),
    ],
)  # fmt: skip
def test_runs_forcings_and_static_fields_are_checked(data: dict, words: str) -> None:
    lines = _errors({"data": data})
    assert any(words in ln for ln in lines), lines


def test_runs_give_each_split_its_scenario_and_samples_name_known_forcings() -> None:
    data = {
        "source": {"paths": []},
        "split": None,
        "forcings": [CO2],
        "runs": [RUN_A, RUN_B | {"scenario": {"co2": "b2"}}],
    }
    cfg = load_config([BASE, {"data": data}])
    assert cfg.data.scenario_of("val") == {"co2": "A"} and cfg.data.scenario_of("test") == {"co2": "b2"}
    assert cfg.data.periods("B") == {"test": (cfg.data.runs[1].split.test[0], cfg.data.runs[1].split.test[1])}
    lines = _errors({"data": data, "sample": {"scenario": {"ch4": "A"}}})
    assert any("sample.scenario names ['ch4']" in ln for ln in lines), lines
