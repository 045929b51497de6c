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
from collections.abc import Callable
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
    trainable: bool = False  # True where the schedule has parameters the objective trains

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

    def slope_at(self, logsnr: Tensor) -> Tensor:
        """``dlogsnr/dt`` where the schedule passes ``logsnr``, in closed form (float64, differentiable).

        ``u = atan(exp(-l/2))`` gives ``sin(2u) = 1 / cosh(l/2)`` with ``l = logsnr - shift``, so
        ``dlogsnr/dt = -4 (b - a) cosh(l / 2)``: ``1/|slope|`` is the density of logsnr that
        ``t ~ U(0, 1)`` induces, the cosine schedule's implied weighting over noise levels.
        """
        a, b = _truncation(self.logsnr_min - self.shift, self.logsnr_max - self.shift)
        return -4.0 * (b - a) * torch.cosh(0.5 * (_f64(logsnr) - self.shift))

    def extra_repr(self) -> str:
        return f"logsnr_min={self.logsnr_min}, logsnr_max={self.logsnr_max}, shift={self.shift}"


class _PositiveLinear(nn.Linear):
    """Linear layer with weights kept positive through softplus (monotone in its input).

    Parameters are stored in float32 (what DeepSpeed's optimizers expect beside the network's) and
    the layer computes in the dtype of its input: the schedule feeds it float64.
    """

    def forward(self, x: Tensor) -> Tensor:
        w, b = self.weight.to(x.dtype), self.bias.to(x.dtype)
        return nn.functional.linear(x, nn.functional.softplus(w), b)


