"""Samplers: one step against closed forms, whole chains against a Gaussian with a known answer,
and DDIM against diffusers' DDIMScheduler (a peer implementation, used only here)."""

import math

import pytest
import torch

from pipeline.diffusion.guidance import ClassifierFreeGuidance
from pipeline.diffusion.objective import Prediction, v_from_x_eps
from pipeline.diffusion.samplers import (
    SAMPLERS,
    ancestral_step,
    ddim_step,
    sample_ancestral,
    time_grid,
)
from pipeline.diffusion.schedule import CosineSchedule, alpha_sigma
from tests.toys import GaussianDenoiser


def _posterior_by_hand(z, x, lt, ls):
    """q(z_s | z_t, x) from seed eqs. 2.6 and 2.18 with alpha_{t|s}, sigma_{t|s} directly."""
    at, st = (math.sqrt(1 / (1 + math.exp(-lt))), math.sqrt(1 / (1 + math.exp(lt))))
    as_, ss = (math.sqrt(1 / (1 + math.exp(-ls))), math.sqrt(1 / (1 + math.exp(ls))))
    a_ts = at / as_
    s2_ts = st**2 - a_ts**2 * ss**2
    mean = a_ts * ss**2 / st**2 * z + as_ * s2_ts / st**2 * x
    var = s2_ts * ss**2 / st**2
    return mean, var


@pytest.mark.parametrize(("lt", "ls"), [(-3.0, 1.0), (0.5, 0.7), (-20.0, -18.0), (10.0, 25.0)])
def test_ancestral_step_mean_and_variance_match_closed_form(lt: float, ls: float) -> None:
    z = torch.tensor([0.3, -1.2], dtype=torch.float64)
    x = torch.tensor([1.0, 0.25], dtype=torch.float64)
    lt_, ls_ = torch.full((2,), lt, dtype=torch.float64), torch.full((2,), ls, dtype=torch.float64)
    mean = ancestral_step(z, x, lt_, ls_, None)
    ones = ancestral_step(z, x, lt_, ls_, torch.ones(2, dtype=torch.float64))
    m_ref, var_ref = _posterior_by_hand(z, x, lt, ls)
    assert torch.allclose(mean, m_ref, rtol=1e-9, atol=1e-12)
    assert torch.allclose((ones - mean) ** 2, torch.full((2,), var_ref, dtype=torch.float64), rtol=1e-8, atol=1e-30)


def test_ddim_eta_one_has_the_ancestral_step_distribution() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1000, dtype=torch.float64, generator=g)
    x = torch.randn(1000, dtype=torch.float64, generator=g)
    noise = torch.randn(1000, dtype=torch.float64, generator=g)
    for lt, ls in [(-5.0, -2.0), (1.0, 4.0), (12.0, 30.0)]:
        lt_, ls_ = torch.full((1000,), lt, dtype=torch.float64), torch.full((1000,), ls, dtype=torch.float64)
        a, s = alpha_sigma(lt_)
        pred = Prediction(v=v_from_x_eps(x, (z - a * x) / s, a, s), x=x, eps=(z - a * x) / s)
        anc = ancestral_step(z, x, lt_, ls_, noise)
        ddim = ddim_step(z, pred, lt_, ls_, 1.0, noise)
        assert torch.allclose(anc, ddim, rtol=1e-9, atol=1e-10)
        # and eta = 0 is deterministic: the noise has no effect
        assert torch.equal(ddim_step(z, pred, lt_, ls_, 0.0, noise), ddim_step(z, pred, lt_, ls_, 0.0, None))


