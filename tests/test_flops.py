"""FLOPs per clip and MFU (pipeline.flops)."""

from __future__ import annotations

import pytest
import torch

from pipeline import flops
from pipeline.diffusion import UNet, UNetConfig


def test_a_convolution_counts_two_flops_per_multiply_add() -> None:
    conv = torch.nn.Conv3d(4, 8, (1, 3, 3), padding=(0, 1, 1))
    x = torch.randn(2, 4, 3, 5, 5)
    counted = flops.forward_flops(lambda z, logsnr, cond: conv(z), x, torch.zeros(2), None)
    assert counted == 2 * (2 * 3 * 5 * 5) * 8 * 4 * 9  # outputs x output channels x inputs per output


def test_the_network_counts_per_clip_and_with_its_conditions() -> None:
    net = UNet(UNetConfig(channels=2, base_channels=8, channel_mults=(1, 2), heads=2, context_frames=True))
    z = torch.zeros(1, 2, 4, 8, 16)
    one = flops.forward_flops(net, z, torch.zeros(1), None)
    two = flops.forward_flops(net, torch.zeros(2, 2, 4, 8, 16), torch.zeros(2), None)
    assert one > 1e6 and two == 2 * one
    longer = flops.forward_flops(net, torch.zeros(1, 2, 8, 8, 16), torch.zeros(1), None)
    assert 2 * one <= longer < 2.5 * one  # convolutions grow with frames, temporal attention a little faster


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA GH200 480GB", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA GeForce RTX 3090", None),
    ],
)
def test_peak_by_device_name(name: str, peak: float | None) -> None:
    assert flops.peak_tflops(name) == peak
    assert flops.peak_tflops(name, 123.0) == 123.0


def test_mfu_is_achieved_per_device_over_peak() -> None:
    m = flops.mfu(flops_per_clip=3e12, clips_per_s=100.0, devices=4, peak=989.0)
    assert m["tflops_per_s"] == pytest.approx(300.0) and m["tflops_per_s_per_device"] == pytest.approx(75.0)
    assert m["mfu"] == pytest.approx(75.0 / 989.0)
    assert "mfu" not in flops.mfu(3e12, 100.0, 4, None)