class LearnedSchedule(Schedule):
    """Learned monotone schedule of Variational Diffusion Models (seed 001, section 2.2: gamma_eta).

    VDM's monotone network ``g(t) = l1(t) + l3(phi(l2(l1(t))))`` with positive weights (``phi`` the
    sigmoid), normalised to ``frac(t) = (g(t) - g(0)) / (g(1) - g(0))``, rising from 0 to 1, warps
    time for the cosine reference schedule: ``logsnr(t) = cosine(frac(t))`` (mapped onto learned
    endpoints when they are). VDM puts the network on ``gamma = -logsnr`` directly, starting from a
    linear ``gamma``; the warp keeps it the same family of monotone maps (the cosine is a fixed
    bijection) but starts it near the project's cosine schedule (``frac`` is nearly linear at
    initialisation), so training moves it only where the variance objective asks.
    ``logsnr(0) = logsnr_max`` and ``logsnr(1) = logsnr_min`` hold exactly whatever the weights; the
    slope has a closed form (:meth:`dlogsnr_dt`) and the inverse is found by bisection (exact to
    float64 precision, since the map is strictly monotone).

    Args:
        logsnr_min, logsnr_max: the endpoints; with ``learn_endpoints`` their initial values.
        hidden: width of ``l2`` (VDM: 1024).
        learn_endpoints: make the endpoints parameters (trained by the variational bound, see
            :meth:`pipeline.diffusion.VDiffusion.loss`) instead of fixed numbers.
        shift: shift of the cosine *reference* schedule (:attr:`reference`), the schedule whose
            expected loss the importance-weighted loss keeps (see :func:`~pipeline.diffusion.objective.loss_weight`
            and ``VDiffusion.loss``).
    """

    trainable = True

    def __init__(
        self,
        logsnr_min: float = -30.0,
        logsnr_max: float = 30.0,
        hidden: int = 1024,
        *,
        learn_endpoints: bool = False,
        shift: float = 0.0,
    ):
        super().__init__()
        _truncation(logsnr_min, logsnr_max)
        self.reference = CosineSchedule(logsnr_min, logsnr_max, shift)
        self.learn_endpoints = bool(learn_endpoints)
        if self.learn_endpoints:
            self.ends = nn.Parameter(torch.tensor([logsnr_min, logsnr_max], dtype=torch.float32))
        else:
            self._ends = (float(logsnr_min), float(logsnr_max))
        self.l1 = _PositiveLinear(1, 1)
        self.l2 = _PositiveLinear(1, hidden)
        self.l3 = _PositiveLinear(hidden, 1)

    @property
    def logsnr_min(self) -> float:  # type: ignore[override]
        return float(self.ends[0].detach()) if self.learn_endpoints else self._ends[0]

    @property
    def logsnr_max(self) -> float:  # type: ignore[override]
        return float(self.ends[1].detach()) if self.learn_endpoints else self._ends[1]

    def endpoints(self) -> tuple[Tensor, Tensor]:
        """``(logsnr_min, logsnr_max)`` as float64 tensors (differentiable when learned)."""
        if self.learn_endpoints:
            e = self.ends.to(torch.float64)
            return e[0], e[1]
        dev = self.l1.weight.device
        return torch.tensor(self._ends[0], dtype=torch.float64, device=dev), torch.tensor(
            self._ends[1], dtype=torch.float64, device=dev
        )

    def _gamma_tilde(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Unnormalised ``gamma`` and its derivative in t (chain rule through the three layers)."""
        h = self.l1(t.unsqueeze(-1))  # (..., 1)
        u = self.l2(h)  # (..., hidden)
        s = torch.sigmoid(u)
        g = (h + self.l3(s)).squeeze(-1)
        w1 = nn.functional.softplus(self.l1.weight.to(t.dtype)).squeeze()
        w2 = nn.functional.softplus(self.l2.weight.to(t.dtype)).squeeze(-1)  # (hidden,)
        w3 = nn.functional.softplus(self.l3.weight.to(t.dtype)).squeeze(0)  # (hidden,)
        dg = w1 * (1.0 + (s * (1.0 - s) * (w2 * w3)).sum(-1))
        return g, dg

    def shape(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """The interior alone: ``frac(t)`` rising from 0 to 1 and ``d frac / dt > 0`` (float64)."""
        t64 = t.to(torch.float64)
        g, dg = self._gamma_tilde(t64)
        ends, _ = self._gamma_tilde(torch.tensor([0.0, 1.0], dtype=torch.float64, device=t.device))
        span = ends[1] - ends[0]
        return (g - ends[0]) / span, dg / span

    def logsnr_and_slope(self, t: Tensor, interior: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """``logsnr(t)`` and ``dlogsnr/dt``, float64, both differentiable in every parameter.

        ``logsnr(t) = lo + (hi - lo) (ref(frac(t)) - ref_lo) / (ref_hi - ref_lo)``: the reference cosine
        schedule at the warped time ``frac(t)``, mapped affinely onto the endpoints ``[lo, hi]`` (the
        identity while they are the reference's own).

        ``interior`` is applied to the interior shape ``(frac, dfrac/dt)`` before the endpoints
        rescale it: the objective passes :class:`~pipeline.diffusion.objective.VarianceGradient`
        there, so that the interior's parameters (and they only) receive the gradient of the
        squared loss while the endpoints receive the gradient of the loss itself.
        """
        frac, dfrac = self.shape(t)
        if interior is not None:
            frac, dfrac = interior(frac), interior(dfrac)
        lo, hi = self.endpoints()
        ref_lo, ref_hi = self.reference.logsnr_min, self.reference.logsnr_max
        scale = (hi - lo) / (ref_hi - ref_lo)
        lam = hi + (self.reference(frac) - ref_hi) * scale
        slope = self.reference.dlogsnr_dt(frac) * dfrac * scale
        # exact endpoints: the detached corrections remove round-off (differences of near-equal floats
        # are exact) and keep the gradients
        t64 = t.to(torch.float64)
        fix = torch.where(t64 == 0, hi.detach() - lam.detach(), torch.where(t64 == 1, lo.detach() - lam.detach(), 0.0))
        return lam + fix, slope

    def forward(self, t: Tensor) -> Tensor:
        dtype = t.dtype if t.is_floating_point() else torch.float32
        return self.logsnr_and_slope(t)[0].to(dtype)

    def dlogsnr_dt(self, t: Tensor) -> Tensor:
        """Closed form of the slope (float64): ``cosine'(frac(t)) frac'(t)`` times the endpoints' scale."""
        return self.logsnr_and_slope(t)[1]

    @torch.no_grad()
    def t_of(self, logsnr: Tensor) -> Tensor:
        lo = torch.zeros_like(logsnr, dtype=torch.float64)
        hi = torch.ones_like(logsnr, dtype=torch.float64)
        target = logsnr.to(torch.float64)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            above = self.logsnr_and_slope(mid)[0] > target  # logsnr decreases: still too early in time
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return (0.5 * (lo + hi)).to(logsnr.dtype)

    def extra_repr(self) -> str:
        return (
            f"logsnr_min={self.logsnr_min}, logsnr_max={self.logsnr_max}, hidden={self.l2.out_features}, "
            f"learn_endpoints={self.learn_endpoints}"
        )
