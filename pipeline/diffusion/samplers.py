"""Samplers: plain functions with one signature.

``sample_x(model, z, steps, cond=None, callback=None, generator=None) -> x``

- ``model`` is any :class:`~pipeline.diffusion.objective.Denoiser` (the v-prediction wrapper,
  or a guidance wrapper around it);
- ``z`` the initial noise ``z_1 ~ N(0, I)``;
- ``steps`` a number of uniform steps in t, or a decreasing time grid from 1 to 0;
- ``generator`` one torch generator, or one per batch item (each item's noise then does not
  depend on the batch it is in);
- ``callback`` receives a dict (``i``, ``t``, ``logsnr``, ``z``, ``x_hat``) after each step.

Per-step maths is in ``*_step`` functions so tests can check one step against a closed
form. Coefficients are computed in float64 from logsnr with ``expm1`` forms (seed 001).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from pipeline.diffusion.objective import Denoiser, Generators, Prediction, expand, randn
from pipeline.diffusion.schedule import alpha_sigma

__all__ = [
    "SAMPLERS",
    "ancestral_step",
    "ddim_step",
    "dpmpp_2m_step",
    "sample_ancestral",
    "sample_ddim",
    "sample_dpmpp_2m",
    "time_grid",
]

Callback = Callable[[dict[str, Any]], None]


def time_grid(steps: int | Tensor, device: torch.device | str | None = None) -> Tensor:
    """``steps + 1`` times from 1 down to 0 (seed 000: ``t(i) = i / T``), float64."""
    if isinstance(steps, Tensor):
        ts = steps.to(device=device, dtype=torch.float64)
        if ts.ndim != 1 or ts.numel() < 2 or not bool((ts[1:] < ts[:-1]).all()):
            msg = f"time grid must be a strictly decreasing 1-D tensor, got {ts.tolist()}"
            raise ValueError(msg)
        return ts
    if int(steps) < 1:
        msg = f"number of sampling steps must be >= 1, got {steps}"
        raise ValueError(msg)
    return torch.linspace(1.0, 0.0, int(steps) + 1, dtype=torch.float64, device=device)


def _noise(z: Tensor, generator: Generators) -> Tensor:
    return randn(z.shape, generator, z.device, z.dtype)


def _c(logsnr_t: Tensor, logsnr_s: Tensor) -> Tensor:
    """``c = 1 - SNR_t / SNR_s = sigma_{t|s}^2 / sigma_t^2`` via ``-expm1`` (VDM)."""
    return -torch.expm1(logsnr_t.to(torch.float64) - logsnr_s.to(torch.float64))


def ancestral_step(z: Tensor, x_hat: Tensor, logsnr_t: Tensor, logsnr_s: Tensor, noise: Tensor | None) -> Tensor:
    """One step of the discrete-time ancestral sampler, seed eqs. 2.16-2.19.

    ``z_s ~ q(z_s | z_t, x = x_hat)`` with mean
    ``alpha_{t|s} sigma_s^2 / sigma_t^2 z_t + alpha_s sigma_{t|s}^2 / sigma_t^2 x`` (2.18) and variance
    ``sigma_{t|s}^2 sigma_s^2 / sigma_t^2``. (Eq. 2.19 in the seed prints this without the squares;
    the squared form is the Gaussian posterior, derived in its appendix A.1.) In terms of
    ``c = 1 - SNR_t/SNR_s``: mean ``alpha_s ((1 - c) z_t / alpha_t + c x)``, variance ``c sigma_s^2``.
    """
    alpha_t, _ = alpha_sigma(logsnr_t.to(torch.float64))
    alpha_s, sigma_s = alpha_sigma(logsnr_s.to(torch.float64))
    c = _c(logsnr_t, logsnr_s)
    mean = expand(alpha_s * (1 - c) / alpha_t, z) * z + expand(alpha_s * c, z) * x_hat
    if noise is None:
        return mean
    return mean + expand(torch.sqrt(c) * sigma_s, z) * noise


def ddim_step(
    z: Tensor, pred: Prediction, logsnr_t: Tensor, logsnr_s: Tensor, eta: float, noise: Tensor | None
) -> Tensor:
    """One DDIM step (seed 003, section 4): ``z_s = alpha_s x_hat + sqrt(sigma_s^2 - s^2) eps_hat + s noise``.

    ``s^2 = eta^2 c sigma_s^2`` so that ``eta = 1`` is the ancestral step's distribution and
    ``eta = 0`` is deterministic.
    """
    alpha_s, sigma_s = alpha_sigma(logsnr_s.to(torch.float64))
    var = eta**2 * _c(logsnr_t, logsnr_s) * sigma_s**2
    out = expand(alpha_s, z) * pred.x + expand(torch.sqrt((sigma_s**2 - var).clamp_min(0)), z) * pred.eps
    if eta > 0 and noise is not None:
        out = out + expand(torch.sqrt(var), z) * noise
    return out


def dpmpp_2m_step(
    z: Tensor,
    x_hat: Tensor,
    x_prev: Tensor | None,
    logsnr_t: Tensor,
    logsnr_s: Tensor,
    logsnr_prev: Tensor | None,
) -> Tensor:
    """One DPM-Solver++(2M) step (Lu et al. 2022), data prediction, multistep second order.

    With ``lambda = logsnr / 2`` (log alpha/sigma) and ``h = lambda_s - lambda_t``:
    ``z_s = sigma_s / sigma_t z_t - alpha_s expm1(-h) D`` where ``D = x_hat`` on the first step
    and ``(1 + 1/(2r)) x_hat - 1/(2r) x_prev`` after, ``r = h_prev / h``.
    """
    _, sigma_t = alpha_sigma(logsnr_t.to(torch.float64))
    alpha_s, sigma_s = alpha_sigma(logsnr_s.to(torch.float64))
    h = 0.5 * (logsnr_s.to(torch.float64) - logsnr_t.to(torch.float64))
    d = x_hat
    if x_prev is not None and logsnr_prev is not None:
        r = 0.5 * (logsnr_t.to(torch.float64) - logsnr_prev.to(torch.float64)) / h
        d = expand(1 + 1 / (2 * r), x_hat) * x_hat - expand(1 / (2 * r), x_hat) * x_prev
    return expand(sigma_s / sigma_t, z) * z - expand(alpha_s * torch.expm1(-h), z) * d


def _levels(model: Denoiser, z: Tensor, steps: int | Tensor) -> tuple[Tensor, Tensor]:
    ts = time_grid(steps, device=z.device)
    return ts, model.schedule(ts).to(torch.float64)


def _batch(level: Tensor, z: Tensor) -> Tensor:
    return level.expand(z.shape[0])


@torch.no_grad()
def sample_ancestral(
    model: Denoiser,
    z: Tensor,
    steps: int | Tensor,
    cond: dict[str, Any] | None = None,
    callback: Callback | None = None,
    generator: Generators = None,
) -> Tensor:
    """The seed's discrete-time ancestral sampler (eqs. 2.13-2.19), from t = 1 to t = 0."""
    ts, lam = _levels(model, z, steps)
    for i in range(len(ts) - 1):
        lt, ls = _batch(lam[i], z), _batch(lam[i + 1], z)
        pred = model.predict(z, lt, cond)
        z = ancestral_step(z, pred.x, lt, ls, _noise(z, generator)).to(z.dtype)
        if callback is not None:
            callback({"i": i, "t": ts[i + 1], "logsnr": lam[i + 1], "z": z, "x_hat": pred.x})
    return z


