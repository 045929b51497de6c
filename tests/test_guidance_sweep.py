"""Classifier-free guidance and the Langevin corrector as settings: the config keys (each bad value against its
key; a guidance scale without conditioning dropout refused before any job, naming both keys), the evaluation's
sweep axis (every point at every scale, recorded in the point file, the table and best.json), and the
evaluation path with guidance and a corrector on a small network."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import SAMPLER_NAMES, SAMPLER_PATTERN, ConfigError, load_config
from tests.conftest import REPO

BASE = str(REPO / "config" / "config.yaml")


def _errors(override: dict) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config([BASE, override])
    return [ln.strip() for ln in str(e.value).splitlines()[1:]]


def test_defaults_leave_guidance_and_the_corrector_off() -> None:
    cfg = load_config([BASE])
    assert cfg.train.cond_drop == 0.0 and cfg.evaluate.cfg_scales == [1.0] and cfg.sample.cfg_scale == 1.0
    assert not any("+" in s for s in cfg.evaluate.samplers) and "+" not in cfg.sample.sampler
    assert (cfg.evaluate.langevin_snr, cfg.evaluate.langevin_steps) == (0.16, 1)


@pytest.mark.parametrize(
    ("section", "key", "value", "words"),
    [
        ("train", "cond_drop", 1.0, "must be in [0, 1)"),
        ("train", "cond_drop", -0.1, "must be in [0, 1)"),
        ("evaluate", "cfg_scales", [], "must be a non-empty list"),
        ("evaluate", "cfg_scales", [1.0, 2.0, 1.0], "must be a list without repeated values"),
        ("evaluate", "langevin_snr", 0, "must be > 0"),
        ("evaluate", "langevin_steps", 0, "must be >= 1"),
        ("sample", "cfg_scale", -1.0, "must be 'best' or >= 0"),
        ("sample", "langevin_snr", -0.2, "must be > 0"),
        ("sample", "langevin_steps", 0, "must be >= 1"),
    ],
)
def test_each_new_range_is_checked_against_its_key(section: str, key: str, value, words: str) -> None:
    (line,) = _errors({section: {key: value}})
    assert line == f"- {section}.{key} = {value!r}: {words}", line


def test_a_negative_scale_in_the_list_is_reported_with_its_position() -> None:
    (line,) = _errors({"train": {"cond_drop": 0.1}, "evaluate": {"cfg_scales": [1.0, -2.0]}})
    assert line == "- evaluate.cfg_scales.1 = -2.0: must be >= 0", line


@pytest.mark.parametrize(
    ("override", "key", "value"),
    [
        ({"evaluate": {"cfg_scales": [1.0, 3.0]}}, "evaluate.cfg_scales", "[1.0, 3.0]"),
        ({"sample": {"cfg_scale": 2.0}}, "sample.cfg_scale", "2.0"),
    ],
)
def test_a_guidance_scale_without_conditioning_dropout_fails_naming_both_keys(override, key, value) -> None:
    (line,) = _errors(override)
    assert line.startswith(f"- {key} = {value}: ") and "train.cond_drop = 0.0" in line, line
    assert "expected train.cond_drop > 0" in line
    # with dropout the same settings load
    cfg = load_config([BASE, override, {"train": {"cond_drop": 0.1}}])
    assert cfg.train.cond_drop == 0.1


def test_conditioning_dropout_needs_a_condition() -> None:
    (line,) = _errors({"train": {"cond_drop": 0.2}, "model": {"day_of_year": False}})
    assert line.startswith("- train.cond_drop = 0.2: ") and "model.day_of_year" in line, line


def test_langevin_samplers_are_config_values_and_wildcards() -> None:
    cfg = load_config(
        [BASE, {"evaluate": {"samplers": ["ddim+langevin", "dpmpp_2m"]}, "sample": {"sampler": "ancestral+langevin"}}]
    )
    assert cfg.evaluate.samplers == ["ddim+langevin", "dpmpp_2m"] and cfg.sample.sampler == "ancestral+langevin"
    pattern = re.compile(f"(?:{SAMPLER_PATTERN})")
    assert all(pattern.fullmatch(n) for n in SAMPLER_NAMES)
    assert not pattern.fullmatch("ddimlangevin") and not pattern.fullmatch("ddimmm+langevin")  # '+' is literal
    (line,) = _errors({"evaluate": {"samplers": ["ddim+euler"]}})
    assert line.startswith("- evaluate.samplers.0 = 'ddim+euler'"), line


def _entry(crps: np.ndarray, se: np.ndarray) -> dict:
    """One variable's result as evaluate/references write it (the scalar metrics are placeholders)."""
    from pipeline.scoring import SCALAR_METRICS

    r = {k: 0.0 for k in SCALAR_METRICS}
    r |= {"crps": float(crps.mean()), "rmse": float(np.sqrt(se.mean())), "units": "m"}
    r |= {"crps_per_lead": crps.mean(0).tolist(), "rmse_per_lead": np.sqrt(se.mean(0)).tolist()}
    return r | {"per_clip": {"crps": crps.tolist(), "se": se.tolist()}}


