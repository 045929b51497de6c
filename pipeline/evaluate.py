"""Stage ``evaluate``: sweep points (checkpoint x sampler x steps, each for every guidance weight), and
``collect`` of the sweep. ``python -m pipeline evaluate`` without a point runs the missing points as one
submitit job array (see :mod:`pipeline.launch`).

On the test clips of :func:`pipeline.scoring.pick_test_clips` (by default every clip start of the
held-out test period), the first ``context_frames`` frames are given and an ensemble of ``ensemble``
members generates the rest with reconstruction guidance. Metrics are computed per variable in physical
units (denormalised) by :func:`pipeline.scoring.score`, the same code that scores the reference
forecasts (``eval/references.json``) on the same clips: area-weighted RMSE of the ensemble mean and
bias, fair CRPS, spread/skill, rank histogram, skill per lead frame, skill scores against climatology
and persistence, zonal power spectra, lag-1 autocorrelation, mean and 99th percentile. Each point keeps
its per-clip scores, so ``collect`` puts bootstrap intervals on every score and compares points (and
climatology) with a paired bootstrap.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import metrics, seeding
from pipeline.atomic import write_text_atomic
from pipeline.checkpoints import load_inference
from pipeline.config import Config
from pipeline.data.stats import read_stats
from pipeline.diffusion import ClassifierFreeGuidance, ReconstructionGuidance
from pipeline.diffusion.guidance import frame_mask
from pipeline.diffusion.samplers import get_sampler
from pipeline.scoring import (
    SCALAR_METRICS,
    SKILL,
    SWEEP_PARAMS,
    EvalClips,
    clip_statistics,
    load_test_clips,
    log_scores,
    score,
    summarise,
)
from pipeline.tracking import RunTarget, StageRun, stage_run

__all__ = [
    "SCALAR_METRICS",
    "SWEEP_PARAMS",
    "Completion",
    "collect",
    "evaluate_point",
    "generate_extensions",
    "missing_points",
    "point_path",
    "read_references",
    "references_path",
    "score",
]

log = logging.getLogger(__name__)


def point_path(cfg: Config, checkpoint: str, sampler: str, steps: int) -> Path:
    return cfg.eval_dir / checkpoint / f"{sampler}-{steps}.json"


def references_path(cfg: Config) -> Path:
    return cfg.eval_dir / "references.json"


def read_references(cfg: Config) -> dict[str, Any]:
    """``eval/references.json`` (the sweep's points are checked against its clips at collect time)."""
    path = references_path(cfg)
    if not path.exists():
        msg = f"{path} does not exist: score the reference forecasts first (python -m pipeline references)"
        raise FileNotFoundError(msg)
    return json.loads(path.read_text())


def _ref_clips(refs: dict[str, Any], variable: str) -> dict[str, Any]:
    """Per-clip scores of every reference for one variable."""
    return {name: r["variables"][variable]["per_clip"] for name, r in refs["references"].items()}


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
    day_of_year: bool,
) -> np.ndarray:
    """Ensemble completions of each clip (:class:`Completion`): (clip, member, C, T, H, W); member noise is
    seeded per clip from ``seed``; ``day_of_year``: the model is conditioned on the frames' days of year."""
    context, ensemble, guidance = how.context, how.ensemble, how.guidance
    out = []
    sample = get_sampler(how.sampler, langevin_snr=how.langevin_snr, langevin_steps=how.langevin_steps)
    base = model if how.cfg_scale == 1.0 else ClassifierFreeGuidance.from_scale(model, how.cfg_scale)
    for i, c in enumerate(clips):
        x = c["x"][None].to(device).expand(ensemble, *c["x"].shape).contiguous()
        known = x * c["mask"][None].to(device)
        mask = frame_mask(x.shape[2], context, x)
        guided = ReconstructionGuidance(base, known, mask, guidance)
        g = torch.Generator(device=device).manual_seed(seeding.evaluation(seed, i))
        z = torch.randn(x.shape, generator=g, device=device)
        cond = {"doy": c["doy"][None].to(device).expand(ensemble, -1)} if day_of_year else None
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
    day_of_year: bool  # the model is conditioned on the frames' days of year
    test: EvalClips
    device: torch.device
    common: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.checkpoint}/{self.sampler}-{self.steps}"


