"""Stages ``select-points`` and ``collect-eval``: the sweep's best point is chosen on the validation clips and
reported on the test clips, so the reported score is not the minimum of noisy scores (the winner's curse).

``select`` reads every sweep point's validation scores (``eval/val/``) and the references' on the same clips, and
chooses the point with the lowest primary metric among those that beat climatology significantly there (among all
where none does); ``selection.json`` records the choice, its runners-up and the points sent to the test clips (the
chosen point, the best point of each other sampler, the runners-up; at most ``evaluate.test_points``). It never opens
a test file. ``collect`` reads the selection, the chosen points' test scores (``eval/test/``) and the references'
test scores, and reports the chosen point on the test clips: the table (both splits, column ``split``), scorecard,
summary plot and ``best.json``, whose scores, skill and intervals are test numbers of the point chosen on validation.

A paired bootstrap over each split's clips (the same resampled clips for every forecast) gives the intervals.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import metrics
from pipeline.atomic import write_text_atomic
from pipeline.config import Config
from pipeline.data.stats import read_stats
from pipeline.evaluate import point_path, read_references, references_path, sweep_points
from pipeline.scoring import REFERENCE_PARAMS, SCALAR_METRICS, SKILL, clip_statistics, summarise
from pipeline.tracking import RunTarget, StageRun, stage_run

__all__ = ["collect", "read_selection", "select"]

log = logging.getLogger(__name__)

# The reference each primary metric's skill is measured against, and the skill's name in words.
_CLIMATOLOGY = {"crps": "climatology-ensemble", "rmse": "climatology-mean"}
_SKILL_WORDS = {"crps": "CRPSS", "rmse": "RMSE skill score"}
_INTERVAL_KEYS = ("crps", "rmse", *SKILL)
_Forecast = tuple[dict[str, Any], dict[str, Any]]  # (table columns, per-variable results)


# A forecast's identity within a sweep: the point and its guidance settings.
_KEYS = ("checkpoint", "sampler", "steps", "guidance_weight", "cfg_scale")
_SPLIT_WORDS = {"val": "validation", "test": "test"}


def _key(info: dict[str, Any]) -> tuple[Any, ...]:
    return (
        info["checkpoint"],
        info["sampler"],
        int(info["steps"]),
        float(info["guidance_weight"]),
        float(info["cfg_scale"]),
    )


def _point_forecasts(cfg: Config, refs: dict[str, Any], point: tuple[str, str, int], split: str) -> list[_Forecast]:
    """One point's results on ``split``, every guidance weight and classifier-free guidance scale."""
    ckpt, sampler, steps = point
    path = point_path(cfg, ckpt, sampler, steps, split)
    if not path.exists():
        msg = f"{path} does not exist: score the point on the {split} clips (python -m pipeline evaluate)"
        raise FileNotFoundError(msg)
    res = json.loads(path.read_text())
    if res.get("clip_starts") != refs["clip_starts"] or res.get("clip_frames") != refs["clip_frames"]:
        msg = (
            f"{path} was scored on other clips than {references_path(cfg, split)} ({len(res.get('clip_starts', []))} "
            f"vs {len(refs['clip_starts'])} clips): rerun the point (python -m pipeline evaluate --force) or the references"
        )
        raise ValueError(msg)
    by_guidance = {(r["guidance_weight"], r.get("cfg_scale", 1.0)): r for r in res["results"]}
    out = []
    for w, s in itertools.product(cfg.evaluate.guidance_weights, cfg.evaluate.cfg_scales):
        if (w, s) not in by_guidance:
            msg = f"{path} has no result for guidance weight {w} at cfg scale {s}: rerun the point"
            raise ValueError(msg)
        r = by_guidance[w, s]
        info = {
            "split": split,
            "kind": "checkpoint",
            "checkpoint": ckpt,
            "checkpoint_step": res["checkpoint_step"],
            "sampler": sampler,
            "steps": steps,
            "guidance_weight": w,
            "cfg_scale": s,
            "samples_per_s": r["samples_per_s"],
            "climate_score": r["climate"]["score"] if "climate" in r else float("nan"),
            "mlflow_run_id": r.get("mlflow_run_id"),
        }
        out.append((info, r["variables"]))
    return out


