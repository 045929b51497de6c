"""v-prediction conversions (seed eqs. 2.21-2.23) and the loss."""

import pytest
import torch

from pipeline.diffusion.objective import (
    VDiffusion,
    eps_from_v,
    loss_weight,
    v_from_x_eps,
    x_from_v,
    z_from_x_eps,
)
from pipeline.diffusion.schedule import CosineSchedule, alpha_sigma


def test_conversions_are_exact_inverses() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 2, 4, 5, generator=g, dtype=torch.float64)
    eps = torch.randn(x.shape, generator=g, dtype=torch.float64)
    logsnr = torch.linspace(-30, 30, 64, dtype=torch.float64)
    a, s = alpha_sigma(logsnr)
    z = z_from_x_eps(x, eps, a, s)
    v = v_from_x_eps(x, eps, a, s)
    assert torch.allclose(x_from_v(z, v, a, s), x, atol=1e-10)
    assert torch.allclose(eps_from_v(z, v, a, s), eps, atol=1e-10)
    # and v is recovered from (z, x): v = (alpha z - x) / sigma
    assert torch.allclose(v, ((a[:, None, None, None, None] * z - x) / s[:, None, None, None, None]), atol=1e-6)


class _Const(torch.nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, z, logsnr, cond=None):
        return torch.full_like(z, self.value)


def test_loss_is_per_element_mean_of_squared_v_error() -> None:
    g = torch.Generator().manual_seed(1)
    m = VDiffusion(_Const(0.0), CosineSchedule())
    x = torch.randn(4, 2, 3, 5, 6, generator=g)
    eps = torch.randn(x.shape, generator=g)
    t = torch.tensor([0.1, 0.4, 0.6, 0.9])
    loss = m.loss(x, t=t, eps=eps)
    a, s = alpha_sigma(CosineSchedule()(t))
    expected = (v_from_x_eps(x, eps, a, s) ** 2).mean(dim=(1, 2, 3, 4))
    assert torch.allclose(loss, expected, rtol=1e-5)


def test_mask_leaves_out_cells() -> None:
    m = VDiffusion(_Const(0.0), CosineSchedule())
    x = torch.randn(2, 1, 2, 3, 3)
    eps = torch.randn(x.shape)
    t = torch.tensor([0.5, 0.5])
    mask = torch.zeros_like(x)
    mask[..., 0, 0] = 1
    a, s = alpha_sigma(CosineSchedule()(t))
    v = v_from_x_eps(x, eps, a, s)
    expected = (v[..., 0, 0] ** 2).mean(dim=(1, 2))
    assert torch.allclose(m.loss(x, t=t, eps=eps, mask=mask), expected, rtol=1e-5)


def test_elbo_weighting_equals_eps_loss_over_p_lambda() -> None:
    # w = 1 in eq. 2.36: 1/2 * (-dlogsnr/dt) * ||eps - eps_hat||^2, and eps error = alpha * v error
    sched = CosineSchedule()
    t = torch.tensor([0.2, 0.7], dtype=torch.float64)
    lam = sched(t)
    w = loss_weight(lam, sched.dlogsnr_dt(t), "elbo")
    a, _ = alpha_sigma(lam)
    assert torch.allclose(w, -0.5 * sched.dlogsnr_dt(t) * a**2)
    assert bool((w > 0).all())


def test_low_discrepancy_times_are_stratified() -> None:
    m = VDiffusion(_Const(0.0), CosineSchedule())
    t = m.sample_t(8, generator=torch.Generator().manual_seed(0), low_discrepancy=True)
    counts = torch.histc(t, bins=8, min=0, max=1)
    assert torch.equal(counts, torch.ones(8))


def test_unknown_weighting_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="weighting"):
        VDiffusion(_Const(0.0), CosineSchedule(), weighting="bogus")  # type: ignore[arg-type]


@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_min_snr_weighting_is_min_snr_gamma_on_the_x_error(gamma: float) -> None:
    # Hang et al.: min(SNR, gamma) ||x - x_hat||^2; with x_hat from v_hat, ||x - x_hat||^2 = sigma^2 ||v - v_hat||^2
    g = torch.Generator().manual_seed(2)
    sched = CosineSchedule()
    t = torch.linspace(0.02, 0.98, 9, dtype=torch.float64)
    lam = sched(t)
    a, s = alpha_sigma(lam)
    x = torch.randn(9, 1, 2, 3, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(x.shape, generator=g, dtype=torch.float64)
    z = z_from_x_eps(x, eps, a, s)
    v_hat = torch.zeros_like(x)
    x_err = ((x - x_from_v(z, v_hat, a, s)) ** 2).mean(dim=(1, 2, 3, 4))
    v_err = ((v_from_x_eps(x, eps, a, s) - v_hat) ** 2).mean(dim=(1, 2, 3, 4))
    w = loss_weight(lam, sched.dlogsnr_dt(t), "min_snr", gamma=gamma)
    assert torch.allclose(w * v_err, torch.clamp(torch.exp(lam), max=gamma) * x_err, rtol=1e-9)
    # below gamma it is the eps weighting, above it falls as gamma / (SNR + 1)
    low = torch.exp(lam) < gamma
    assert torch.allclose(w[low], loss_weight(lam, sched.dlogsnr_dt(t), "eps")[low])
    assert bool((w[~low] < 1).all()) and bool(low.any()) and bool((~low).any())
    m = VDiffusion(_Const(0.0), sched, weighting="min_snr", min_snr_gamma=gamma)
    assert torch.allclose(m.loss(x.float(), t=t.float(), eps=eps.float()), (w * v_err).float(), rtol=1e-4)
    with pytest.raises(ValueError, match="min_snr_gamma"):
        VDiffusion(_Const(0.0), sched, weighting="min_snr", min_snr_gamma=0.0)