def _generate(cfg: Config, point: _Point, weight: float, scale: float) -> np.ndarray:
    """The ensemble completions of the point's test clips at one guidance weight and scale (normalised)."""
    e = cfg.evaluate
    with torch.no_grad():
        how = Completion(
            e.context_frames, e.ensemble, point.sampler, point.steps, weight, scale, e.langevin_snr, e.langevin_steps
        )
        return generate_extensions(point.model, point.test.clips, how, cfg.seed, point.device, point.day_of_year)


def _guided_run(cfg: Config, point: _Point, weight: float, scale: float = 1.0) -> dict[str, Any]:
    """Generate and score one guidance weight and classifier-free guidance scale of a point, as its own MLflow
    child run. Skill against the references comes at collect time (from the per-clip scores, logged into this
    run then), so a change to the references does not rerun the sweep."""
    e, test, common = cfg.evaluate, point.test, point.common
    t0 = time.perf_counter()
    run_name = f"evaluate {point.checkpoint} {point.sampler}-{point.steps} w{weight:g}"
    with stage_run(
        RunTarget.of(cfg),
        "evaluate",
        tags={"sweep_point": point.name, "guidance_weight": weight, "cfg_scale": scale},
        run_name=run_name + (f" cfg{scale:g}" if scale != 1.0 else ""),
    ) as run:
        ens = _generate(cfg, point, weight, scale)
        gen_s = time.perf_counter() - t0
        variables = score(test.physical(ens), test.truth, e.context_frames)
        result = {
            "mlflow_run_id": run.run_id,
            "guidance_weight": weight,
            "cfg_scale": scale,
            "samples_per_s": len(test.clips) * e.ensemble / gen_s,
            "seconds": time.perf_counter() - t0,
            "variables": variables,
        }
        log_scores(run, {**common, "guidance_weight": weight, "cfg_scale": scale}, variables)
        run.log_metrics({"samples_per_s": result["samples_per_s"], "seconds": result["seconds"]})
        run.set_tags({"checkpoint_file": str(cfg.inference_file(point.checkpoint))})
        run.log_dict({**common, **result}, "result.json")
    log.info(
        "evaluate %s/%s-%d w=%g cfg=%g: %s",
        point.checkpoint,
        point.sampler,
        point.steps,
        weight,
        scale,
        {v: {k: round(r[k], 4) for k in ("rmse", "crps")} for v, r in variables.items()},
    )
    return result


def _check_cfg_scales(scales: list[float], meta: dict[str, Any], checkpoint: str) -> None:
    """A classifier-free guidance scale other than 1 needs a checkpoint trained with conditioning dropout (the
    config check covers the config; this covers a checkpoint trained under another one)."""
    if not meta.get("config"):  # no record of the training settings
        return
    drop = float(json.loads(meta["config"]).get("train", {}).get("cond_drop", 0.0))
    if drop == 0 and any(s != 1.0 for s in scales):
        msg = (
            f"evaluate.cfg_scales = {scales}: checkpoint {checkpoint} was trained with train.cond_drop = {drop}, "
            "so it has no unconditional score to guide with (expected a checkpoint trained with train.cond_drop > 0)"
        )
        raise ValueError(msg)


