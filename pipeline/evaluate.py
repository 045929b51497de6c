"""Stage ``evaluate``: sweep points (checkpoint x sampler x steps, each for every guidance weight and scale), on
the validation clips (every point: the best is chosen there, by :mod:`pipeline.collect`) or on the test clips (the
points that choice sends there: the result is reported there). ``python -m pipeline evaluate`` without a point runs
the missing points as submitit job arrays (see :mod:`pipeline.launch`): validation, the choice, then test.

On the clips of :func:`pipeline.data.evalclips.pick_test_clips` (by default every clip start of the
held-out period), the first ``context_frames`` frames are given and an ensemble of ``ensemble``
members generates the rest with reconstruction guidance. Metrics are computed per variable in physical
units (denormalised) by :func:`pipeline.scoring.score`, the same code that scores the reference
forecasts (``eval/<split>/references.json``) on the same clips: area-weighted RMSE of the ensemble mean and
bias, fair CRPS, spread/skill, rank histogram, skill per lead frame, skill scores against climatology
and persistence, zonal power spectra, lag-1 autocorrelation, mean and 99th percentile. Each point keeps
its per-clip scores, so ``collect`` puts bootstrap intervals on every score and compares points (and
climatology) with a paired bootstrap.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import climate, seeding
from pipeline.atomic import write_text_atomic
from pipeline.checkpoints import Inference, load_inference
from pipeline.config import Config
from pipeline.data.conditions import Conditioner, conditioner
from pipeline.data.evalclips import EvalClips, EvalSet
from pipeline.data.io import open_store
from pipeline.diffusion import ClassifierFreeGuidance, ReconstructionGuidance, clip_condition
from pipeline.diffusion.guidance import frame_mask
from pipeline.diffusion.samplers import get_sampler
from pipeline.point_climate import ClimateData, assess_point, load_climate_data
from pipeline.scoring import (
    SCALAR_METRICS,
    SWEEP_PARAMS,
    ScoreStream,
    energy,
    load_eval_clips,
    log_scores,
)
from pipeline.tracking import RunTarget, stage_run

__all__ = [
    "SCALAR_METRICS",
    "SPLITS",
    "SWEEP_PARAMS",
    "Completion",
    "evaluate_point",
    "generate_extensions",
    "missing_points",
    "point_path",
    "read_references",
    "references_path",
    "selected_points",
    "sweep_points",
]

# The evaluation's two splits: points are chosen on ``val`` and reported on ``test``.
SPLITS = ("val", "test")

log = logging.getLogger(__name__)


def point_path(cfg: Config, checkpoint: str, sampler: str, steps: int, split: str = "val") -> Path:
    return cfg.eval_point(split, checkpoint, sampler, steps)


def references_path(cfg: Config, split: str = "val") -> Path:
    return cfg.eval_references(split)


def read_references(cfg: Config, split: str = "val") -> dict[str, Any]:
    """``eval/<split>/references.json`` (the sweep's points are checked against its clips at collect time)."""
    path = references_path(cfg, split)
    if not path.exists():
        msg = f"{path} does not exist: score the reference forecasts first (python -m pipeline references)"
        raise FileNotFoundError(msg)
    return json.loads(path.read_text())


def _device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@dataclass(frozen=True)
class Completion:
    """How a test clip is completed: from its first ``context`` frames, ``ensemble`` members drawn by ``sampler``
    in ``steps`` steps under reconstruction guidance of weight ``guidance``; ``cfg_scale`` != 1 guides the model by
    classifier-free guidance inside it; ``langevin_*`` are the corrector's settings of ``<predictor>+langevin``."""

    context: int
    ensemble: int
    sampler: str
    steps: int
    guidance: float
    cfg_scale: float = 1.0
    langevin_snr: float = 0.16
    langevin_steps: int = 1


def generate_extensions(
    model: Any,
    clips: list[dict[str, torch.Tensor]],
    how: Completion,
    seed: int,
    device: torch.device,
    model_cfg: dict[str, Any],
    first: int = 0,
) -> np.ndarray:
    """Ensemble completions of each clip (:class:`Completion`): (clip, member, C, T, H, W); member noise is
    seeded per clip from ``seed`` and the clip's index in its set (``first`` + its index in ``clips``: a set
    completed in parts gets the same members); ``model_cfg``: the network's settings, which say the conditions it
    reads from each clip (:func:`pipeline.diffusion.clip_condition`)."""
    context, ensemble, guidance = how.context, how.ensemble, how.guidance
    out = []
    sample = get_sampler(how.sampler, langevin_snr=how.langevin_snr, langevin_steps=how.langevin_steps)
    base = model if how.cfg_scale == 1.0 else ClassifierFreeGuidance.from_scale(model, how.cfg_scale)
    for i, c in enumerate(clips):
        x = c["x"][None].to(device).expand(ensemble, *c["x"].shape).contiguous()
        known = x * c["mask"][None].to(device)
        mask = frame_mask(x.shape[2], context, x)
        guided = ReconstructionGuidance(base, known, mask, guidance)
        g = torch.Generator(device=device).manual_seed(seeding.evaluation(seed, first + i))
        z = torch.randn(x.shape, generator=g, device=device)
        cond = clip_condition(c, model_cfg, device, batched=False)
        cond = None if cond is None else {k: v.expand(ensemble, *v.shape[1:]) for k, v in cond.items()}
        out.append(sample(guided, z, how.steps, cond=cond, generator=g).float().cpu().numpy())
    return np.stack(out)


@dataclass
class _Point:
    """One sweep point loaded: its model and test clips, shared by its guidance weights and scales, and the settings
    recorded with each of its results (``common``)."""

    checkpoint: str
    sampler: str
    steps: int
    model: Any
    meta: Inference  # what the model was trained as (its conditions: meta.model_config)
    conditions: Conditioner  # its conditions for any dates (the climate rollouts)
    test: EvalSet  # the clips of the point's split (validation or test), read a batch at a time
    device: torch.device
    common: dict[str, Any]
    climate: ClimateData | None = None  # the stores the climate figures read (None: evaluate.climate.members 0)

    @property
    def name(self) -> str:
        return f"{self.checkpoint}/{self.sampler}-{self.steps}"


def _generate(cfg: Config, point: _Point, part: EvalClips, first: int, weight: float, scale: float) -> np.ndarray:
    """The ensemble completions of a part of the point's clips (``first``: its first clip's index) at one guidance
    weight and scale (normalised)."""
    e = cfg.evaluate
    with torch.no_grad():
        how = Completion(
            e.context_frames, e.ensemble, point.sampler, point.steps, weight, scale, e.langevin_snr, e.langevin_steps
        )
        return generate_extensions(point.model, part.clips, how, cfg.seed, point.device, point.meta.model_config, first)


def _score(cfg: Config, point: _Point, weight: float, scale: float) -> tuple[dict, dict, float]:
    """Generate and score the point's clips ``evaluate.score_batch`` at a time, so memory holds one batch's
    ensemble: (per-variable scores, the energy score, seconds spent generating)."""
    e, test = cfg.evaluate, point.test
    stream = ScoreStream(e.context_frames, len(test))
    energies, gen_s = [], 0.0
    for first, part in test.batches(e.score_batch):
        t0 = time.perf_counter()
        ens = _generate(cfg, point, part, first, weight, scale)
        gen_s += time.perf_counter() - t0
        stream.add(part.physical(ens), part.truth)
        energies.append(np.asarray(energy(ens, part.raw, part.lat, e.context_frames)["per_clip"]))
    per = np.concatenate(energies)
    return stream.result(), {"energy_score": float(per.mean()), "per_clip": per.tolist()}, gen_s


def _guided_run(cfg: Config, point: _Point, weight: float, scale: float = 1.0) -> dict[str, Any]:
    """Generate and score one guidance weight and classifier-free guidance scale of a point, as its own MLflow
    child run. Skill against the references comes at collect time (from the per-clip scores, logged into this
    run then), so a change to the references does not rerun the sweep."""
    e, test, common = cfg.evaluate, point.test, point.common
    t0 = time.perf_counter()
    split = common["split"]
    run_name = f"evaluate {point.checkpoint} {point.sampler}-{point.steps} w{weight:g} ({split})"
    with stage_run(
        RunTarget.of(cfg),
        "evaluate",
        tags={"sweep_point": point.name, "guidance_weight": weight, "cfg_scale": scale, "split": split},
        run_name=run_name + (f" cfg{scale:g}" if scale != 1.0 else ""),
    ) as run:
        variables, multivariate, gen_s = _score(cfg, point, weight, scale)
        result = {
            "mlflow_run_id": run.run_id,
            "guidance_weight": weight,
            "cfg_scale": scale,
            "samples_per_s": len(test) * e.ensemble / gen_s,
            "seconds": time.perf_counter() - t0,
            "variables": variables,
            "multivariate": multivariate,
        }
        log_scores(run, {**common, "guidance_weight": weight, "cfg_scale": scale}, variables)
        run.log_metrics({"samples_per_s": result["samples_per_s"], "seconds": result["seconds"]})
        run.log_metrics({"energy_score": multivariate["energy_score"]})
        if point.climate is not None:  # the point as a climate model: free rollouts and clips over the period
            result["climate"] = assess_point(
                cfg, point.model, point.climate, point.sampler, point.steps, weight, scale, point.conditions,
                test.frames, point.device,
            )  # fmt: skip
            run.log_metrics(climate.flat_metrics(result["climate"]))
            result["seconds"] = time.perf_counter() - t0
        run.set_tags({"checkpoint_file": str(cfg.inference_file(point.checkpoint))})
        run.log_dict({**common, **result}, "result.json")
    log.info(
        "evaluate %s %s/%s-%d w=%g cfg=%g: %s",
        split,
        point.checkpoint,
        point.sampler,
        point.steps,
        weight,
        scale,
        {v: {k: round(r[k], 4) for k in ("rmse", "crps")} for v, r in variables.items()},
    )
    return result


def _check_cfg_scales(scales: list[float], meta: Inference, checkpoint: str) -> None:
    """A classifier-free guidance scale other than 1 needs a checkpoint trained with conditioning dropout (the
    config check covers the config; this covers a checkpoint trained under another one)."""
    if not meta.config:  # no record of the training settings
        return
    drop = float(meta.training_setting("train", "cond_drop", 0.0))
    if drop == 0 and any(s != 1.0 for s in scales):
        msg = (
            f"evaluate.cfg_scales = {scales}: checkpoint {checkpoint} was trained with train.cond_drop = {drop}, "
            "so it has no unconditional score to guide with (expected a checkpoint trained with train.cond_drop > 0)"
        )
        raise ValueError(msg)


def evaluate_point(cfg: Config, checkpoint: str, sampler: str, steps: int, split: str = "val") -> Path:
    """One sweep point on the ``split`` clips (``val``: choosing, ``test``: reporting), every guidance weight of
    ``evaluate.guidance_weights`` at every classifier-free guidance scale of ``evaluate.cfg_scales``; writes the
    point's JSON (``eval/<split>/<checkpoint>/<sampler>-<steps>.json``)."""
    if split not in SPLITS:
        msg = f"evaluate: split {split!r} is not one of {SPLITS}"
        raise ValueError(msg)
    t0 = time.perf_counter()
    e = cfg.evaluate
    device = _device()
    model, meta = load_inference(cfg.inference_file(checkpoint), device, e.precision)
    test = load_eval_clips(cfg, meta.clip_frames, meta.variables, split=split)
    common = {
        "split": split,
        "checkpoint": checkpoint,
        "checkpoint_step": meta.step,
        "sampler": sampler,
        "steps": steps,
        "ensemble": e.ensemble,
        "test_clips": len(test),
        "context_frames": e.context_frames,
        "precision": "bf16" if model.inference_dtype == torch.bfloat16 else "fp32",
        "clip_frames": test.frames,
        "clip_starts": test.labels,
    }
    _check_cfg_scales(e.cfg_scales, meta, checkpoint)
    store = open_store(cfg.normalised_path)
    scenario, run = cfg.data.scenario_of(split), cfg.data.run_of(split)
    conditions = conditioner(meta.model_config, store, cfg.stats_path, cfg.data.forcings, scenario, run)
    point = _Point(checkpoint, sampler, steps, model, meta, conditions, test, device, common)
    if e.climate.members:
        point.climate = load_climate_data(cfg, test.names, test.frames, split)
    results = [_guided_run(cfg, point, w, scale=s) for w in e.guidance_weights for s in e.cfg_scales]
    out = point_path(cfg, checkpoint, sampler, steps, split)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps({**common, "seconds": time.perf_counter() - t0, "results": results}, indent=2))
    return out


