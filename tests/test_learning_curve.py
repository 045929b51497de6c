"""benchmarks/learning_curve.py on a results folder written here: the table, the trends and the figure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import benchmark

ROOT = Path(__file__).resolve().parents[1]


def _module():
    return benchmark("learning_curve")


def _figures(std: float, w1: float, lag1: float) -> dict:
    return {
        "std_ratio": std,
        "w1_rel": w1,
        "autocorrelation": [lag1, 0.5],
        "real_autocorrelation": [0.9, 0.7],
        "spectral_ratio": {"k1-4": std, "k4-8": 1.0},
        "fields": 64,
    }


def _results(tmp: Path, steps: list[int]) -> Path:
    exp = tmp / "exp"
    rows = []
    for i, step in enumerate(steps):
        ck = f"step-{step:08d}"
        crps = 10.0 - np.log2(step)  # falls by 1 per doubling
        rows.append(
            {
                "split": "val",
                "kind": "checkpoint",
                "checkpoint": ck,
                "checkpoint_step": step,
                "sampler": "ddim",
                "steps": 10,
                "guidance_weight": 0.0,
                "variable": "q",
                "crps": crps,
                "crps_lo": crps - 0.1,
                "crps_hi": crps + 0.1,
                "rmse": 2 * crps,
                **{
                    f"{m}{e}": 0.1 * i
                    for m in ("crpss_persistence", "rmse_ss_persistence", "crpss_climatology")
                    for e in ("", "_lo", "_hi")
                },
            }
        )
        point = {
            "results": [
                {
                    "climate": {
                        "score": 1.0 + 0.5**i,
                        "frames": 112,
                        "variables": {
                            "q": {
                                "rollouts": {
                                    "figures": _figures(0.8, 0.1, 0.8),
                                    "yardstick": _figures(1.0, 0.05, 0.9),
                                    "ratios": {"drift_area_mean": 0.5, "drift_spread": 0.2},
                                },
                                "unconditional": {
                                    "figures": _figures(1.0, 0.05, 0.9),
                                    "yardstick": _figures(1.0, 0.05, 0.9),
                                },
                                "drift": {
                                    "area_mean_change": 0.1 * i,
                                    "real_area_mean_change_q05_q50_q95": [-0.8, 0.0, 0.6],
                                    "spread_change": 0.0,
                                    "real_spread_change_q05_q50_q95": None,
                                },
                            }
                        },
                    }
                }
            ]
        }
        (exp / "eval" / "val" / ck).mkdir(parents=True)
        (exp / "eval" / "val" / ck / "ddim-10.json").write_text(json.dumps(point))
    rows.append(
        {
            "split": "val",
            "kind": "reference",
            "checkpoint": "persistence",
            "checkpoint_step": 0,
            "variable": "q",
            "crps": 5.0,
            "rmse": 7.0,
        }
    )
    rows.append({**rows[0], "split": "test"})
    pd.DataFrame(rows).to_csv(exp / "eval" / "summary.csv", index=False)
    (exp / "train_log.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 1 / s}) + "\n" for s in range(10, 810, 10))
    )
    return exp


def test_the_curve_reads_every_checkpoint_and_the_trend_is_the_change_per_doubling(tmp_path: Path) -> None:
    lc = _module()
    exp = _results(tmp_path, [100, 200, 400, 800])
    table, loss, refs = lc.curve(exp)
    assert table["checkpoint_step"].tolist() == [100, 200, 400, 800]
    assert refs == {"persistence_crps": 5.0, "persistence_rmse": 7.0}
    assert table["rollouts_w1_yardstick"].tolist() == pytest.approx([2.0] * 4)
    assert table["rollouts_lag1_gap"].tolist() == pytest.approx([-0.1] * 4)
    assert table["unconditional_fields"].tolist() == [64] * 4
    assert table["rollouts_area_mean_change"].tolist() == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert table["real_area_mean_change_q95"].tolist() == [0.6] * 4 and "rollouts_spread_change" not in table
    tr = lc.trends(table)
    assert tr["crps"] == pytest.approx(-1.0) and tr["rmse"] == pytest.approx(-2.0)
    assert tr["rollouts_std_ratio"] == pytest.approx(0.0, abs=1e-12)
    assert "crps_lo" not in tr
    out = tmp_path / "curve.png"
    lc.plot(table, loss, out, "test")
    assert out.stat().st_size > 10_000


def test_one_checkpoint_is_not_a_curve(tmp_path: Path) -> None:
    lc = _module()
    with pytest.raises(SystemExit, match=r"evaluate\.checkpoints: all"):
        lc.curve(_results(tmp_path, [100]))


def _ablations():
    return benchmark("ablations")


def test_every_ablation_is_a_valid_experiment_on_top_of_the_budget() -> None:
    import yaml

    from pipeline.config import load_config

    ab = _ablations()
    spec = yaml.safe_load(ab.SPEC.read_text())
    assert "recipe" in spec["ablations"]
    for name in spec["ablations"]:
        o = ab.overrides(spec, name)
        assert o["experiment"] == f"qg-ablation-{name}"
        assert o["train"]["steps"] == spec["budget"]["train"]["steps"]  # the budget stays under the ablation's keys
        files = [yaml.safe_load((ROOT / "config" / "config.yaml").read_text())]
        files += [yaml.safe_load((ROOT / p).read_text()) for p in spec["configs"]] + [o]
        merged = files[0]
        for f in files[1:]:
            merged = ab._merge(merged, f)
        cfg = load_config(merged)
        assert cfg.evaluate.climate.frames == 112 and cfg.evaluate.climate.unconditional == 16
    assert ab._merge({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}}
    with pytest.raises(SystemExit, match="no ablation"):
        ab.overrides(spec, "bogus")


def test_ablation_skill_is_the_skill_score_with_an_interval_around_it() -> None:
    ab = _ablations()
    rng = np.random.default_rng(0)
    ref_c, ref_s = 2 + rng.random(40), 5 + rng.random(40)
    model = (0.8 * ref_c, 0.64 * ref_s)  # CRPS 20% better, RMSE sqrt(0.64) = 0.8: both skill scores 0.2
    out = ab._skill(model, (ref_c, ref_s), 3 + rng.random(40), seed=0)
    for name in ("crpss", "rmse_ss"):
        value, lo, hi = out[name]
        assert value == pytest.approx(0.2) and lo <= value <= hi and hi - lo < 0.05
