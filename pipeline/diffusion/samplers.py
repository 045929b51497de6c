"""Samplers: plain functions with one signature.

``sample_x(model, z, steps, cond=None, callback=None, generator=None) -> x``

- ``model`` is any :class:`~pipeline.diffusion.objective.Denoiser` (the v-prediction wrapper,
  or a guidance wrapper around it);
- ``z`` the initial noise ``z_1 ~ N(0, I)``;
- ``steps`` a number of uniform steps in t, or a decreasing time grid from 1 to 0;
- ``generator`` one torch generator, or one per batch item (each item's noise then does not
  depend on the batch it is in);
- ``callback`` receives a dict (``i``, ``t``, ``logsnr``, ``z``, ``x_hat``) after each step.

Predictor-corrector sampling (Song et al. 2021, *Score-Based Generative Modeling through SDEs*,
Algorithm 5): every predictor loop takes an optional ``corrector(model, z, logsnr, cond, generator)``
that moves ``z`` at the level just reached (not at t = 0) before the next step; the
``sample_*_langevin`` samplers pass :func:`langevin_corrector`, annealed Langevin dynamics with the
signal-to-noise step rule (:func:`langevin_step`). NFE = ``steps + (steps - 1) x corrector steps``.

Per-step maths is in ``*_step`` functions so tests can check one step against a closed
form. Coefficients are computed in float64 from logsnr with ``expm1`` forms (seed 001).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from pipeline.diffusion.objective import Denoiser, Generators, Prediction, expand, randn
from pipeline.diffusion.schedule import alpha_sigma

__all__ = [
    "SAMPLERS",
    "Corrector",
    "ancestral_step",
    "ddim_step",
    "dpmpp_2m_step",
    "get_sampler",
    "langevin_corrector",
    "langevin_step",
    "sample_ancestral",
    "sample_ddim",
    "sample_dpmpp_2m",
    "time_grid",
    "with_langevin",
]

Callback = Callable[[dict[str, Any]], None]
Corrector = Callable[[Denoiser, Tensor, Tensor, dict[str, Any] | None, Generators], Tensor]


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
    # With many steps the two levels are close and 1 - exp(small) in floating point would keep only the
    # rounding error of exp; expm1 keeps c's digits, and float64 keeps 1 - c exact enough at the last steps.
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
    # The coefficients are computed in float64 (per batch item) and only then meet z: at t = 1, alpha_t is
    # 4.5e-5 (logsnr -20) and (1 - c) / alpha_t would lose the signal's scale in float32.
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
    # The second-order correction extrapolates the data prediction linearly in lambda from the previous step's;
    # the first step has none and is DDIM (first order), as in Lu et al.'s Algorithm 2.
    if x_prev is not None and logsnr_prev is not None:
        r = 0.5 * (logsnr_t.to(torch.float64) - logsnr_prev.to(torch.float64)) / h
        d = expand(1 + 1 / (2 * r), x_hat) * x_hat - expand(1 / (2 * r), x_hat) * x_prev
    return expand(sigma_s / sigma_t, z) * z - expand(alpha_s * torch.expm1(-h), z) * d


def langevin_step(z: Tensor, eps_hat: Tensor, logsnr: Tensor, snr: float, noise: Tensor) -> Tensor:
    """One step of Langevin dynamics at the noise level ``logsnr`` with the signal-to-noise step rule
    (Song et al. 2021, Algorithm 5, corrector): ``z + e g + sqrt(2 e) noise`` with the score
    ``g = -eps_hat / sigma`` (VP: ``z_t = alpha x + sigma eps``, so ``grad log p_t(z) = -E[eps | z] / sigma``)
    and the step size ``e = 2 (snr ||noise|| / ||g||)^2``, norms per batch item (the reference code takes
    batch means; per item, a sample does not depend on its batch). Song et al.'s VP code multiplies ``e``
    by ``1 - beta_i`` of its 1000-level discretisation, about 1 away from t = 1; in continuous time it is
    left out, so the update's signal-to-noise ratio ``||e g|| / ||sqrt(2 e) noise||`` is ``snr`` exactly.
    The rule assumes items of many values (a clip: thousands), where ``||noise||^2 / ||z||^2`` is close to
    its expectation; for items of a few values the step size is heavy-tailed.
    """
    _, sigma = alpha_sigma(logsnr.to(torch.float64))
    sigma = sigma.expand(z.shape[0])
    n2 = torch.linalg.vector_norm(noise.flatten(1), dim=1, dtype=torch.float64) ** 2
    e2 = (torch.linalg.vector_norm(eps_hat.flatten(1), dim=1, dtype=torch.float64) ** 2).clamp_min(1e-300)
    step = 2 * snr**2 * n2 * sigma**2 / e2  # e, with ||g||^2 = ||eps_hat||^2 / sigma^2
    return z - expand(step / sigma, z) * eps_hat + expand(torch.sqrt(2 * step), z) * noise


def langevin_corrector(snr: float = 0.16, steps: int = 1) -> Corrector:
    """``steps`` Langevin steps (:func:`langevin_step`, one model call each) at a fixed noise level."""
    if not snr > 0 or int(steps) < 1:
        msg = f"Langevin corrector needs snr > 0 and steps >= 1, got snr={snr}, steps={steps}"
        raise ValueError(msg)

    def correct(
        model: Denoiser, z: Tensor, logsnr: Tensor, cond: dict[str, Any] | None, generator: Generators
    ) -> Tensor:
        for _ in range(int(steps)):
            eps_hat = model.predict(z, logsnr, cond).eps
            z = langevin_step(z, eps_hat, logsnr, snr, _noise(z, generator)).to(z.dtype)
        return z

    return correct


def _levels(model: Denoiser, z: Tensor, steps: int | Tensor) -> tuple[Tensor, Tensor]:
    ts = time_grid(steps, device=z.device)
    return ts, model.schedule(ts).to(torch.float64)


def _batch(level: Tensor, z: Tensor) -> Tensor:
    return level.expand(z.shape[0])


def _correct(
    corrector: Corrector | None,
    model: Denoiser,
    z: Tensor,
    logsnr: Tensor,
    cond: dict[str, Any] | None,
    generator: Generators,
    last: bool,
) -> Tensor:
    """The corrector at the level just reached; none after the last step (t = 0, where z is the sample)."""
    if corrector is None or last:
        return z
    return corrector(model, z, logsnr, cond, generator)


StepFn = Callable[[int, Tensor, Prediction, Tensor, Tensor, bool], Tensor]


def _integrate(
    model: Denoiser,
    z: Tensor,
    steps: int | Tensor,
    cond: dict[str, Any] | None,
    callback: Callback | None,
    generator: Generators,
    corrector: Corrector | None,
    step: StepFn,
) -> Tensor:
    """The loop every sampler shares, from t = 1 to t = 0 on the schedule's grid: one model call per level,
    ``step(i, z, pred, logsnr_now, logsnr_next, last)`` moves ``z`` to the next level (in ``z``'s dtype: the update
    is computed in float64 where the levels are), then the corrector, if any, acts at the level reached."""
    ts, lam = _levels(model, z, steps)
    last = len(ts) - 2
    for i in range(len(ts) - 1):
        lt, ls = _batch(lam[i], z), _batch(lam[i + 1], z)
        pred = model.predict(z, lt, cond)
        z = step(i, z, pred, lt, ls, i == last).to(z.dtype)
        z = _correct(corrector, model, z, ls, cond, generator, i == last)
        if callback is not None:
            callback({"i": i, "t": ts[i + 1], "logsnr": lam[i + 1], "z": z, "x_hat": pred.x})
    return z


@torch.no_grad()
def sample_ancestral(
    model: Denoiser,
    z: Tensor,
    steps: int | Tensor,
    cond: dict[str, Any] | None = None,
    callback: Callback | None = None,
    generator: Generators = None,
    *,
    corrector: Corrector | None = None,
) -> Tensor:
    """The seed's discrete-time ancestral sampler (eqs. 2.13-2.19), from t = 1 to t = 0."""

    def step(i: int, z: Tensor, pred: Prediction, lt: Tensor, ls: Tensor, last: bool) -> Tensor:
        return ancestral_step(z, pred.x, lt, ls, _noise(z, generator))

    return _integrate(model, z, steps, cond, callback, generator, corrector, step)


