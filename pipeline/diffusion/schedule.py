"""Noise schedules of continuous-time variance-preserving diffusion.

A schedule maps diffusion time ``t`` in [0, 1] to the log signal-to-noise ratio
``logsnr = log(alpha^2 / sigma^2)`` (seed 000, eq. 2.7), strictly decreasing in ``t``.
Everything downstream (objective, samplers) only needs ``logsnr``; alpha and sigma follow
from it through the variance-preserving identity ``alpha^2 + sigma^2 = 1``.

Arithmetic is done in float64 and cast back: ``tan``/``arctan`` near the truncation
bounds (+-30) lose digits in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "CosineSchedule",
    "LearnedSchedule",
    "Schedule",
    "alpha_sigma",
    "logsnr_cosine",
    "logsnr_cosine_shifted",
    "t_from_logsnr_cosine",
    "t_from_logsnr_cosine_shifted",
]


def _f64(x: Tensor | float) -> Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def _truncation(logsnr_min: float, logsnr_max: float) -> tuple[float, float]:
    """Angles ``(pi/2) t_0`` and ``(pi/2) t_1`` of seed eqs. 2.9-2.10 (A.21-A.22)."""
    if not logsnr_min < logsnr_max:
        msg = f"logsnr_min ({logsnr_min}) must be smaller than logsnr_max ({logsnr_max})"
        raise ValueError(msg)
    return math.atan(math.exp(-0.5 * logsnr_max)), math.atan(math.exp(-0.5 * logsnr_min))


def logsnr_cosine(t: Tensor, logsnr_min: float = -30.0, logsnr_max: float = 30.0) -> Tensor:
    """Truncated continuous-time alpha-cosine schedule, seed eq. 2.8 (A.24).

    ``f(t) = -2 log tan((pi/2)(t_0 + t (t_1 - t_0)))`` so that ``f(0) = logsnr_max`` and
    ``f(1) = logsnr_min``.
    """
    a, b = _truncation(logsnr_min, logsnr_max)
    t64 = _f64(t)
    out = -2.0 * torch.log(torch.tan(a + t64 * (b - a)))
    return out.to(t.dtype if isinstance(t, Tensor) and t.is_floating_point() else torch.float32)


def t_from_logsnr_cosine(logsnr: Tensor, logsnr_min: float = -30.0, logsnr_max: float = 30.0) -> Tensor:
    """Inverse of :func:`logsnr_cosine`, from seed eq. A.20 rescaled by A.21-A.22."""
    a, b = _truncation(logsnr_min, logsnr_max)
    l64 = _f64(logsnr)
    out = (torch.atan(torch.exp(-0.5 * l64)) - a) / (b - a)
    return out.to(logsnr.dtype if isinstance(logsnr, Tensor) else torch.float32)


def logsnr_cosine_shifted(t: Tensor, logsnr_min: float = -30.0, logsnr_max: float = 30.0, shift: float = 0.0) -> Tensor:
    """Shifted cosine schedule of simple diffusion (Hoogeboom et al. 2023).

    ``logsnr(t) = cosine(t) + shift`` with ``shift = 2 log(base_resolution / resolution)``;
    the cosine part is truncated to ``[logsnr_min - shift, logsnr_max - shift]`` so that the
    shifted schedule still spans exactly ``[logsnr_min, logsnr_max]``.
    """
    return logsnr_cosine(t, logsnr_min - shift, logsnr_max - shift) + shift


def t_from_logsnr_cosine_shifted(
    logsnr: Tensor, logsnr_min: float = -30.0, logsnr_max: float = 30.0, shift: float = 0.0
) -> Tensor:
    """Inverse of :func:`logsnr_cosine_shifted`."""
    return t_from_logsnr_cosine(logsnr - shift, logsnr_min - shift, logsnr_max - shift)


def alpha_sigma(logsnr: Tensor) -> tuple[Tensor, Tensor]:
    """``alpha = sqrt(sigmoid(logsnr))``, ``sigma = sqrt(sigmoid(-logsnr))`` (seed eqs. 2.11-2.12)."""
    l64 = _f64(logsnr)
    alpha = torch.exp(0.5 * torch.nn.functional.logsigmoid(l64))
    sigma = torch.exp(0.5 * torch.nn.functional.logsigmoid(-l64))
    dtype = logsnr.dtype if isinstance(logsnr, Tensor) and logsnr.is_floating_point() else torch.float32
    return alpha.to(dtype), sigma.to(dtype)


class Schedule(nn.Module):
    """Base class: ``schedule(t) -> logsnr`` and ``schedule.t_of(logsnr) -> t``."""

    logsnr_min: float
    logsnr_max: float

    def forward(self, t: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def t_of(self, logsnr: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def dlogsnr_dt(self, t: Tensor) -> Tensor:
        """Derivative by autograd; subclasses with a closed form override it."""
        t = t.detach().to(torch.float64).requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self(t).sum(), t)
        return g


@dataclass(frozen=True)
class _CosineParams:
    logsnr_min: float = -30.0
    logsnr_max: float = 30.0
    shift: float = 0.0


class CosineSchedule(Schedule):
    """Truncated alpha-cosine schedule (seed eq. 2.8), optionally shifted (simple diffusion).

    Args:
        logsnr_min: logsnr at t = 1 (seed default -30).
        logsnr_max: logsnr at t = 0 (seed default 30).
        shift: ``2 log(base / resolution)``; 0 gives the seed's schedule.
    """

    def __init__(self, logsnr_min: float = -30.0, logsnr_max: float = 30.0, shift: float = 0.0):
        super().__init__()
        _truncation(logsnr_min - shift, logsnr_max - shift)
        self.logsnr_min = float(logsnr_min)
        self.logsnr_max = float(logsnr_max)
        self.shift = float(shift)

    def forward(self, t: Tensor) -> Tensor:
        return logsnr_cosine_shifted(t, self.logsnr_min, self.logsnr_max, self.shift)

    def t_of(self, logsnr: Tensor) -> Tensor:
        return t_from_logsnr_cosine_shifted(logsnr, self.logsnr_min, self.logsnr_max, self.shift)

    def dlogsnr_dt(self, t: Tensor) -> Tensor:
        """Closed form: ``d/dt[-2 log tan(u)] = -4 (b - a) / sin(2u)``, ``u = a + t (b - a)``."""
        a, b = _truncation(self.logsnr_min - self.shift, self.logsnr_max - self.shift)
        u = a + _f64(t) * (b - a)
        return -4.0 * (b - a) / torch.sin(2.0 * u)

    def extra_repr(self) -> str:
        return f"logsnr_min={self.logsnr_min}, logsnr_max={self.logsnr_max}, shift={self.shift}"


class _PositiveLinear(nn.Linear):
    """Linear layer with weights kept positive through softplus (monotone in its input)."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, nn.functional.softplus(self.weight), self.bias)


