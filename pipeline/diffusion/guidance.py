"""Guidance as wrappers with the same ``predict`` contract as the model, so every sampler works.

- :class:`ClassifierFreeGuidance` (seed 003, section 3): ``v = (1 + w) v_cond - w v_uncond``, i.e.
  ``v_uncond + s (v_cond - v_uncond)`` at the scale ``s = 1 + w``; the unconditional model it needs is
  trained by :func:`drop_condition` (conditioning dropout).
- :class:`ReconstructionGuidance` (Ho et al. 2022, *Video Diffusion Models*, section 3.1; named in
  seed 000, section 2.3.6): the denoised estimate of the new frames b is moved along the gradient
  of the reconstruction error of the known frames a,
  ``x~_b = x^_b - (w_r alpha_t / 2) grad_{z_b} ||x_a - x^_a(z_t)||^2``.
- :class:`Replacement`: the baseline that overwrites the known frames of ``z_t`` with a fresh
  forward sample ``q(z_t | x_a)``.
- :func:`extend`: an autoregressive rollout, N frames at a time, each window overlapping the last
  M generated (or given) frames.
- :func:`context_condition`: conditioning trained in (as cBottle and ArchesWeatherGen train their video and
  forecast models): some clips' first frames are given clean to the network as an input and left out of the loss,
  so a model trained so (:func:`takes_context`) is given the known frames whenever it extends a clip; reconstruction
  guidance then acts on top of it (weight 0: the trained conditioning alone).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from pipeline.diffusion.objective import (
    Denoiser,
    Generators,
    Prediction,
    eps_from_v,
    expand,
    randn,
    v_from_x_eps,
    x_from_v,
)
from pipeline.diffusion.schedule import Schedule, alpha_sigma

__all__ = [
    "ClassifierFreeGuidance",
    "ReconstructionGuidance",
    "Replacement",
    "context_condition",
    "drop_condition",
    "extend",
    "frame_mask",
    "takes_context",
]


def frame_mask(frames: int, known: int, like: Tensor) -> Tensor:
    """Mask (1, 1, frames, 1, 1): 1 on the first ``known`` frames of a (B, C, T, H, W) clip."""
    m = torch.zeros(1, 1, frames, 1, 1, dtype=like.dtype, device=like.device)
    m[:, :, :known] = 1
    return m


def _with_x(pred: Prediction, z: Tensor, x_new: Tensor, logsnr: Tensor) -> Prediction:
    """A prediction consistent with a changed ``x``: ``eps`` moves by ``-(alpha/sigma) dx``."""
    alpha, sigma = alpha_sigma(logsnr)
    eps = pred.eps - expand(alpha / sigma, z) * (x_new - pred.x)
    return Prediction(v=v_from_x_eps(x_new, eps, alpha, sigma), x=x_new, eps=eps)


def drop_condition(cond: dict[str, Any] | None, p: float, generator: torch.Generator) -> dict[str, Any] | None:
    """Conditioning dropout for classifier-free guidance (seed 003, section 3): each item of the batch is
    trained unconditionally with probability ``p``, marked by ``cond["drop"]`` (batch,) bool, which the
    network reads as "no condition" for that item (for :class:`~pipeline.diffusion.unet.UNet`: exactly
    its output with ``cond=None``). ``p = 0`` returns ``cond`` unchanged and draws nothing, so the
    generator's later draws do not move."""
    if cond is None or p <= 0:
        return cond
    if p > 1:
        msg = f"conditioning dropout probability must be in [0, 1], got {p}"
        raise ValueError(msg)
    first = next(v for v in cond.values() if isinstance(v, Tensor))
    drop = torch.rand(first.shape[0], generator=generator, device=generator.device) < p
    return {**cond, "drop": drop.to(first.device)}


