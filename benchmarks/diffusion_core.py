"""Diffusion core on the CPU: network step time, sampler step time, and NFE per sampler.

    python benchmarks/diffusion_core.py [--threads 2]

1. forward+backward time per sample for a tiny and a medium U-Net on a (8 frames, 32 x 64) clip;
2. time per sampler step (one network evaluation + the update) for the tiny network;
3. the number of function evaluations (NFE) each sampler needs on a Gaussian toy with a perfect
   denoiser to bring the variance error below 2 %, 5 % and 10 % (the mean is exact for all).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.diffusion import SAMPLERS, CosineSchedule, UNet, UNetConfig, VDiffusion
from pipeline.diffusion.oracles import GaussianDenoiser

SIZES = {
    "tiny": UNetConfig(channels=2, base_channels=16, channel_mults=(1, 2), attention_levels=(1,), heads=2),
    "medium": UNetConfig(
        channels=2, base_channels=64, channel_mults=(1, 2, 4), num_res_blocks=2, attention_levels=(2,), heads=4
    ),
}


def time_it(fn, repeats: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = (4, 2, 8, 32, 64)
    print(f"torch {torch.__version__}, {args.threads} threads, clip batch {shape}")
    print(f"{'model':<8}{'params':>12}{'fwd+bwd s/sample':>18}{'sampler step s/sample':>23}")
    for name, cfg in SIZES.items():
        model = VDiffusion(UNet(cfg), CosineSchedule())
        n = sum(p.numel() for p in model.parameters())
        x = torch.randn(shape)

        repeats = 2 if name == "medium" else 5
        fb = time_it(lambda m=model, x=x: m.loss(x).mean().backward(), repeats) / shape[0]
        z = torch.randn(shape)
        step = time_it(lambda m=model, z=z: SAMPLERS["ddim"](m, z, 1), repeats) / shape[0]
        print(f"{name:<8}{n:>12,}{fb:>18.4f}{step:>23.4f}")

    print("\nNFE to reach a variance error below a threshold (Gaussian toy, mean 1.5, std 0.5, 40k samples):")
    grid = [5, 10, 15, 20, 25, 35, 50, 75, 100, 150, 200, 300]
    thresholds = (0.10, 0.05, 0.02)
    print(
        f"{'sampler':<12}" + "".join(f"{f'<{int(t * 100)}%':>8}" for t in thresholds) + "   error at 10 / 25 / 50 NFE"
    )
    for sampler in SAMPLERS:
        if sampler.endswith("+langevin"):  # NFE is not the step count, and 1-value items defeat its step rule
            continue
        errs = {}
        for steps in grid:
            z = torch.randn(40_000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
            out = SAMPLERS[sampler](GaussianDenoiser(1.5, 0.5), z, steps, generator=torch.Generator().manual_seed(2))
            errs[steps] = abs(out.var().item() / 0.25 - 1)
        need = [next((s for s in grid if errs[s] < t), None) for t in thresholds]
        row = "".join(f"{(str(s) if s else '>300'):>8}" for s in need)
        print(f"{sampler:<12}{row}   {errs[10]:.3f} / {errs[25]:.3f} / {errs[50]:.3f}")


if __name__ == "__main__":
    main()
