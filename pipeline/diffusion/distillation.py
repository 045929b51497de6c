"""Progressive distillation (Salimans & Ho 2022, Algorithm 2) for the v-parameterisation.

A student sampling in ``N`` DDIM steps learns to do in one step what the teacher does in two: from
``z_t`` on the student's grid (``t = i / N``), two deterministic teacher DDIM steps
``t -> t - 0.5/N -> t - 1/N`` reach ``z_{t''}``; the student's target is the ``x~`` for which one DDIM
step from ``z_t`` lands exactly there,

    x~ = (z_{t''} - (sigma_{t''} / sigma_t) z_t) / (alpha_{t''} - (sigma_{t''} / sigma_t) alpha_t),

and, since the network predicts ``v``, its velocity target is ``v~ = (alpha_t z_t - x~) / sigma_t``
(from ``x = alpha z - sigma v``, seed eq. 2.23). The loss is the paper's truncated-SNR weighting
``max(SNR_t, 1) ||x~ - x_hat||^2``; with ``x~ - x_hat = sigma_t (v_hat - v~)`` that is
``max(alpha_t^2, sigma_t^2) ||v_hat - v~||^2``. ``"snr+1"`` weighting, ``(SNR_t + 1) ||x~ - x_hat||^2``,
is the plain v-error (weight 1).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from pipeline.diffusion.objective import Denoiser, VDiffusion, expand, masked_mean, z_from_x_eps
from pipeline.diffusion.samplers import ddim_step
from pipeline.diffusion.schedule import alpha_sigma

__all__ = [
    "DistillWeighting",
    "distillation_loss",
    "distillation_weight",
    "student_times",
    "two_step_target",
]

DistillWeighting = Literal["truncated", "snr+1"]


def student_times(u: Tensor, steps: int) -> Tensor:
    """Times of the student's grid from uniform draws ``u`` in [0, 1): ``t = i / N`` with ``i`` in 1..N
    (Algorithm 2: ``i ~ Cat[1, ..., N]``; stratified draws of ``u`` stratify ``i``)."""
    i = torch.clamp(torch.floor(u.to(torch.float64) * steps), 0, steps - 1) + 1
    return i / steps


@torch.no_grad()
def two_step_target(
    teacher: Denoiser, z: Tensor, t: Tensor, steps: int, cond: dict[str, Any] | None = None
) -> tuple[Tensor, Tensor]:
    """The student's targets ``(x~, v~)`` at ``(z_t, t)`` for a student of ``steps`` steps: two deterministic teacher
    DDIM steps ``t -> t - 1/(2N) -> t - 1/N``, solved for the one-step ``x~`` (module docstring). Float64
    coefficients; the returned tensors have ``z``'s dtype."""
    t = t.to(torch.float64)
    lt, lm, ls = (teacher.schedule(tt).to(torch.float64) for tt in (t, t - 0.5 / steps, t - 1.0 / steps))
    pred = teacher.predict(z, lt, cond)
    z_mid = ddim_step(z, pred, lt, lm, 0.0, None).to(z.dtype)
    z_s = ddim_step(z_mid, teacher.predict(z_mid, lm, cond), lm, ls, 0.0, None)
    alpha_t, sigma_t = alpha_sigma(lt)
    alpha_s, sigma_s = alpha_sigma(ls)
    ratio = sigma_s / sigma_t
    x = (z_s.to(torch.float64) - expand(ratio, z) * z.to(torch.float64)) / expand(alpha_s - ratio * alpha_t, z)
    v = (expand(alpha_t, z) * z.to(torch.float64) - x) / expand(sigma_t, z)
    return x.to(z.dtype), v.to(z.dtype)


def distillation_weight(logsnr: Tensor, weighting: DistillWeighting) -> Tensor:
    """Factor on the squared v-error: ``max(alpha^2, sigma^2)`` (truncated SNR) or 1 (SNR + 1)."""
    if weighting == "snr+1":
        return torch.ones_like(logsnr, dtype=torch.float64)
    if weighting == "truncated":
        alpha, sigma = alpha_sigma(logsnr.to(torch.float64))
        return torch.maximum(alpha**2, sigma**2)
    msg = f"distillation weighting {weighting!r} is not one of 'truncated', 'snr+1'"
    raise ValueError(msg)


def distillation_loss(
    student: VDiffusion,
    teacher: Denoiser,
    x: Tensor,
    cond: dict[str, Any] | None,
    *,
    t: Tensor,
    eps: Tensor,
    steps: int,
    weighting: DistillWeighting = "truncated",
    mask: Tensor | None = None,
) -> Tensor:
    """Per-sample distillation loss at ``z_t = alpha_t x + sigma_t eps`` (``t`` on the student's grid of ``steps``
    steps): weighted squared error of the student's v against :func:`two_step_target`, averaged over the elements
    ``mask`` keeps (as :meth:`VDiffusion.loss`)."""
    logsnr = student.schedule(t.to(torch.float64))
    alpha, sigma = alpha_sigma(logsnr)
    z = z_from_x_eps(x, eps, alpha, sigma)
    _, v_target = two_step_target(teacher, z.float(), t, steps, cond)  # the teacher in fp32, whatever the student
    v_hat = student.net(z, logsnr.to(x.dtype), cond)
    per = masked_mean((v_hat.float() - v_target.float()) ** 2, mask)
    return per * distillation_weight(logsnr, weighting).to(per.dtype)
