"""Quality vs NFE for each sampler on the trained default model, and samples/s.

    python benchmarks/eval_nfe.py --config config/config.yaml [--steps 10 25 50 100 250]

Uses the experiment's final checkpoint and test clips (run the workflow first): each test clip's
first ``evaluate.context_frames`` frames are given, an ensemble generates the rest with
reconstruction guidance, and CRPS / RMSE (physical units) and the spread/skill ratio are printed
per sampler and step count.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.checkpoints import load_inference
from pipeline.config import load_config
from pipeline.data.clips import ClipDataset
from pipeline.data.evalclips import clip_dataset, pick_test_clips
from pipeline.data.io import open_store
from pipeline.data.stats import denormalise, read_stats
from pipeline.diffusion import SAMPLERS
from pipeline.evaluate import Completion, generate_extensions
from pipeline.scoring import score


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", action="append", default=None)
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50, 100, 250])
    args = ap.parse_args()
    cfg = load_config(args.config or ["config/config.yaml"])
    e = cfg.evaluate
    model, meta = load_inference(cfg.final_checkpoint)
    ds = ClipDataset(cfg.normalised_path, "test", meta.clip_frames, 1, variables=meta.variables)
    clips = [ds[int(i)] for i in pick_test_clips(len(ds), e.test_clips, e.test_stride)]  # the sweep's clips
    store = open_store(cfg.normalised_path)
    lat, lon = store["latitude"].values, store["longitude"].values
    stats = read_stats(cfg.stats_path)
    names = meta.variables
    truth = denormalise(clip_dataset(np.stack([c["x"].numpy() for c in clips]), names, lat, lon, False), stats)
    print(
        f"checkpoint step {meta.step}, {len(clips)} test clips x {e.ensemble} members, "
        f"{e.context_frames} given frames, guidance w_r = {e.guidance_weights[0]}, {torch.get_num_threads()} threads"
    )
    v = names[0]
    print(f"{'sampler':<11}{'steps':>6}{f'CRPS {v}':>12}{f'RMSE {v}':>12}{'spread/skill':>14}{'samples/s':>11}")
    for sampler in SAMPLERS:
        for steps in args.steps:
            t0 = time.perf_counter()
            ens = generate_extensions(
                model,
                clips,
                Completion(e.context_frames, e.ensemble, sampler, steps, e.guidance_weights[0]),
                cfg.seed,
                torch.device("cpu"),
                meta.model_config,
            )
            rate = len(clips) * e.ensemble / (time.perf_counter() - t0)
            r = score(denormalise(clip_dataset(ens, names, lat, lon, True), stats), truth, e.context_frames)[v]
            print(f"{sampler:<11}{steps:>6}{r['crps']:>12.2f}{r['rmse']:>12.2f}{r['spread_skill']:>14.3f}{rate:>11.2f}")


if __name__ == "__main__":
    main()