def _sweep(tmp_path: Path, scales: list[float], written: list[float]):
    """One point (ddim-10) on 40 clips x 2 leads with results at the scales ``written``: the CRPS of scale s
    is climatology's times 1.2 / s (guidance helps here), so the largest scale is the best; the same on the
    validation and the test clips."""

    cfg = load_config(
        [
            BASE,
            {
                "experiment": "synthetic",
                "results_dir": str(tmp_path),
                "train": {"steps": 300, "checkpoint_every": 300, "cond_drop": 0.1},
                "evaluate": {"checkpoints": "last", "samplers": ["ddim"], "steps": [10], "cfg_scales": scales},
            },
        ]
    )
    cfg.data_dir.mkdir(parents=True)
    cfg.stats_path.write_text(json.dumps({"variables": {"z500": {"mean": 5500.0, "std": 250.0, "units": "m"}}}))
    for split in ("val", "test"):
        _split(cfg, split, written)
    return cfg


def _split(cfg, split: str, written: list[float]) -> None:
    from pipeline.evaluate import point_path, references_path

    rng = np.random.default_rng(0)
    n, leads = 40, 2
    clim = rng.gamma(4.0, 5.0, (n, leads))
    clim_se = clim**2 * 2
    starts = [f"{2000 + i}-01-01T00:00:00" for i in range(n)]
    refs = {
        "climatology-ensemble": _entry(clim, clim_se),
        "climatology-mean": _entry(clim * 1.3, clim_se),
        "persistence": _entry(clim * 1.5, clim_se * 2.0),
    }
    refs_doc = {
        "clip_frames": 4,
        "clip_starts": starts,
        "references": {k: {"variables": {"z500": v}} for k, v in refs.items()},
    }
    references_path(cfg, split).parent.mkdir(parents=True, exist_ok=True)
    references_path(cfg, split).write_text(json.dumps(refs_doc))
    results = []
    for s in written:
        factor = 1.2 / s
        noise = np.exp(rng.normal(0, 0.05, (n, leads)))
        variables = {"z500": _entry(clim * factor * noise, clim_se * factor**2 * noise)}
        results.append({"guidance_weight": 2.0, "cfg_scale": s, "samples_per_s": 1.0, "variables": variables})
    path = point_path(cfg, "step-00000300", "ddim", 10, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"checkpoint_step": 300, "clip_frames": 4, "clip_starts": starts, "results": results}))


