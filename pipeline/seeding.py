"""Every random stream's seed, in one place (stdlib only).

Each stream is seeded from the experiment's ``seed`` and the indices that name it, never from a shared
generator, so a number does not depend on the process count, the batch size or the order of work (tests
compare 1 vs 2 processes, 1x4 vs 2x2 ranks, interrupted vs uninterrupted runs). The formulas are those the
stages have always used: changing one changes every result seeded by it.
"""

from __future__ import annotations

__all__ = ["climate", "derive", "evaluation", "realism", "references", "sampling"]

_BASE = 1_000_003  # a prime: the parts of a seed stay apart
_MOD = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit integer


def derive(*parts: int) -> int:
    """A seed from integer parts, Horner's rule in base 1_000_003 (``derive(s, i) = s * 1_000_003 + i``):
    training's noise (seed, rank, step, micro[, 1 for dropout]), its validation noise (seed, 7, clip), the clip
    sampler's shuffle (seed, epoch) and distillation's validation noise (seed, clip)."""
    h = 0
    for p in parts:
        h = (h * _BASE + int(p)) % _MOD
    return h


def evaluation(seed: int, clip: int) -> int:
    """The ensemble of test clip ``clip`` at a sweep point: the same noise for every checkpoint, sampler and
    guidance setting, so their scores differ by the model, not the draw."""
    return seed * 7919 + clip


def sampling(seed: int, kind: int, index: int) -> int:
    """Clip or rollout ``index`` of the sample stage (``kind`` 0: unconditional, 1: rollouts)."""
    return seed * _BASE + kind * 100_003 + index


def references(seed: int) -> list[int]:
    """numpy's seed sequence of the climatological ensemble's draws."""
    return [seed, 11]


def realism(seed: int) -> list[int]:
    """numpy's seed sequence of the real sets drawn for the realism figures' same-size yardsticks."""
    return [seed, 13]


def climate(seed: int, kind: int, index: int) -> int:
    """Rollout or clip ``index`` of a sweep point's climate figures (``kind`` 0: unconditional, 1: rollouts): the
    same noise for every checkpoint, sampler and guidance setting, like :func:`evaluation`."""
    return derive(seed, 17, kind, index)
