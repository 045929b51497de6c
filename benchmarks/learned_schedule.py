"""The learned noise schedule (VDM, seed 001) against the fixed cosine schedule: variance of the loss estimate.

    python benchmarks/learned_schedule.py [--steps 150] [--weightings elbo v] [--threads 2]
        [--store results/eofs-z500/data/normalised.zarr]

On the real training clips of the default experiment (NCEP z500, made by ``snakemake --cores 2`` or
``python -m pipeline prepare`` + ``normalise``), a small U-Net is trained twice from the same initial
weights, on the same clips, diffusion times and noise: once on the cosine schedule, once jointly with a
learned schedule (fixed endpoints, interior trained by the gradient of L^2). Then, at the *same network
weights* (each trained network in turn), the per-example loss is evaluated on one fixed evaluation set
(clips x times x noise, the same draws for both schedules) under each schedule, and the script prints
its mean (both schedules estimate the same expected loss: the learned one is importance-weighted
against the cosine reference) and its variance, the quantity the learned schedule minimises.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from pipeline.data.clips import ClipDataset
from pipeline.diffusion import CosineSchedule, LearnedSchedule, UNet, UNetConfig, VDiffusion
from pipeline.diffusion.objective import loss_weight

LO, HI = -20.0, 20.0  # the default config's truncation


def batches(clips: torch.Tensor, steps: int, batch: int, seed: int) -> list[tuple[torch.Tensor, ...]]:
    """The training draws (clips, t, eps) of every step, fixed up front so both runs see the same."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        idx = torch.randint(len(clips), (batch,), generator=g)
        u0 = torch.rand((), generator=g)
        t = torch.remainder(u0 + torch.arange(batch) / batch, 1.0)  # low-discrepancy, as train does
        out.append((clips[idx], t, torch.randn((batch, *clips.shape[1:]), generator=g)))
    return out