class LearnedSchedule(Schedule):
    """Learned monotonic schedule of Variational Diffusion Models (seed 001, section on gamma_eta).

    ``gamma(t) = -logsnr(t)`` is a monotone network ``l1(t) + l3(phi(l2(l1(t))))`` with
    positive weights; it is affinely rescaled so that ``logsnr(0) = logsnr_max`` and
    ``logsnr(1) = logsnr_min`` hold exactly, whatever the weights. Its inverse is found by
    bisection (monotonicity makes that exact to float precision).
    """

    def __init__(self, logsnr_min: float = -30.0, logsnr_max: float = 30.0, hidden: int = 1024):
        super().__init__()
        _truncation(logsnr_min, logsnr_max)
        self.logsnr_min = float(logsnr_min)
        self.logsnr_max = float(logsnr_max)
        # float64 parameters: the rescaling below divides by a difference of two outputs.
        self.l1 = _PositiveLinear(1, 1, dtype=torch.float64)
        self.l2 = _PositiveLinear(1, hidden, dtype=torch.float64)
        self.l3 = _PositiveLinear(hidden, 1, dtype=torch.float64)

    def _gamma_tilde(self, t: Tensor) -> Tensor:
        h = self.l1(t.unsqueeze(-1))
        return (h + self.l3(torch.sigmoid(self.l2(h)))).squeeze(-1)

    def forward(self, t: Tensor) -> Tensor:
        dtype = t.dtype if t.is_floating_point() else torch.float32
        t64 = t.to(torch.float64)
        ends = self._gamma_tilde(torch.tensor([0.0, 1.0], dtype=torch.float64, device=t.device))
        frac = (self._gamma_tilde(t64) - ends[0]) / (ends[1] - ends[0])
        logsnr = self.logsnr_max + frac * (self.logsnr_min - self.logsnr_max)
        return logsnr.to(dtype)

    @torch.no_grad()
    def t_of(self, logsnr: Tensor) -> Tensor:
        lo = torch.zeros_like(logsnr, dtype=torch.float64)
        hi = torch.ones_like(logsnr, dtype=torch.float64)
        target = logsnr.to(torch.float64)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            above = self(mid) > target  # logsnr decreases: still too early in time
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return (0.5 * (lo + hi)).to(logsnr.dtype)
