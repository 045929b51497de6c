"""Ablations of the QG recipe through the workflow itself, and their table (issue 27 item 2).

    python benchmarks/ablations.py --run [--only recipe min-snr] [--cores 2]
    python benchmarks/ablations.py [--markdown docs/ablations.md] [--json ablations.json]

``benchmarks/qg-ablations.yaml`` names the base experiment files, a budget and the ablations (overrides).
With ``--run`` each ablation is written to ``results/ablations/<name>.yaml`` (experiment ``qg-ablation-<name>``) and
run by ``snakemake --cores N --configfile <base files> <ablation>`` up to its choice on validation
(``eval/selection.json``): its training, every validation point of its sweep and nothing on test. Then (or alone)
one row per validation point: CRPS and RMSE, their skill against persistence with a 90% paired stationary-bootstrap
interval (Politis-White mean block from the per-clip differences; the same clips and references in every ablation),
and the climate figures of the point's rollouts and unconditional clips (``pipeline/climate.py``: standard
deviation, Wasserstein-1 against the training period's, lag-1 autocorrelation against the period's, zonal power per
band, climate score).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from learning_curve import _climate_row  # noqa: E402

from pipeline.metrics import automatic_block, percentile_interval, skill_score, stationary_indices  # noqa: E402

SPEC = ROOT / "benchmarks" / "qg-ablations.yaml"


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def overrides(spec: dict[str, Any], name: str) -> dict[str, Any]:
    """One ablation's override file: the budget, its own keys, its experiment name."""
    if name not in spec["ablations"]:
        raise SystemExit(f"{SPEC}: no ablation {name!r} (have {', '.join(spec['ablations'])})")
    return _merge(_merge(spec["budget"], spec["ablations"][name] or {}), {"experiment": f"qg-ablation-{name}"})


def run(spec: dict[str, Any], name: str, cores: int, results: Path) -> Path:
    o = overrides(spec, name)
    path = results / "ablations" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(o, sort_keys=False))
    # Snakemake names a target as its rules do: relative to the working directory (the repository)
    target = os.path.relpath(results / o["experiment"] / "eval" / "selection.json", ROOT)
    cmd = ["snakemake", "--cores", str(cores), "--configfile", *spec["configs"], str(path), "--", target]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    return target


def _per_clip(scores: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(CRPS, squared error) per clip, averaged over the forecast frames."""
    pc = scores["per_clip"]
    return np.asarray(pc["crps"], float).mean(axis=1), np.asarray(pc["se"], float).mean(axis=1)


def _skill(
    model: tuple[np.ndarray, np.ndarray], ref: tuple[np.ndarray, np.ndarray], clim: np.ndarray, seed: int
) -> dict[str, Any]:
    """CRPSS and RMSE skill score against ``ref`` with 90% paired stationary-bootstrap intervals; the mean block
    from the per-clip differences to ``ref`` and to the climatological ensemble's CRPS ``clim`` (as collect-eval
    takes it from the difference to climatology), the longest of them."""
    (c, s), (rc, rs) = model, ref
    block = max(automatic_block(d[:, None]) for d in (c - rc, s - rs, c - clim))
    idx = stationary_indices(len(c), 1000, seed, block)
    out: dict[str, Any] = {"block": block}
    for name, a, b, f in (("crpss", c, rc, lambda v: v), ("rmse_ss", s, rs, np.sqrt)):
        value = float(skill_score(f(a.mean()), f(b.mean())))
        draws = skill_score(f(a[idx].mean(axis=1)), f(b[idx].mean(axis=1)))
        lo, hi = percentile_interval(draws[:, None], 0.9)
        out[name] = [value, float(lo[0]), float(hi[0])]
    return out


def rows(results: Path, name: str, experiment: str, variable: str | None = None) -> list[dict[str, Any]]:
    """One row per validation point of an ablation's sweep."""
    val = results / experiment / "eval" / "val"
    refs = json.loads((val / "references.json").read_text())["references"]
    variable = variable or next(iter(refs["persistence"]["variables"]))
    persistence = _per_clip(refs["persistence"]["variables"][variable])
    clim = _per_clip(refs["climatology-ensemble"]["variables"][variable])[0]
    out = []
    for f in sorted(val.glob("step-*/*.json")):
        point = json.loads(f.read_text())
        for res in point["results"]:
            v = res["variables"][variable]
            one = {**point, "results": [res]}
            row = {
                "ablation": name,
                "checkpoint_step": point["checkpoint_step"],
                "sampler": point["sampler"],
                "steps": point["steps"],
                "guidance_weight": res["guidance_weight"],
                "crps": v["crps"],
                "rmse": v["rmse"],
                **_skill(_per_clip(v), persistence, clim, seed=0),
                **_climate_row(one, variable),
            }
            out.append(row)
    if not out:
        raise SystemExit(f"{val}: no validation points (run with --run)")
    return out


def markdown(table: list[dict[str, Any]]) -> str:
    def iv(x: list[float]) -> str:
        return f"{x[0]:.3f} [{x[1]:.3f}, {x[2]:.3f}]"

    head = (
        "| ablation | point | CRPS | RMSE | CRPSS vs pers. | RMSE SS vs pers. | climate score | rollout std | "
        "uncond. std | rollout W1 / yardstick | uncond. W1 / yardstick | rollout lag-1 gap | rollout power k1-4 "
        "/ k4-8 / k8-16 |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in table:
        power = " / ".join(f"{r[k]:.2f}" for k in sorted(r) if k.startswith("rollouts_power_"))
        lines.append(
            f"| {r['ablation']} | {r['sampler']}-{r['steps']} w={r['guidance_weight']:g} | {r['crps']:.2f} | "
            f"{r['rmse']:.2f} | {iv(r['crpss'])} | {iv(r['rmse_ss'])} | {r.get('climate_score', float('nan')):.3f} | "
            f"{r.get('rollouts_std_ratio', float('nan')):.3f} | {r.get('unconditional_std_ratio', float('nan')):.3f} | "
            f"{r.get('rollouts_w1_yardstick', float('nan')):.2f} | {r.get('unconditional_w1_yardstick', float('nan')):.2f} | "
            f"{r.get('rollouts_lag1_gap', float('nan')):+.3f} | {power} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", action="store_true", help="run the missing ablations through the workflow first")
    ap.add_argument("--only", nargs="+", default=None, help="these ablations only")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--results", type=Path, default=ROOT / "results")
    ap.add_argument("--markdown", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    spec = yaml.safe_load(SPEC.read_text())
    names = args.only or list(spec["ablations"])
    table = []
    for name in names:
        exp = overrides(spec, name)["experiment"]
        if args.run and not (args.results / exp / "eval" / "selection.json").exists():
            run(spec, name, args.cores, args.results)
        if (args.results / exp / "eval" / "val" / "references.json").exists():
            table.extend(rows(args.results, name, exp))
        else:
            print(f"{name}: not run ({args.results / exp} has no validation scores)", flush=True)
    text = markdown(table)
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(table, indent=1, default=float))


if __name__ == "__main__":
    main()