@torch.no_grad()
def sample_ddim(
    model: Denoiser,
    z: Tensor,
    steps: int | Tensor,
    cond: dict[str, Any] | None = None,
    callback: Callback | None = None,
    generator: Generators = None,
    eta: float = 0.0,
    *,
    corrector: Corrector | None = None,
) -> Tensor:
    """DDIM; ``eta = 0`` deterministic, ``eta = 1`` equals the ancestral sampler in distribution."""

    def step(i: int, z: Tensor, pred: Prediction, lt: Tensor, ls: Tensor, last: bool) -> Tensor:
        return ddim_step(z, pred, lt, ls, eta, _noise(z, generator) if eta > 0 else None)

    return _integrate(model, z, steps, cond, callback, generator, corrector, step)


@torch.no_grad()
def sample_dpmpp_2m(
    model: Denoiser,
    z: Tensor,
    steps: int | Tensor,
    cond: dict[str, Any] | None = None,
    callback: Callback | None = None,
    generator: Generators = None,
    *,
    corrector: Corrector | None = None,
) -> Tensor:
    """DPM-Solver++(2M): deterministic, second order, good in 10-25 steps. ``generator`` is used only by
    a corrector.

    The last step is first order ("lower_order_final" of the reference code): on the cosine
    grid it jumps to ``logsnr_max`` and a second-order extrapolation there overshoots badly.
    """
    prev: list[Tensor] = []  # the last level's denoised estimate and log-SNR: the multistep's memory

    def step(i: int, z: Tensor, pred: Prediction, lt: Tensor, ls: Tensor, last: bool) -> Tensor:
        x_prev, l_prev = prev if prev and not last else (None, None)
        prev[:] = [pred.x, lt]
        return dpmpp_2m_step(z, pred.x, x_prev, lt, ls, l_prev)

    return _integrate(model, z, steps, cond, callback, generator, corrector, step)


