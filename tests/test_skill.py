"""Reference forecasts, skill scores, bootstrap intervals and the sweep's verdict (best.json), on tiny
inputs with answers derived by hand, against an oracle library (xskillscore), and on synthetic sweeps."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import cftime
import numpy as np
import pytest
import xarray as xr

from pipeline import metrics
from pipeline.data.evalclips import EvalClips, clip_dataset, pick_test_clips
from pipeline.data.stats import denormalise
from pipeline.data.times import climatology_candidates
from pipeline.references import climatology_ensemble, climatology_mean, persistence
from pipeline.scoring import REFERENCES, clip_statistics, score, summarise

LAT, LON = np.array([0.0, 60.0]), np.array([0.0, 90.0])  # cos-latitude weights 1 and 1/2
STATS = {"z": {"mean": 0.0, "std": 1.0, "units": "m"}}


def _field(lat0: float, lat60: float) -> np.ndarray:
    """A 2x2 field: ``lat0`` on the equator row, ``lat60`` on the 60N row."""
    return np.array([[lat0, lat0], [lat60, lat60]], dtype=np.float32)


@pytest.fixture
def tiny() -> tuple[EvalClips, xr.Dataset]:
    """Five daily steps in the 360_day calendar: two training frames (0 and 2 everywhere) and a test period
    of three (f0 = 0; f1 = 1 on the equator, 3 at 60N; f2 = 4), so two clips of 2 frames, 1 given."""
    times = np.array([cftime.datetime(2001, 1, d, calendar="360_day") for d in (1, 2, 3, 4, 5)], dtype=object)
    frames = [_field(0, 0), _field(2, 2), _field(0, 0), _field(1, 3), _field(4, 4)]
    store = xr.Dataset(
        {"z": (("time", "latitude", "longitude"), np.stack(frames))},
        coords={"time": times, "latitude": LAT, "longitude": LON, "split": ("time", [1, 1, 3, 3, 3])},
    )
    raw = np.stack([np.stack(frames[2:4]), np.stack(frames[3:5])])[:, None]  # (clip, C, T, H, W)
    test = EvalClips(
        clips=[],
        starts=np.array([2, 3]),
        labels=["2001-01-03T00:00:00", "2001-01-04T00:00:00"],
        names=["z"],
        frames=2,
        context=1,
        masks=np.ones(raw.shape, dtype=bool),
        raw=raw,
        truth=denormalise(clip_dataset(raw, ["z"], LAT, LON, False), STATS),
        lat=LAT,
        lon=LON,
        stats=STATS,
    )
    return test, store


def _references(test: EvalClips, store: xr.Dataset) -> dict[str, dict]:
    train = np.flatnonzero(store["split"].values == 1)
    targets = (test.starts + test.context).ravel()
    cand, _ = climatology_candidates(store["time"].values, train, targets, 15.0)
    forecasts = {
        "climatology-ensemble": climatology_ensemble(test, store, cand, 2, seed=0),
        "climatology-mean": climatology_mean(test, store, cand),
        "persistence": persistence(test),
    }
    return {name: score(test.physical(f), test.truth, test.context)["z"] for name, f in forecasts.items()}


def test_references_and_skill_by_hand(tiny) -> None:
    refs = _references(*tiny)
    # persistence: clip 0 forecasts 0 for (1, 3): |e| 1 and 3, weights 1 and 1/2 -> MAE 5/3, MSE 11/3;
    # clip 1 forecasts (1, 3) for 4: |e| 3 and 1 -> MAE 7/3, MSE 19/3
    p = refs["persistence"]
    np.testing.assert_allclose(p["per_clip"]["crps"], [[5 / 3], [7 / 3]], rtol=1e-12)
    np.testing.assert_allclose(p["per_clip"]["se"], [[11 / 3], [19 / 3]], rtol=1e-12)
    assert p["crps"] == pytest.approx(2.0) and p["rmse"] == pytest.approx(np.sqrt(5.0))
    assert p["spread"] == 0.0 and p["spread_skill"] == 0.0
    # climatological mean: 1 everywhere -> clip 0: |e| 0 and 2 -> MAE 2/3, MSE 4/3; clip 1: |e| 3 -> 3, 9
    m = refs["climatology-mean"]
    assert m["crps"] == pytest.approx((2 / 3 + 3) / 2) and m["rmse"] == pytest.approx(np.sqrt((4 / 3 + 9) / 2))
    # climatological ensemble {0, 2}: fair CRPS = mean|x - y| - (|0 - 2| + |2 - 0|) / (2 * 2 * 1)
    # clip 0: y = 1 -> 1 - 1 = 0, y = 3 -> 2 - 1 = 1 -> (0 + 1/2) / (3/2) = 1/3; clip 1: y = 4 -> 3 - 1 = 2
    e = refs["climatology-ensemble"]
    np.testing.assert_allclose(e["per_clip"]["crps"], [[1 / 3], [2.0]], rtol=1e-12)
    assert e["crps"] == pytest.approx(7 / 6) and e["rmse"] == pytest.approx(m["rmse"])  # ensemble mean 1
    assert e["spread"] > 0 and len(e["rank_histogram"]) == 3
    # skill: CRPSS of persistence = 1 - 2 / (7/6) = -5/7; RMSE skill score vs the climatological mean
    s = summarise(p["per_clip"], {k: r["per_clip"] for k, r in refs.items()})
    assert s["crpss_climatology"] == pytest.approx(-5 / 7)
    assert s["rmse_ss_climatology"] == pytest.approx(1 - np.sqrt(5.0) / np.sqrt(31 / 6))
    assert s["crpss_persistence"] == pytest.approx(0.0) and s["rmse_ss_persistence"] == pytest.approx(0.0)
    assert s["crpss_climatology_per_lead"] == [pytest.approx(-5 / 7)]


def test_references_against_xskillscore(tiny) -> None:
    import xskillscore as xs

    test, store = tiny
    refs = _references(test, store)
    truth = test.truth["z"].isel(frame=slice(1, None))
    w = np.cos(np.deg2rad(truth["latitude"])).broadcast_like(truth)
    pers = test.physical(persistence(test))["z"].isel(frame=slice(1, None))
    # a deterministic forecast's CRPS is its MAE: xskillscore's weighted MAE and RMSE over everything
    assert refs["persistence"]["crps"] == pytest.approx(float(xs.mae(pers, truth, dim=list(truth.dims), weights=w)))
    rmse_xs = xs.rmse(pers, truth, dim=["latitude", "longitude"], weights=w.isel(clip=0, frame=0))  # per clip, lead
    np.testing.assert_allclose(refs["persistence"]["per_clip"]["se"], (rmse_xs**2).values, rtol=1e-12)
    # the climatological ensemble's ecdf CRPS per cell against xskillscore's
    train = np.flatnonzero(store["split"].values == 1)
    cand, _ = climatology_candidates(store["time"].values, train, test.starts + 1, 15.0)
    ens = test.physical(climatology_ensemble(test, store, cand, 2, seed=0))["z"].isel(frame=slice(1, None))
    np.testing.assert_allclose(
        metrics.crps_ensemble(ens, truth, fair=False).transpose(*truth.dims).values,
        xs.crps_ensemble(truth, ens, dim=[]).values,
        rtol=1e-12,
    )


def test_climatology_window_in_a_360_day_calendar_and_for_annual_means() -> None:
    # daily 360_day data over three years; day_of_year puts every calendar on a 365.25-day year, so a
    # 15-day window is 15 * 360 / 365.25 = 14.8 calendar days: a target on 5 January 2002 draws the
    # training days 21 December .. 19 January (the year wrapping round), 29 a year
    times = np.array([cftime.datetime(2000, 1, 1, calendar="360_day") + dt.timedelta(days=i) for i in range(1080)])
    train = np.arange(720)  # 2000 and 2001
    target = np.array([np.flatnonzero(times == cftime.datetime(2002, 1, 5, calendar="360_day"))[0]])
    (cand,), half = climatology_candidates(times, train, target, 15.0)
    assert half == 15.0
    days = {(t.month, t.day) for t in times[cand]}
    assert {(12, 21), (12, 30), (1, 1), (1, 19)} <= days and not {(12, 20), (1, 20), (6, 1)} & days
    assert len(cand) == 2 * 29 and {t.year for t in times[cand]} == {2000, 2001}
    # one step per year (DJF means stamped 1 December): the window widens to half a year, every year counts
    annual = np.array([cftime.datetime(y, 12, 1, calendar="noleap") for y in range(1948, 1960)])
    (cand,), half = climatology_candidates(annual, np.arange(8), np.array([10]), 15.0)
    assert half > 180 and cand.tolist() == list(range(8))


def test_climatology_ensemble_draws_seeded_distinct_members(tiny) -> None:
    test, store = tiny
    cand = [np.array([0, 1])] * 2
    a = climatology_ensemble(test, store, cand, 2, seed=3)
    b = climatology_ensemble(test, store, cand, 2, seed=3)
    np.testing.assert_array_equal(a, b)
    lead = a[:, :, 0, 1, 0, 0]  # (clip, member) at one cell
    assert all(sorted(row) == [0.0, 2.0] for row in lead.tolist())  # without repeats: both training frames
    np.testing.assert_array_equal(a[:, :, :, 0], np.repeat(test.raw[:, None, :, 0], 2, axis=1))  # given frames


def test_references_built_and_scored_in_batches_equal_the_whole_set(tiny) -> None:
    """The references stage builds and scores its forecasts evaluate.score_batch clips at a time: one clip at a
    time gives what every clip at once gives (the same climatological draws, the same scores)."""
    from types import SimpleNamespace

    from pipeline.references import _score_all, _Window

    test, store = tiny
    train = np.flatnonzero(store["split"].values == 1)
    cand, half = climatology_candidates(store["time"].values, train, (test.starts + test.context).ravel(), 15.0)
    window = _Window(cand, half, int(train.size), 2)

    def run(batch: int) -> dict:
        return _score_all(SimpleNamespace(seed=0, evaluate=SimpleNamespace(score_batch=batch)), test, store, window)

    whole, batched = run(len(test)), run(1)
    assert json.dumps(batched) == json.dumps(whole)
    by_hand = _references(test, store)  # the whole-set functions the tests above check
    for name in REFERENCES:
        got = whole[name]["variables"]["z"]
        assert [got[k] for k in ("crps", "rmse", "spread")] == [by_hand[name][k] for k in ("crps", "rmse", "spread")]
        assert got["per_clip"] == by_hand[name]["per_clip"]


def test_test_clip_selection() -> None:
    assert pick_test_clips(10, "all").tolist() == list(range(10))
    assert pick_test_clips(10, "all", 3).tolist() == [0, 3, 6, 9]
    assert pick_test_clips(10, 4).tolist() == [0, 3, 6, 9]  # spread over the period
    assert pick_test_clips(2, 4).tolist() == [0, 1]  # at most what exists
    with pytest.raises(ValueError, match="holds no clip"):
        pick_test_clips(0, "all")


def test_bootstrap_intervals() -> None:
    rng = np.random.default_rng(0)
    n = 400
    base = {"crps": rng.gamma(2.0, 1.0, (n, 2)), "se": rng.gamma(2.0, 1.0, (n, 2))}
    idx = metrics.bootstrap_indices(n, 2000, seed=1)
    # identical forecasts: every paired resample gives the same score, the difference interval has zero width
    same = clip_statistics(base, {}, idx)["crps"][0] - clip_statistics(dict(base), {}, idx)["crps"][0]
    assert metrics.percentile_interval(same, 0.9) == (0.0, 0.0)
    # a clearly better forecast (10% lower CRPS on every clip): the paired difference excludes 0, and its
    # skill against the other is exactly 0.1 on every resample
    better = {"crps": 0.9 * base["crps"], "se": base["se"]}
    _, hi = metrics.percentile_interval(
        clip_statistics(better, {}, idx)["crps"][0] - clip_statistics(base, {}, idx)["crps"][0], 0.9
    )
    assert hi < 0
    s = summarise(better, {"climatology-ensemble": base}, idx, 0.9)
    assert s["crpss_climatology_lo"] == pytest.approx(0.1) and s["crpss_climatology_hi"] == pytest.approx(0.1)
    # same seed -> the same interval; another seed -> another
    first = summarise(base, {}, idx, 0.9)
    again = summarise(base, {}, metrics.bootstrap_indices(n, 2000, seed=1), 0.9)
    other = summarise(base, {}, metrics.bootstrap_indices(n, 2000, seed=2), 0.9)
    assert (again["crps_lo"], again["crps_hi"]) == (first["crps_lo"], first["crps_hi"])
    assert (other["crps_lo"], other["crps_hi"]) != (first["crps_lo"], first["crps_hi"])
    # a known answer: the mean of n standard normal cases has a 90% interval of about +-1.645 / sqrt(n)
    normal = {"crps": rng.standard_normal((n, 1)), "se": np.ones((n, 1))}
    s = summarise(normal, {}, idx, 0.9)
    centre = normal["crps"].mean()
    assert s["crps_lo"] - centre == pytest.approx(-1.645 / np.sqrt(n), rel=0.15)
    assert s["crps_hi"] - centre == pytest.approx(1.645 / np.sqrt(n), rel=0.15)


def test_deterministic_crps_is_the_absolute_error() -> None:
    f = xr.DataArray([1.0, 5.0], dims="x")
    y = xr.DataArray([2.0, 2.0], dims="x")
    assert metrics.crps_ensemble(f, y).values.tolist() == [1.0, 3.0]
    with pytest.raises(ValueError, match="at least 2 members"):
        metrics.crps_ensemble(f.expand_dims(member=1), y)


# ---- the sweep's verdict on synthetic per-clip scores -------------------------------------------------


def _entry(crps: np.ndarray, se: np.ndarray) -> dict:
    """One variable's result as evaluate/references write it (the scalar metrics are placeholders)."""
    from pipeline.scoring import SCALAR_METRICS

    r = {k: 0.0 for k in SCALAR_METRICS}
    r |= {"crps": float(crps.mean()), "rmse": float(np.sqrt(se.mean())), "units": "m"}
    r |= {"crps_per_lead": crps.mean(0).tolist(), "rmse_per_lead": np.sqrt(se.mean(0)).tolist()}
    return r | {"per_clip": {"crps": crps.tolist(), "se": se.tolist()}}


