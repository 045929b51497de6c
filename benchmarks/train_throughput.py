"""Training throughput on this machine, in one run:

1. the clip loader (clips/s, with 0 and 2 worker processes) vs what a training step consumes;
2. DeepSpeed step time vs a plain torch loop on the same model and batch (overhead ratio);
3. the model's FLOPs per training clip (pipeline.flops: forward x 3) and the TFLOP/s each loop achieves;
4. peak resident memory.

    python benchmarks/train_throughput.py --config config/config.yaml [--steps 30]

Needs the normalised store of that config (run the workflow first).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import distributed, flops
from pipeline.checkpoints import build_diffusion
from pipeline.config import load_config
from pipeline.data.clips import ClipDataset, ClipSampler
from pipeline.launch import distributed_env
from pipeline.train import LossModule, deepspeed_config, model_config


def loader_rate(ds: ClipDataset, batch: int, workers: int, n_batches: int, block: int = 1) -> float:
    loader = DataLoader(
        ds,
        batch_size=batch,
        sampler=ClipSampler(len(ds), 0, block=block),
        num_workers=workers,
        prefetch_factor=4 if workers else None,
        persistent_workers=workers > 0,
    )
    it = iter(loader)
    next(it)  # worker start-up
    t0 = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    return n_batches * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", action="append", default=None)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    cfg = load_config(args.config or ["config/config.yaml"])
    t = cfg.train
    ds = ClipDataset(cfg.normalised_path, "train", t.clip_frames, t.clip_stride)
    print(
        f"store {cfg.normalised_path}: {len(ds)} training clips of {ds.variables} x {t.clip_frames} frames x {ds.shape[1:]}"
    )
    for workers in (0, 2):
        print(f"loader, {workers} workers: {loader_rate(ds, t.micro_batch, workers, 200):8.0f} clips/s")

    model_cfg = model_config(cfg, len(ds.variables))
    batch = next(iter(DataLoader(ds, batch_size=t.micro_batch)))
    tt = torch.rand(t.micro_batch)
    eps = torch.randn(batch["x"].shape)
    cond = {"doy": batch["doy"]}

    torch.manual_seed(0)
    plain = LossModule(build_diffusion(model_cfg, cfg.diffusion.model_dump()))
    opt = torch.optim.AdamW(plain.parameters(), lr=t.lr)

    def plain_step() -> None:
        loss = plain(batch["x"], cond, batch["mask"], tt, eps)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), t.clip_grad)
        opt.step()

    import deepspeed

    distributed_env()  # the launcher's environment: one process here (or this SLURM task's)
    distributed.init_runtime(gpus=False, group="always")  # the pipeline's own group setup, one gloo process
    torch.manual_seed(0)
    module = LossModule(build_diffusion(model_cfg, cfg.diffusion.model_dump()))
    engine, *_ = deepspeed.initialize(
        model=module,
        optimizer=torch.optim.AdamW(module.parameters(), lr=t.lr),
        config=deepspeed_config(cfg, 1, bf16=False),
    )

    def ds_step() -> None:
        loss = engine(batch["x"], cond, batch["mask"], tt, eps)
        engine.backward(loss)
        engine.step()

    times = {}
    for name, fn in (("plain torch", plain_step), (f"DeepSpeed ZeRO-{t.zero_stage}", ds_step)):
        for _ in range(3):
            fn()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            fn()
        times[name] = (time.perf_counter() - t0) / args.steps
    n_params = sum(p.numel() for p in plain.parameters())
    one = {k: v[:1] for k, v in cond.items()}
    per_clip = flops.forward_flops(plain.diffusion.net, batch["x"][:1], torch.zeros(1), one) * flops.TRAIN_FACTOR
    print(f"model: {n_params:,} parameters, micro batch {t.micro_batch}, fp32, {torch.get_num_threads()} threads")
    print(f"model FLOPs per training clip: {per_clip / 1e9:.2f} GFLOP (forward x {flops.TRAIN_FACTOR})")
    for name, sec in times.items():
        rate = t.micro_batch / sec
        achieved = flops.mfu(per_clip, rate, 1, None)["tflops_per_s"]
        print(f"{name:<18} {sec * 1000:8.1f} ms/step  {rate:7.1f} clips/s consumed  {achieved * 1e3:7.1f} GFLOP/s")
    ratio = times[f"DeepSpeed ZeRO-{t.zero_stage}"] / times["plain torch"]
    print(f"DeepSpeed overhead ratio: {ratio:.3f}")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
