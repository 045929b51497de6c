"""v-prediction: conversions between (z, x, eps, v) and the wrapper that owns the loss.

Notation (seed 000): ``z_t = alpha_t x + sigma_t eps`` (forward process), velocity
``v = alpha eps - sigma x`` (eq. 2.21), denoised ``x_hat = alpha z - sigma v_hat`` (eq. 2.23),
``eps_hat = sigma z + alpha v_hat``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from pipeline.diffusion.schedule import Schedule, alpha_sigma

__all__ = [
    "Denoiser",
    "Generators",
    "Prediction",
    "VDiffusion",
    "eps_from_v",
    "expand",
    "loss_weight",
    "randn",
    "v_from_x_eps",
    "x_from_v",
    "z_from_x_eps",
]

Weighting = Literal["v", "eps", "elbo", "sigmoid"]


Generators = torch.Generator | Sequence[torch.Generator] | None


def randn(shape: Sequence[int], generator: Generators, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Standard normal noise of ``shape``. ``generator`` may be one generator per batch item, so that
    every item's noise (and sample) is the same whatever batch it is drawn in."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    if len(generator) != shape[0]:
        msg = f"{len(generator)} generators for a batch of {shape[0]}"
        raise ValueError(msg)
    return torch.stack([torch.randn(tuple(shape[1:]), generator=g, device=device, dtype=dtype) for g in generator])


def expand(coef: Tensor, like: Tensor) -> Tensor:
    """Shape a per-sample coefficient (batch,) so it broadcasts against ``like``."""
    return coef.reshape(coef.shape + (1,) * (like.ndim - coef.ndim)).to(like.dtype)


def z_from_x_eps(x: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Sample of the forward process ``q(z_t | x)``."""
    return expand(alpha, x) * x + expand(sigma, x) * eps