def _climate_block(score: float) -> dict:
    """A point's climate figures as evaluate writes them (pipeline.point_climate), every ratio = ``score``."""
    ratios = {"mean_bias_rms": score, "std_ratio": score}
    figures = {
        "mean_bias_rms": 10.0 * score,
        "std_ratio": 1.0,
        "w1_rel": 0.1,
        "eof_pattern_correlation": [0.9],
        "eof_explained_variance": [0.5],
    }
    one = {"ratios": ratios, "figures": figures, "yardstick": figures | {"mean_bias_rms": 10.0}}
    stability = {"finite_fraction": 1.0, "inside_range_fraction": 1.0, "real_range": [0, 1], "stable": True}
    return {
        "score": score,
        "stable": True,
        "members": 2,
        "frames": 10,
        "given_frames": 2,
        "unconditional": 4,
        "period_frames": 12,
        "variables": {"z500": {"rollouts": one, "unconditional": one, "stability": stability, "drift": {}}},
    }


def _synthetic_split(
    cfg, split: str, model_factor: tuple[float, float], seed: int, climate: tuple[float, float] | None = None
) -> None:
    """One split's references and points (ddim-10, ddim-25) on 40 clips x 2 leads; each point's CRPS and squared
    error are the climatological ensemble's times a factor, with noise; with ``climate``, each point's climate
    score."""
    from pipeline.evaluate import point_path, references_path

    rng = np.random.default_rng(seed)
    n, leads = 40, 2
    clim = rng.gamma(4.0, 5.0, (n, leads))
    clim_se = clim**2 * 2
    starts = [f"{(2000 if split == 'test' else 1900) + i}-01-01T00:00:00" for i in range(n)]
    refs = {
        "climatology-ensemble": _entry(clim, clim_se),
        "climatology-mean": _entry(clim * 1.3, clim_se),
        "persistence": _entry(clim * 1.5, clim_se * 2.0),
    }
    references = references_path(cfg, split)
    references.parent.mkdir(parents=True, exist_ok=True)
    references.write_text(
        json.dumps(
            {
                "clip_frames": 4,
                "clip_starts": starts,
                "references": {k: {"members": 2, "variables": {"z500": v}} for k, v in refs.items()},
            }
        )
    )
    for steps, factor in zip((10, 25), model_factor, strict=True):
        noise = np.exp(rng.normal(0, 0.05, (n, leads)))
        crps = clim * factor * noise
        variables = {"z500": _entry(crps, clim_se * factor**2 * noise)}
        path = point_path(cfg, "step-00000300", "ddim", steps, split)
        path.parent.mkdir(parents=True, exist_ok=True)
        result = {"guidance_weight": 2.0, "samples_per_s": 1.0, "variables": variables}
        if climate is not None:
            result["climate"] = _climate_block(climate[(10, 25).index(steps)])
        path.write_text(
            json.dumps({"checkpoint_step": 300, "clip_frames": 4, "clip_starts": starts, "results": [result]})
        )


