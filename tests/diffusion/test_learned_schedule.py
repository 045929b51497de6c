"""The learned schedule (VDM, seed 001) trained: monotone, endpoints, inverse, the variance gradient
against autograd's gradient of L^2, the importance-weighted loss's expectation against a quadrature in
logsnr, and the inference file's round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from pipeline.checkpoints import Inference, build_diffusion, load_inference, save_atomic
from pipeline.config import DiffusionConfig
from pipeline.diffusion import CosineSchedule, LearnedSchedule, VDiffusion
from pipeline.diffusion.samplers import sample_ddim, time_grid

T = torch.linspace(0.0, 1.0, 401, dtype=torch.float64)


class ToyNet(nn.Module):
    """A small network with weights: v_hat = a * z * sigmoid(b * logsnr + c) + d."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.7, 0.3, -0.2, 0.05]))

    def forward(self, z: Tensor, logsnr: Tensor, cond: object = None) -> Tensor:
        a, b, c, d = self.w
        s = torch.sigmoid(b * logsnr + c).reshape(-1, *([1] * (z.ndim - 1)))
        return a * z * s + d


def _perturbed(sched: LearnedSchedule, seed: int) -> LearnedSchedule:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sched.named_parameters():
            if name != "ends":
                p.copy_(torch.randn(p.shape, generator=g))
    return sched


def _batch(n: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 2, 3, 3, generator=g)
    eps = torch.randn(n, 1, 2, 3, 3, generator=g)
    t = torch.rand(n, generator=g)
    return x, eps, t


def _train(model: VDiffusion, steps: int, lr: float = 3e-2) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for i in range(steps):
        x, eps, t = _batch(16, seed=100 + i)
        opt.zero_grad()
        model.loss(x, t=t, eps=eps).mean().backward()
        opt.step()


def test_monotone_with_exact_fixed_endpoints_and_exact_inverse_after_training() -> None:
    torch.manual_seed(0)
    model = VDiffusion(ToyNet(), LearnedSchedule(-12.0, 9.0, hidden=32), weighting="v")
    before = model.schedule(T).detach()
    _train(model, 30)
    lam = model.schedule(T).detach()
    assert not torch.allclose(lam, before, atol=1e-3)  # the interior was trained
    assert lam[0].item() == 9.0 and lam[-1].item() == -12.0  # fixed endpoints: exactly
    assert bool((lam[1:] < lam[:-1]).all())
    assert bool((model.schedule.dlogsnr_dt(T) < 0).all())
    tt = torch.linspace(0.0, 1.0, 57, dtype=torch.float64)
    assert torch.allclose(model.schedule.t_of(model.schedule(tt)), tt, atol=1e-9, rtol=0)


def test_closed_form_slope_equals_autograd() -> None:
    sched = _perturbed(LearnedSchedule(-7.0, 11.0, hidden=16), 3)
    t = torch.linspace(0.0, 1.0, 33, dtype=torch.float64).requires_grad_(True)
    (auto,) = torch.autograd.grad(sched(t).sum(), t)
    assert torch.allclose(sched.dlogsnr_dt(t.detach()), auto, rtol=1e-10, atol=1e-12)


def test_cosine_slope_at_logsnr_equals_slope_at_time() -> None:
    c = CosineSchedule(-20.0, 15.0, shift=0.7)
    t = torch.linspace(0.0, 1.0, 21, dtype=torch.float64)
    assert torch.allclose(c.slope_at(c(t)), c.dlogsnr_dt(t), rtol=1e-9)


def test_learned_endpoints_move_along_the_bound_and_stay_ordered() -> None:
    torch.manual_seed(1)
    sched = LearnedSchedule(-6.0, 6.0, hidden=16, learn_endpoints=True)
    model = VDiffusion(ToyNet(), sched, weighting="elbo")
    _train(model, 20, lr=5e-2)
    lo, hi = sched.logsnr_min, sched.logsnr_max
    assert (lo, hi) != (-6.0, 6.0)
    lam = sched(T).detach()
    assert lam[0].item() == pytest.approx(hi, abs=1e-5) and lam[-1].item() == pytest.approx(lo, abs=1e-5)
    assert bool((lam[1:] < lam[:-1]).all())
    with pytest.raises(ValueError, match="elbo"):
        VDiffusion(ToyNet(), LearnedSchedule(-6.0, 6.0, hidden=4, learn_endpoints=True), weighting="v")