def test_collect_scores_every_scale_and_best_json_records_the_best_one(tmp_path: Path) -> None:
    import pandas as pd

    from pipeline.collect import collect, select
    from pipeline.tracking import StageRun

    cfg = _sweep(tmp_path, [1.0, 2.0], [1.0, 2.0])
    select(cfg, StageRun(None, None, None))
    collect(cfg, StageRun(None, None, None))
    best = json.loads((cfg.eval_dir / "best.json").read_text())
    assert best["cfg_scale"] == 2.0 and best["guidance_weight"] == 2.0  # what sample.py reads for 'best'
    assert best["statement"].startswith("step-00000300 ddim-10 w=2 cfg=2 was chosen as the best of 2 sweep point(s)")
    table = pd.read_csv(cfg.eval_dir / "summary.csv")
    points = table[(table["kind"] == "checkpoint") & (table["split"] == "val")]
    assert sorted(points["cfg_scale"]) == [1.0, 2.0]
    tested = table[(table["kind"] == "checkpoint") & (table["split"] == "test")]
    assert tested["cfg_scale"].tolist() == [2.0]  # scale 1 is significantly worse on validation: not reported
    assert (table[table["kind"] == "reference"]["cfg_scale"] == 1.0).all()
    assert points.set_index("cfg_scale").loc[2.0, "crps"] < points.set_index("cfg_scale").loc[1.0, "crps"]


def test_collect_refuses_a_point_without_a_result_at_a_scale(tmp_path: Path) -> None:
    from pipeline.collect import select
    from pipeline.tracking import StageRun

    cfg = _sweep(tmp_path, [1.0, 3.0], [1.0])
    with pytest.raises(ValueError, match=r"no result for guidance weight 2\.0 at cfg scale 3\.0: rerun the point"):
        select(cfg, StageRun(None, None, None))


def test_a_checkpoint_trained_without_dropout_is_refused_at_evaluation() -> None:
    from pipeline.checkpoints import Inference
    from pipeline.evaluate import _check_cfg_scales

    def trained(drop: float) -> Inference:
        return Inference({}, {}, ["z500"], "stats.json", 300, 4, config=json.dumps({"train": {"cond_drop": drop}}))

    with pytest.raises(ValueError, match=r"evaluate.cfg_scales = \[1.0, 2.0\]: .* train.cond_drop = 0.0"):
        _check_cfg_scales([1.0, 2.0], trained(0.0), "step-00000300")
    _check_cfg_scales([1.0], trained(0.0), "step-00000300")  # no guidance: fine
    _check_cfg_scales([1.0, 2.0], trained(0.1), "step-00000300")


def test_evaluation_path_with_guidance_scales_and_a_corrector() -> None:
    """Through ``generate_extensions`` (reconstruction guidance around classifier-free guidance): scale 0 is
    exactly the unconditional model (the same as not passing the condition), scale 1 the conditional one; a
    ``+langevin`` sampler moves the samples and keeps the given frames."""
    from pipeline.diffusion.objective import VDiffusion
    from pipeline.diffusion.schedule import CosineSchedule
    from pipeline.diffusion.unet import UNet, UNetConfig
    from pipeline.evaluate import Completion, generate_extensions

    torch.manual_seed(0)
    net = UNet(UNetConfig(channels=1, base_channels=8, channel_mults=(1, 2), heads=2, day_of_year=True))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model = VDiffusion(net.eval(), CosineSchedule())
    g = torch.Generator().manual_seed(1)
    clips = [
        {"x": torch.randn(1, 4, 8, 8, generator=g), "mask": torch.ones(1, 4, 8, 8), "doy": torch.arange(4.0) + 40 * i}
        for i in range(2)
    ]

    def run(sampler: str, scale: float, doy: bool = True) -> np.ndarray:
        how = Completion(2, 2, sampler, 3, 1.0, cfg_scale=scale, langevin_snr=0.16, langevin_steps=1)
        return generate_extensions(model, clips, how, 0, torch.device("cpu"), {"day_of_year": doy})

    conditional, unconditional = run("ddim", 1.0), run("ddim", 1.0, doy=False)
    assert conditional.shape == (2, 2, 1, 4, 8, 8) and not np.allclose(conditional, unconditional, atol=1e-4)
    np.testing.assert_allclose(run("ddim", 0.0), unconditional, rtol=1e-5, atol=1e-5)
    guided = run("ddim", 3.0)
    assert np.isfinite(guided).all() and not np.allclose(guided, conditional, atol=1e-4)
    corrected = run("ddim+langevin", 1.0)
    assert np.isfinite(corrected).all() and not np.allclose(corrected, conditional, atol=1e-4)
    x = np.stack([c["x"].numpy() for c in clips])[:, None]
    np.testing.assert_allclose(
        corrected[:, :, :, :2], np.broadcast_to(x[:, :, :, :2], corrected[:, :, :, :2].shape), atol=1e-5
    )