@pytest.mark.parametrize(
    ("name", "kwargs", "steps"),
    [("ancestral", {}, 200), ("ddim", {"eta": 0.0}, 100), ("ddim", {"eta": 0.5}, 100), ("dpmpp_2m", {}, 25)],
)
def test_perfect_denoiser_recovers_gaussian(name: str, kwargs: dict, steps: int) -> None:
    n = 40_000
    mean, std = 1.5, 0.5
    model = GaussianDenoiser(mean, std)
    z = torch.randn(n, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = SAMPLERS[name](model, z, steps, generator=torch.Generator().manual_seed(2), **kwargs)
    se_mean = std / math.sqrt(n)
    se_var = std**2 * math.sqrt(2 / n)
    assert abs(x.mean().item() - mean) < 5 * se_mean
    assert abs(x.var().item() - std**2) < 5 * se_var + 0.01 * std**2  # sampling error + 1 % discretisation
    assert model.calls == steps


def test_time_grid_validation() -> None:
    assert torch.equal(time_grid(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="decreasing"):
        time_grid(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=">= 1"):
        time_grid(0)


def test_same_generator_same_samples() -> None:
    model = GaussianDenoiser(0.0, 1.0)
    z = torch.randn(16, 1, dtype=torch.float64)
    a = sample_ancestral(model, z, 10, generator=torch.Generator().manual_seed(5))
    b = sample_ancestral(model, z, 10, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_one_generator_per_item_makes_samples_independent_of_the_batch() -> None:
    model = GaussianDenoiser(0.0, 1.0)
    z = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    gens = [torch.Generator().manual_seed(10 + i) for i in range(3)]
    batch = sample_ancestral(model, z, 10, generator=gens)
    alone = sample_ancestral(model, z[1:2], 10, generator=[torch.Generator().manual_seed(11)])
    torch.testing.assert_close(batch[1:2], alone, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(batch[0], batch[1])  # the items get their own noise
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        sample_ancestral(model, z, 10, generator=gens[:2])


class _CondGauss(GaussianDenoiser):
    """Conditional mean ``cond['mu']``, unconditional mean 0: CFG moves samples past the condition."""

    def predict(self, z, logsnr, cond=None):
        self.mean = 0.0 if cond is None else cond["mu"]
        return super().predict(z, logsnr)


def test_classifier_free_guidance_extrapolates_the_conditional_mean() -> None:
    z = torch.randn(20_000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    cond = {"mu": 1.0}
    plain = SAMPLERS["ddim"](ClassifierFreeGuidance(_CondGauss(0, 0.5), 0.0), z, 50, cond=cond)
    guided = SAMPLERS["ddim"](ClassifierFreeGuidance(_CondGauss(0, 0.5), 1.0), z, 50, cond=cond)
    assert plain.mean().item() == pytest.approx(1.0, abs=0.02)
    assert guided.mean().item() > 1.5  # w = 1 pushes away from the unconditional mean


def test_ddim_step_matches_diffusers_ddim_scheduler() -> None:
    import diffusers  # the peer implementation for this test (a test dependency)

    n_train = 50
    sched = CosineSchedule(-10, 10)
    tau = torch.arange(1, n_train + 1, dtype=torch.float64) / n_train  # discrete step k <-> t = (k+1)/N
    lam = sched(tau)
    abar, _ = alpha_sigma(lam)
    abar = abar**2
    betas = 1 - torch.cat([abar[:1], abar[1:] / abar[:-1]])
    ref = diffusers.DDIMScheduler(
        num_train_timesteps=n_train,
        trained_betas=betas.numpy(),
        prediction_type="v_prediction",
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="leading",
    )
    ref.set_timesteps(n_train)
    g = torch.Generator().manual_seed(0)
    for k in [n_train - 1, 30, 10, 1]:
        z = torch.randn(2, 3, 4, generator=g)
        v = torch.randn(2, 3, 4, generator=g)
        noise = torch.randn(2, 3, 4, generator=g)
        lt, ls = lam[k].expand(2), lam[k - 1].expand(2)
        a, s = alpha_sigma(lt)
        a, s = a.float(), s.float()
        pred = Prediction(
            v=v, x=a[:, None, None] * z - s[:, None, None] * v, eps=s[:, None, None] * z + a[:, None, None] * v
        )
        for eta in (0.0, 0.7):
            ours = ddim_step(z, pred, lt, ls, eta, noise).float()
            theirs = ref.step(v, k, z, eta=eta, variance_noise=noise if eta > 0 else None).prev_sample
            assert torch.allclose(ours, theirs, atol=2e-5), (k, eta, (ours - theirs).abs().max())


def test_the_config_schema_names_exactly_the_implemented_samplers() -> None:
    from pipeline.config import SAMPLER_NAMES
    from pipeline.diffusion import SAMPLERS

    assert tuple(sorted(SAMPLERS)) == tuple(sorted(SAMPLER_NAMES))