def _synthetic_sweep(
    tmp_path: Path,
    model_factor: tuple[float, float],
    test_factor: tuple[float, float] | None = None,
    climate: tuple[float, float] | None = None,
    test_climate: tuple[float, float] | None = None,
    select_by: str = "skill",
):
    """A sweep of two points (ddim-10, ddim-25), scored on validation with ``model_factor`` and on test with
    ``test_factor`` (the same by default), with climate scores ``climate`` / ``test_climate``: chosen on validation
    by ``select_by`` (select), reported on test (collect)."""
    from pipeline.collect import collect, select
    from pipeline.config import load_config
    from pipeline.tracking import StageRun
    from tests.conftest import REPO

    cfg = load_config(
        [
            REPO / "config" / "config.yaml",
            {
                "experiment": "synthetic",
                "results_dir": str(tmp_path),
                "train": {"steps": 300, "checkpoint_every": 300},
                "evaluate": {"checkpoints": "last", "samplers": ["ddim"], "steps": [10, 25], "select_by": select_by},
            },
        ]
    )
    (cfg.data_dir).mkdir(parents=True)
    (cfg.stats_path).write_text(json.dumps({"variables": {"z500": {"mean": 5500.0, "std": 250.0, "units": "m"}}}))
    _synthetic_split(cfg, "val", model_factor, seed=1, climate=climate)
    _synthetic_split(cfg, "test", test_factor or model_factor, seed=0, climate=test_climate or climate)
    select(cfg, StageRun(None, None, None))
    collect(cfg, StageRun(None, None, None))
    return cfg, json.loads((cfg.eval_dir / "best.json").read_text())