def sweep_points(cfg: Config, students: bool = False) -> list[tuple[str, str, int]]:
    """Every point of the sweep; with ``students`` also the distilled students' points (``Config.student_points``:
    sampler ``distilled`` at each student's step count)."""
    points = [
        (ckpt, sampler, steps)
        for ckpt in cfg.eval_checkpoints()
        for sampler in cfg.evaluate.samplers
        for steps in cfg.evaluate.steps
    ]
    return points + (cfg.student_points() if students else [])


def selected_points(cfg: Config, students: bool = False) -> list[tuple[str, str, int]]:
    """The points the choice on validation sends to the test clips (``selection.json``'s ``test_points``)."""
    path = cfg.eval_selection(students)
    if not path.exists():
        msg = f"{path} does not exist: choose on validation first (python -m pipeline select-points)"
        raise FileNotFoundError(msg)
    return [(c, s, int(n)) for c, s, n in json.loads(path.read_text())["test_points"]]


def missing_points(
    cfg: Config, force: bool = False, students: bool = False, split: str = "val"
) -> list[tuple[str, str, int]]:
    """The points of ``split`` without a result file (all of them with ``force``): on ``val`` every sweep point
    (:func:`sweep_points`), on ``test`` the points of the choice (:func:`selected_points`)."""
    points = sweep_points(cfg, students) if split == "val" else selected_points(cfg, students)
    return [p for p in points if force or not point_path(cfg, *p, split=split).exists()]
