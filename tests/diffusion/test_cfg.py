"""Classifier-free guidance: the guided prediction against the closed form for conditional Gaussians, the
guided samples' mean, conditioning dropout (its rate, its seeding, and that a dropped item is exactly the
unconditional network), and the training loss with every condition dropped."""

import math

import pytest
import torch

from pipeline.diffusion.guidance import ClassifierFreeGuidance, drop_condition
from pipeline.diffusion.objective import VDiffusion
from pipeline.diffusion.samplers import SAMPLERS
from pipeline.diffusion.schedule import CosineSchedule, alpha_sigma
from pipeline.diffusion.unet import UNet, UNetConfig
from tests.toys import GaussianDenoiser


class _ConditionalGaussian(GaussianDenoiser):
    """Exact denoiser of ``x | c ~ N(c["mu"], std^2)``; without a condition, of ``x ~ N(mu_u, std^2)``."""

    def __init__(self, mu_u: float, std: float):
        super().__init__(mu_u, std)
        self.mu_u = mu_u

    def predict(self, z, logsnr, cond=None):
        self.mean = self.mu_u if cond is None else cond["mu"]
        return super().predict(z, logsnr)


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0, 2.0, 4.5])
def test_guided_prediction_is_the_exact_denoiser_of_the_closed_form_guided_gaussian(scale: float) -> None:
    """With equal variances, ``x_u + s (x_c - x_u)`` is at every level the exact denoiser of
    ``N(mu_u + s (mu_c - mu_u), std^2)``: the shifted mean ``mu_g`` solves ``mu_g (1 - k a) = mu_u (1 - k a) +
    s (mu_c - mu_u) (1 - k a)`` for the posterior gain ``k = a std^2 / (a^2 std^2 + sigma^2)``, independent of t."""
    mu_u, mu_c, std = -0.5, 1.25, 0.7
    guided = ClassifierFreeGuidance.from_scale(_ConditionalGaussian(mu_u, std), scale)
    assert guided.scale == pytest.approx(scale) and guided.weight == pytest.approx(scale - 1)
    oracle = GaussianDenoiser(mu_u + scale * (mu_c - mu_u), std)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 3, dtype=torch.float64, generator=g) * 2
    logsnr = torch.empty(64, dtype=torch.float64).uniform_(-12, 12, generator=g)
    got = guided.predict(z, logsnr, {"mu": mu_c})
    want = oracle.predict(z, logsnr)
    for field in ("x", "eps", "v"):
        torch.testing.assert_close(getattr(got, field), getattr(want, field), rtol=1e-9, atol=1e-9)
    # the guided score is the same mix of the two scores: -eps/sigma is linear in v at fixed z
    _, sigma = alpha_sigma(logsnr)
    score_c = -_ConditionalGaussian(mu_u, std).predict(z, logsnr, {"mu": mu_c}).eps / sigma[:, None]
    score_u = -_ConditionalGaussian(mu_u, std).predict(z, logsnr, None).eps / sigma[:, None]
    torch.testing.assert_close(-got.eps / sigma[:, None], score_u + scale * (score_c - score_u), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("scale", [0.0, 1.0, 2.5])
def test_guided_samples_have_the_closed_form_mean_and_the_variance(scale: float) -> None:
    n, mu_u, mu_c, std = 10_000, 0.0, 1.0, 0.5
    z = torch.randn(n, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    guided = ClassifierFreeGuidance.from_scale(_ConditionalGaussian(mu_u, std), scale)
    x = SAMPLERS["ddim"](guided, z, 100, cond={"mu": mu_c})
    assert float(x.mean()) == pytest.approx(mu_u + scale * (mu_c - mu_u), abs=5 * std / math.sqrt(n) + 0.005)
    assert float(x.var()) == pytest.approx(std**2, rel=5 * math.sqrt(2 / n) + 0.01)


def test_conditioning_dropout_rate_and_seeding() -> None:
    cond = {"doy": torch.arange(20_000 * 2, dtype=torch.float32).reshape(20_000, 2)}
    drop = drop_condition(cond, 0.3, torch.Generator().manual_seed(4))
    assert drop is not None and drop["doy"] is cond["doy"] and drop["drop"].shape == (20_000,)
    frac, se = float(drop["drop"].float().mean()), math.sqrt(0.3 * 0.7 / 20_000)
    assert abs(frac - 0.3) < 4 * se
    again = drop_condition(cond, 0.3, torch.Generator().manual_seed(4))["drop"]
    other = drop_condition(cond, 0.3, torch.Generator().manual_seed(5))["drop"]
    assert torch.equal(again, drop["drop"]) and not torch.equal(other, drop["drop"])  # seeded, per seed
    assert bool(drop_condition(cond, 1.0, torch.Generator().manual_seed(4))["drop"].all())
    # p = 0 leaves the condition alone and draws nothing: the training's later draws (and numbers) do not move
    g = torch.Generator().manual_seed(6)
    state = g.get_state()
    assert drop_condition(cond, 0.0, g) is cond and torch.equal(g.get_state(), state)
    assert drop_condition(None, 0.5, g) is None
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        drop_condition(cond, 1.5, g)


def _net(**kw) -> UNet:
    torch.manual_seed(0)
    cfg = {"channels": 2, "base_channels": 8, "channel_mults": (1, 2), "heads": 2, "day_of_year": True, **kw}
    net = UNet(UNetConfig(**cfg))
    with torch.no_grad():  # the zero-initialised output layers would make every output 0
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


@pytest.mark.parametrize("context_frames", [False, True])
def test_a_dropped_item_is_exactly_the_unconditional_network(context_frames: bool) -> None:
    net = _net(context_frames=context_frames)
    g = torch.Generator().manual_seed(0)
    z, lam = torch.randn(3, 2, 4, 8, 8, generator=g), torch.tensor([-2.0, 0.5, 3.0])
    cond = {"doy": torch.tensor([[10.0, 11, 12, 13], [100, 101, 102, 103], [300, 301, 302, 303]])}
    if context_frames:
        cond |= {"context": torch.randn(3, 2, 4, 8, 8, generator=g), "context_mask": torch.ones(1, 1, 4, 1, 1)}
        cond["context_mask"][:, :, 2:] = 0
    with torch.no_grad():
        uncond = net(z, lam, None)
        conditional = net(z, lam, cond)
        all_dropped = net(z, lam, {**cond, "drop": torch.ones(3, dtype=torch.bool)})
        other_doy = net(z, lam, {**cond, "doy": cond["doy"] + 90, "drop": torch.ones(3, dtype=torch.bool)})
        none_dropped = net(z, lam, {**cond, "drop": torch.zeros(3, dtype=torch.bool)})
        mixed = net(z, lam, {**cond, "drop": torch.tensor([True, False, True])})
    assert not torch.allclose(conditional, uncond, atol=1e-4)  # the condition matters to this net
    torch.testing.assert_close(all_dropped, uncond, rtol=0, atol=0)
    torch.testing.assert_close(other_doy, uncond, rtol=0, atol=0)  # the dropped condition's value is unseen
    torch.testing.assert_close(none_dropped, conditional, rtol=0, atol=0)
    torch.testing.assert_close(mixed[[0, 2]], uncond[[0, 2]], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(mixed[1], conditional[1], rtol=1e-6, atol=1e-6)


def test_training_with_every_condition_dropped_does_not_see_the_condition() -> None:
    """cond_drop = 1: the loss and its gradient are those of the unconditional model whatever the day of year;
    the day-of-year network gets no gradient. At cond_drop = 0 the same check fails (the condition is used)."""
    net = _net().train()
    diffusion = VDiffusion(net, CosineSchedule())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 2, 4, 8, 8, generator=g)
    t, eps = torch.rand(4, generator=g), torch.randn(x.shape, generator=g)
    doy_a = torch.randint(1, 366, (4, 4), generator=g).float()

    def loss_and_grads(cond, p: float):
        net.zero_grad()
        loss = diffusion.loss(x, drop_condition(cond, p, torch.Generator().manual_seed(2)), t=t, eps=eps).mean()
        loss.backward()
        return loss.detach(), [q.grad.clone() if q.grad is not None else torch.zeros_like(q) for q in net.parameters()]

    none, grads_none = loss_and_grads(None, 0.0)
    for doy in (doy_a, (doy_a + 120) % 365):
        loss, grads = loss_and_grads({"doy": doy}, 1.0)
        assert torch.equal(loss, none)
        for a, b in zip(grads, grads_none, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)  # summed in another order: rounding only
        assert all(float(q.grad.abs().max()) == 0 for q in net.doy_mlp.parameters())
    kept, _ = loss_and_grads({"doy": doy_a}, 0.0)
    assert not torch.equal(kept, none)