def test_best_json_says_when_no_point_beats_climatology(tmp_path: Path) -> None:
    import pandas as pd

    cfg, best = _synthetic_sweep(tmp_path, (1.0, 1.01))
    assert best["beats_climatology"] is False and best["any_point_beats_climatology"] is False
    assert best["beats_persistence"] is True  # persistence is 1.5 x worse
    assert "does not beat climatology (CRPSS against climatology-ensemble" in best["statement"]
    assert "No sweep point beats climatology significantly" in best["statement"]
    lo, hi = best["skill"]["climatology"]["interval"]
    assert lo < 0 < hi
    # the two points differ by 1%: not significantly, so the runner-up is named
    assert best["significantly_better"] is False and len(best["runners_up"]) == 1
    assert "not significantly better than 1 of the other 1 point(s) scored there" in best["statement"]
    assert best["checkpoint"] == "step-00000300" and best["guidance_weight"] == 2.0  # what sample.py reads
    table = pd.read_csv(cfg.eval_dir / "summary.csv")
    assert table["kind"].tolist() == (["checkpoint"] * 2 + ["reference"] * 3) * 2
    assert table["split"].tolist() == ["val"] * 5 + ["test"] * 5
    assert best["chosen_on"] == "val" and best["reported_on"] == "test" and best["val_clips"] == 40
    clim = table[table["checkpoint"] == "climatology-ensemble"].iloc[0]
    assert clim["crpss_climatology"] == 0.0 and clim["crpss_climatology_lo"] == 0.0
    assert (table["crps_lo"] <= table["crps"]).all() and (table["crps"] <= table["crps_hi"]).all()
    for name in ("scorecard.png", "summary.png"):
        assert (cfg.eval_dir / name).stat().st_size > 10_000


