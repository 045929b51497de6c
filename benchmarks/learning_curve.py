"""Learning curves of an experiment whose sweep scored every kept checkpoint (issue 27 item 1).

    snakemake --cores 2 --configfile config/experiments/qg-turbulence.yaml     # keeps and scores every 300th step
    python benchmarks/learning_curve.py --config config/config.yaml --config config/experiments/qg-turbulence.yaml \
        [--out docs/images/learning_curve.png] [--json learning_curve.json]

Reads what the workflow wrote (nothing is generated here): the training loss (``train_log.jsonl``), each checkpoint's
validation scores with their intervals against the references (``eval/summary.csv``, rows of the validation split)
and each checkpoint's climate figures (``eval/val/<checkpoint>/<point>.json``: free rollouts and unconditional clips
against the validation period, beside the training period's figures in the same role). Prints one table row per
checkpoint, the trend over the last half of the curve (change per doubling of the steps, so "still improving" and
"flat" can be told apart), and draws the curves against the targets of issue 27:

- CRPS and RMSE skill against persistence above 0 (with their intervals);
- standard deviation of rollouts and unconditional clips within 0.9-1.1 of the period's;
- Wasserstein-1 at most 1.5 times the training period's (same role, whole-period yardstick);
- zonal power 0.8-1.25 of the period's in every band;
- lag-1 autocorrelation of the rollouts within 0.05 of the period's;
- the rollouts' drift of area mean and spread (first to last quarter) inside the 5-95% range of real windows of
  their length (as a ratio: distance from the real median over half the range, at most 1).

Validation only: the curve is a diagnosis made where choices are made; the chosen checkpoint's test figures are in
``eval/best.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import load_config

# figure -> (label, low target, high target) for the climate figures of a set ("rollouts" or "unconditional")
TARGETS = {
    "std_ratio": ("std / period's", 0.9, 1.1),
    "w1_yardstick": ("W1 / training period's", None, 1.5),
    "lag1_gap": ("lag-1 autocorr. - period's", -0.05, 0.05),
}
SPECTRAL = (0.8, 1.25)


def _train_loss(exp: Path, window: int = 5) -> pd.DataFrame:
    rows = [json.loads(line) for line in (exp / "train_log.jsonl").read_text().splitlines() if line.strip()]
    if not rows:
        raise SystemExit(f"{exp / 'train_log.jsonl'}: no training log lines")
    df = pd.DataFrame([{"step": r["step"], "loss": r["loss"]} for r in rows if "loss" in r])
    df["smooth"] = df["loss"].rolling(window, min_periods=1).mean()
    return df


def _climate_row(point: dict[str, Any], variable: str) -> dict[str, float]:
    """The climate figures of one validation point that the targets name."""
    res = point["results"][0]
    c = (res.get("climate") or {}).get("variables", {}).get(variable)
    if c is None:
        return {}
    out: dict[str, float] = {"climate_score": float(res["climate"]["score"])}
    for kind in ("rollouts", "unconditional"):
        s = c.get(kind)
        if not s:
            continue
        f, y = s["figures"], s["yardstick"]
        out[f"{kind}_std_ratio"] = f["std_ratio"]
        out[f"{kind}_w1_yardstick"] = f["w1_rel"] / y["w1_rel"] if y["w1_rel"] > 0 else float("inf")
        out[f"{kind}_lag1_gap"] = f["autocorrelation"][0] - f["real_autocorrelation"][0]
        for band, v in f["spectral_ratio"].items():
            out[f"{kind}_power_{band}"] = v
        if kind == "rollouts":
            out["rollout_frames"] = float(res["climate"]["frames"])
            for name in ("drift_area_mean", "drift_spread"):
                if name in s.get("ratios", {}):
                    out[f"rollouts_{name}"] = s["ratios"][name]
            drift = c.get("drift") or {}
            for k in ("area_mean", "spread"):  # the change first to last quarter, beside the real windows' range
                q = drift.get(f"real_{k}_change_q05_q50_q95")
                if q is not None:
                    out[f"rollouts_{k}_change"] = drift[f"{k}_change"]
                    out[f"real_{k}_change_q05"], out[f"real_{k}_change_q95"] = q[0], q[2]
        else:
            out["unconditional_fields"] = float(f["fields"])
    return out


def curve(exp: Path, variable: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """(per-checkpoint table, training loss, the references' validation scores) from an experiment's results."""
    summary = pd.read_csv(exp / "eval" / "summary.csv")
    val = summary[summary["split"] == "val"]
    if val.empty:
        raise SystemExit(f"{exp / 'eval' / 'summary.csv'}: no validation rows (run the workflow to collect_eval)")
    variable = variable or str(val["variable"].iloc[0])
    val = val[val["variable"] == variable]
    points = val[val["kind"] == "checkpoint"].sort_values("checkpoint_step")
    if points["checkpoint"].nunique() < 2:
        raise SystemExit(
            f"{exp}: {points['checkpoint'].nunique()} checkpoint(s) scored; a curve needs evaluate.checkpoints: all"
        )
    keep = [
        "checkpoint",
        "checkpoint_step",
        "sampler",
        "steps",
        "guidance_weight",
        "crps",
        "crps_lo",
        "crps_hi",
        "rmse",
        "crpss_persistence",
        "crpss_persistence_lo",
        "crpss_persistence_hi",
        "rmse_ss_persistence",
        "rmse_ss_persistence_lo",
        "rmse_ss_persistence_hi",
        "crpss_climatology",
        "crpss_climatology_lo",
        "crpss_climatology_hi",
    ]
    rows = []
    for _, p in points.iterrows():
        row = {k: p[k] for k in keep}
        f = exp / "eval" / "val" / p["checkpoint"] / f"{p['sampler']}-{int(p['steps'])}.json"
        row.update(_climate_row(json.loads(f.read_text()), variable))
        rows.append(row)
    refs = {
        r["checkpoint"]: {"crps": r["crps"], "rmse": r["rmse"]} for _, r in val[val["kind"] == "reference"].iterrows()
    }
    flat = {f"{name}_{m}": v for name, d in refs.items() for m, v in d.items()}
    return pd.DataFrame(rows), _train_loss(exp), flat


def trends(table: pd.DataFrame) -> dict[str, float]:
    """Least-squares change per doubling of the steps over the last half of the checkpoints (at least 3)."""
    n = len(table)
    last = table.iloc[max(0, min(n // 2, n - 3)) :]
    x = np.log2(last["checkpoint_step"].to_numpy(float))
    out = {}
    for col in table.columns:
        if col in ("checkpoint", "sampler", "checkpoint_step", "steps", "guidance_weight") or col.endswith(
            ("_lo", "_hi")
        ):
            continue
        y = pd.to_numeric(last[col], errors="coerce").to_numpy(float)
        if len(x) >= 2 and np.isfinite(y).all():
            out[col] = float(np.polyfit(x, y, 1)[0])
    return out


def _drift_panels(ratio: Any, change: Any, table: pd.DataFrame) -> None:
    """The rollouts' drift against the real windows of their length: as ratios (inside at most 1) and as the
    area mean's change beside the real 5-95% range."""
    s = table["checkpoint_step"].to_numpy()
    a = ratio
    for k, colour in (("area_mean", "C5"), ("spread", "C6")):
        if f"rollouts_drift_{k}" in table:
            a.plot(s, table[f"rollouts_drift_{k}"], marker="o", color=colour, label=k.replace("_", " "))
    a.axhspan(0, 1, color="g", alpha=0.12, label="inside the real 5-95%")
    a.set(xlabel="checkpoint step", title="rollouts' drift: |change - real median| / half range")
    a.legend(fontsize=8)
    a = change
    if "rollouts_area_mean_change" in table:
        a.plot(s, table["rollouts_area_mean_change"], marker="o", color="C5", label="rollouts (member mean)")
        a.fill_between(
            s,
            table["real_area_mean_change_q05"],
            table["real_area_mean_change_q95"],
            color="g",
            alpha=0.12,
            label="real windows, 5-95%",
        )
    a.axhline(0, color="k", lw=0.8)
    a.set(xlabel="checkpoint step", title="area-mean change, first to last quarter")
    a.legend(fontsize=8)


def plot(table: pd.DataFrame, loss: pd.DataFrame, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = table["checkpoint_step"].to_numpy()
    fig, ax = plt.subplots(2, 4, figsize=(19, 8), constrained_layout=True)
    a = ax[0, 0]
    a.plot(loss["step"], loss["loss"], color="0.8", lw=0.8, label="loss (logged)")
    a.plot(loss["step"], loss["smooth"], color="k", label="running mean")
    a.set(xlabel="step", ylabel="training loss", title="training loss")
    a.legend()
    a = ax[0, 1]
    for col, colour, name in (("crpss_persistence", "C0", "CRPSS"), ("rmse_ss_persistence", "C1", "RMSE SS")):
        a.errorbar(
            s,
            table[col],
            yerr=[table[col] - table[f"{col}_lo"], table[f"{col}_hi"] - table[col]],
            color=colour,
            marker="o",
            capsize=3,
            label=f"{name} vs persistence",
        )
    a.errorbar(
        s,
        table["crpss_climatology"],
        yerr=[
            table["crpss_climatology"] - table["crpss_climatology_lo"],
            table["crpss_climatology_hi"] - table["crpss_climatology"],
        ],
        color="C2",
        marker="s",
        capsize=3,
        label="CRPSS vs climatology",
    )
    a.axhline(0, color="k", lw=0.8)
    a.set(xlabel="checkpoint step", ylabel="skill score (90% interval)", title="skill on validation")
    a.legend(fontsize=8)
    panels = [(ax[0, 2], "std_ratio"), (ax[1, 0], "w1_yardstick"), (ax[1, 2], "lag1_gap")]
    for a, fig_name in panels:
        label, lo, hi = TARGETS[fig_name]
        for kind, colour in (("rollouts", "C3"), ("unconditional", "C4")):
            col = f"{kind}_{fig_name}"
            if col in table and not (fig_name == "lag1_gap" and kind == "unconditional"):
                a.plot(s, table[col], marker="o", color=colour, label=kind)
        if lo is not None and hi is not None:
            a.axhspan(lo, hi, color="g", alpha=0.12, label="target")
        elif hi is not None:
            a.axhspan(0, hi, color="g", alpha=0.12, label="target")
        a.set(xlabel="checkpoint step", title=label)
        a.legend(fontsize=8)
    a = ax[1, 1]
    for col in [c for c in table.columns if c.startswith("rollouts_power_")]:
        a.plot(s, table[col], marker="o", label=col.removeprefix("rollouts_power_"))
    a.axhspan(*SPECTRAL, color="g", alpha=0.12, label="target")
    a.set(xlabel="checkpoint step", title="rollouts' zonal power / period's, per band")
    a.legend(fontsize=8)
    _drift_panels(ax[0, 3], ax[1, 3], table)
    for a in ax.flat:
        a.set_xscale("log", base=2)
    for a in list(ax.flat)[1:]:
        a.set_xticks(s, [str(int(v)) for v in s], fontsize=8)
        a.minorticks_off()
    fig.suptitle(title)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", action="append", default=None)
    ap.add_argument("--variable", default=None)
    ap.add_argument("--out", type=Path, default=None, help="figure (default <results>/eval/learning_curve.png)")
    ap.add_argument("--json", type=Path, default=None, help="also write the table and trends as JSON")
    args = ap.parse_args()
    cfg = load_config(args.config or ["config/config.yaml"])
    exp = cfg.exp_dir
    table, loss, refs = curve(exp, args.variable)
    tr = trends(table)
    pd.set_option("display.width", 200)
    cols = [
        "checkpoint_step",
        "crps",
        "rmse",
        "crpss_persistence",
        "rmse_ss_persistence",
        "climate_score",
        "rollouts_std_ratio",
        "unconditional_std_ratio",
        "rollouts_w1_yardstick",
        "unconditional_w1_yardstick",
        "rollouts_lag1_gap",
        "rollouts_area_mean_change",
        "rollouts_drift_area_mean",
        "rollouts_drift_spread",
    ] + [c for c in table.columns if c.startswith("rollouts_power_")]
    cols = [c for c in cols if c in table]
    print(
        f"{cfg.experiment}: {len(table)} checkpoints scored on validation; references: "
        + ", ".join(f"{k} {v:.4g}" for k, v in refs.items())
    )
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("change per doubling of the steps over the last half of the curve:")
    for k in cols[1:]:
        if k in tr:
            print(f"  {k}: {tr[k]:+.4f}")
    out = args.out or exp / "eval" / "learning_curve.png"
    plot(table, loss, out, f"{cfg.experiment}: learning curve (validation, {len(table)} checkpoints)")
    print(f"figure: {out}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"table": table.to_dict(orient="records"), "trends": tr, "references": refs}, indent=1, default=float
            )
        )


if __name__ == "__main__":
    main()