def context_condition(
    cond: dict[str, Any] | None, x: Tensor, p: float, max_frames: int, generator: torch.Generator
) -> tuple[dict[str, Any], Tensor]:
    """Trained-in conditioning: with probability ``p`` an item of the batch has its first ``k`` frames given clean
    (``k`` uniform in 1..``max_frames``), as ``cond["context"]`` (the clip) and ``cond["context_mask"]`` (B, 1, T,
    1, 1). Returns the condition and the loss mask's factor, 0 on the given frames: the network learns to generate
    the rest from them, and, for the items without, to generate whole clips. Prefix masks, because extending a clip
    or a rollout gives its first frames; ``p = 0`` would draw nothing (the caller skips it)."""
    b, t = x.shape[0], x.shape[2]
    if not 0 < max_frames < t:
        msg = f"context frames: at most {max_frames} given of {t} must leave a frame to generate"
        raise ValueError(msg)
    has = torch.rand(b, generator=generator, device=generator.device) < p
    k = torch.randint(1, max_frames + 1, (b,), generator=generator, device=generator.device)
    given = (torch.arange(t, device=k.device)[None] < k[:, None]) & has[:, None]
    m = given.to(device=x.device, dtype=x.dtype).reshape(b, 1, t, 1, 1)
    return {**(cond or {}), "context": x, "context_mask": m}, 1 - m


def takes_context(model: Any) -> bool:
    """Whether a denoiser (possibly wrapped in guidance) has a network trained with context frames as input."""
    while model is not None:
        net = getattr(model, "net", None)
        if net is not None and getattr(getattr(net, "cfg", None), "context_frames", False):
            return True
        model = getattr(model, "model", None)
    return False


class ClassifierFreeGuidance:
    """``v = (1 + w) v(z, cond) - w v(z, None)``; ``w = 0`` is the conditional model, ``w = -1`` the
    unconditional one. :meth:`from_scale` takes the scale ``s = 1 + w`` (``s = 1``: no guidance)."""

    def __init__(self, model: Denoiser, weight: float):
        self.model = model
        self.weight = float(weight)

    @classmethod
    def from_scale(cls, model: Denoiser, scale: float) -> ClassifierFreeGuidance:
        """``v = v_uncond + s (v_cond - v_uncond)``: the scale as Ho & Salimans' ``1 + w``."""
        return cls(model, float(scale) - 1.0)

    @property
    def scale(self) -> float:
        return 1.0 + self.weight

    @property
    def schedule(self) -> Schedule:
        return self.model.schedule

    def predict(self, z: Tensor, logsnr: Tensor, cond: dict[str, Any] | None = None) -> Prediction:
        pc = self.model.predict(z, logsnr, cond)
        if self.weight == 0.0:
            return pc
        pu = self.model.predict(z, logsnr, None)
        v = (1 + self.weight) * pc.v - self.weight * pu.v
        alpha, sigma = alpha_sigma(logsnr)
        return Prediction(v=v, x=x_from_v(z, v, alpha, sigma), eps=eps_from_v(z, v, alpha, sigma))


class ReconstructionGuidance:
    """Reconstruction-guided conditional sampling.

    Args:
        model: the unconditional (joint over all frames) denoiser.
        known: clip (B, C, T, H, W) whose masked frames hold the known values.
        mask: 1 where known, broadcastable to ``known`` (see :func:`frame_mask`).
        weight: ``w_r``; 0 turns the gradient term off.
        replace_known: also put ``x_a`` itself in the denoised estimate of the known frames.
    """

    def __init__(self, model: Denoiser, known: Tensor, mask: Tensor, weight: float, replace_known: bool = True):
        self.model = model
        self.known = known
        self.mask = mask
        self.weight = float(weight)
        self.replace_known = replace_known
        self.context = takes_context(model)  # a model trained with context frames is given the known ones

    def _cond(self, cond: dict[str, Any] | None) -> dict[str, Any] | None:
        if not self.context:
            return cond
        return {**(cond or {}), "context": self.known, "context_mask": self.mask}

    @property
    def schedule(self) -> Schedule:
        return self.model.schedule

    def predict(self, z: Tensor, logsnr: Tensor, cond: dict[str, Any] | None = None) -> Prediction:
        cond = self._cond(cond)
        if self.weight == 0.0:
            with torch.no_grad():
                pred = self.model.predict(z, logsnr, cond)
            x = pred.x
        else:
            with torch.enable_grad():
                zg = z.detach().requires_grad_(True)
                pred = self.model.predict(zg, logsnr, cond)
                err = (((self.known - pred.x) * self.mask) ** 2).sum()
                (grad,) = torch.autograd.grad(err, zg)
            pred = Prediction(v=pred.v.detach(), x=pred.x.detach(), eps=pred.eps.detach())
            alpha, _ = alpha_sigma(logsnr)
            x = pred.x - expand(self.weight * alpha / 2, z) * grad * (1 - self.mask)
        if self.replace_known:
            x = self.mask * self.known + (1 - self.mask) * x
        return _with_x(pred, z, x, logsnr)