@torch.no_grad()
def sample_ddim(
    model: Denoiser,
    z: Tensor,
    steps: int | Tensor,
    cond: dict[str, Any] | None = None,
    callback: Callback | None = None,
    generator: Generators = None,
    eta: float = 0.0,
) -> Tensor:
    """DDIM; ``eta = 0`` deterministic, ``eta = 1`` equals the ancestral sampler in distribution."""
    ts, lam = _levels(model, z, steps)
    for i in range(len(ts) - 1):
        lt, ls = _batch(lam[i], z), _batch(lam[i + 1], z)
        pred = model.predict(z, lt, cond)
        noise = _noise(z, generator) if eta > 0 else None
        z = ddim_step(z, pred, lt, ls, eta, noise).to(z.dtype)
        if callback is not None:
            callback({"i": i, "t": ts[i + 1], "logsnr": lam[i + 1], "z": z, "x_hat": pred.x})
    return z


@torch.no_grad()
def sample_dpmpp_2m(
    model: Denoiser,
    z: Tensor,
    steps: int | Tensor,
    cond: dict[str, Any] | None = None,
    callback: Callback | None = None,
    generator: Generators = None,
) -> Tensor:
    """DPM-Solver++(2M): deterministic, second order, good in 10-25 steps. ``generator`` is unused.

    The last step is first order ("lower_order_final" of the reference code): on the cosine
    grid it jumps to ``logsnr_max`` and a second-order extrapolation there overshoots badly.
    """
    del generator
    ts, lam = _levels(model, z, steps)
    x_prev: Tensor | None = None
    l_prev: Tensor | None = None
    last = len(ts) - 2
    for i in range(len(ts) - 1):
        lt, ls = _batch(lam[i], z), _batch(lam[i + 1], z)
        pred = model.predict(z, lt, cond)
        first_order = i == last
        z = dpmpp_2m_step(z, pred.x, None if first_order else x_prev, lt, ls, l_prev).to(z.dtype)
        x_prev, l_prev = pred.x, lt
        if callback is not None:
            callback({"i": i, "t": ts[i + 1], "logsnr": lam[i + 1], "z": z, "x_hat": pred.x})
    return z


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ancestral": sample_ancestral,
    "ddim": sample_ddim,
    "dpmpp_2m": sample_dpmpp_2m,
}
