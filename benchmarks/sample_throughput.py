"""Sampling throughput vs batch size on the trained default model (clips/s, frames/s): clips dated like the first
test clip, with every condition the network reads (day of year, static and boundary fields, forcings) as the
sample stage gives them.

    python benchmarks/sample_throughput.py --config config/config.yaml [--batch 1 4 8 16] [--steps 25]

Uses the experiment's last checkpoint (run the workflow first), the configured sampler, and one
generator per clip as ``python -m pipeline sample`` does. On a GPU it also times bf16 autocast.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.checkpoints import load_inference
from pipeline.config import load_config
from pipeline.data.conditions import conditioner
from pipeline.data.io import open_store
from pipeline.data.times import regular_times
from pipeline.diffusion.objective import randn
from pipeline.diffusion.samplers import get_sampler


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", action="append", default=None)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--clips", type=int, default=16, help="clips generated per measurement")
    args = ap.parse_args()
    cfg = load_config(args.config or ["config/config.yaml"])
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    tag = cfg.kept_checkpoints()[-1]
    model, meta = load_inference(cfg.inference_file(tag), device)
    c, f = len(meta.variables), meta.clip_frames
    store = open_store(cfg.normalised_path)
    h, w = store.sizes["latitude"], store.sizes["longitude"]
    sampler = get_sampler(
        cfg.sample.sampler, langevin_snr=cfg.sample.langevin_snr, langevin_steps=cfg.sample.langevin_steps
    )
    times = store["time"].values
    first = times[(store["split"].values == 3).argmax()]  # the first test step
    dates = regular_times(times, first, f)
    conditions = conditioner(
        meta.model_config,
        store,
        cfg.stats_path,
        cfg.data.forcings,
        cfg.data.scenario_of("test"),
        cfg.data.run_of("test"),
    )
    print(
        f"checkpoint {tag}, clip {c} x {f} x {h} x {w}, sampler {cfg.sample.sampler} {args.steps} steps, "
        f"device {device}, {torch.get_num_threads()} threads"
    )
    modes = [("fp32", None)] + ([("bf16", torch.bfloat16)] if device.type == "cuda" else [])
    print(f"{'precision':<10}{'batch':>6}{'clips/s':>10}{'frames/s':>10}")
    for name, dtype in modes:
        for b in args.batch:
            n = max(b, args.clips // b * b)

            def run(count: int, b: int = b, dtype: torch.dtype | None = dtype) -> None:
                for i in range(0, count, b):
                    gens = [torch.Generator(device=device).manual_seed(j) for j in range(i, i + b)]
                    cond = conditions([dates] * b, device)
                    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                        sampler(
                            model,
                            randn((b, c, f, h, w), gens, device, torch.float32),
                            args.steps,
                            cond=cond,
                            generator=gens,
                        )

            run(b)  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            run(n)
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            print(f"{name:<10}{b:>6}{n / dt:>10.2f}{n * f / dt:>10.1f}")


if __name__ == "__main__":
    main()
