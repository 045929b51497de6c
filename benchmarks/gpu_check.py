"""The GPU check (issue 28 item 5): one command, a few minutes on one GPU, the figures the README needs.

    python benchmarks/gpu_check.py [--json gpu_check.json]            # on a GPU machine, from the repository root
    python benchmarks/gpu_check.py --dry-run [--json out.json]        # the same steps on the CPU at toy size (CI)

For the network of ``config/experiments/gpu-era5.yaml`` (ERA5-like: 6 variables, 16 frames, 120 x 240, base 128):
1. its size without a GPU: parameters, FLOPs per training clip (torch's FLOP counter on the meta device, forward
   x 3) and the activations a training step saves per clip (summed on the meta device), hence memory per step;
2. bf16 against fp32 on the same weights and batch: the loss, and a 10-step DDIM sample from the same noise
   (relative differences);
3. training clips/s, TFLOP/s and MFU (against pipeline/flops.py's peak for the GPU's name) at two micro batches,
   eager and with ``torch.compile``, with the peak GPU memory of each (a plain AdamW loop in bf16 autocast: the
   model's cost without DeepSpeed's, whose overhead benchmarks/train_throughput.py measures);
4. sampling clips/s (DPM-Solver++(2M), 25 steps, bf16);
5. the clip loader: clips/s and MB/s with 8 workers from a synthetic zarr store of the same clip shape, shuffled.

``--dry-run`` takes a toy network and grid (and 2 workers) so every step runs on the CPU in about a minute; the
size figures of step 1 are still those of the full network. Without ``--dry-run`` and without a GPU it stops.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pipeline import flops  # noqa: E402
from pipeline.checkpoints import build_diffusion  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.diffusion.objective import randn  # noqa: E402
from pipeline.diffusion.samplers import get_sampler  # noqa: E402
from pipeline.train import example_inputs, model_config  # noqa: E402

GPU_CONFIG = ["config/config.yaml", "config/experiments/gpu-era5.yaml"]
TOY = {
    "base_channels": 8,
    "channel_mults": [1, 2],
    "num_res_blocks": 1,
    "attention_levels": [1],
    "heads": 2,
    "gradient_checkpointing": False,
}


def _shapes(cfg: Any, dry: bool) -> tuple[dict[str, Any], tuple[int, int, int, int]]:
    """(model config, clip shape C x T x H x W) of the GPU config, or their toy version."""
    channels = sum(len(v.levels) if v.levels else 1 for v in cfg.data.variables)
    res = cfg.data.grid.resolution
    h, w = round(180 / res), round(360 / res)
    m = model_config(cfg, channels) | {"periodic_lon": True}
    if dry:
        return m | TOY, (channels, 4, 16, 32)
    return m, (channels, cfg.train.clip_frames, h, w)


def size(model_cfg: dict[str, Any], diffusion_cfg: dict[str, Any], clip: tuple[int, ...]) -> dict[str, float]:
    """Parameters, FLOPs per training clip and saved activations per clip (bytes at 2 bytes per element: bf16),
    all on the meta device: nothing is allocated."""
    with torch.device("meta"):
        d = build_diffusion(model_cfg, diffusion_cfg)
        z, logsnr, cond = example_inputs(model_cfg, (1, *clip), "meta", torch.float32)
        fwd = flops.forward_flops(d.net, z, logsnr, cond)
        saved = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal saved
            saved += t.numel()
            return t

        d.net.train()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            d.net(z.requires_grad_(), logsnr, cond)
    params = sum(p.numel() for p in d.parameters())
    return {
        "parameters": float(params),
        "flops_per_clip": float(fwd * flops.TRAIN_FACTOR),
        "activation_bytes_per_clip_bf16": float(2 * saved),
        "state_bytes": float(18 * params),
    }


def _nonzero(d: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A fresh network zero-initialises its output layers (its first prediction is exactly 0 in any precision):
    those tensors get small random values, so that the precision comparison compares something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in d.parameters():
            if p.numel() > 1 and not p.any():
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
    return d


def _batch(clip: tuple[int, ...], b: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, dict | None]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, *clip, generator=g).to(device)
    return x, {"doy": torch.rand(b, clip[1], generator=g).mul(365).to(device)}


def agreement(d: torch.nn.Module, clip: tuple[int, ...], device: torch.device) -> dict[str, float]:
    """bf16 autocast against fp32: relative difference of the loss and of a 10-step DDIM sample."""
    x, cond = _batch(clip, 2, device)
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([0.3, 0.7], device=device)
    eps = torch.randn(x.shape, generator=g).to(device)
    out = {}
    with torch.no_grad():
        l32 = float(d.loss(x, cond, t=t, eps=eps).mean())
        with torch.autocast(device.type, dtype=torch.bfloat16):
            l16 = float(d.loss(x, cond, t=t, eps=eps).mean())
        out["loss_fp32"], out["loss_bf16"], out["loss_rel_diff"] = l32, l16, abs(l16 - l32) / abs(l32)
        sampler = get_sampler("ddim")
        samples = []
        for dtype in (None, torch.bfloat16):
            gens = [torch.Generator(device=device).manual_seed(j) for j in range(2)]
            z = randn((2, *clip), gens, device, torch.float32)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                samples.append(sampler(d, z, 10, cond=cond, generator=gens).float())
        diff = (samples[1] - samples[0]).pow(2).mean().sqrt() / samples[0].pow(2).mean().sqrt()
        out["sample_rel_rms_diff"] = float(diff)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_rate(
    d: torch.nn.Module, clip: tuple[int, ...], b: int, steps: int, device: torch.device, compiled: bool, fpc: float
) -> dict[str, float]:
    """Clips/s of a plain AdamW loop in bf16 autocast (after 3 warm-up steps), TFLOP/s, MFU, peak memory."""
    import copy

    d = copy.deepcopy(d).train()
    if compiled:
        d.net.compile()
    opt = torch.optim.AdamW(d.parameters(), lr=1e-4)
    x, cond = _batch(clip, b, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = d.loss(x, cond).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    rate = steps * b / (time.perf_counter() - t0)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    out = {"clips_per_s": rate, **flops.mfu(fpc, rate, 1, flops.peak_tflops(name) if device.type == "cuda" else None)}
    if device.type == "cuda":
        out["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return out


def sample_rate(d: torch.nn.Module, clip: tuple[int, ...], b: int, steps: int, device: torch.device) -> float:
    sampler = get_sampler("dpmpp_2m")
    _, cond = _batch(clip, b, device)

    def run() -> None:
        gens = [torch.Generator(device=device).manual_seed(j) for j in range(b)]
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            sampler(d.eval(), randn((b, *clip), gens, device, torch.float32), steps, cond=cond, generator=gens)

    run()
    _sync(device)
    t0 = time.perf_counter()
    run()
    _sync(device)
    return b / (time.perf_counter() - t0)


def loader_rate(clip: tuple[int, ...], workers: int, batch: int, batches: int, chunk: int) -> dict[str, float]:
    """Clips/s and MB/s of ClipDataset through a DataLoader (shuffled, as training reads) from a synthetic store."""
    import pandas as pd
    import train_throughput
    import xarray as xr

    from pipeline.data.clips import ClipDataset

    c, f, h, w = clip
    n = max(4 * f, 2 * batch * batches + f)
    with tempfile.TemporaryDirectory() as tmp:
        time_ = pd.date_range("2000-01-01", periods=n, freq="D")
        rng = np.random.default_rng(0)
        data = {
            f"v{i}": (("time", "latitude", "longitude"), rng.standard_normal((n, h, w), dtype=np.float32))
            for i in range(c)
        }
        ds = xr.Dataset(
            data | {"split": ("time", np.ones(n, dtype=np.int8))},
            coords={"time": time_, "latitude": np.linspace(-89, 89, h), "longitude": np.arange(w) * 360 / w},
        )
        store = Path(tmp) / "clips.zarr"
        enc = {k: {"chunks": (chunk, h, w)} for k in data}
        ds.to_zarr(store, zarr_format=3, encoding=enc, consolidated=False)
        rate = train_throughput.loader_rate(ClipDataset(store, "train", f), batch, workers, batches)
    return {"clips_per_s": rate, "mb_per_s": rate * c * f * h * w * 4 / 1e6}


def train_all(
    d: torch.nn.Module,
    clip: tuple[int, ...],
    batches: list[int],
    steps: int,
    device: torch.device,
    compile_too: bool,
    fpc: float,
) -> list[dict[str, Any]]:
    """:func:`train_rate` at each micro batch, eager then compiled; a failure (out of memory, the compiler) is
    reported in its row and the check goes on."""
    rows = []
    for compiled in [False, True] if compile_too else [False]:
        for b in batches:
            try:
                r = train_rate(d, clip, b, steps, device, compiled, fpc)
            except Exception as err:  # out of memory, a compiler failure: reported, the check goes on
                r = {"error": f"{type(err).__name__}: {err}".splitlines()[0][:300]}
            r |= {"micro_batch": b, "compiled": compiled}
            rows.append(r)
            print(
                "train " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()),
                flush=True,
            )
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU (CI)")
    ap.add_argument("--config", action="append", default=None, help=f"default: {' '.join(GPU_CONFIG)}")
    ap.add_argument(
        "--batch",
        type=int,
        nargs=2,
        default=None,
        help="two micro batches (default train.micro_batch and twice it; dry 1 2)",
    )
    ap.add_argument("--steps", type=int, default=None, help="timed training steps (default 10; dry 2)")
    ap.add_argument("--workers", type=int, default=None, help="loader workers (default 8; dry 2)")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled training measurement")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device (torch.cuda.is_available() is False); --dry-run runs it on the CPU")
    device = torch.device("cuda" if torch.cuda.is_available() and not dry else "cpu")
    cfg = load_config([str(ROOT / p) for p in (args.config or GPU_CONFIG)])
    diffusion_cfg = cfg.diffusion.model_dump()
    full_model, full_clip = _shapes(cfg, dry=False)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "dry_run": dry,
        "torch": torch.__version__,
        "clip": list(full_clip),
        "model": full_model,
    }
    t_all = time.perf_counter()
    s = size(full_model, diffusion_cfg, full_clip)
    report["size"] = s
    print(
        f"network of {' + '.join(args.config or GPU_CONFIG)}: {s['parameters'] / 1e6:.1f} M parameters, "
        f"{s['flops_per_clip'] / 1e12:.2f} TFLOP per training clip {list(full_clip)}, saved activations "
        f"{s['activation_bytes_per_clip_bf16'] / 1e9:.2f} GB per clip in bf16"
        f"{' (gradient checkpointing on)' if full_model.get('gradient_checkpointing') else ''}, "
        f"{s['state_bytes'] / 1e9:.2f} GB of weights, gradients, Adam and EMA",
        flush=True,
    )
    model_cfg, clip = _shapes(cfg, dry)
    batches = args.batch or ([1, 2] if dry else [cfg.train.micro_batch, 2 * cfg.train.micro_batch])
    steps = args.steps or (2 if dry else 10)
    workers = args.workers if args.workers is not None else (2 if dry else 8)
    torch.manual_seed(0)
    d = _nonzero(build_diffusion(model_cfg, diffusion_cfg)).to(device)
    fpc = s["flops_per_clip"] if not dry else size(model_cfg, diffusion_cfg, clip)["flops_per_clip"]
    report["measured_clip"] = list(clip)
    report["agreement"] = agreement(d, clip, device)
    a = report["agreement"]
    print(
        f"bf16 vs fp32: loss {a['loss_fp32']:.5f} vs {a['loss_bf16']:.5f} (relative difference "
        f"{a['loss_rel_diff']:.2e}); 10-step DDIM sample, relative RMS difference {a['sample_rel_rms_diff']:.2e}",
        flush=True,
    )
    report["train"] = train_all(d, clip, batches, steps, device, not args.no_compile, fpc)
    report["sample_clips_per_s"] = sample_rate(d, clip, batches[-1], 25, device)
    print(
        f"sampling (dpmpp_2m, 25 steps, bf16, batch {batches[-1]}): {report['sample_clips_per_s']:.3g} clips/s",
        flush=True,
    )
    report["loader"] = loader_rate(clip, workers, batch=4, batches=8 if dry else 50, chunk=cfg.data.time_chunk)
    report["loader"]["workers"] = workers
    lr = report["loader"]
    print(
        f"loader ({workers} workers, shuffled clips {list(clip)}): {lr['clips_per_s']:.1f} clips/s, "
        f"{lr['mb_per_s']:.0f} MB/s",
        flush=True,
    )
    report["seconds"] = time.perf_counter() - t_all
    print(f"gpu_check done in {report['seconds']:.0f} s on {report['device']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=float))
    bad = [k for k in ("loss_rel_diff", "sample_rel_rms_diff") if not math.isfinite(a[k])]
    if bad:
        raise SystemExit(f"gpu_check: non-finite {bad}")


if __name__ == "__main__":
    main()