class Replacement:
    """Replacement baseline: known frames of ``z_t`` overwritten by a sample of ``q(z_t | x_a)``."""

    def __init__(self, model: Denoiser, known: Tensor, mask: Tensor, generator: Generators = None):
        self.model = model
        self.known = known
        self.mask = mask
        self.generator = generator

    @property
    def schedule(self) -> Schedule:
        return self.model.schedule

    def predict(self, z: Tensor, logsnr: Tensor, cond: dict[str, Any] | None = None) -> Prediction:
        alpha, sigma = alpha_sigma(logsnr)
        noise = randn(z.shape, self.generator, z.device, z.dtype)
        z_known = expand(alpha, z) * self.known + expand(sigma, z) * noise
        zr = self.mask * z_known + (1 - self.mask) * z
        pred = self.model.predict(zr, logsnr, cond)
        x = self.mask * self.known + (1 - self.mask) * pred.x
        return _with_x(pred, z, x, logsnr)


def extend(
    model: Denoiser,
    sampler: Callable[..., Tensor],
    initial: Tensor,
    total_frames: int,
    window: int,
    guidance_weight: float,
    *,
    overlap: int | None = None,
    cond_for_window: Callable[[int, int], dict[str, Any] | None] | None = None,
    generator: Generators = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> Tensor:
    """Extend ``initial`` (B, C, M, H, W) to ``total_frames`` frames.

    Each window has ``window`` frames; its first ``overlap`` (default M) are the last frames made so far, the
    rest are sampled by ``sampler(model, z, cond=..., generator=...)`` (a sampler with its step count bound, e.g.
    ``functools.partial(sample_ddim, steps=25)``) under reconstruction guidance of weight ``guidance_weight``
    (0: replacement of the known frames only). ``cond_for_window(start, window)`` gives per-window conditioning
    (e.g. day of year) for a window that starts at frame ``start``.
    """
    m = initial.shape[2] if overlap is None else int(overlap)
    if not 0 < m < window:
        msg = f"overlap ({m}) must be between 1 and window - 1 ({window - 1})"
        raise ValueError(msg)
    if initial.shape[2] < m:
        msg = f"initial clip has {initial.shape[2]} frames, fewer than the overlap {m}"
        raise ValueError(msg)
    frames = initial
    while frames.shape[2] < total_frames:
        start = frames.shape[2] - m
        b, c, _, h, w = frames.shape
        known = torch.zeros(b, c, window, h, w, dtype=frames.dtype, device=frames.device)
        known[:, :, :m] = frames[:, :, -m:]
        guided = ReconstructionGuidance(model, known, frame_mask(window, m, frames), guidance_weight)
        z = randn(known.shape, generator, known.device, known.dtype)
        cond = cond_for_window(start, window) if cond_for_window is not None else None
        x = sampler(guided, z, cond=cond, generator=generator)
        frames = torch.cat([frames, x[:, :, m:]], dim=2)
        if callback is not None:
            callback({"start": start, "frames": frames.shape[2]})
    return frames[:, :, :total_frames]
