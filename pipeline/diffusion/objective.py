"""v-prediction: conversions between (z, x, eps, v) and the wrapper that owns the loss.

Notation (seed 000): ``z_t = alpha_t x + sigma_t eps`` (forward process), velocity
``v = alpha eps - sigma x`` (eq. 2.21), denoised ``x_hat = alpha z - sigma v_hat`` (eq. 2.23),
``eps_hat = sigma z + alpha v_hat``.
"""

from __future__ import annotations

import math
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
    "VarianceGradient",
    "eps_from_v",
    "expand",
    "loss_weight",
    "masked_mean",
    "randn",
    "v_from_x_eps",
    "x_from_v",
    "z_from_x_eps",
]

Weighting = Literal["v", "eps", "elbo", "sigmoid", "min_snr"]


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


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Per-example mean of ``values`` over every dimension but the first, over the elements ``mask`` keeps
    (all without a mask; an example with none kept gives 0)."""
    dims = tuple(range(1, values.ndim))
    if mask is None:
        return values.mean(dim=dims)
    m = mask.to(values.dtype).expand_as(values)
    return (values * m).sum(dim=dims) / m.sum(dim=dims).clamp_min(1.0)


MIN_SNR_GAMMA = 5.0  # Hang et al.'s default


def loss_weight(
    logsnr: Tensor, dlogsnr_dt: Tensor, weighting: Weighting, bias: float = 0.0, gamma: float = MIN_SNR_GAMMA
) -> Tensor:
    """Factor turning the squared v-error into a weighted loss (seed eqs. 2.35-2.36).

    With ``eps_hat - eps = alpha (v_hat - v)`` the squared v-error equals the squared
    eps-error times ``1 + exp(-logsnr)``. Returned factors multiply ``||v - v_hat||^2``:

    - ``"v"``: 1, the seed's loss (eq. 2.22).
    - ``"eps"``: ``alpha^2``, plain eps-prediction MSE.
    - ``"elbo"``: ``-1/2 dlogsnr/dt * alpha^2``, i.e. ``w(lambda) = 1`` importance-weighted by
      ``1/p(lambda)`` (eq. 2.36): the continuous-time ELBO up to a constant.
    - ``"sigmoid"``: ``-1/2 dlogsnr/dt * sigmoid(bias - logsnr) * alpha^2`` (Kingma & Gao).
    - ``"min_snr"``: ``min(SNR, gamma) / (SNR + 1)`` (Hang et al. 2023, min-SNR-gamma): the x-error weighted by
      ``min(SNR, gamma)``, since ``||x - x_hat||^2 = sigma^2 ||v - v_hat||^2 = ||v - v_hat||^2 / (SNR + 1)``: the
      ``eps`` weighting ``alpha^2 = SNR/(SNR+1)`` below ``SNR = gamma``, cut to ``gamma/(SNR+1)`` above, where
      nearly clean inputs would otherwise pull the gradient toward themselves.
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
    elif weighting == "min_snr":
        snr = torch.exp(logsnr.to(torch.float64))
        w = torch.clamp(snr, max=gamma) / (snr + 1.0)
    else:
        msg = f"loss weighting {weighting!r} is not one of 'v', 'eps', 'elbo', 'sigmoid', 'min_snr'"
        raise ValueError(msg)
    return w.to(logsnr.dtype)


