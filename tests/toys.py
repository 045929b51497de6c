"""Toy data sets with known answers, shared by the diffusion tests and benchmarks."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pipeline.diffusion.objective import Prediction, v_from_x_eps
from pipeline.diffusion.schedule import CosineSchedule, alpha_sigma


class GaussianDenoiser:
    """Exact ``E[x | z_t]`` for data ``x ~ N(mean, std^2)`` elementwise: a perfect denoiser."""

    def __init__(self, mean: float, std: float, schedule: CosineSchedule | None = None):
        self.mean = mean
        self.std = std
        self.schedule = schedule or CosineSchedule()
        self.calls = 0

    def predict(self, z: Tensor, logsnr: Tensor, cond: object = None) -> Prediction:
        self.calls += 1
        a, s = alpha_sigma(logsnr.to(torch.float64))
        a = a.reshape(-1, *([1] * (z.ndim - 1)))
        s = s.reshape(-1, *([1] * (z.ndim - 1)))
        var = self.std**2
        x = self.mean + a * var / (a**2 * var + s**2) * (z - a * self.mean)
        eps = (z - a * x) / s
        return Prediction(v=v_from_x_eps(x, eps, a.flatten(), s.flatten()), x=x, eps=eps)


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
