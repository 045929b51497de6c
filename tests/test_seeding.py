"""The seeds of every random stream (pipeline.seeding): the formulas the stages used before they had one home,
so results seeded by them did not change when they moved there."""

from __future__ import annotations

import pytest

from pipeline import seeding


@pytest.mark.parametrize("seed", [0, 1, 42, 2**31 - 1])
def test_the_formulas_are_the_stages_earlier_ones(seed: int) -> None:
    for i in (0, 1, 7, 12_345):
        assert seeding.derive(seed, i) == seed * 1_000_003 + i  # the clip sampler's and distillation's formula
        assert seeding.evaluation(seed, i) == seed * 7919 + i
        for kind in (0, 1):
            assert seeding.sampling(seed, kind, i) == seed * 1_000_003 + kind * 100_003 + i
    h = 0
    for p in (seed, 3, 250, 1, 1):  # training's (seed, rank, step, micro, dropout)
        h = (h * 1_000_003 + p) % (2**63 - 1)
    assert seeding.derive(seed, 3, 250, 1, 1) == h < 2**63


def test_streams_are_distinct() -> None:
    """Different indices give different seeds (no two ranks, steps or clips share noise) over a realistic range."""
    train = {seeding.derive(0, rank, step, micro) for rank in range(8) for step in range(1, 400) for micro in range(2)}
    assert len(train) == 8 * 399 * 2
    samples = {seeding.sampling(0, kind, i) for kind in (0, 1) for i in range(1000)}
    assert len(samples) == 2000