def train(model: VDiffusion, draws: list[tuple[torch.Tensor, ...]], lr: float, schedule_lr: float) -> float:
    groups = [{"params": list(model.net.parameters()), "lr": lr}]
    if list(model.schedule.parameters()):
        groups.append({"params": list(model.schedule.parameters()), "lr": schedule_lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.0, betas=(0.9, 0.99))
    t0 = time.perf_counter()
    for x, t, eps in draws:
        opt.zero_grad()
        model.loss(x, t=t, eps=eps).mean().backward()
        opt.step()
    return time.perf_counter() - t0


@torch.no_grad()
def mc_losses(net: torch.nn.Module, schedule: torch.nn.Module, weighting: str, ev: tuple) -> torch.Tensor:
    """Per-example losses on the fixed evaluation draws (clip, t, noise)."""
    x, t, eps = ev
    model = VDiffusion(net, schedule, weighting=weighting).eval()
    chunks = zip(x.split(64), t.split(64), eps.split(64), strict=True)
    return torch.cat([model.loss(xb, t=tb, eps=eb) for xb, tb, eb in chunks]).double()


@torch.no_grad()
def integrand(
    net: torch.nn.Module, weighting: str, x: torch.Tensor, eps: torch.Tensor, lam: torch.Tensor
) -> torch.Tensor:
    """``f_i(l) = W_ref(l) err_i(l) / |ref'(l)|`` on the logsnr grid, per example (M, K): the expected loss
    of example i is ``int f_i dl`` under every schedule, and a schedule of logsnr density ``p`` has
    ``E_t[L_i^2] = int f_i^2 / p dl`` (the loss is ``f(l) / p(l)`` with ``l ~ p``)."""
    ref = CosineSchedule(LO, HI)
    plain = VDiffusion(net, ref, weighting="v").eval()  # weight 1: the squared v-error itself
    t = ref.t_of(lam).float()
    rows = []
    for xi, ei in zip(x, eps, strict=True):
        xs, es = xi.expand(len(t), *xi.shape), ei.expand(len(t), *ei.shape)
        rows.append(
            torch.cat(
                [plain.loss(a, t=b, eps=c) for a, b, c in zip(xs.split(256), t.split(256), es.split(256), strict=True)]
            )
        )
    err = torch.stack(rows).double()
    slope = ref.slope_at(lam)
    return loss_weight(lam, slope, weighting) * err / slope.abs()


def exact_in_t(f: torch.Tensor, lam: torch.Tensor, density: torch.Tensor) -> tuple[float, float]:
    """Mean and variance of the per-example loss over (clip, noise) x t, the t part by quadrature in logsnr."""
    means = torch.trapezoid(f, lam, dim=1)
    second = torch.trapezoid(f**2 / density, lam, dim=1)
    mean = float(means.mean())
    return mean, float(second.mean()) - mean**2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default="results/eofs-z500/data/normalised.zarr")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3, help="network learning rate (AdamW)")
    ap.add_argument("--schedule-lr", type=float, default=1e-2, help="learned schedule's learning rate")
    ap.add_argument("--eval", type=int, default=1024, help="Monte Carlo evaluation draws (clip, t, noise)")
    ap.add_argument("--quad-examples", type=int, default=16, help="(clip, noise) pairs of the quadrature")
    ap.add_argument("--quad-points", type=int, default=801, help="logsnr grid points of the quadrature")
    ap.add_argument("--weightings", nargs="+", default=["elbo", "v"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not Path(args.store).exists():
        raise SystemExit(f"{args.store} is missing: run `snakemake --cores 2` (or prepare + normalise) first")

    ds = ClipDataset(args.store, "train", 4)
    clips = torch.stack([ds[i]["x"] for i in range(len(ds))])
    net_cfg = UNetConfig(channels=clips.shape[1], base_channels=8, channel_mults=(1, 2), attention_levels=(), heads=1)
    draws = batches(clips, args.steps, args.batch, args.seed)
    g = torch.Generator().manual_seed(args.seed + 1)
    ev = (
        clips[torch.randint(len(clips), (args.eval,), generator=g)],
        torch.rand(args.eval, generator=g),  # i.i.d. t: the variance of one example's loss
        torch.randn((args.eval, *clips.shape[1:]), generator=g),
    )
    qx, qe = ev[0][: args.quad_examples], ev[2][: args.quad_examples]
    lam = torch.linspace(LO, HI, args.quad_points, dtype=torch.float64)
    print(
        f"torch {torch.__version__}, {args.threads} threads; {len(clips)} real training clips {tuple(clips.shape[1:])} "
        f"from {args.store}; {args.steps} steps x batch {args.batch}, AdamW lr {args.lr} (network), "
        f"{args.schedule_lr} (learned schedule); logsnr in [{LO}, {HI}]; Monte Carlo: {args.eval} fixed (clip, t, "
        f"noise) draws; exact in t: {args.quad_examples} (clip, noise) pairs x {args.quad_points} logsnr points"
    )
    for weighting in args.weightings:
        torch.manual_seed(args.seed)
        net0 = UNet(net_cfg)
        torch.manual_seed(args.seed + 2)
        initial = LearnedSchedule(LO, HI)
        runs = {}
        for name in ("cosine", "learned"):
            sched = CosineSchedule(LO, HI) if name == "cosine" else copy.deepcopy(initial)
            model = VDiffusion(copy.deepcopy(net0), sched, weighting=weighting)
            runs[name] = (model, train(model, draws, args.lr, args.schedule_lr))
        learned = runs["learned"][0].schedule
        print(
            f"\nweighting {weighting!r}: training time cosine {runs['cosine'][1]:.0f} s, learned {runs['learned'][1]:.0f} s"
        )
        tt = torch.tensor([0.02, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98], dtype=torch.float64)
        with torch.no_grad():
            print(f"  {'t':<22}" + "".join(f"{v:>8.2f}" for v in tt.tolist()))
            for label, sch in (
                ("cosine", CosineSchedule(LO, HI)),
                ("learned at step 0", initial),
                ("learned, trained", learned),
            ):
                print(f"  {'logsnr ' + label:<22}" + "".join(f"{v:>8.2f}" for v in sch(tt).tolist()))
        print(
            f"  {'network trained with':<22}{'loss under':<20}{'MC mean':>10}{'+- s.e.':>9}{'MC var':>11}"
            f"{'exact-t mean':>14}{'exact-t var':>13}{'var ratio':>11}"
        )
        for trained_with, (model, _) in runs.items():
            f = integrand(model.net, weighting, qx, qe, lam)
            base = None
            for under, sch in (
                ("cosine", CosineSchedule(LO, HI)),
                ("learned at step 0", initial),
                ("learned, trained", learned),
            ):
                mc = mc_losses(model.net, sch, weighting, ev)
                with torch.no_grad():
                    density = (
                        1.0 / sch.dlogsnr_dt(sch.t_of(lam)).abs()
                        if under != "cosine"
                        else 1.0 / sch.slope_at(lam).abs()
                    )
                mean, var = exact_in_t(f, lam, density)
                base = var if base is None else base
                se = float(mc.var() / len(mc)) ** 0.5
                print(
                    f"  {trained_with:<22}{under:<20}{float(mc.mean()):>10.4g}{se:>9.2g}{float(mc.var()):>11.4g}"
                    f"{mean:>14.4g}{var:>13.4g}{var / base:>11.3f}"
                )


if __name__ == "__main__":
    main()