def test_best_json_says_when_a_point_beats_climatology(tmp_path: Path) -> None:
    _, best = _synthetic_sweep(tmp_path, (1.2, 0.7))
    assert best["steps"] == 25 and best["beats_climatology"] is True and best["beats_persistence"] is True
    assert best["skill"]["climatology"]["value"] == pytest.approx(0.3, abs=0.02)
    assert best["skill"]["climatology"]["interval"][0] > 0
    assert " beats climatology (CRPSS" in best["statement"] and "No sweep point" not in best["statement"]
    assert best["significantly_better"] is True and best["runners_up"] == []
    assert best["selection"]["runners_up"] == []  # significantly better on validation: no runner-up goes to test
    assert "it is the only point scored on test" in best["statement"]
    v = best["variables"]["z500"]
    assert v["crpss_climatology_lo"] > 0 and len(v["crpss_climatology_per_lead"]) == 2


def test_the_choice_never_reads_a_test_score(tmp_path: Path) -> None:
    """Poisoned test scores (the point that is worse on validation is far better on test) change what is reported,
    never what is chosen: the selection is the same bytes, made with the test files unreadable, and best.json
    reports the chosen point's (poisoned) test score."""
    from pipeline.collect import select
    from pipeline.evaluate import point_path
    from pipeline.tracking import StageRun

    clean, best = _synthetic_sweep(tmp_path / "clean", (1.2, 0.7))
    poisoned, worst = _synthetic_sweep(tmp_path / "poisoned", (1.2, 0.7), test_factor=(0.3, 3.0))
    selection = (clean.eval_dir / "selection.json").read_text()
    assert (poisoned.eval_dir / "selection.json").read_text() == selection.replace(
        str(tmp_path / "clean"), str(tmp_path / "poisoned")
    )
    assert best["steps"] == worst["steps"] == 25  # chosen on validation, where 25 steps is better
    assert worst["beats_climatology"] is False and worst["skill"]["climatology"]["value"] < -1  # reported as it is
    assert worst["selection"]["beats_climatology"] is True  # on validation it did
    assert "was chosen as the best of 2 sweep point(s) by crps on 40 validation clips" in worst["statement"]
    # the choice once more with every test file garbage: it does not open them
    for steps in (10, 25):
        point_path(poisoned, "step-00000300", "ddim", steps, "test").write_text("not json")
    (poisoned.eval_dir / "test" / "references.json").write_text("not json")
    select(poisoned, StageRun(None, None, None))
    assert json.loads((poisoned.eval_dir / "selection.json").read_text())["chosen"]["steps"] == 25