@pytest.mark.parametrize(("weighting", "learn_endpoints"), [("v", False), ("elbo", False), ("elbo", True)])
def test_one_backward_gives_the_network_dL_and_the_interior_dL2(weighting: str, learn_endpoints: bool) -> None:
    """Oracle: autograd's own gradients of mean(L) (network, endpoints) and mean(L^2) (interior)."""
    torch.manual_seed(2)
    sched = _perturbed(LearnedSchedule(-8.0, 10.0, hidden=8, learn_endpoints=learn_endpoints), 5)
    model = VDiffusion(ToyNet(), sched, weighting=weighting)
    x, eps, t = _batch(6, seed=7)

    def grads() -> dict[str, Tensor]:
        out = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad()
        return out

    model.loss(x, t=t, eps=eps).mean().backward()
    custom = grads()
    plain = model.loss(x, t=t, eps=eps, variance_gradient=False)
    plain.mean().backward()
    of_loss = grads()
    (model.loss(x, t=t, eps=eps, variance_gradient=False) ** 2).mean().backward()
    of_square = grads()
    interior = [n for n in custom if n.startswith("schedule.l")]
    got, square, loss = (torch.cat([d[n].flatten() for n in interior]) for d in (custom, of_square, of_loss))
    assert float(square.norm()) > 0
    assert float((got - square).norm()) < 1e-4 * float(square.norm())  # float32 round-off only
    assert float((loss - square).norm()) > 1e-2 * float(square.norm())  # dL and dL^2 differ: not trivial
    for name in custom.keys() - set(interior):
        want = of_loss[name]
        assert torch.allclose(custom[name], want, rtol=1e-5, atol=1e-7 * float(want.abs().max())), name
    assert any(n.startswith("net.") for n in custom)
    if learn_endpoints:
        assert custom["schedule.ends"].abs().sum() > 0


def _quadrature_in_logsnr(weighting: str, x: Tensor, eps: Tensor, lo: float, hi: float, n: int = 20001) -> float:
    """``int W_ref(l) err(l) / |ref'(l)| dl`` by the trapezoid rule: the cosine schedule's expected loss."""
    ref = CosineSchedule(lo, hi)
    net = ToyNet()
    lam = torch.linspace(lo, hi, n, dtype=torch.float64)
    t = ref.t_of(lam).float()
    b = x.shape[0]
    cos_model = VDiffusion(net, ref, weighting=weighting)
    with torch.no_grad():
        vals = torch.cat(
            [
                cos_model.loss(x.expand(len(c), *x.shape[1:]), t=c, eps=eps.expand(len(c), *x.shape[1:]))
                for c in t.split(4000)
            ]
        )
    f = vals.double() / ref.slope_at(lam).abs()
    assert b == 1
    return float(torch.trapezoid(f, lam))


@pytest.mark.parametrize("weighting", ["v", "eps", "elbo", "sigmoid", "min_snr"])
def test_expected_loss_does_not_depend_on_the_interior(weighting: str) -> None:
    """Change of variables: E_t of the learned schedule's loss equals the cosine reference's integral, for
    two different interiors."""
    x, eps, _ = _batch(1, seed=11)
    lo, hi = -10.0, 10.0
    want = _quadrature_in_logsnr(weighting, x, eps, lo, hi)
    n = 20000
    t = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    for seed in (0, 1):
        sched = _perturbed(LearnedSchedule(lo, hi, hidden=8), seed)
        model = VDiffusion(ToyNet(), sched, weighting=weighting)
        with torch.no_grad():
            got = float(
                model.loss(x.expand(n, *x.shape[1:]), t=t.float(), eps=eps.expand(n, *x.shape[1:])).double().mean()
            )
        assert got == pytest.approx(want, rel=2e-4), (seed, got, want)


def _tiny_model_cfg() -> dict:
    return {"channels": 1, "base_channels": 8, "channel_mults": [1], "attention_levels": [], "heads": 1}


