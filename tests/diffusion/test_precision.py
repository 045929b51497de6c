"""bf16 in evaluation and sampling (``evaluate.precision``, ``sample.precision``): the network's forward passes in
bf16 autocast, the samplers' state in fp32; ``auto`` is fp32 on the CPU, so results there are unchanged."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from pipeline.checkpoints import Inference, build_diffusion, load_inference
from pipeline.diffusion import extend
from pipeline.diffusion.objective import randn
from pipeline.diffusion.samplers import get_sampler

MODEL = {"channels": 2, "base_channels": 8, "channel_mults": [1, 2], "heads": 2, "day_of_year": False}  # small


@pytest.fixture(scope="module")
def inference_file(tmp_path_factory) -> Path:
    """An inference file of a small network whose weights are all random (a fresh network's zero-initialised output
    layers would predict exactly 0 in any precision)."""
    diffusion = {"schedule": "cosine", "logsnr_min": -15.0, "logsnr_max": 15.0, "shift": 0.0, "weighting": "v"}
    torch.manual_seed(0)
    d = build_diffusion(MODEL, diffusion)
    with torch.no_grad():
        for p in d.net.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    meta = Inference(model_config=MODEL, diffusion=diffusion, variables=["a", "b"], stats_path="", step=1,
                     clip_frames=4, config="")  # fmt: skip
    path = tmp_path_factory.mktemp("precision") / "model.pt"
    torch.save(meta.blob({k: v.clone() for k, v in d.net.state_dict().items()}), path)
    return path


def _sample(model, sampler: str) -> torch.Tensor:
    gens = [torch.Generator().manual_seed(j) for j in range(2)]
    z = randn((2, 2, 4, 16, 16), gens, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        return get_sampler(sampler)(model, z, 10, generator=gens)


def _rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt())


def test_auto_is_fp32_on_the_cpu(inference_file: Path) -> None:
    (auto, _), (fp32, _) = (load_inference(inference_file, "cpu", p) for p in ("auto", "fp32"))
    assert auto.inference_dtype is None and fp32.inference_dtype is None
    assert torch.equal(_sample(auto, "dpmpp_2m"), _sample(fp32, "dpmpp_2m"))


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "ancestral"])
def test_bf16_samples_agree_with_fp32(inference_file: Path, sampler: str) -> None:
    """bf16 forward passes change a 10-step sample from the same noise (so autocast is on) by a few per cent of its
    RMS at most (measured 0.2-0.3%; bf16 keeps 8 bits of mantissa: 0.4% per operation), and the sample stays fp32."""
    fp32, _ = load_inference(inference_file, "cpu", "fp32")
    bf16, _ = load_inference(inference_file, "cpu", "bf16")
    assert bf16.inference_dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in bf16.parameters())  # the weights stay fp32
    a, b = _sample(bf16, sampler), _sample(fp32, sampler)
    assert a.dtype == torch.float32 and torch.isfinite(a).all()
    diff = _rel_rms(a, b)
    print(f"{sampler}: bf16 vs fp32 relative RMS difference {diff:.4f}")
    assert 0 < diff < 0.02, diff


def test_bf16_reconstruction_guidance_agrees_with_fp32(inference_file: Path) -> None:
    """Reconstruction guidance differentiates through the network's forward pass: under bf16 autocast it extends a
    clip as fp32 does, to a few per cent (a rollout of 3 windows)."""
    init = torch.randn(1, 2, 2, 16, 16, generator=torch.Generator().manual_seed(3))
    out = {}
    for precision in ("fp32", "bf16"):
        model, _ = load_inference(inference_file, "cpu", precision)
        sample = functools.partial(get_sampler("ddim"), steps=8)
        g = [torch.Generator().manual_seed(5)]
        out[precision] = extend(model, sample, init, 8, 4, 2.0, overlap=2, generator=g)
    assert out["bf16"].shape == (1, 2, 8, 16, 16) and torch.isfinite(out["bf16"]).all()
    diff = _rel_rms(out["bf16"][:, :, 2:], out["fp32"][:, :, 2:])
    print(f"guided extension: bf16 vs fp32 relative RMS difference {diff:.4f}")
    assert 0 < diff < 0.05, diff