class _ScaleByTwiceLoss(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``2 L`` per example."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, owner: VarianceGradient) -> Tensor:
        ctx.owner = owner
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        loss = ctx.owner.loss
        if loss is None:
            msg = "VarianceGradient: backward ran before set_loss() gave the per-example loss"
            raise RuntimeError(msg)
        return grad * 2.0 * loss.to(grad.dtype).reshape(grad.shape), None


class VarianceGradient:
    """One backward pass, two objectives: the network follows ``dL/dtheta``, the schedule ``d(L^2)/deta``.

    VDM (seed 001; Kingma et al. 2021, sec. 5.2 and appendix) trains the schedule's interior to
    minimise the variance of the loss estimate. Where ``E[L]`` does not depend on the interior ``eta``
    (see ``VDiffusion._learned_loss``), ``d Var[L] / d eta = d E[L^2] / d eta = E[2 L dL/deta]``. Placed on the
    per-example schedule outputs (``logsnr_i`` and its slope, which are the only way ``eta`` reaches
    ``L_i``), this identity in the forward pass multiplies the gradient arriving there by ``2 L_i``:
    ``sum_i dmean(L)/dlogsnr_i * 2 L_i * dlogsnr_i/deta = d mean(L^2) / deta``, while every gradient
    that does not pass through the schedule (the network's) is untouched. It is VDM's ``custom_vjp``
    on ``gamma(t)`` written as a ``torch.autograd.Function``; ``L`` is known only after the forward
    pass, hence :meth:`set_loss` before ``backward``.
    """

    def __init__(self) -> None:
        self.loss: Tensor | None = None

    def __call__(self, x: Tensor) -> Tensor:
        return _ScaleByTwiceLoss.apply(x, self)

    def set_loss(self, loss: Tensor) -> None:
        """The per-example loss ``L_i`` (batch,) whose square the schedule minimises."""
        self.loss = loss.detach()


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
        min_snr_gamma: gamma of the min-SNR weighting.
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: Schedule,
        weighting: Weighting = "v",
        sigmoid_bias: float = 0.0,
        min_snr_gamma: float = MIN_SNR_GAMMA,
    ):
        super().__init__()
        self.net = net
        # Inference only (evaluation, sampling): the dtype the network's forward pass runs in under autocast (bf16
        # on GPUs); the samplers' state and arithmetic stay fp32. None = the network's own dtype.
        self.inference_dtype: torch.dtype | None = None
        self.schedule = schedule
        self.weighting = weighting
        self.sigmoid_bias = sigmoid_bias
        self.min_snr_gamma = min_snr_gamma
        if not min_snr_gamma > 0:
            msg = f"min_snr_gamma must be positive, got {min_snr_gamma}"
            raise ValueError(msg)
        loss_weight(torch.zeros(1), torch.ones(1), weighting)  # fail early on a bad name
        if getattr(schedule, "learn_endpoints", False) and weighting != "elbo":
            msg = f"learned endpoints follow the variational bound, which only weighting 'elbo' estimates, not {weighting!r}"
            raise ValueError(msg)

    def forward(self, z: Tensor, logsnr: Tensor, cond: dict[str, Any] | None = None) -> Tensor:
        return self.net(z, logsnr, cond)

    def predict(self, z: Tensor, logsnr: Tensor, cond: dict[str, Any] | None = None) -> Prediction:
        logsnr = logsnr.expand(z.shape[0]) if logsnr.ndim == 0 else logsnr
        if self.inference_dtype is None:
            v = self.net(z, logsnr.to(z.dtype), cond)
        else:
            with torch.autocast(z.device.type, dtype=self.inference_dtype):
                v = self.net(z, logsnr.to(z.dtype), cond).to(z.dtype)
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
        variance_gradient: bool = True,
    ) -> Tensor:
        """Per-sample loss (seed eq. 2.22): weighted mean over all non-batch elements.

        ``mask`` (broadcastable to ``x``, 1 = counts) leaves out e.g. NaN-filled land cells or
        context frames that are given rather than generated. A learned schedule (``schedule.trainable``;
        VDM, seed 001) is importance weighted against its cosine reference: see :meth:`_learned_loss`.
        """
        if t is None:
            t = self.sample_t(x.shape[0], generator=generator, low_discrepancy=low_discrepancy, device=x.device)
        if eps is None:
            eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if getattr(self.schedule, "trainable", False):
            return self._learned_loss(x, cond, t, eps, mask, variance_gradient)
        logsnr = self.schedule(t)
        per = self._squared_v_error(x, cond, eps, logsnr, mask)
        needs_slope = self.weighting in ("elbo", "sigmoid")
        slope = self.schedule.dlogsnr_dt(t).float() if needs_slope else torch.ones_like(t)
        return per * loss_weight(logsnr.float(), slope, self.weighting, self.sigmoid_bias, self.min_snr_gamma)

    def _squared_v_error(
        self, x: Tensor, cond: dict[str, Any] | None, eps: Tensor, logsnr: Tensor, mask: Tensor | None
    ) -> Tensor:
        """Per-example masked mean of ``||v - v_hat||^2`` at noise levels ``logsnr``, in float32."""
        alpha, sigma = alpha_sigma(logsnr)
        z = z_from_x_eps(x, eps, alpha, sigma)
        v_hat = self.net(z, logsnr.to(x.dtype), cond)
        err = (v_hat.float() - v_from_x_eps(x, eps, alpha, sigma).float()) ** 2
        return masked_mean(err, mask)

    def _learned_loss(
        self,
        x: Tensor,
        cond: dict[str, Any] | None,
        t: Tensor,
        eps: Tensor,
        mask: Tensor | None,
        variance_gradient: bool,
    ) -> Tensor:
        """The loss of a learned schedule, importance weighted so that its expectation is the reference's.

        With ``t ~ U(0, 1)`` the schedule is a sampling distribution of noise levels, density
        ``p(logsnr) = 1/|dlogsnr/dt|``. Each weighting is defined by what it weights under the cosine
        *reference* schedule (same endpoints and shift): ``W_ref(l) = loss_weight(l, ref'(l))`` with
        ``ref'(l)`` the reference's slope where it passes ``l``. The learned schedule's loss is importance
        weighted, ``L = W_ref(l) |dlogsnr/dt| / |ref'(l)| * ||v - v_hat||^2`` with ``l = logsnr_eta(t)``, so
        ``E_t[L] = int W_ref(l) / |ref'(l)| err(l) dl`` (the integral over ``[logsnr_min, logsnr_max]``)
        is the reference's expected loss *exactly, whatever the interior* of the schedule (the
        continuous-time invariance of VDM sec. 3.4, for any weighting that is a function of logsnr
        times the density change). For ``elbo`` and ``sigmoid`` the factor is the familiar
        ``-1/2 dlogsnr/dt`` weighting with the learned slope; for ``v`` and ``eps`` it is the ratio
        ``slope / ref'``. Hence ``d Var[L]/d eta = d E[L^2]/d eta`` and the interior follows the
        gradient of ``L^2`` (:class:`VarianceGradient`, ``variance_gradient=False`` turns it off and
        the schedule then receives ``dL/deta``, which is zero in expectation).

        What does not hold: the *plain* ``v`` or ``eps`` loss (factor 1 or ``alpha^2``, no slope) is not
        invariant: its expectation depends on the schedule, and ``E[L^2]`` would be lowered by
        moving the noise levels to where the loss is small, a different objective, hence the
        importance factor. The expectation does depend on the endpoints: learned endpoints
        (``elbo`` only) follow the gradient of the variational bound, the diffusion term plus the
        prior and reconstruction terms (:meth:`_end_terms`, zero in value). What is minimised is the
        variance of the loss estimate, not of the network's gradient. Only the integral is
        invariant: samplers take finitely many steps on the schedule's time grid, so samples
        differ between schedules even with the same network.
        """
        trains = torch.is_grad_enabled() and any(p.requires_grad for p in self.schedule.parameters())
        variance = VarianceGradient() if trains and variance_gradient else None
        logsnr, slope = self.schedule.logsnr_and_slope(t, interior=variance)
        per = self._squared_v_error(x, cond, eps, logsnr, mask)
        # Importance weighting against the cosine reference: E_t[loss] is the reference's, whatever eta.
        ref = self.schedule.reference.slope_at(logsnr)
        w = loss_weight(logsnr, ref, self.weighting, self.sigmoid_bias, self.min_snr_gamma) * (slope / ref)
        loss = per * w.float()
        if variance is not None:
            variance.set_loss(loss)
        if self.schedule.learn_endpoints:
            # Zero in value, the variational bound's end terms in gradient (they reach the endpoints only).
            ends = self._end_terms(x, mask)
            loss = loss + (ends - ends.detach()).float()
        return loss

    def _end_terms(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """Per-example prior and reconstruction terms of the continuous-data variational bound, per element.

        Prior ``KL(q(z_1|x) || N(0, 1)) = (sigma_1^2 + alpha_1^2 x^2 - 1 - log sigma_1^2) / 2`` at
        ``logsnr_min``; reconstruction under the Gaussian decoder ``p(x|z_0) = N(z_0/alpha_0, e^{-logsnr_max})``:
        ``E[-log p] = (log 2 pi + 1 - logsnr_max) / 2``. With the diffusion term (the ``elbo`` weighting,
        ``1/2 int eps-error dlogsnr``) they make the bound (VDM eq. 11, continuous data) whose gradient
        the learned endpoints follow; without them the diffusion term alone would shrink the range.
        """
        lo, hi = self.schedule.endpoints()
        x2 = masked_mean(x.detach().to(torch.float64) ** 2, mask)
        a2, s2 = torch.sigmoid(lo), torch.sigmoid(-lo)
        prior = 0.5 * (s2 + a2 * x2 - 1.0 - torch.log(s2))
        recon = 0.5 * (math.log(2 * math.pi) + 1.0 - hi)
        return prior + recon