def evaluate_point(cfg: Config, checkpoint: str, sampler: str, steps: int) -> Path:
    """One sweep point, every guidance weight of ``evaluate.guidance_weights`` at every classifier-free guidance
    scale of ``evaluate.cfg_scales``; writes the point's JSON."""
    t0 = time.perf_counter()
    e = cfg.evaluate
    device = _device()
    model, meta = load_inference(cfg.inference_file(checkpoint), device)
    test = load_test_clips(cfg, int(meta["clip_frames"]), meta["variables"])
    common = {
        "checkpoint": checkpoint,
        "checkpoint_step": int(meta["step"]),
        "sampler": sampler,
        "steps": steps,
        "ensemble": e.ensemble,
        "test_clips": len(test.clips),
        "context_frames": e.context_frames,
        "clip_frames": test.frames,
        "clip_starts": test.labels,
    }
    _check_cfg_scales(e.cfg_scales, meta, checkpoint)
    day_of_year = bool(meta["model_config"].get("day_of_year"))
    point = _Point(checkpoint, sampler, steps, model, day_of_year, test, device, common)
    results = [_guided_run(cfg, point, w, scale=s) for w in e.guidance_weights for s in e.cfg_scales]
    out = point_path(cfg, checkpoint, sampler, steps)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps({**common, "seconds": time.perf_counter() - t0, "results": results}, indent=2))
    return out


def missing_points(cfg: Config, force: bool = False, students: bool = False) -> list[tuple[str, str, int]]:
    """The sweep's points without a result file (all of them with ``force``); with ``students`` also the distilled
    students' points (``Config.student_points``: sampler ``distilled`` at each student's step count)."""
    points = [
        (ckpt, sampler, steps)
        for ckpt in cfg.eval_checkpoints()
        for sampler in cfg.evaluate.samplers
        for steps in cfg.evaluate.steps
    ]
    points += cfg.student_points() if students else []
    return [p for p in points if force or not point_path(cfg, *p).exists()]


# The reference each primary metric's skill is measured against, and the skill's name in words.
_CLIMATOLOGY = {"crps": "climatology-ensemble", "rmse": "climatology-mean"}
_SKILL_WORDS = {"crps": "CRPSS", "rmse": "RMSE skill score"}
_INTERVAL_KEYS = ("crps", "rmse", *SKILL)
_Forecast = tuple[dict[str, Any], dict[str, Any]]  # (table columns, per-variable results)


def _forecasts(cfg: Config, refs: dict[str, Any], students: bool = False) -> list[_Forecast]:
    """Every sweep point (with ``students`` the students' too), guidance weight and classifier-free guidance scale,
    then every reference: (table columns, per-variable results)."""
    out = []
    for ckpt, sampler, steps in missing_points(cfg, force=True, students=students):
        path = point_path(cfg, ckpt, sampler, steps)
        res = json.loads(path.read_text())
        if res.get("clip_starts") != refs["clip_starts"] or res.get("clip_frames") != refs["clip_frames"]:
            msg = (
                f"{path} was scored on other clips than {references_path(cfg)} ({len(res.get('clip_starts', []))} vs "
                f"{len(refs['clip_starts'])} clips): rerun the point (python -m pipeline evaluate --force) or the references"
            )
            raise ValueError(msg)
        # a point file from before the cfg_scales axis holds results at scale 1
        by_guidance = {(r["guidance_weight"], r.get("cfg_scale", 1.0)): r for r in res["results"]}
        for w, s in itertools.product(cfg.evaluate.guidance_weights, cfg.evaluate.cfg_scales):
            if (w, s) not in by_guidance:
                msg = f"{path} has no result for guidance weight {w} at cfg scale {s}: rerun the point"
                raise ValueError(msg)
            r = by_guidance[w, s]
            info = {
                "kind": "checkpoint",
                "checkpoint": ckpt,
                "checkpoint_step": res["checkpoint_step"],
                "sampler": sampler,
                "steps": steps,
                "guidance_weight": w,
                "cfg_scale": s,
                "samples_per_s": r["samples_per_s"],
                "mlflow_run_id": r.get("mlflow_run_id"),
            }
            out.append((info, r["variables"]))
    for name, r in refs["references"].items():
        info = {
            "kind": "reference",
            "checkpoint": name,
            "checkpoint_step": 0,
            "sampler": "reference",
            "steps": 0,
            "guidance_weight": 0.0,
            "cfg_scale": 1.0,
            "samples_per_s": float("nan"),
            "mlflow_run_id": r.get("mlflow_run_id"),
        }
        out.append((info, r["variables"]))
    return out


