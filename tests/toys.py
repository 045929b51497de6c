"""Toy data sets with known answers, shared by the diffusion tests and benchmarks."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pipeline.diffusion.oracles import GaussianDenoiser

__all__ = ["GaussianDenoiser", "gaussian_nll_reference", "moving_blobs"]  # the exact denoiser lives in the package


def moving_blobs(batch: int, frames: int = 8, size: int = 16, generator: torch.Generator | None = None) -> Tensor:
    """Clips (B, 1, T, size, size) of one Gaussian blob moving one cell per frame eastward on a
    grid that is periodic in longitude; start position random. Values roughly in [-1, 1]."""
    y0 = torch.rand(batch, generator=generator) * (size - 6) + 3
    x0 = torch.rand(batch, generator=generator) * size
    yy = torch.arange(size, dtype=torch.float32)[:, None]
    xx = torch.arange(size, dtype=torch.float32)[None, :]
    out = torch.empty(batch, 1, frames, size, size)
    for t in range(frames):
        cx = (x0 + t)[:, None, None]
        dx = torch.remainder(xx[None] - cx + size / 2, size) - size / 2  # periodic distance
        dy = yy[None] - y0[:, None, None]
        out[:, 0, t] = 2 * torch.exp(-(dx**2 + dy**2) / (2 * 1.5**2)) - 1
    return out


def gaussian_nll_reference(mean: float, std: float) -> float:
    return 0.5 * math.log(2 * math.pi * std**2) + 0.5
