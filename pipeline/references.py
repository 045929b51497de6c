"""Stage ``references``: reference forecasts on exactly the sweep's validation and test clips and lead frames,
scored by the same code (:func:`pipeline.scoring.score`) -> ``eval/val/references.json`` (the yardsticks of the
choice) and ``eval/test/references.json`` (of the report), one MLflow run each per split.

- ``climatology-ensemble``: members drawn (seeded, without repeats) from training-period frames within
  ``evaluate.climatology_window_days`` of each target frame's day of year (the window is widened to
  half the data's time step, so annual or seasonal means draw from every training year).
- ``climatology-mean``: the mean of those same training frames (deterministic).
- ``persistence``: the last context frame, for every lead frame (deterministic).

A forecast that does not beat these has learnt nothing a table of past weather does not already know.
Times are handled in the data's own calendar (:mod:`pipeline.data.times`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from pipeline import seeding
from pipeline.atomic import write_text_atomic
from pipeline.config import Config
from pipeline.data.evalclips import EvalClips, EvalSet
from pipeline.data.io import open_store
from pipeline.data.stats import split_steps
from pipeline.data.times import climatology_candidates
from pipeline.scoring import (
    REFERENCE_PARAMS,
    REFERENCES,
    SKILL,
    ScoreStream,
    energy,
    load_eval_clips,
    log_scores,
    summarise,
)
from pipeline.tracking import RunTarget, stage_run

__all__ = [
    "climatology_ensemble",
    "climatology_mean",
    "persistence",
    "references_on",
    "run_references",
]

log = logging.getLogger(__name__)


def _frames(store: xr.Dataset, names: list[str], index: np.ndarray) -> dict[int, np.ndarray]:
    """Normalised fields (C, H, W) of the store's time steps ``index`` (read once)."""
    index = np.unique(index)
    data = np.stack([store[n].isel(time=index).values for n in names], axis=1).astype(np.float32)
    return dict(zip(index.tolist(), data, strict=True))


def _targets(test: EvalClips | EvalSet) -> np.ndarray:
    """Store time index of every lead frame: (clip, lead)."""
    return test.starts[:, None] + np.arange(test.context, test.frames)[None, :]


class _Climatology:
    """The climatological references of a set of clips, built a part of the clips at a time: the members drawn for
    every lead frame (one seeded stream, in clip and lead order, so a part gets the draws it gets in the whole set)
    and the mean of every window, from the training frames read once."""

    def __init__(
        self, test: EvalClips | EvalSet, store: xr.Dataset, candidates: list[np.ndarray], members: int, seed: int
    ):
        rng = np.random.default_rng(seeding.references(seed))
        self.drawn = [rng.choice(c, members, replace=False) for c in candidates]
        self.candidates, self.members = candidates, members
        self.lead = test.frames - test.context
        self.fields = _frames(store, test.names, np.concatenate(candidates))  # the draws are among them
        self.means: dict[bytes, np.ndarray] = {}  # most targets share a window: average it once
        for cand in candidates:
            key = cand.tobytes()
            if key not in self.means:
                self.means[key] = np.nanmean(np.stack([self.fields[int(t)] for t in cand]), axis=0)

    def ensemble(self, part: EvalClips, first: int) -> np.ndarray:
        """(clip, member, C, T, H, W) normalised for the clips of ``part`` (``first``: its first clip's index)."""
        out = np.repeat(part.raw[:, None], self.members, axis=1)
        for c in range(len(part)):
            for j in range(self.lead):
                d = self.drawn[(first + c) * self.lead + j]
                out[c, :, :, part.context + j] = np.stack([self.fields[int(t)] for t in d])
        return out

    def mean(self, part: EvalClips, first: int) -> np.ndarray:
        """(clip, C, T, H, W) normalised: the given frames, then the mean of each lead frame's window."""
        out = part.raw.copy()
        for c in range(len(part)):
            for j in range(self.lead):
                out[c, :, part.context + j] = self.means[self.candidates[(first + c) * self.lead + j].tobytes()]
        return out


def climatology_ensemble(
    test: EvalClips, store: xr.Dataset, candidates: list[np.ndarray], members: int, seed: int
) -> np.ndarray:
    """(clip, member, C, T, H, W) normalised: the given frames, then for each lead frame ``members``
    training frames drawn without repeats from its candidates (one seeded stream, in clip and lead order)."""
    return _Climatology(test, store, candidates, members, seed).ensemble(test, 0)


def climatology_mean(test: EvalClips, store: xr.Dataset, candidates: list[np.ndarray]) -> np.ndarray:
    """(clip, C, T, H, W) normalised: the given frames, then the mean of each lead frame's candidates."""
    return _Climatology(test, store, candidates, 1, 0).mean(test, 0)


def persistence(test: EvalClips) -> np.ndarray:
    """(clip, C, T, H, W) normalised: the given frames, then the last given frame for every lead frame."""
    out = test.raw.copy()
    out[:, :, test.context :] = test.raw[:, :, test.context - 1 : test.context]
    return out


@dataclass
class _Window:
    """The training frames each test lead frame's climatology draws from (in clip and lead order), the window's
    half width in days as used, the number of training frames, and the climatology ensemble's size."""

    candidates: list[np.ndarray]
    half_days: float
    training_frames: int
    members: int