def test_inference_file_round_trip_and_samplers_use_the_learned_schedule(tmp_path: Path) -> None:
    torch.manual_seed(0)
    dcfg = DiffusionConfig(schedule="learned", weighting="elbo", learn_endpoints=True).model_dump()
    model = build_diffusion(_tiny_model_cfg(), dcfg)
    assert isinstance(model.schedule, LearnedSchedule) and model.net.noise_schedule is model.schedule
    _perturbed(model.schedule, 9)
    with torch.no_grad():
        model.schedule.ends.copy_(torch.tensor([-17.5, 13.25]))
    path = tmp_path / "f.pt"
    save_atomic(_file(model, dcfg), path)
    loaded, _ = load_inference(path)
    assert isinstance(loaded.schedule, LearnedSchedule) and loaded.schedule.learn_endpoints
    assert torch.equal(loaded.schedule(T), model.schedule(T).detach())
    assert (loaded.schedule.logsnr_min, loaded.schedule.logsnr_max) == (-17.5, 13.25)

    seen: list[Tensor] = []
    z = torch.randn(1, 1, 2, 4, 4)
    sample_ddim(loaded, z, 5, callback=lambda d: seen.append(torch.as_tensor(d["logsnr"]).reshape(-1)[0]))
    want = loaded.schedule(time_grid(5)).to(torch.float64)
    got = torch.stack(seen).to(torch.float64)
    assert len(got) == 5 and torch.allclose(got, want[1:], atol=1e-6)  # the levels after each step
    cosine = CosineSchedule(-20.0, 20.0)(time_grid(5))
    assert not torch.allclose(got, cosine[1:], atol=1e-2)


def _file(model: VDiffusion, diffusion: dict) -> dict:
    """An inference file's content as training writes it."""
    return Inference(_tiny_model_cfg(), diffusion, ["x"], "stats.json", 1, 2).blob(model.net.state_dict())


def test_old_inference_files_load_as_cosine(tmp_path: Path) -> None:
    old = {"logsnr_min": -20.0, "logsnr_max": 20.0, "shift": 0.0, "weighting": "v"}  # no schedule key
    model = build_diffusion(_tiny_model_cfg(), old)
    path = tmp_path / "old.pt"
    save_atomic(_file(model, old), path)
    loaded, _ = load_inference(path)
    assert type(loaded.schedule) is CosineSchedule
    assert not hasattr(loaded.net, "noise_schedule")
    assert torch.equal(loaded.schedule(T), CosineSchedule(-20.0, 20.0)(T))


def test_config_keys() -> None:
    assert DiffusionConfig().schedule == "cosine" and DiffusionConfig().learn_endpoints is False
    DiffusionConfig(schedule="learned", learn_endpoints=True, weighting="elbo")
    with pytest.raises(ValueError, match="schedule"):
        DiffusionConfig(schedule="linear")
    with pytest.raises(ValueError, match=r"needs diffusion\.schedule: learned"):
        DiffusionConfig(learn_endpoints=True, weighting="elbo")
    with pytest.raises(ValueError, match=r"needs diffusion\.weighting: elbo"):
        DiffusionConfig(schedule="learned", learn_endpoints=True)


def _variance_in_t(model: VDiffusion, x: Tensor, eps: Tensor, n: int = 4000) -> tuple[float, float]:
    """Mean and variance over t of one example's loss, by the midpoint rule in t (exact up to quadrature)."""
    t = ((torch.arange(n, dtype=torch.float64) + 0.5) / n).float()
    with torch.no_grad():
        losses = model.loss(x.expand(n, *x.shape[1:]), t=t, eps=eps.expand(n, *x.shape[1:])).double()
    return float(losses.mean()), float(losses.var())


@pytest.mark.parametrize("weighting", ["v", "elbo"])
def test_training_the_schedule_lowers_the_loss_variance_at_fixed_network(weighting: str) -> None:
    torch.manual_seed(4)
    lo, hi = -6.0, 6.0
    net = ToyNet().requires_grad_(False)
    model = VDiffusion(net, LearnedSchedule(lo, hi, hidden=16), weighting=weighting)
    x, eps, _ = _batch(1, seed=21)
    mean0, var0 = _variance_in_t(model, x, eps)
    cos_mean, cos_var = _variance_in_t(VDiffusion(net, CosineSchedule(lo, hi), weighting=weighting), x, eps)
    opt = torch.optim.Adam(model.schedule.parameters(), lr=2e-2)
    g = torch.Generator().manual_seed(5)
    for _ in range(60):
        t = torch.rand(256, generator=g)
        opt.zero_grad()
        model.loss(x.expand(256, *x.shape[1:]), t=t, eps=eps.expand(256, *x.shape[1:])).mean().backward()
        opt.step()
    mean1, var1 = _variance_in_t(model, x, eps)
    assert mean1 == pytest.approx(mean0, rel=1e-3) and mean0 == pytest.approx(cos_mean, rel=1e-3)  # same expectation
    assert var1 < 0.9 * min(var0, cos_var), (var0, cos_var, var1)
