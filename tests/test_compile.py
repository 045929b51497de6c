"""train.compile: the compiled network gives the eager loss and gradients, and keeps its parameter names."""

from __future__ import annotations

import copy

import pytest
import torch

from pipeline.checkpoints import build_diffusion

pytestmark = pytest.mark.slow  # the inductor compiles C++ on the CPU (about a minute)

MODEL = {
    "channels": 2,
    "base_channels": 8,
    "channel_mults": [1, 2],
    "num_res_blocks": 1,
    "attention_levels": [1],
    "heads": 2,
    "day_of_year": True,
}
DIFFUSION = {"logsnr_min": -20.0, "logsnr_max": 20.0, "weighting": "v"}


def _loss_and_grads(diffusion, x, cond, t, eps, mask):
    diffusion.zero_grad()
    loss = diffusion.loss(x, cond, t=t, eps=eps, mask=mask).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in diffusion.named_parameters() if p.grad is not None}


def test_compiled_network_agrees_with_eager() -> None:
    torch.manual_seed(0)
    eager = build_diffusion(MODEL, DIFFUSION)
    compiled = copy.deepcopy(eager)
    names = list(compiled.state_dict())
    compiled.net.compile()
    assert list(compiled.state_dict()) == names  # checkpoints and the inference file load as before
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 2, 4, 16, 16, generator=g)
    eps = torch.randn(x.shape, generator=g)
    t = torch.tensor([0.2, 0.5, 0.8])
    cond = {"doy": torch.rand(3, 4, generator=g) * 365}
    mask = torch.ones_like(x)
    mask[:, :, :1] = 0  # a given frame, as trained-in conditioning leaves out of the loss
    le, ge = _loss_and_grads(eager, x, cond, t, eps, mask)
    for _ in range(2):  # the second call runs the compiled graph, not the first trace
        lc, gc = _loss_and_grads(compiled, x, cond, t, eps, mask)
    assert torch.allclose(lc, le, rtol=1e-4, atol=1e-6), (float(lc), float(le))
    assert gc.keys() == ge.keys() and len(ge) > 10
    for n in ge:
        assert torch.allclose(gc[n], ge[n], rtol=1e-3, atol=1e-5), n
