"""The Langevin corrector (predictor-corrector sampling, Song et al. 2021) against Gaussians whose exact
score is known: the chain's variance follows its closed-form recursion, and at a few predictor steps, where
the predictor alone is biased, the corrector reduces the error of the sampled marginal variance."""

import math

import pytest
import torch

from pipeline.diffusion.samplers import SAMPLERS, get_sampler, langevin_corrector, langevin_step
from pipeline.diffusion.schedule import alpha_sigma
from tests.toys import GaussianDenoiser

DIMS = (1, 4, 16, 16)  # 1024 values per item: the step rule's norms are then close to their expectations


def _variance_recursion(u0: float, snr: float, k: int) -> float:
    """Variance, in units of the marginal's ``m``, after ``k`` SNR-rule Langevin steps with the exact score.

    For ``z ~ N(0, v)`` in D dimensions and the score ``-z/m``: ``||g||^2 = D v / m^2``, ``||noise||^2 = D``,
    so the step is ``e = 2 snr^2 m^2 / v`` and ``z' = (1 - e/m) z + sqrt(2 e) noise``; with ``u = v / m``:
    ``u' = (1 - 2 snr^2 / u)^2 u + 4 snr^2 / u`` (fixed point ``u = 1 + snr^2``), exact as D grows."""
    u = u0
    for _ in range(k):
        u = (1 - 2 * snr**2 / u) ** 2 * u + 4 * snr**2 / u
    return u


@pytest.mark.parametrize(("mean", "std", "logsnr"), [(0.0, 1.0, 0.0), (0.0, 1.0, -3.0), (2.0, 0.5, 1.5)])
@pytest.mark.parametrize("u0", [1.0, 0.3])
def test_corrector_variance_follows_the_closed_form_recursion(mean: float, std: float, logsnr: float, u0) -> None:
    snr, k, n = 0.16, 12, 200
    model = GaussianDenoiser(mean, std)
    lam = torch.full((n,), logsnr, dtype=torch.float64)
    a, s = alpha_sigma(torch.tensor(logsnr, dtype=torch.float64))
    m = float(a**2 * std**2 + s**2)  # the marginal's variance at this level: z_t ~ N(a mean, m)
    g = torch.Generator().manual_seed(0)
    z = float(a) * mean + math.sqrt(u0 * m) * torch.randn(n, *DIMS, dtype=torch.float64, generator=g)
    correct = langevin_corrector(snr, 1)
    for j in range(1, k + 1):
        z = correct(model, z, lam, None, g)
        u = float(((z - float(a) * mean) ** 2).mean()) / m
        assert u == pytest.approx(_variance_recursion(u0, snr, j), rel=0.01), j
    assert float(z.mean()) == pytest.approx(float(a) * mean, abs=0.01)  # the mean is kept
    if u0 == 1.0:  # started on the marginal, it stays there up to the discretisation's 1 + snr^2
        assert abs(u - 1) <= snr**2 + 0.01


def test_data_of_unit_variance_keeps_its_marginal_step_by_step() -> None:
    """For x ~ N(0, 1) every z_t ~ N(0, 1) and the exact score is -z: one step from the marginal gives the
    variance (1 - e)^2 + 2 e = 1 + e^2 with e = 2 snr^2, i.e. the marginal up to 4 snr^4."""
    snr, n = 0.16, 400
    g = torch.Generator().manual_seed(1)
    z = torch.randn(n, *DIMS, dtype=torch.float64, generator=g)
    lam = torch.full((n,), 0.7, dtype=torch.float64)
    _, sigma = alpha_sigma(lam)
    noise = torch.randn(z.shape, dtype=torch.float64, generator=g)
    out = langevin_step(z, sigma[:, None, None, None, None] * z, lam, snr, noise)  # eps_hat = E[eps | z] = sigma z
    se = math.sqrt(2 / out.numel())
    assert float(out.var()) == pytest.approx(1 + 4 * snr**4, abs=4 * se)
    # and the step itself: z - e z + sqrt(2 e) noise with e = 2 (snr ||noise|| / ||z||)^2 per item
    e = 2 * (snr * noise.flatten(1).norm(dim=1) / z.flatten(1).norm(dim=1)) ** 2
    by_hand = (1 - e)[:, None, None, None, None] * z + torch.sqrt(2 * e)[:, None, None, None, None] * noise
    torch.testing.assert_close(out, by_hand, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["ancestral", "ddim", "dpmpp_2m"])
@pytest.mark.parametrize(("mean", "std"), [(1.5, 0.5), (0.0, 2.0)])
def test_corrector_reduces_the_variance_error_at_few_predictor_steps(name: str, mean: float, std: float) -> None:
    steps, n = 4, 300
    z = torch.randn(n, *DIMS, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def variance_error(sampler: str, corrector_steps: int) -> float:
        model = GaussianDenoiser(mean, std)
        f = get_sampler(sampler, langevin_snr=0.16, langevin_steps=corrector_steps)
        x = f(model, z, steps, generator=torch.Generator().manual_seed(2))
        assert model.calls == steps + (steps - 1) * (corrector_steps if "+" in sampler else 0)  # the NFE
        assert float(x.mean()) == pytest.approx(mean, abs=0.02 * max(1.0, std))
        return abs(float(x.var()) / std**2 - 1)

    se = math.sqrt(2 / z.numel())  # relative standard error of a variance estimate
    predictor = variance_error(name, 0)
    one, three = variance_error(f"{name}+langevin", 1), variance_error(f"{name}+langevin", 3)
    assert predictor > 0.2  # the predictor alone is biased at 4 steps (the premise of the test)
    assert one < predictor - 10 * se
    assert three < one - 10 * se


def test_langevin_samplers_are_reproducible_and_take_one_generator_per_item() -> None:
    model = GaussianDenoiser(0.0, 1.0)
    z = torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    f = SAMPLERS["ddim+langevin"]
    a = f(model, z, 5, generator=[torch.Generator().manual_seed(10 + i) for i in range(3)])
    b = f(model, z, 5, generator=[torch.Generator().manual_seed(10 + i) for i in range(3)])
    alone = f(model, z[1:2], 5, generator=[torch.Generator().manual_seed(11)])
    assert torch.equal(a, b)
    torch.testing.assert_close(a[1:2], alone, rtol=1e-12, atol=1e-12)
    assert not torch.equal(a, SAMPLERS["ddim"](model, z, 5))  # the corrector did move the samples


def test_get_sampler_binds_the_settings_and_rejects_bad_ones() -> None:
    assert get_sampler("ddim") is SAMPLERS["ddim"]
    with pytest.raises(ValueError, match="not one of"):
        get_sampler("euler")
    with pytest.raises(ValueError, match="snr > 0"):
        get_sampler("ddim+langevin", langevin_snr=0.0)(GaussianDenoiser(0, 1), torch.zeros(2, 2), 2)