def _window(cfg: Config, test: EvalClips | EvalSet, store: xr.Dataset) -> _Window:
    """Every lead frame's climatology candidates; the ensemble has ``evaluate.reference_members`` members, or as many
    as the fewest candidates of a window where that is fewer (at least 2, or the window is too narrow)."""
    e = cfg.evaluate
    times = store["time"].values
    train = split_steps(store, "train")
    candidates, half = climatology_candidates(times, train, _targets(test).ravel(), e.climatology_window_days)
    fewest = min(len(c) for c in candidates)
    if fewest < 2:
        msg = (
            f"the climatology window (evaluate.climatology_window_days = {e.climatology_window_days}) holds only "
            f"{fewest} training frame(s) for some test frame; widen it or lengthen data.split.train"
        )
        raise ValueError(msg)
    members = min(e.reference_members, fewest)
    if members < e.reference_members:
        log.info("climatology ensemble: %d members (the fewest training frames in a window)", members)
    return _Window(candidates, half, int(train.size), members)


def _score_all(cfg: Config, test: EvalClips | EvalSet, store: xr.Dataset, window: _Window) -> dict[str, dict[str, Any]]:
    """The three references scored per variable, each with its skill against the others (and itself); built and
    scored ``evaluate.score_batch`` clips at a time (memory: one batch of the climatological ensemble)."""
    clim = _Climatology(test, store, window.candidates, window.members, cfg.seed)
    streams = {name: ScoreStream(test.context, len(test)) for name in REFERENCES}
    energies: dict[str, list[np.ndarray]] = {name: [] for name in REFERENCES}
    for first, part in test.batches(cfg.evaluate.score_batch):
        forecasts = {
            "climatology-ensemble": clim.ensemble(part, first),
            "climatology-mean": clim.mean(part, first),
            "persistence": persistence(part),
        }
        for name, f in forecasts.items():
            streams[name].add(part.physical(f), part.truth)
            energies[name].append(np.asarray(energy(f, part.raw, part.lat, part.context)["per_clip"]))
    scored = {name: stream.result() for name, stream in streams.items()}
    for name in REFERENCES:
        for v, r in scored[name].items():
            others = {k: s[v]["per_clip"] for k, s in scored.items()}
            r |= {k: x for k, x in summarise(r["per_clip"], others).items() if k.startswith(tuple(SKILL))}
    # the multivariate score beside the variables', in normalised units
    out = {}
    for name in REFERENCES:
        per = np.concatenate(energies[name])
        out[name] = {
            "variables": scored[name],
            "multivariate": {"energy_score": float(per.mean()), "per_clip": per.tolist()},
        }
    return out


def _log_reference(cfg: Config, name: str, split: str, params: dict[str, Any], scored: dict[str, Any]) -> None:
    """One reference's scores on one split (per variable and the multivariate energy score) into its own MLflow
    run, under the parameters and names a sweep point's run uses."""
    variables = scored["variables"]
    with stage_run(
        RunTarget.of(cfg),
        "references",
        tags={"reference": "true", "split": split},
        run_name=f"reference {name} ({split})",
    ) as run:
        log_scores(run, params, variables)
        run.log_metrics({"energy_score": scored["multivariate"]["energy_score"]})
        run.log_dict({**params, "split": split, **scored}, "result.json")
    log.info(
        "reference %s (%s): %s",
        name,
        split,
        {v: {k: round(r[k], 4) for k in ("rmse", "crps")} for v, r in variables.items()},
    )


def references_on(cfg: Config, split: str) -> Path:
    """Score the three references on the evaluation clips of ``split``; one MLflow run each; write
    ``eval/<split>/references.json``."""
    t0 = time.perf_counter()
    test = load_eval_clips(cfg, cfg.train.clip_frames, split=split)
    store = open_store(cfg.normalised_path)
    window = _window(cfg, test, store)
    scored = _score_all(cfg, test, store, window)
    refs: dict[str, Any] = {}
    for name in REFERENCES:
        size = window.members if name == "climatology-ensemble" else 1
        params = {
            "checkpoint": name,
            **REFERENCE_PARAMS,
            "ensemble": size,
            "test_clips": len(test),
            "context_frames": test.context,
        }
        _log_reference(cfg, name, split, params, scored[name])
        refs[name] = {"members": size, **scored[name]}
    out = cfg.eval_references(split)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "split": split,
        "clip_frames": test.frames,
        "context_frames": test.context,
        "test_clips": len(test),
        "clip_starts": test.labels,
        "climatology_window_days": window.half_days,
        "training_frames": window.training_frames,
        "members": window.members,
        "seed": cfg.seed,
        "seconds": time.perf_counter() - t0,
        "references": refs,
    }
    write_text_atomic(out, json.dumps(result, indent=2))
    return out


def run_references(cfg: Config) -> Path:
    """The references on the validation clips (against which points are chosen) and on the test clips (against
    which the chosen point is reported): ``eval/val/references.json`` and ``eval/test/references.json``."""
    references_on(cfg, "val")
    return references_on(cfg, "test")