@pytest.mark.parametrize(("select_by", "chosen"), [("skill", 25), ("climate", 10), ("both", 25)])
def test_choosing_by_climate_or_both_and_reporting_both_verdicts(tmp_path: Path, select_by: str, chosen: int) -> None:
    """ddim-25 has the better CRPS and ddim-10 the better climate score on validation: each criterion chooses its own
    point, both are on the Pareto front (a tie in rank sums goes to skill), and best.json reports both verdicts on
    test, whichever chose; the climate panel is drawn. Poisoned test climate scores change nothing chosen."""
    cfg, best = _synthetic_sweep(tmp_path / "clean", (1.2, 0.7), climate=(1.1, 4.0), select_by=select_by)
    assert best["steps"] == chosen and best["select_by"] == select_by
    crit = best["by_criterion"]
    assert crit["skill"]["steps"] == 25 and crit["climate"]["steps"] == 10 and crit["both"]["steps"] == 25
    assert crit["climate"]["test_climate_score"] == pytest.approx(1.1) and crit["skill"]["test_score"] is not None
    assert sorted(p["steps"] for p in best["pareto_front"]) == [10, 25]
    assert best["climate"]["score"] == pytest.approx(1.1 if chosen == 10 else 4.0)
    assert best["verdicts"]["climate"].startswith("As a climate model on the test period")
    assert (
        "by skill: step-00000300 ddim-25" in best["statement"]
        and "by climate: step-00000300 ddim-10" in best["statement"]
    )
    assert (cfg.eval_dir / "climate.png").stat().st_size > 10_000
    import pandas as pd

    table = pd.read_csv(cfg.eval_dir / "summary.csv")
    assert set(table.loc[table["kind"] == "checkpoint", "climate_score"]) == {1.1, 4.0}
    poisoned, _ = _synthetic_sweep(
        tmp_path / "poisoned", (1.2, 0.7), climate=(1.1, 4.0), test_climate=(50.0, 0.01), select_by=select_by
    )
    assert (poisoned.eval_dir / "selection.json").read_text() == (cfg.eval_dir / "selection.json").read_text().replace(
        str(tmp_path / "clean"), str(tmp_path / "poisoned")
    )