@pytest.mark.slow
def test_trained_with_dropout_and_swept_over_scales_end_to_end(tmp_path: Path) -> None:
    """prepare, normalise, train (conditioning dropout 0.5, twice: the same losses, the dropout is seeded),
    then one evaluation point with a corrector at two guidance scales: the point file holds both, each with its
    scale."""
    import yaml

    from tests.conftest import pipeline_cli

    c = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    c |= {"results_dir": str(tmp_path / "results"), "experiment": "cfg"}
    c["model"] |= {"base_channels": 8, "channel_mults": [1, 2], "attention_levels": [1], "heads": 2}
    c["train"] |= {
        "clip_frames": 4,
        "micro_batch": 2,
        "steps": 4,
        "warmup_steps": 1,
        "log_every": 1,
        "val_every": 4,
        "checkpoint_every": 4,
        "val_clips": 1,
        "num_workers": 0,
        "cond_drop": 0.5,
    }
    c["launch"] |= {"executor": "local", "tasks_per_node": 1, "cpus_per_task": 1}
    c["evaluate"] |= {"checkpoints": "last", "ensemble": 2, "test_clips": 2, "cfg_scales": [1.0, 2.0]}
    c["evaluate"] |= {"guidance_weights": [1.0], "langevin_steps": 2}
    c["evaluate"] |= {"climate": {"members": 2, "frames": 4, "unconditional": 2}}  # the climate figures, small
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(c))
    for stage in ("prepare", "normalise", "train"):
        r = pipeline_cli(stage, "--config", str(cfg), cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
    exp = tmp_path / "results" / "cfg"
    first = (exp / "train_log.jsonl").read_text()
    shutil.rmtree(exp / "checkpoints")
    (exp / "train_log.jsonl").unlink()
    r = pipeline_cli("train", "--config", str(cfg), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    losses = [json.loads(line)["losses"] for line in first.splitlines()]
    again = [json.loads(line)["losses"] for line in (exp / "train_log.jsonl").read_text().splitlines()]
    assert losses == again
    args = ("--checkpoint", "step-00000004", "--sampler", "ddim+langevin", "--steps", "3")
    r = pipeline_cli("evaluate", "--config", str(cfg), *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    point = json.loads((exp / "eval" / "val" / "step-00000004" / "ddim+langevin-3.json").read_text())
    assert [(x["guidance_weight"], x["cfg_scale"]) for x in point["results"]] == [(1.0, 1.0), (1.0, 2.0)]
    assert all(np.isfinite(v["crps"]) for x in point["results"] for v in x["variables"].values())
    assert point["results"][0]["variables"] != point["results"][1]["variables"]  # the scale changed the samples
    # the sample stage with a guidance scale and a corrector
    c["sample"] |= {"checkpoint": "step-00000004", "sampler": "dpmpp_2m+langevin", "steps": 2, "cfg_scale": 2.0}
    c["sample"] |= {"unconditional": 1, "rollouts": 1, "rollout_frames": 5, "guidance_weight": 1.0}
    cfg.write_text(yaml.safe_dump(c))
    r = pipeline_cli("sample", "--config", str(cfg), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads((exp / "samples" / "manifest.json").read_text())
    assert manifest["cfg_scale"] == 2.0 and manifest["sampler"] == "dpmpp_2m+langevin"
