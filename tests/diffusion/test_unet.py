"""The space-time U-Net: shapes, conditioning, periodic longitude, checkpointing."""

import pytest
import torch

from pipeline.diffusion.unet import UNet, UNetConfig, pad_spatial


def _net(**kw) -> UNet:
    torch.manual_seed(0)
    net = UNet(UNetConfig(**{"channels": 2, "base_channels": 8, "channel_mults": (1, 2), "heads": 2, **kw}))
    # zero-initialised output layers make the untrained net output 0 everywhere; perturb them
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


@pytest.mark.parametrize(("h", "w"), [(16, 32), (15, 25), (7, 9)])
def test_output_shape_equals_input_shape(h: int, w: int) -> None:
    net = _net()
    z = torch.randn(2, 2, 5, h, w)
    assert net(z, torch.zeros(2)).shape == z.shape


def test_periodic_longitude_is_translation_equivariant() -> None:
    """Rolling the input across the dateline rolls the output: the seam is invisible."""
    net = _net(periodic_lon=True)
    z = torch.randn(1, 2, 3, 8, 16)
    shift = 6  # a multiple of the downsampling factor (2)
    with torch.no_grad():
        out = net(z, torch.tensor([1.0]))
        out_rolled = net(torch.roll(z, shift, dims=-1), torch.tensor([1.0]))
    assert torch.allclose(torch.roll(out, shift, dims=-1), out_rolled, atol=1e-5)


def test_non_periodic_padding_sees_the_seam() -> None:
    net = _net(periodic_lon=False)
    z = torch.randn(1, 2, 3, 8, 16)
    with torch.no_grad():
        out = net(z, torch.tensor([1.0]))
        out_rolled = net(torch.roll(z, 6, dims=-1), torch.tensor([1.0]))
    assert not torch.allclose(torch.roll(out, 6, dims=-1), out_rolled, atol=1e-3)


def test_field_smooth_across_dateline_stays_smooth() -> None:
    """A field cos(lon) is smooth across the seam; the output jump there is like any interior jump."""
    net = _net(periodic_lon=True)
    lon = torch.arange(32) * (2 * torch.pi / 32)
    z = torch.cos(lon).expand(1, 2, 3, 8, 32).clone()
    with torch.no_grad():
        out = net(z, torch.tensor([0.0]))
    jumps = (out - torch.roll(out, 1, dims=-1)).abs().amax(dim=(0, 1, 2, 3))  # per longitude column
    seam = jumps[0]  # between column 31 and column 0
    assert seam <= jumps[1:].max() * 1.0001


def test_pad_spatial_circular_and_reflect() -> None:
    x = torch.arange(12.0).reshape(1, 1, 1, 3, 4)
    p = pad_spatial(x, 1, periodic_lon=True, lat_padding="reflect")
    assert torch.equal(p[0, 0, 0, 1, 0], x[0, 0, 0, 0, -1])  # west pad = easternmost column
    assert torch.equal(p[0, 0, 0, 0, 1:-1], x[0, 0, 0, 1])  # north pad = reflection of row 1
    z = pad_spatial(x, 1, periodic_lon=True, lat_padding="zeros")
    assert torch.count_nonzero(z[0, 0, 0, 0]) == 0


def test_conditioning_changes_the_output() -> None:
    net = _net(context_frames=True, day_of_year=True)
    z = torch.randn(1, 2, 4, 8, 8)
    cond = {
        "doy": torch.tensor([[10.0, 11, 12, 13]]),
        "context": torch.randn(1, 2, 4, 8, 8),
        "context_mask": torch.tensor([1.0, 1, 0, 0]).reshape(1, 1, 4, 1, 1),
    }
    with torch.no_grad():
        a = net(z, torch.zeros(1), cond)
        b = net(z, torch.zeros(1), None)
        c = net(z, torch.zeros(1), {**cond, "doy": cond["doy"] + 180})
    assert not torch.allclose(a, b)
    assert not torch.allclose(a, c)


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    z = torch.randn(2, 2, 3, 8, 8)
    grads = []
    for ckpt in (False, True):
        net = _net(gradient_checkpointing=ckpt).train()
        net(z, torch.zeros(2)).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_bad_shapes_and_sizes_fail_clearly() -> None:
    net = _net()
    with pytest.raises(ValueError, match="expected z of shape"):
        net(torch.randn(1, 3, 2, 8, 8), torch.zeros(1))
    with pytest.raises(ValueError, match="max_frames"):
        _net(max_frames=2)(torch.randn(1, 2, 3, 8, 8), torch.zeros(1))
    with pytest.raises(ValueError, match=r"model\.attention_levels"):
        UNetConfig(channel_mults=(1, 2), attention_levels=(2,))
