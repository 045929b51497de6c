"""Distilled students against their teacher: CRPS (with the evaluation stage's bootstrap intervals) and wall time
per sample.

    python benchmarks/distill.py --config results/<exp>/config.resolved.yaml [--students 4 8] [--teacher-steps 25 8 4]

Needs a trained experiment and its distillation (``python -m pipeline train``, ``... distill``). On the evaluation's
test clips (``evaluate.test_clips``, ``ensemble``, ``context_frames``, the first of ``evaluate.guidance_weights``),
every forecast extends the given frames exactly as a sweep point does (``pipeline.evaluate.generate_extensions``):
the teacher (``distill``'s first teacher) with DPM-Solver++(2M) at each of ``--teacher-steps`` and each student
with DDIM at its own step count (sampler ``distilled``). Scores come from ``pipeline.scoring.score`` in physical
units; intervals from the same paired bootstrap as collect-eval (``evaluate.bootstrap``, ``bootstrap_block``,
``confidence``). Writes ``benchmarks/out/distill.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import checkpoints, metrics
from pipeline.config import load_config
from pipeline.distill import teacher_file
from pipeline.evaluate import Completion, generate_extensions
from pipeline.scoring import load_eval_clips, score, summarise


def run_forecast(cfg, path: Path, sampler: str, steps: int, device: torch.device) -> dict:
    e = cfg.evaluate
    model, meta = checkpoints.load_inference(path, device)
    test = load_eval_clips(cfg, meta.clip_frames, meta.variables).read()
    t0 = time.perf_counter()
    with torch.no_grad():
        ens = generate_extensions(
            model,
            test.clips,
            Completion(e.context_frames, e.ensemble, sampler, steps, e.guidance_weights[0]),
            cfg.seed,
            device,
            meta.model_config,
        )
    seconds = time.perf_counter() - t0
    variables = score(test.physical(ens), test.truth, e.context_frames)
    n = len(test.clips)
    idx = metrics.bootstrap_indices(n, e.bootstrap, cfg.seed, e.bootstrap_block)
    crps = {}
    for v, r in variables.items():
        s = summarise(r["per_clip"], {}, idx, e.confidence)
        crps[v] = {"crps": s["crps"], "interval": [s["crps_lo"], s["crps_hi"]]}
    return {"seconds_per_sample": seconds / (n * e.ensemble), "test_clips": n, "crps": crps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", "-c", action="append", required=True)
    ap.add_argument("--students", type=int, nargs="+", default=[4, 8], help="students' step counts")
    ap.add_argument("--teacher-steps", type=int, nargs="+", default=[25, 8, 4], help="teacher's DPM-Solver++ steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "distill.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    teacher = teacher_file(cfg)
    forecasts = [(f"teacher dpmpp_2m-{n}", teacher, "dpmpp_2m", n) for n in args.teacher_steps]
    for n in args.students:
        path = cfg.inference_file(checkpoints.student_name(n))
        if not path.exists():
            print(f"no {n}-step student at {path}: skipped (distill.final_steps must reach it)", file=sys.stderr)
            continue
        forecasts.append((f"student distilled-{n}", path, checkpoints.STUDENT_SAMPLER, n))
    rows = {}
    print(f"{'forecast':<26}{'s/sample':>10}  CRPS [{cfg.evaluate.confidence:.0%} interval] per variable")
    for label, path, sampler, steps in forecasts:
        r = run_forecast(cfg, path, sampler, steps, device)
        rows[label] = {"file": str(path), "sampler": sampler, "steps": steps, **r}
        scores = "  ".join(
            f"{v} {c['crps']:.4g} [{c['interval'][0]:.4g}, {c['interval'][1]:.4g}]" for v, c in r["crps"].items()
        )
        print(f"{label:<26}{r['seconds_per_sample']:>10.4f}  {scores}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": str(device), "teacher": str(teacher), "forecasts": rows}, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
