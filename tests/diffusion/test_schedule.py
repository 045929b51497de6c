"""Closed forms of the truncated alpha-cosine schedule (seed eqs. 2.8-2.12, A.13-A.24)."""

import math

import pytest
import torch

from pipeline.diffusion.schedule import (
    CosineSchedule,
    LearnedSchedule,
    alpha_sigma,
    logsnr_cosine,
    t_from_logsnr_cosine,
)

T = torch.linspace(0, 1, 1001, dtype=torch.float64)


@pytest.mark.parametrize(("lo", "hi"), [(-30.0, 30.0), (-20.0, 10.0), (-5.0, 5.0)])
def test_endpoints_are_the_truncation_bounds(lo: float, hi: float) -> None:
    ends = logsnr_cosine(torch.tensor([0.0, 1.0], dtype=torch.float64), lo, hi)
    assert abs(ends[0].item() - hi) < 1e-6
    assert abs(ends[1].item() - lo) < 1e-6


def test_endpoints_in_float32_too() -> None:
    ends = logsnr_cosine(torch.tensor([0.0, 1.0]))
    assert ends.dtype == torch.float32
    assert torch.allclose(ends, torch.tensor([30.0, -30.0]), atol=1e-5)


def test_strictly_decreasing_and_matches_eq_2_8_by_hand() -> None:
    lam = logsnr_cosine(T)
    assert bool((lam[1:] < lam[:-1]).all())
    # eq. 2.8 evaluated independently with math at t = 0.3
    t0 = 2 / math.pi * math.atan(math.exp(-15))
    t1 = 2 / math.pi * math.atan(math.exp(15))
    expected = -2 * math.log(math.tan(math.pi / 2 * (t0 + 0.3 * (t1 - t0))))
    assert logsnr_cosine(torch.tensor(0.3, dtype=torch.float64)).item() == pytest.approx(expected, abs=1e-12)


def test_alpha_sigma_variance_preserving_and_eq_2_11() -> None:
    lam = logsnr_cosine(T)
    a, s = alpha_sigma(lam)
    assert torch.allclose(a**2 + s**2, torch.ones_like(a), atol=1e-12)
    assert torch.allclose(torch.log(a**2 / s**2), lam, atol=1e-8)
    # eq. 2.11: alpha_t = cos(pi/2 (t0 + t (t1 - t0)))
    t0 = 2 / math.pi * math.atan(math.exp(-15))
    t1 = 2 / math.pi * math.atan(math.exp(15))
    assert torch.allclose(a, torch.cos(math.pi / 2 * (t0 + T * (t1 - t0))), atol=1e-12)


def test_inverse() -> None:
    assert torch.allclose(t_from_logsnr_cosine(logsnr_cosine(T)), T, atol=1e-9)


def test_shifted_schedule_keeps_bounds_and_inverts() -> None:
    sched = CosineSchedule(-30, 30, shift=2 * math.log(64 / 128))
    lam = sched(T)
    assert lam[0].item() == pytest.approx(30, abs=1e-6)
    assert lam[-1].item() == pytest.approx(-30, abs=1e-6)
    assert torch.allclose(sched.t_of(lam), T, atol=1e-9)
    # a negative shift means less signal in the middle of the schedule than the unshifted one
    assert bool((lam[1:-1] < CosineSchedule()(T)[1:-1]).all())


def test_closed_form_slope_matches_autograd() -> None:
    sched = CosineSchedule(-20, 15, shift=0.5)
    t = torch.linspace(0.01, 0.99, 17, dtype=torch.float64)
    auto = super(CosineSchedule, sched).dlogsnr_dt(t)
    assert torch.allclose(sched.dlogsnr_dt(t), auto, rtol=1e-9)


def test_learned_schedule_monotone_with_exact_ends_and_inverse() -> None:
    torch.manual_seed(0)
    sched = LearnedSchedule(-10, 12, hidden=64)
    with torch.no_grad():
        for p in sched.parameters():
            p.normal_()
    lam = sched(T)
    assert lam[0].item() == pytest.approx(12, abs=1e-9)
    assert lam[-1].item() == pytest.approx(-10, abs=1e-9)
    assert bool((lam[1:] < lam[:-1]).all())
    tt = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    assert torch.allclose(sched.t_of(sched(tt)), tt, atol=1e-9)


def test_bad_bounds_raise() -> None:
    with pytest.raises(ValueError, match="logsnr_min"):
        CosineSchedule(10, -10)