def _log_skill(cfg: Config, run_id: str | None, summaries: dict[str, dict[str, Any]]) -> None:
    """A sweep point's skill against the references (overall and per lead frame) into the point's own MLflow
    run, under the names the references' runs use (the intervals are in the table and best.json)."""
    if run_id is None or not cfg.tracking.enabled:
        return
    with stage_run(RunTarget.of(cfg, system_metrics=False), "evaluate", run_id=run_id) as run:
        for v, s in summaries.items():
            run.log_metrics({f"{k}_{v}": s[k] for k in SKILL if k in s})
            for lead in range(len(s["rmse_per_lead"])):
                run.log_metrics({f"{k}_lead_{v}": s[f"{k}_per_lead"][lead] for k in SKILL if k in s}, step=lead + 1)


def _label(info: dict[str, Any]) -> str:
    if info["kind"] == "reference":
        return str(info["checkpoint"])
    label = f"{info['checkpoint']} {info['sampler']}-{info['steps']} w={info['guidance_weight']:g}"
    return f"{label} cfg={info.get('cfg_scale', 1.0):g}"


def _interval(samples: np.ndarray, confidence: float) -> list[float]:
    lo, hi = metrics.percentile_interval(samples, confidence)
    return [float(lo), float(hi)]


def _clip_dependence(best: np.ndarray, climatology: np.ndarray, block: int) -> dict[str, Any]:
    """How much neighbouring test clips' scores depend on each other: the autocorrelation of the best
    point's per-clip score difference to climatology (the series whose mean the headline interval is
    about) at lags 1, 2, ...; where lag 1 exceeds 0.2 and the bootstrap resamples single clips, the
    intervals are too narrow and the statement says which ``evaluate.bootstrap_block`` to try (the first
    lag where the autocorrelation falls below 0.2)."""
    diff = np.asarray(best, dtype=np.float64) - np.asarray(climatology, dtype=np.float64)
    acf = [metrics.lagged_autocorrelation(diff, k) for k in range(1, max(2, diff.size // 4) + 1)]
    r1 = acf[0]
    out: dict[str, Any] = {"lag_autocorrelation": acf, "statement": ""}
    if np.isfinite(r1) and r1 > 0.2 and block == 1:
        below = [k for k, r in enumerate(acf, start=1) if r < 0.2]
        suggest = below[0] if below else len(acf)
        out["suggested_block"] = suggest
        out["statement"] = (
            f" Neighbouring test clips' score differences are correlated (lag-1 autocorrelation {r1:.2f}), so these "
            f"intervals are too narrow: set evaluate.bootstrap_block to about {suggest}."
        )
    return out


def _table(
    cfg: Config, refs: dict[str, Any], forecasts: list[_Forecast], idx: np.ndarray, out: Path
) -> tuple[Any, list[dict[str, dict[str, Any]]]]:
    """Every forecast's summaries per variable (scores, skill, bootstrap intervals on the resampled clips ``idx``;
    a sweep point's skill also into its own MLflow run) and their table (a pandas DataFrame), written to ``out`` as
    CSV and parquet."""
    import pandas as pd

    confidence = cfg.evaluate.confidence
    rows, summaries = [], []
    for info, variables in forecasts:
        summ = {v: summarise(r["per_clip"], _ref_clips(refs, v), idx, confidence) for v, r in variables.items()}
        summaries.append(summ)
        if info["kind"] == "checkpoint":
            _log_skill(cfg, info["mlflow_run_id"], summ)
        for v, r in variables.items():
            intervals = {f"{k}{s}": summ[v][f"{k}{s}"] for k in _INTERVAL_KEYS for s in ("", "_lo", "_hi")}
            rows.append({**info, "variable": v, **{k: r[k] for k in SCALAR_METRICS}, **intervals})
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "summary.csv", index=False)
    table.to_parquet(out / "summary.parquet", index=False)
    return table, summaries


def _combined(variables: dict[str, Any], which: np.ndarray, primary: str, std: dict[str, float]) -> np.ndarray:
    """A forecast's ``primary`` metric averaged over variables, each in units of its standard deviation, on the
    clips ``which`` (B, clips) picks: (B,)."""
    per_var = [clip_statistics(r["per_clip"], {}, which)[primary][0] / std[v] for v, r in variables.items()]
    return np.mean(per_var, axis=0)


@dataclass
class _Scores:
    """One score per forecast over all variables (:func:`_combined`): ``est`` on the test clips, ``boot`` on each
    resample of them (the same resamples for every forecast)."""

    forecasts: list[_Forecast]
    primary: str
    std: dict[str, float]
    confidence: float
    clips: int
    est: list[float]
    boot: list[np.ndarray]

    def per_clip(self, i: int) -> np.ndarray:
        """Forecast ``i``'s score on each test clip alone."""
        return _combined(self.forecasts[i][1], np.arange(self.clips)[:, None], self.primary, self.std)

    @property
    def ref_pos(self) -> dict[str, int]:
        return {info["checkpoint"]: i for i, (info, _) in enumerate(self.forecasts) if info["kind"] == "reference"}

    @property
    def points(self) -> list[int]:
        return [i for i, (info, _) in enumerate(self.forecasts) if info["kind"] == "checkpoint"]

    def skill(self, i: int, ref: str) -> tuple[float, list[float]]:
        """Forecast ``i``'s skill score against reference ``ref`` and its interval."""
        j = self.ref_pos[ref]
        return float(metrics.skill_score(self.est[i], self.est[j])), _interval(
            metrics.skill_score(self.boot[i], self.boot[j]), self.confidence
        )


def _scores(cfg: Config, forecasts: list[_Forecast], idx: np.ndarray, clips: int) -> _Scores:
    """Every forecast's score on the test clips and on the resampled clips ``idx``."""
    primary = cfg.evaluate.primary_metric
    std = {v: s["std"] for v, s in read_stats(cfg.stats_path).items()}
    est = [float(_combined(v, np.arange(clips)[None], primary, std)[0]) for _, v in forecasts]
    boot = [_combined(v, idx, primary, std) for _, v in forecasts]
    return _Scores(forecasts, primary, std, cfg.evaluate.confidence, clips, est, boot)


@dataclass
class _Best:
    """The best sweep point (its index among the forecasts), whether each point beats climatology, the points it
    is not significantly better than, and its skill against climatology and persistence."""

    index: int
    beats: dict[int, bool]
    runners: list[dict[str, Any]]
    clim: tuple[float, list[float]]
    pers: tuple[float, list[float]]


def _choose_best(scores: _Scores) -> _Best:
    """The lowest score among the points that beat climatology significantly (among all where none does)."""
    climatology = _CLIMATOLOGY[scores.primary]
    points = scores.points
    beats = {i: scores.skill(i, climatology)[1][0] > 0 for i in points}
    pool = [i for i in points if beats[i]] or points
    b = min(pool, key=lambda i: scores.est[i])
    runners = []
    for i in points:
        if i != b:
            lo, hi = _interval(scores.boot[b] - scores.boot[i], scores.confidence)
            if hi >= 0:  # the best point's advantage over this one is not significant
                runners.append(
                    {
                        **{
                            k: scores.forecasts[i][0][k]
                            for k in ("checkpoint", "sampler", "steps", "guidance_weight", "cfg_scale")
                        },
                        "difference": scores.est[b] - scores.est[i],
                        "interval": [lo, hi],
                    }
                )
    return _Best(b, beats, runners, scores.skill(b, climatology), scores.skill(b, "persistence"))


def _verdict(name: str, s: tuple[float, list[float]], against: str, words: str, pct: str) -> str:
    lo, hi = s[1]
    word = "beats" if lo > 0 else ("is worse than" if hi < 0 else "does not beat")
    return f"{word} {name} ({words} against {against} {s[0]:.3f}, {pct} interval [{lo:.3f}, {hi:.3f}])"


def _statement(scores: _Scores, best: _Best, block: int) -> tuple[str, dict[str, Any]]:
    """What the intervals show, in words; and how much neighbouring clips' scores depend on each other."""
    primary, n, points = scores.primary, scores.clips, scores.points
    words, pct = _SKILL_WORDS[primary], f"{scores.confidence:.0%}"
    others = len(points) - 1
    if not best.runners:
        rank = f"significantly better than the other {others} point(s)" if others else "the only point"
    else:
        listed = "; ".join(f"{_label(r | {'kind': 'checkpoint'})}" for r in best.runners)
        rank = f"not significantly better than {len(best.runners)} of the other {others} point(s): {listed}"
    clim = _verdict("climatology", best.clim, _CLIMATOLOGY[primary], words, pct)
    pers = _verdict("persistence", best.pers, "persistence", words, pct)
    statement = (
        f"{_label(scores.forecasts[best.index][0])} is the best of {len(points)} sweep point(s) by {primary} on {n} "
        f"test clips; it {clim} and {pers}; it is {rank}."
    )
    if not any(best.beats.values()):
        statement += " No sweep point beats climatology significantly."
        log.warning("no sweep point beats climatology significantly (%s %s)", words, pct)
    if n < 10:  # a bootstrap over a handful of cases has a handful of distinct resamples
        statement += f" Only {n} test clips: intervals from so few cases are unreliable."
    climatology = scores.per_clip(scores.ref_pos[_CLIMATOLOGY[primary]])
    dependence = _clip_dependence(scores.per_clip(best.index), climatology, block)
    return statement + dependence["statement"], dependence


def _best_json(
    cfg: Config,
    scores: _Scores,
    best: _Best,
    summaries: list[dict[str, dict[str, Any]]],
    statement: str,
    dependence: dict[str, Any],
) -> dict[str, Any]:
    """The contents of ``best.json``: the best point, its score and skill with intervals, the runners-up, the
    bootstrap's settings, its per-variable summaries and the references'."""
    e, primary, b = cfg.evaluate, scores.primary, best.index
    info_b, words = scores.forecasts[b][0], _SKILL_WORDS[primary]
    clim, pers = best.clim, best.pers
    return {
        "checkpoint": info_b["checkpoint"],
        "sampler": info_b["sampler"],
        "steps": int(info_b["steps"]),
        "guidance_weight": float(info_b["guidance_weight"]),
        "cfg_scale": float(info_b["cfg_scale"]),
        "primary_metric": primary,
        "score": scores.est[b],
        "score_interval": _interval(scores.boot[b], e.confidence),
        "file": str(cfg.inference_file(info_b["checkpoint"])),
        "statement": statement,
        "beats_climatology": clim[1][0] > 0,
        "beats_persistence": pers[1][0] > 0,
        "any_point_beats_climatology": any(best.beats.values()),
        "skill": {
            "climatology": {"reference": _CLIMATOLOGY[primary], "score": words, "value": clim[0], "interval": clim[1]},
            "persistence": {"reference": "persistence", "score": words, "value": pers[0], "interval": pers[1]},
        },
        "significantly_better": not best.runners,
        "runners_up": best.runners,
        "confidence": e.confidence,
        "bootstrap": e.bootstrap,
        "bootstrap_block": e.bootstrap_block,
        "clip_dependence": {k: v for k, v in dependence.items() if k != "statement"},
        "test_clips": scores.clips,
        "variables": summaries[b],
        "references": {
            name: {
                v: {k: s[k] for k in ("crps", "crps_lo", "crps_hi", "rmse", "rmse_lo", "rmse_hi")}
                for v, s in summaries[j].items()
            }
            for name, j in scores.ref_pos.items()
        },
    }


def _scorecard_panels(
    scores: _Scores, best: _Best, summaries: list[dict[str, dict[str, Any]]]
) -> list[tuple[str, dict[str, Any]]]:
    """The scorecard's panels: the best point, then the best point of every other sampler."""
    forecasts, points, b = scores.forecasts, scores.points, best.index
    panels = [(_label(forecasts[b][0]), summaries[b])]
    for sampler in dict.fromkeys(forecasts[i][0]["sampler"] for i in points):
        i = min((i for i in points if forecasts[i][0]["sampler"] == sampler), key=lambda i: scores.est[i])
        if i != b:
            panels.append((_label(forecasts[i][0]), summaries[i]))
    return panels


def _track_collect(
    cfg: Config, run: StageRun, files: list[Path], best_info: dict[str, Any], points: int, students: bool
) -> None:
    """The collection's files into its run and the parent run, the best point's score and skill as metrics and
    tags, and the statement as the parent run's description."""
    primary, statement = best_info["primary_metric"], best_info["statement"]
    clim, pers = best_info["skill"]["climatology"], best_info["skill"]["persistence"]
    for p in files:
        run.log_artifact(p)
        run.log_to_parent(p, "evaluation/distilled" if students else "evaluation")
    run.log_metrics(
        {
            f"best_{primary}_score": best_info["score"],
            "points": points,
            "best_skill_climatology": clim["value"],
            "best_skill_climatology_lo": clim["interval"][0],
            "best_skill_climatology_hi": clim["interval"][1],
            "best_skill_persistence": pers["value"],
            "best_skill_persistence_lo": pers["interval"][0],
            "best_skill_persistence_hi": pers["interval"][1],
        }
    )
    run.set_tags(
        {
            "best_checkpoint": best_info["checkpoint"],
            "best_sampler": f"{best_info['sampler']}-{best_info['steps']}",
            "best_guidance_weight": best_info["guidance_weight"],
            "best_cfg_scale": best_info["cfg_scale"],
            "beats_climatology": best_info["beats_climatology"],
            "beats_persistence": best_info["beats_persistence"],
        }
    )
    run.describe_parent(
        f"Experiment {cfg.experiment}: {statement} Table, scorecard and best.json: artifacts under evaluation/."
    )


def collect(cfg: Config, run: StageRun, students: bool = False) -> Path:
    """The sweep's table (CSV + parquet; sweep points and reference rows, scores and skill with bootstrap
    intervals), summary plot, scorecard and ``best.json``; with ``students`` the same over the sweep and the
    distilled students' points, under ``eval/distilled/`` (``eval/best.json``, which distill and sample read, stays
    the teachers').

    ``best`` is the point with the lowest primary metric (averaged over variables in units of each
    variable's standard deviation) among the points that beat climatology significantly, or among all
    points where none does. A paired bootstrap over the test clips (the same resampled clips for every
    forecast) gives the intervals of its skill against climatology and persistence and of its
    difference to every other point; ``best.json`` says in words what they show.
    """
    from pipeline.plots import scorecard, sweep_summary

    e = cfg.evaluate
    refs = read_references(cfg)
    forecasts = _forecasts(cfg, refs, students)
    n = len(refs["clip_starts"])
    if e.bootstrap_block > n:
        msg = f"evaluate.bootstrap_block = {e.bootstrap_block} is more than the {n} test clips"
        raise ValueError(msg)
    idx = metrics.bootstrap_indices(n, e.bootstrap, cfg.seed, e.bootstrap_block)
    out = cfg.eval_dir / "distilled" if students else cfg.eval_dir
    table, summaries = _table(cfg, refs, forecasts, idx, out)
    scores = _scores(cfg, forecasts, idx, n)
    best = _choose_best(scores)
    statement, dependence = _statement(scores, best, e.bootstrap_block)
    best_info = _best_json(cfg, scores, best, summaries, statement, dependence)
    write_text_atomic(out / "best.json", json.dumps(best_info, indent=2))
    card = scorecard(_scorecard_panels(scores, best, summaries), e.confidence, out / "scorecard.png")
    plot = sweep_summary(table, scores.primary, out / "summary.png")
    files = [out / "summary.csv", out / "summary.parquet", out / "best.json", plot, card]
    _track_collect(cfg, run, files, best_info, len(scores.points), students)
    log.info("best: %s", statement)
    return out / "best.json"