def test_choosing_by_climate_needs_climate_figures(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"select_by = 'climate'.*evaluate.climate.members"):
        _synthetic_sweep(tmp_path, (1.2, 0.7), select_by="climate")


@pytest.mark.parametrize("members", [4, 0])
def test_scores_streamed_in_batches_equal_the_whole_set(members: int) -> None:
    """A sweep point scores its clips a batch at a time (ScoreStream) so its memory holds one batch's ensemble:
    every figure equals the whole set's, and the whole set's equal the whole-array metrics (masked cells, an
    ensemble and a deterministic forecast)."""
    from pipeline.scoring import ScoreStream

    rng = np.random.default_rng(3)
    clips, frames, context, lat, lon = 7, 5, 2, np.linspace(-60, 60, 6), np.arange(0, 360, 30.0)
    shape = (clips, members, 1, frames, 6, 12) if members else (clips, 1, frames, 6, 12)
    truth_raw = rng.standard_normal((clips, 1, frames, 6, 12))
    truth_raw[:, :, :, 0, :3] = np.nan  # masked cells
    fc_raw = truth_raw[:, None] if members else truth_raw
    fc_raw = np.where(np.isnan(fc_raw), np.nan, 0.8 * np.nan_to_num(fc_raw) + rng.standard_normal(shape))
    names = ["t"]
    truth = clip_dataset(truth_raw, names, lat, lon, False)
    fc = clip_dataset(fc_raw, names, lat, lon, bool(members))
    whole = score(fc, truth, context)["t"]
    stream = ScoreStream(context, clips)
    for part in (slice(0, 2), slice(2, 5), slice(5, 7)):
        stream.add(fc.isel(clip=part), truth.isel(clip=part))
    batched = stream.result()["t"]
    assert batched.keys() == whole.keys()

    def flat(r: dict) -> dict:
        return {k: v for k, v in r.items() if k not in ("units", "per_clip")} | {
            f"per_clip_{k}": v for k, v in r["per_clip"].items()
        }

    for k, v in flat(whole).items():
        np.testing.assert_allclose(
            np.asarray(flat(batched)[k], dtype=float), np.asarray(v, dtype=float), rtol=1e-12, err_msg=k
        )
    f, y = fc["t"].isel(frame=slice(context, None)), truth["t"].isel(frame=slice(context, None))
    spread, _, ratio = metrics.spread_skill(f, y)
    assert whole["spread"] == pytest.approx(spread, rel=1e-12) and whole["spread_skill"] == pytest.approx(
        ratio, rel=1e-12
    )
    assert whole["bias"] == pytest.approx(float(metrics.bias(f, y)), rel=1e-12)
    assert whole["p99_sample"] == pytest.approx(float(np.nanquantile(f.values, 0.99)), rel=1e-12)
    assert whole["p99_truth"] == pytest.approx(float(np.nanquantile(y.values, 0.99)), rel=1e-12)
    assert whole["mean_sample"] == pytest.approx(float(metrics.area_mean(f, list(f.dims))), rel=1e-12)
    assert whole["lag1_autocorr_sample"] == pytest.approx(metrics.lag1_autocorrelation(fc["t"]), rel=1e-12)
    assert whole["rank_histogram"] == metrics.rank_histogram(f, y).tolist()
    assert sum(whole["rank_histogram"]) == int(np.isfinite(y.values).sum())
    assert "spectral_ratio" not in whole  # masked cells: no spectrum
    full = ScoreStream(context, clips)
    for part in (slice(0, 3), slice(3, 7)):
        full.add(fc.fillna(0.0).isel(clip=part), truth.fillna(0.0).isel(clip=part))
    ratios = full.result()["t"]["spectral_ratio"]
    expect = metrics.spectral_ratio(f.fillna(0.0), y.fillna(0.0).broadcast_like(f))
    assert ratios == pytest.approx(expect, rel=1e-12)