def v_from_x_eps(x: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Velocity target, seed eq. 2.21."""
    return expand(alpha, x) * eps - expand(sigma, x) * x


def x_from_v(z: Tensor, v: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Denoised estimate from velocity, seed eq. 2.23."""
    return expand(alpha, z) * z - expand(sigma, z) * v


def eps_from_v(z: Tensor, v: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Noise estimate from velocity (seed eqs. A.25-A.43)."""
    return expand(sigma, z) * z + expand(alpha, z) * v


def loss_weight(logsnr: Tensor, dlogsnr_dt: Tensor, weighting: Weighting, bias: float = 0.0) -> Tensor:
    """Factor turning the squared v-error into a weighted loss (seed eqs. 2.35-2.36).

    With ``eps_hat - eps = alpha (v_hat - v)`` the squared v-error equals the squared
    eps-error times ``1 + exp(-logsnr)``. Returned factors multiply ``||v - v_hat||^2``:

    - ``"v"``: 1, the seed's loss (eq. 2.22).
    - ``"eps"``: ``alpha^2``, plain eps-prediction MSE.
    - ``"elbo"``: ``-1/2 dlogsnr/dt * alpha^2``, i.e. ``w(lambda) = 1`` importance-weighted by
      ``1/p(lambda)`` (eq. 2.36): the continuous-time ELBO up to a constant.
    - ``"sigmoid"``: ``-1/2 dlogsnr/dt * sigmoid(bias - logsnr) * alpha^2`` (Kingma & Gao).
    """
    alpha, _ = alpha_sigma(logsnr)
    a2 = alpha.to(torch.float64) ** 2
    if weighting == "v":
        w = torch.ones_like(a2)
    elif weighting == "eps":
        w = a2
    elif weighting == "elbo":
        w = -0.5 * dlogsnr_dt.to(torch.float64) * a2
    elif weighting == "sigmoid":
        w = -0.5 * dlogsnr_dt.to(torch.float64) * torch.sigmoid(bias - logsnr.to(torch.float64)) * a2
    else:
        msg = f"loss weighting {weighting!r} is not one of 'v', 'eps', 'elbo', 'sigmoid'"
        raise ValueError(msg)
    return w.to(logsnr.dtype)


@dataclass
class Prediction:
    """Network output at one noise level, in the three equivalent parameterisations."""

    v: Tensor
    x: Tensor
    eps: Tensor


class Denoiser(Protocol):
    """The one contract samplers rely on."""

    schedule: Schedule

    def predict(self, z: Tensor, logsnr: Tensor, cond: dict[str, Any] | None = None) -> Prediction: ...


class VDiffusion(nn.Module):
    """Wraps a network ``net(z_t, logsnr, cond) -> v`` with the schedule and the loss.

    Args:
        net: the network; called with ``(z, logsnr, cond)`` where ``logsnr`` has shape (batch,).
        schedule: maps t in [0, 1] to logsnr.
        weighting: see :func:`loss_weight`.
        sigmoid_bias: bias of the sigmoid weighting.
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: Schedule,
        weighting: Weighting = "v",
        sigmoid_bias: float = 0.0,
    ):
        super().__init__()
        self.net = net
        self.schedule = schedule
        self.weighting = weighting
        self.sigmoid_bias = sigmoid_bias
        loss_weight(torch.zeros(1), torch.ones(1), weighting)  # fail early on a bad name

    def forward(self, z: Tensor, logsnr: Tensor, cond: dict[str, Any] | None = None) -> Tensor:
        return self.net(z, logsnr, cond)

    def predict(self, z: Tensor, logsnr: Tensor, cond: dict[str, Any] | None = None) -> Prediction:
        logsnr = logsnr.expand(z.shape[0]) if logsnr.ndim == 0 else logsnr
        v = self.net(z, logsnr.to(z.dtype), cond)
        alpha, sigma = alpha_sigma(logsnr)
        return Prediction(v=v, x=x_from_v(z, v, alpha, sigma), eps=eps_from_v(z, v, alpha, sigma))

    def sample_t(
        self,
        batch: int,
        *,
        generator: torch.Generator | None = None,
        low_discrepancy: bool = False,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """``t ~ U(0, 1)``; with ``low_discrepancy`` one shared offset and stratified strata (VDM)."""
        if low_discrepancy:
            u0 = torch.rand((), generator=generator, device=device)
            return torch.remainder(u0 + torch.arange(batch, device=device) / batch, 1.0)
        return torch.rand(batch, generator=generator, device=device)

    def loss(
        self,
        x: Tensor,
        cond: dict[str, Any] | None = None,
        *,
        t: Tensor | None = None,
        eps: Tensor | None = None,
        generator: torch.Generator | None = None,
        low_discrepancy: bool = False,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Per-sample loss (seed eq. 2.22): weighted mean over all non-batch elements.

        ``mask`` (broadcastable to ``x``, 1 = counts) leaves out e.g. NaN-filled land cells or
        context frames that are given rather than generated.
        """
        b = x.shape[0]
        if t is None:
            t = self.sample_t(b, generator=generator, low_discrepancy=low_discrepancy, device=x.device)
        if eps is None:
            eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        logsnr = self.schedule(t)
        alpha, sigma = alpha_sigma(logsnr)
        z = z_from_x_eps(x, eps, alpha, sigma)
        v_hat = self.net(z, logsnr.to(x.dtype), cond)
        err = (v_hat.float() - v_from_x_eps(x, eps, alpha, sigma).float()) ** 2
        dims = tuple(range(1, x.ndim))
        if mask is None:
            per = err.mean(dim=dims)
        else:
            m = mask.to(err.dtype).expand_as(err)
            per = (err * m).sum(dim=dims) / m.sum(dim=dims).clamp_min(1.0)
        needs_slope = self.weighting in ("elbo", "sigmoid")
        slope = self.schedule.dlogsnr_dt(t).float() if needs_slope else torch.ones_like(t)
        w = loss_weight(logsnr.float(), slope, self.weighting, self.sigmoid_bias)
        return per * w