def with_langevin(predictor: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``predictor`` followed, after each of its steps, by ``corrector_steps`` Langevin corrector steps of
    signal-to-noise ratio ``snr`` (predictor-corrector sampling); the other arguments are the predictor's."""

    @torch.no_grad()
    def sample(
        model: Denoiser,
        z: Tensor,
        steps: int | Tensor,
        cond: dict[str, Any] | None = None,
        callback: Callback | None = None,
        generator: Generators = None,
        snr: float = 0.16,
        corrector_steps: int = 1,
    ) -> Tensor:
        corrector = langevin_corrector(snr, corrector_steps)
        return predictor(model, z, steps, cond, callback, generator, corrector=corrector)

    sample.__name__ = sample.__qualname__ = f"{predictor.__name__}_langevin"
    return sample


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ancestral": sample_ancestral,
    "ddim": sample_ddim,
    "dpmpp_2m": sample_dpmpp_2m,
    "ancestral+langevin": with_langevin(sample_ancestral),
    "ddim+langevin": with_langevin(sample_ddim),
    "dpmpp_2m+langevin": with_langevin(sample_dpmpp_2m),
    "distilled": sample_ddim,  # a progressively distilled student samples with DDIM on its own step count
}

_LANGEVIN = {name for name in SAMPLERS if name.endswith("+langevin")}


def get_sampler(name: str, *, langevin_snr: float = 0.16, langevin_steps: int = 1) -> Callable[..., Tensor]:
    """``SAMPLERS[name]`` with the settings its family takes bound, so every caller uses the one signature
    ``sampler(model, z, steps, cond=..., callback=..., generator=...)``."""
    if name not in SAMPLERS:
        msg = f"sampler {name!r} is not one of {sorted(SAMPLERS)}"
        raise ValueError(msg)
    if name in _LANGEVIN:
        return functools.partial(SAMPLERS[name], snr=langevin_snr, corrector_steps=langevin_steps)
    return SAMPLERS[name]