def _forecasts(cfg: Config, refs: dict[str, Any], points: list[tuple[str, str, int]], split: str) -> list[_Forecast]:
    """The ``points``' results on ``split``, then every reference's: (table columns, per-variable results)."""
    out = [f for p in points for f in _point_forecasts(cfg, refs, p, split)]
    for name, r in refs["references"].items():
        info = {
            "split": split,
            "kind": "reference",
            "checkpoint": name,
            **REFERENCE_PARAMS,
            "samples_per_s": float("nan"),
            "climate_score": float("nan"),
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


def _rows(forecasts: list[_Forecast], summaries: list[dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The table's rows: one per forecast and variable, its scalar metrics and its scores and skill with intervals."""
    rows = []
    for (info, variables), summ in zip(forecasts, summaries, strict=True):
        for v, r in variables.items():
            intervals = {f"{k}{s}": summ[v][f"{k}{s}"] for k in _INTERVAL_KEYS for s in ("", "_lo", "_hi")}
            rows.append({**info, "variable": v, **{k: r[k] for k in SCALAR_METRICS}, **intervals})
    return rows


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
class _Split:
    """One split's forecasts (points, then references), the bootstrap's resampled clips, every forecast's summaries
    per variable and its score over all variables."""

    split: str
    refs: dict[str, Any]
    forecasts: list[_Forecast]
    summaries: list[dict[str, dict[str, Any]]]
    scores: _Scores
    bootstrap: dict[str, Any]  # how the clips were resampled (method, block)
    idx: np.ndarray  # the resampled clips (B, clips), the same for every forecast


def _resampling(cfg: Config, forecasts: list[_Forecast], n: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The bootstrap's resampled clips (B, n), shared by every forecast, and how they were drawn: with
    ``evaluate.bootstrap_block: auto`` the stationary bootstrap with the automatic mean block length of the points'
    per-clip score differences to climatology (their median), else runs of ``bootstrap_block`` clips."""
    e = cfg.evaluate
    if e.bootstrap_block != "auto":
        if e.bootstrap_block > n:
            msg = f"evaluate.bootstrap_block = {e.bootstrap_block} is more than the {n} clips"
            raise ValueError(msg)
        method = "case" if e.bootstrap_block == 1 else "moving-block"
        return metrics.bootstrap_indices(n, e.bootstrap, cfg.seed, e.bootstrap_block), {
            "method": method,
            "block": e.bootstrap_block,
        }
    primary, std = e.primary_metric, {v: s["std"] for v, s in read_stats(cfg.stats_path).items()}
    clips = np.arange(n)[:, None]
    per_clip = {
        info["checkpoint"]: _combined(v, clips, primary, std) for info, v in forecasts if info["kind"] == "reference"
    }
    clim = per_clip[_CLIMATOLOGY[primary]]
    diffs = [_combined(v, clips, primary, std) - clim for info, v in forecasts if info["kind"] == "checkpoint"]
    block = metrics.automatic_block(np.column_stack(diffs)) if diffs else 1.0
    return metrics.stationary_indices(n, e.bootstrap, cfg.seed, block), {"method": "stationary", "mean_block": block}


def _on_split(
    cfg: Config, split: str, points: list[tuple[str, str, int]], keep: set | None = None, log_skill: bool = False
) -> _Split:
    """The ``points`` and the references scored on ``split``, with bootstrap intervals on its clips (a sweep
    point's skill also into its own MLflow run, with ``log_skill``, for every forecast its file holds); only the
    forecasts whose :func:`_key` is in ``keep`` (where given) are kept."""
    e = cfg.evaluate
    refs = read_references(cfg, split)
    forecasts = _forecasts(cfg, refs, points, split)
    n = len(refs["clip_starts"])
    kept = [f for f in forecasts if keep is None or f[0]["kind"] == "reference" or _key(f[0]) in keep]
    idx, how = _resampling(cfg, kept, n)
    log.info("bootstrap on the %d %s clips: %s", n, _SPLIT_WORDS[split], how)
    summaries, kept_ids = [], {id(f) for f in kept}
    for f in forecasts:
        info, variables = f
        summ = {v: summarise(r["per_clip"], _ref_clips(refs, v), idx, e.confidence) for v, r in variables.items()}
        if log_skill and info["kind"] == "checkpoint":
            _log_skill(cfg, info["mlflow_run_id"], summ)
        if id(f) in kept_ids:
            summaries.append(summ)
    return _Split(split, refs, kept, summaries, _scores(cfg, kept, idx, n), how, idx)


def _ref_clips(refs: dict[str, Any], variable: str) -> dict[str, Any]:
    """Per-clip scores of every reference for one variable."""
    return {name: r["variables"][variable]["per_clip"] for name, r in refs["references"].items()}


@dataclass
class _Best:
    """The best sweep point (its index among the forecasts), whether each point beats climatology, the points it
    is not significantly better than, and its skill against climatology and persistence."""

    index: int
    beats: dict[int, bool]
    runners: list[dict[str, Any]]
    clim: tuple[float, list[float]]
    pers: tuple[float, list[float]]


def _choose(scores: _Scores) -> int:
    """The lowest score among the points that beat climatology significantly (among all where none does)."""
    climatology = _CLIMATOLOGY[scores.primary]
    pool = [i for i in scores.points if scores.skill(i, climatology)[1][0] > 0] or scores.points
    return min(pool, key=lambda i: scores.est[i])


def _dominated(i: int, j: int, skill: list[float], clim: dict[int, float]) -> bool:
    """Point ``i`` is dominated by ``j``: no worse in skill and climate score, better in one."""
    no_worse = skill[j] <= skill[i] and clim[j] <= clim[i]
    return no_worse and (skill[j] < skill[i] or clim[j] < clim[i])


def _picks(scores: _Scores) -> dict[str, Any]:
    """The point each criterion chooses on these clips: ``skill`` (:func:`_choose`), ``climate`` (the lowest climate
    score, :mod:`pipeline.climate`; ties by skill), ``both`` (on the Pareto front of the primary metric and the climate
    score, the point with the lowest sum of its two ranks; ties by skill), and the ``front``. Without climate figures
    only ``skill``."""
    est = scores.est
    clim = {i: float(scores.forecasts[i][0].get("climate_score", float("nan"))) for i in scores.points}
    judged = [i for i in scores.points if not np.isnan(clim[i])]
    out: dict[str, Any] = {"skill": _choose(scores), "climate": None, "both": None, "front": []}
    if not judged:
        return out
    front = [i for i in judged if not any(_dominated(i, j, est, clim) for j in judged)]
    rank_s = {i: r for r, i in enumerate(sorted(judged, key=lambda i: est[i]))}
    rank_c = {i: r for r, i in enumerate(sorted(judged, key=lambda i: (clim[i], est[i])))}
    out["climate"] = min(judged, key=lambda i: (clim[i], est[i]))
    out["both"] = min(front, key=lambda i: (rank_s[i] + rank_c[i], est[i]))
    out["front"] = sorted(front, key=lambda i: est[i])
    return out


def _pick(scores: _Scores, picks: dict[str, Any], select_by: str) -> int:
    """The point ``evaluate.select_by`` chooses, or an error where the climate figures it needs are missing."""
    if picks[select_by] is None:
        msg = (
            f"evaluate.select_by = {select_by!r}, but no sweep point's validation file holds climate figures "
            "(evaluate.climate.members is 0 or the files predate them: rerun the sweep with --force)"
        )
        raise ValueError(msg)
    return int(picks[select_by])


def _judge(scores: _Scores, b: int) -> _Best:
    """Point ``b`` among the others on these clips: whether each point beats climatology, the points ``b`` is not
    significantly better than (the paired difference's interval reaches 0), its skill against the references."""
    climatology = _CLIMATOLOGY[scores.primary]
    beats = {i: scores.skill(i, climatology)[1][0] > 0 for i in scores.points}
    runners = []
    for i in scores.points:
        if i != b:
            lo, hi = _interval(scores.boot[b] - scores.boot[i], scores.confidence)
            if hi >= 0:  # the best point's advantage over this one is not significant
                info = {k: scores.forecasts[i][0][k] for k in _KEYS}
                runners.append({**info, "difference": scores.est[b] - scores.est[i], "interval": [lo, hi]})
    return _Best(b, beats, runners, scores.skill(b, climatology), scores.skill(b, "persistence"))


def _verdict(name: str, s: tuple[float, list[float]], against: str, words: str, pct: str) -> str:
    lo, hi = s[1]
    word = "beats" if lo > 0 else ("is worse than" if hi < 0 else "does not beat")
    return f"{word} {name} ({words} against {against} {s[0]:.3f}, {pct} interval [{lo:.3f}, {hi:.3f}])"


def _test_set(scores: _Scores, best: _Best, limit: int, picks: dict[str, Any]) -> list[dict[str, Any]]:
    """The forecasts the choice sends to the test clips, in this order until ``limit``: the chosen one, the other
    criteria's choices (so every verdict is reported on test), the best of each other sampler (the scorecard's other
    panels), then the runners-up by their validation score."""
    forecasts, b = scores.forecasts, best.index
    by_sampler = {}
    for i in sorted(scores.points, key=lambda i: scores.est[i]):
        by_sampler.setdefault(forecasts[i][0]["sampler"], i)
    runners = {_key(r) for r in best.runners}
    others = sorted((i for i in scores.points if _key(forecasts[i][0]) in runners), key=lambda i: scores.est[i])
    criteria = [picks[c] for c in ("skill", "climate", "both") if picks[c] is not None]
    order = list(dict.fromkeys([b, *criteria, *by_sampler.values(), *others]))[:limit]
    return [{k: forecasts[i][0][k] for k in _KEYS} for i in order]


def _entry(scores: _Scores, i: int) -> dict[str, Any]:
    """A forecast's identity with its score and climate score on these clips."""
    info = scores.forecasts[i][0]
    return {**{k: info[k] for k in _KEYS}, "score": scores.est[i], "climate_score": info.get("climate_score")}


def _selection(cfg: Config, val: _Split, best: _Best, picks: dict[str, Any]) -> dict[str, Any]:
    """``selection.json``: the point chosen on validation (by ``evaluate.select_by``), its validation score and
    skill, the runners-up, every criterion's choice and the Pareto front, every point's validation scores, and the
    forecasts (and their point files) to score on the test clips."""
    scores, b = val.scores, best.index
    test = _test_set(scores, best, cfg.evaluate.test_points, picks)
    return {
        "split": "val",
        "select_by": cfg.evaluate.select_by,
        "by_criterion": {c: _entry(scores, picks[c]) for c in ("skill", "climate", "both") if picks[c] is not None},
        "pareto_front": [_entry(scores, i) for i in picks["front"]],
        "primary_metric": scores.primary,
        "val_clips": scores.clips,
        "clip_starts": val.refs["clip_starts"],
        "chosen": {k: scores.forecasts[b][0][k] for k in _KEYS},
        "score": scores.est[b],
        "score_interval": _interval(scores.boot[b], scores.confidence),
        "skill": {"climatology": list(best.clim), "persistence": list(best.pers)},
        "beats_climatology": best.clim[1][0] > 0,
        "any_point_beats_climatology": any(best.beats.values()),
        "runners_up": best.runners,
        "ranking": [_entry(scores, i) for i in sorted(scores.points, key=lambda i: scores.est[i])],
        "test_forecasts": test,
        "test_points": [list(p) for p in dict.fromkeys((f["checkpoint"], f["sampler"], f["steps"]) for f in test)],
        "confidence": cfg.evaluate.confidence,
        "bootstrap": cfg.evaluate.bootstrap,
        "resampling": val.bootstrap,
    }


def read_selection(cfg: Config, students: bool = False) -> dict[str, Any]:
    """``selection.json`` (the choice on validation), or an error saying which stage makes it."""
    path = cfg.eval_selection(students)
    if not path.exists():
        msg = f"{path} does not exist: choose on validation first (python -m pipeline select-points)"
        raise FileNotFoundError(msg)
    return json.loads(path.read_text())


def select(cfg: Config, run: StageRun, students: bool = False) -> Path:
    """Choose the sweep's best point on the validation clips (never a test score): ``selection.json``, under
    ``eval/`` (with ``students`` under ``eval/distilled/``, over the sweep and the distilled students)."""
    val = _on_split(cfg, "val", sweep_points(cfg, students), log_skill=True)
    picks = _picks(val.scores)
    best = _judge(val.scores, _pick(val.scores, picks, cfg.evaluate.select_by))
    sel = _selection(cfg, val, best, picks)
    out = cfg.eval_selection(students)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(sel, indent=2))
    run.log_artifact(out)
    run.log_metrics({f"chosen_val_{sel['primary_metric']}_score": sel["score"], "points": len(val.scores.points)})
    run.set_tags({f"chosen_{k}": v for k, v in sel["chosen"].items()} | {"split": "val"})
    log.info(
        "chosen by %s on %d validation clips: %s; %d forecast(s) go to the test clips",
        sel["select_by"],
        sel["val_clips"],
        _label({"kind": "checkpoint", **sel["chosen"]}),
        len(sel["test_forecasts"]),
    )
    return out


def _statement(test: _Split, best: _Best, sel: dict[str, Any], block: int) -> tuple[str, dict[str, Any]]:
    """What the choice and the test intervals show, in words; and how much neighbouring test clips' scores depend
    on each other."""
    scores = test.scores
    primary, n, points = scores.primary, scores.clips, scores.points
    words, pct = _SKILL_WORDS[primary], f"{scores.confidence:.0%}"
    v_lo, v_hi = sel["skill"]["climatology"][1]
    by = {"skill": primary, "climate": "climate score", "both": f"{primary} and climate score (Pareto front)"}
    chosen = (
        f"{_label(scores.forecasts[best.index][0])} was chosen as the best of {len(sel['ranking'])} sweep point(s) "
        f"by {by[sel.get('select_by', 'skill')]} on {sel['val_clips']} validation clips ({words} against "
        f"{_CLIMATOLOGY[primary]} there {sel['skill']['climatology'][0]:.3f} [{v_lo:.3f}, {v_hi:.3f}])"
    )
    others = len(points) - 1
    if not best.runners:
        rank = f"significantly better than the other {others} point(s) scored on test" if others else "the only point"
        rank += "" if others else " scored on test"
    else:
        listed = "; ".join(f"{_label(r | {'kind': 'checkpoint'})}" for r in best.runners)
        rank = (
            f"not significantly better than {len(best.runners)} of the other {others} point(s) scored there: {listed}"
        )
    clim = _verdict("climatology", best.clim, _CLIMATOLOGY[primary], words, pct)
    pers = _verdict("persistence", best.pers, "persistence", words, pct)
    statement = f"{chosen}. On {n} test clips it {clim} and {pers}; it is {rank}."
    if not sel["any_point_beats_climatology"]:
        statement += " No sweep point beats climatology significantly on validation."
        log.warning("no sweep point beats climatology significantly on validation (%s %s)", words, pct)
    if n < 10 or sel["val_clips"] < 10:  # a bootstrap over a handful of cases has a handful of distinct resamples
        statement += (
            f" Only {sel['val_clips']} validation / {n} test clips: intervals from so few cases are unreliable."
        )
    climatology = scores.per_clip(scores.ref_pos[_CLIMATOLOGY[primary]])
    dependence = _clip_dependence(scores.per_clip(best.index), climatology, block)
    return statement + dependence["statement"], dependence


def _best_json(
    cfg: Config, test: _Split, best: _Best, sel: dict[str, Any], statement: str, dependence: dict[str, Any]
) -> dict[str, Any]:
    """The contents of ``best.json``: the point chosen on validation; its test score and skill with intervals, the
    test runners-up, the bootstrap's settings, its per-variable test summaries and the references'; the choice."""
    e, scores, b = cfg.evaluate, test.scores, best.index
    info_b, words, primary = scores.forecasts[b][0], _SKILL_WORDS[scores.primary], scores.primary
    chosen = _result(cfg, info_b)
    clim, pers = best.clim, best.pers
    return {
        **{k: info_b[k] for k in ("checkpoint", "sampler")},
        "steps": int(info_b["steps"]),
        "guidance_weight": float(info_b["guidance_weight"]),
        "cfg_scale": float(info_b["cfg_scale"]),
        "chosen_on": "val",
        "reported_on": "test",
        "primary_metric": primary,
        "score": scores.est[b],
        "score_interval": _interval(scores.boot[b], e.confidence),
        "file": str(cfg.inference_file(info_b["checkpoint"])),
        "statement": statement,
        "beats_climatology": clim[1][0] > 0,
        "beats_persistence": pers[1][0] > 0,
        "any_point_beats_climatology": sel["any_point_beats_climatology"],
        "skill": {
            "climatology": {"reference": _CLIMATOLOGY[primary], "score": words, "value": clim[0], "interval": clim[1]},
            "persistence": {"reference": "persistence", "score": words, "value": pers[0], "interval": pers[1]},
        },
        "significantly_better": not best.runners,
        "runners_up": best.runners,
        "confidence": e.confidence,
        "bootstrap": e.bootstrap,
        "bootstrap_block": e.bootstrap_block,
        "resampling": {"val": sel["resampling"], "test": test.bootstrap},
        "clip_dependence": {k: v for k, v in dependence.items() if k != "statement"},
        "test_clips": scores.clips,
        "val_clips": sel["val_clips"],
        "selection": {k: sel[k] for k in ("score", "score_interval", "skill", "beats_climatology", "runners_up")},
        "multivariate": _multivariate(chosen, test, e.confidence),
        "select_by": sel.get("select_by", "skill"),
        "climate": _climate_summary(chosen.get("climate")),
        "by_criterion": _by_criterion(test, sel),
        "pareto_front": sel.get("pareto_front", []),
        "variables": test.summaries[b],
        "references": {
            name: {
                v: {k: s[k] for k in ("crps", "crps_lo", "crps_hi", "rmse", "rmse_lo", "rmse_hi")}
                for v, s in test.summaries[j].items()
            }
            for name, j in scores.ref_pos.items()
        },
    }


def _result(cfg: Config, info: dict[str, Any]) -> dict[str, Any]:
    """A forecast's result (one guidance weight and scale) in its point file on its split."""
    res = json.loads(point_path(cfg, info["checkpoint"], info["sampler"], info["steps"], info["split"]).read_text())
    (r,) = [r for r in res["results"] if (r["guidance_weight"], r.get("cfg_scale", 1.0)) == _key(info)[3:]]
    return r


def _multivariate(r: dict[str, Any], test: _Split, conf: float) -> dict[str, Any] | None:
    """The chosen forecast's energy score over all variables (normalised units) on the test clips with its
    interval, and its skill against each reference on the same resampled clips; None for files without it."""
    refs = test.refs["references"]
    if "multivariate" not in r or any("multivariate" not in x for x in refs.values()):
        return None
    es = np.asarray(r["multivariate"]["per_clip"], dtype=np.float64).mean(axis=1)  # per clip, over lead frames
    out: dict[str, Any] = {
        "energy_score": float(es.mean()),
        "interval": _interval(es[test.idx].mean(axis=1), conf),
        "units": "training standard deviations (area-weighted RMS over variables and cells)",
    }
    for name, ref in refs.items():
        rs = np.asarray(ref["multivariate"]["per_clip"], dtype=np.float64).mean(axis=1)
        boot = metrics.skill_score(es[test.idx].mean(axis=1), rs[test.idx].mean(axis=1))
        out[f"skill_{name}"] = {
            "value": float(metrics.skill_score(es.mean(), rs.mean())),
            "interval": _interval(boot, conf),
        }
    return out


_HEADLINE = ("mean_bias_rms", "std_ratio", "w1_rel", "eof_pattern_correlation", "eof_explained_variance")


def _climate_summary(c: dict[str, Any] | None) -> dict[str, Any] | None:
    """A forecast's climate figures for best.json: its score, stability, per variable and set the ratios and the
    headline figures beside the training period's (the yardstick), stability and drift; None without them."""
    if c is None:
        return None
    out = {k: c[k] for k in ("score", "stable", "members", "frames", "given_frames", "unconditional", "period_frames")}
    out["variables"] = {
        v: {
            **{
                s: {
                    "ratios": res[s]["ratios"],
                    "figures": {k: res[s]["figures"][k] for k in _HEADLINE},
                    "yardstick": {k: res[s]["yardstick"][k] for k in _HEADLINE},
                }
                for s in ("rollouts", "unconditional")
            },
            "stability": res["stability"],
            "drift": res["drift"],
        }
        for v, res in c["variables"].items()
    }
    return out


def _by_criterion(test: _Split, sel: dict[str, Any]) -> dict[str, Any]:
    """The point each criterion chose on validation, with its validation scores and, where the choice sent it to
    the test clips, its test score and climate score."""
    pos = {_key(test.forecasts[i][0]): i for i in test.scores.points}
    out = {}
    for c, entry in sel.get("by_criterion", {}).items():
        i = pos.get(_key(entry))
        out[c] = {k: entry[k] for k in _KEYS} | {
            "val_score": entry["score"],
            "val_climate_score": entry["climate_score"],
            "test_score": test.scores.est[i] if i is not None else None,
            "test_climate_score": test.forecasts[i][0]["climate_score"] if i is not None else None,
        }
    return out


def _climate_statement(best_info: dict[str, Any]) -> str:
    """The climate verdict in words: the chosen point's climate score on test, its worst figures, stability, and
    the point each criterion chose on validation."""
    c = best_info["climate"]
    if c is None:
        return ""
    ratios = [
        (f"{s} {k} ({v})", x)
        for v, res in c["variables"].items()
        for s in ("rollouts", "unconditional")
        for k, x in res[s]["ratios"].items()
        if not np.isnan(x)
    ]
    worst = sorted(ratios, key=lambda t: -t[1])[:3]
    above = sum(x > 2 for _, x in ratios)
    text = (
        f" As a climate model on the test period ({c['members']} free rollouts of {c['frames']} generated frames, "
        f"{c['unconditional']} unconditional clips) its climate score is {c['score']:.2f}: the geometric mean of "
        f"{len(ratios)} figures' ratios to the training period's (1 = as close as two real periods are); {above} "
        f"figure(s) more than twice as far, the furthest {', '.join(f'{n} {x:.2f}' for n, x in worst)}."
    )
    if not c["stable"]:
        text += " Some rollouts did not stay finite (unstable)."
    crit = best_info["by_criterion"]
    if crit:
        named = "; ".join(f"by {k}: {_label(v | {'kind': 'checkpoint'})}" for k, v in crit.items())
        text += f" On validation the choice {named}."
    return text


def _scorecard_panels(test: _Split, best: _Best, sel: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The scorecard's panels, test numbers: the chosen point, then each other sampler's best point on validation
    (the test set holds them: :func:`_test_set`)."""
    forecasts, b = test.forecasts, best.index
    rank = {_key(r): i for i, r in enumerate(sel["ranking"])}  # validation order
    panels = [(_label(forecasts[b][0]), test.summaries[b])]
    firsts: dict[str, int] = {}
    for i in sorted(test.scores.points, key=lambda i: rank.get(_key(forecasts[i][0]), len(rank))):
        firsts.setdefault(forecasts[i][0]["sampler"], i)
    firsts.pop(forecasts[b][0]["sampler"], None)
    panels += [(_label(forecasts[i][0]), test.summaries[i]) for i in firsts.values()]
    return panels


def _finite_climate(best_info: dict[str, Any]) -> bool:
    return best_info["climate"] is not None and bool(np.isfinite(best_info["climate"]["score"]))


def _track_collect(
    cfg: Config, run: StageRun, files: list[Path], best_info: dict[str, Any], points: int, students: bool
) -> None:
    """The collection's files into its run and the parent run, the chosen point's test score and skill as metrics
    and tags, and the statement as the parent run's description."""
    primary, statement = best_info["primary_metric"], best_info["statement"]
    clim, pers = best_info["skill"]["climatology"], best_info["skill"]["persistence"]
    for p in files:
        run.log_artifact(p)
        run.log_to_parent(p, "evaluation/distilled" if students else "evaluation")
    run.log_metrics(
        {
            f"best_{primary}_score": best_info["score"],
            f"best_val_{primary}_score": best_info["selection"]["score"],
            "points": points,
            "best_skill_climatology": clim["value"],
            "best_skill_climatology_lo": clim["interval"][0],
            "best_skill_climatology_hi": clim["interval"][1],
            "best_skill_persistence": pers["value"],
            "best_skill_persistence_lo": pers["interval"][0],
            "best_skill_persistence_hi": pers["interval"][1],
            **({"best_climate_score": best_info["climate"]["score"]} if _finite_climate(best_info) else {}),
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
            "chosen_on": "validation",
            "reported_on": "test",
            "select_by": best_info["select_by"],
            **{f"best_by_{c}": _label(v | {"kind": "checkpoint"}) for c, v in best_info["by_criterion"].items()},
        }
    )
    run.describe_parent(
        f"Experiment {cfg.experiment}: {statement} Table, scorecard and best.json: artifacts under evaluation/."
    )


def _write_table(files: dict[str, Path], splits: list[_Split]) -> Any:
    """Every split's rows in one table (column ``split``), as CSV and parquet (``files``: the layout's
    :meth:`~pipeline.config.layout.ResultsLayout.eval_reports`); returns it (a pandas DataFrame)."""
    import pandas as pd

    table = pd.DataFrame([row for s in splits for row in _rows(s.forecasts, s.summaries)])
    files["csv"].parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(files["csv"], index=False)
    table.to_parquet(files["parquet"], index=False)
    return table


def collect(cfg: Config, run: StageRun, students: bool = False) -> Path:
    """Report the point chosen on validation (``selection.json``) on the test clips: the table (every point and
    reference on validation, the chosen forecasts and the references on test; column ``split``), summary plot
    (validation: the sweep), scorecard (test) and ``best.json`` (test scores and intervals, the choice beside them).
    With ``students`` the same over the sweep and the distilled students' points, under ``eval/distilled/``
    (``eval/best.json``, which distill and sample read, stays the teachers')."""
    from pipeline.plots import climate_panel, scorecard, sweep_summary

    e = cfg.evaluate
    sel = read_selection(cfg, students)
    val = _on_split(cfg, "val", sweep_points(cfg, students))
    if val.refs["clip_starts"] != sel["clip_starts"]:
        msg = f"{cfg.eval_selection(students)} was made on other validation clips: rerun select-points"
        raise ValueError(msg)
    keep = {_key(f) for f in sel["test_forecasts"]}
    points = [(c, s, int(n)) for c, s, n in sel["test_points"]]
    test = _on_split(cfg, "test", points, keep, log_skill=True)
    chosen = _key(sel["chosen"])
    best = _judge(test.scores, next(i for i in test.scores.points if _key(test.forecasts[i][0]) == chosen))
    statement, dependence = _statement(test, best, sel, e.bootstrap_block)
    best_info = _best_json(cfg, test, best, sel, statement, dependence)
    best_info["verdicts"] = {"skill": statement, "climate": _climate_statement(best_info).strip()}
    best_info["statement"] = statement + _climate_statement(best_info)
    out = cfg.eval_reports(students)
    table = _write_table(out, [val, test])
    write_text_atomic(cfg.eval_best(students), json.dumps(best_info, indent=2))
    card = scorecard(_scorecard_panels(test, best, sel), e.confidence, out["scorecard"])
    plot = sweep_summary(table[table["split"] == "val"], test.scores.primary, out["plot"], "validation clips")
    files = [out["csv"], out["parquet"], cfg.eval_best(students), plot, card]
    if best_info["climate"] is not None:
        title = f"{_label(test.forecasts[best.index][0])}\nclimate figures on test: ratio to the training period's"
        files.append(climate_panel(best_info["climate"]["variables"], title, out["climate"]))
    _track_collect(cfg, run, files, best_info, len(val.scores.points), students)
    log.info("best: %s", statement)
    return cfg.eval_best(students)
