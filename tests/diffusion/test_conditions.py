"""Static fields and forcings reach the network (issue 29): a toy whose clips are the forcing times the static field
is learnt to a lower loss by a network given them than by one that is not; dropout makes them unseen; sampling under
two forcings gives two different, seeded, reproducible results."""

from __future__ import annotations

import pytest
import torch

from pipeline.diffusion import CosineSchedule, UNet, UNetConfig, VDiffusion, clip_condition, sample_ddim
from pipeline.diffusion.guidance import drop_condition

FRAMES, SIZE = 4, 8


def toy(batch: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Clips (B, 1, T, 8, 8) = forcing(t) x static pattern + small noise: the forcing is a per-clip ramp, the static
    field one of four patterns. Without them a clip's amplitude and its pattern are unknown."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE), indexing="ij")
    patterns = torch.stack([xx, yy, xx * yy * 2, torch.cos(3 * xx)])  # (4, 8, 8)
    which = torch.randint(0, 4, (batch,), generator=g)
    static = patterns[which][:, None]  # (B, 1, H, W)
    level = torch.rand(batch, 1, generator=g) * 2 - 1
    trend = torch.rand(batch, 1, generator=g) - 0.5
    forcing = (level + trend * torch.arange(FRAMES)).clamp(-1.5, 1.5)  # (B, T)
    x = forcing[:, None, :, None, None] * static[:, :, None] + 0.05 * torch.randn(
        batch, 1, FRAMES, SIZE, SIZE, generator=g
    )
    return {"x": x, "static": static, "forcing": forcing[..., None]}


def _config(conditioned: bool) -> dict:
    return {
        "channels": 1, "base_channels": 8, "channel_mults": (1, 2), "attention_levels": (), "max_frames": FRAMES,
        "static_channels": 1 if conditioned else 0, "forcings": 1 if conditioned else 0,
    }  # fmt: skip


def _train(conditioned: bool, steps: int = 150) -> tuple[VDiffusion, float]:
    torch.manual_seed(0)
    cfg = _config(conditioned)
    model = VDiffusion(UNet(UNetConfig(**cfg)), CosineSchedule(-15, 15))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = toy(16, g)
        loss = model.loss(batch["x"], clip_condition(batch, cfg, "cpu"), generator=g, low_discrepancy=True).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    gv = torch.Generator().manual_seed(99)  # the same held-out clips, times and noise for both networks
    val = toy(64, gv)
    t, eps = torch.linspace(0.05, 0.95, 64), torch.randn(val["x"].shape, generator=gv)
    with torch.no_grad():
        loss = model.loss(val["x"], clip_condition(val, cfg, "cpu"), t=t, eps=eps).mean()
    return model.eval(), float(loss)


@pytest.fixture(scope="module")
def trained() -> dict[bool, tuple[VDiffusion, float]]:
    return {c: _train(c) for c in (True, False)}


def test_a_network_given_the_static_field_and_forcing_learns_the_toy_better(trained) -> None:
    with_them, without = trained[True][1], trained[False][1]
    assert with_them < 0.6 * without, (with_them, without)


def test_sampling_under_two_forcings_differs_and_is_seeded(trained) -> None:
    model, _ = trained[True]
    static = torch.stack([torch.linspace(-1, 1, SIZE).expand(SIZE, SIZE)])[None]  # the pattern "xx"

    def sample(level: float, seed: int) -> torch.Tensor:
        cond = {"static": static, "forcing": torch.full((4, FRAMES, 1), level)}
        z = torch.randn(4, 1, FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            return sample_ddim(model, z, steps=20, cond=cond)

    low, high, again = sample(-1.0, 0), sample(1.0, 0), sample(1.0, 0)
    torch.testing.assert_close(high, again, rtol=0, atol=0)
    assert not torch.equal(sample(1.0, 1), high)  # another seed, another draw
    # the samples follow the forcing: their projection on the static pattern has the forcing's sign and size
    proj = {k: float((s * static[:, :, None]).sum() / (static**2).sum() / (4 * FRAMES)) for k, s in
            (("low", low), ("high", high))}  # fmt: skip
    assert proj["high"] > 0.6 and proj["low"] < -0.6, proj


def test_dropped_items_see_neither_static_fields_nor_forcings() -> None:
    torch.manual_seed(0)
    net = UNet(UNetConfig(**_config(True))).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(0)
    batch = toy(3, g)
    z, lam = torch.randn(3, 1, FRAMES, SIZE, SIZE, generator=g), torch.tensor([-2.0, 0.5, 3.0])
    cond = clip_condition(batch, _config(True), "cpu")
    with torch.no_grad():
        uncond, conditional = net(z, lam, None), net(z, lam, cond)
        dropped = net(z, lam, drop_condition(cond, 1.0, torch.Generator()))
        other = {"static": -cond["static"], "forcing": cond["forcing"] + 1}
        other_dropped = net(z, lam, drop_condition(other, 1.0, torch.Generator()))
    assert not torch.allclose(conditional, uncond, atol=1e-4)
    torch.testing.assert_close(dropped, uncond, rtol=0, atol=0)
    torch.testing.assert_close(other_dropped, uncond, rtol=0, atol=0)


def test_a_condition_missing_an_input_the_network_reads_is_an_error() -> None:
    net = UNet(UNetConfig(**_config(True)))
    z, lam = torch.zeros(1, 1, FRAMES, SIZE, SIZE), torch.zeros(1)
    with pytest.raises(ValueError, match="conditioned on \\['forcing'\\]"):
        net(z, lam, {"static": torch.zeros(1, 1, SIZE, SIZE)})
    with pytest.raises(ValueError, match="cond\\['static'\\] must be"):
        net(z, lam, {"static": torch.zeros(1, 2, SIZE, SIZE), "forcing": torch.zeros(1, FRAMES, 1)})
    with pytest.raises(KeyError, match="the clip has only"):
        clip_condition({"x": z}, _config(True), "cpu")


def boundary_toy(batch: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Clips (B, 1, T, 8, 8) = -0.8 x a boundary field given at every frame + small noise: the boundary field (one
    of four patterns, its amplitude changing from frame to frame and clip to clip) is unknown without it, as a
    surface air temperature is without the sea-surface temperature of its month."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE), indexing="ij")
    patterns = torch.stack([xx, yy, xx * yy * 2, torch.cos(3 * xx)])
    which = torch.randint(0, 4, (batch,), generator=g)
    amplitude = torch.rand(batch, FRAMES, generator=g) * 2 - 1
    boundary = amplitude[:, None, :, None, None] * patterns[which][:, None, None]  # (B, 1, T, H, W)
    x = -0.8 * boundary + 0.05 * torch.randn(batch, 1, FRAMES, SIZE, SIZE, generator=g)
    return {"x": x, "boundary": boundary}


def boundary_losses() -> tuple[dict[bool, float], dict[bool, UNet]]:
    """Held-out losses and networks of two trainings on :func:`boundary_toy`, with the boundary field and without."""
    losses, nets = {}, {}
    for given in (True, False):
        torch.manual_seed(0)
        cfg = {"channels": 1, "base_channels": 8, "channel_mults": (1, 2), "attention_levels": (), "max_frames": FRAMES,
               "boundary_channels": 1 if given else 0}  # fmt: skip
        model = VDiffusion(UNet(UNetConfig(**cfg)), CosineSchedule(-15, 15))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(120):
            batch = boundary_toy(16, g)
            loss = model.loss(batch["x"], clip_condition(batch, cfg, "cpu"), generator=g, low_discrepancy=True)
            opt.zero_grad()
            loss.mean().backward()
            opt.step()
        gv = torch.Generator().manual_seed(99)
        val = boundary_toy(64, gv)
        t, eps = torch.linspace(0.05, 0.95, 64), torch.randn(val["x"].shape, generator=gv)
        with torch.no_grad():
            losses[given] = float(model.loss(val["x"], clip_condition(val, cfg, "cpu"), t=t, eps=eps).mean())
        nets[given] = model.net.eval()
    return losses, nets


def test_a_network_given_the_boundary_field_learns_the_toy_better_and_dropout_hides_it() -> None:
    """A boundary field (``boundary_channels``: one input channel per frame, never generated) reaches the network:
    trained alike, the network that reads it reaches a lower loss on held-out clips than the one that does not;
    dropped items get exactly the unconditional output."""
    losses, nets = boundary_losses()
    assert losses[True] < 0.6 * losses[False], losses
    net, val = nets[True], boundary_toy(3, torch.Generator().manual_seed(5))
    z, lam = torch.randn(3, 1, FRAMES, SIZE, SIZE), torch.tensor([-2.0, 0.5, 3.0])
    with torch.no_grad():
        uncond, conditional = net(z, lam, None), net(z, lam, {"boundary": val["boundary"]})
        dropped = net(z, lam, drop_condition({"boundary": val["boundary"]}, 1.0, torch.Generator()))
    assert not torch.allclose(conditional, uncond, atol=1e-4)
    torch.testing.assert_close(dropped, uncond, rtol=0, atol=0)
    with pytest.raises(ValueError, match="cond\\['boundary'\\] must be"):
        net(z, lam, {"boundary": val["boundary"][:, :, :2]})
