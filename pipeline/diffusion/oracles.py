"""Denoisers with a known answer: the exact posterior of Gaussian data, for checking samplers, guidance and
distillation against closed forms (tests and benchmarks use them; nothing in the stages does)."""

from __future__ import annotations

import torch
from torch import Tensor

from pipeline.diffusion.objective import Prediction, v_from_x_eps
from pipeline.diffusion.schedule import CosineSchedule, alpha_sigma

__all__ = ["GaussianDenoiser"]


class GaussianDenoiser:
    """Exact ``E[x | z_t]`` for data ``x ~ N(mean, std^2)`` elementwise: a perfect denoiser.

    With ``z_t = alpha x + sigma eps``, ``E[x | z_t] = mean + alpha std^2 / (alpha^2 std^2 + sigma^2) (z_t - alpha mean)``;
    eps and v follow from it. ``calls`` counts the network evaluations a sampler made.
    """

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
