"""Stage ``train``: DeepSpeed training of the v-prediction video diffusion model.

Runs inside every process of the job (``launch.py`` starts them: submitit locally or on SLURM,
or torchrun). The only module that imports deepspeed.

Determinism and exact resume: every random choice is derived from ``(seed, rank, step)`` (the
clip order from ``(seed, epoch)``, t and noise from a generator seeded per micro step), so a
resumed run needs only the engine state (model, optimizer, scheduler), the EMA weights and the
step, all in the DeepSpeed checkpoint. Beside it, ``inference/step-XXXXXXXX.pt`` holds the EMA
weights, network and schedule settings and the statistics reference, for evaluation and sampling
without DeepSpeed (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import time
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from pipeline import checkpoints
from pipeline.checkpoints import build_diffusion
from pipeline.config import Config
from pipeline.data.clips import ClipDataset, ClipSampler
from pipeline.diffusion import VDiffusion
from pipeline.tracking import stage_run

__all__ = ["EMA", "LossModule", "deepspeed_config", "lr_factor", "run_training"]

log = logging.getLogger(__name__)

VAL_LEVELS = (0.1, 0.3, 0.5, 0.7, 0.9)  # fixed diffusion times for the validation loss


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac))


def deepspeed_config(cfg: Config, world_size: int, bf16: bool) -> dict[str, Any]:
    """The DeepSpeed config dict, built from the validated settings only (logged as an artifact)."""
    t = cfg.train
    global_batch = t.micro_batch * t.grad_accum * world_size
    assert global_batch == t.micro_batch * t.grad_accum * world_size
    return {
        "train_batch_size": global_batch,
        "train_micro_batch_size_per_gpu": t.micro_batch,
        "gradient_accumulation_steps": t.grad_accum,
        "gradient_clipping": t.clip_grad,
        "zero_optimization": {"stage": t.zero_stage},
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class EMA:
    """Exponential moving average of a network's weights, kept in fp32 (on every rank).

    ZeRO stages 0-2 keep full parameters on every rank, so each rank updates an identical copy.
    Decay warms up as ``min(decay, (1 + step) / (10 + step))``.
    """

    def __init__(self, net: nn.Module, decay: float):
        self.decay = decay
        self.net = copy.deepcopy(net).float().eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for pe, p in zip(self.net.parameters(), net.parameters(), strict=True):
            pe.mul_(d).add_(p.detach().float(), alpha=1 - d)
        for be, b in zip(self.net.buffers(), net.buffers(), strict=True):
            be.copy_(b)


class LossModule(nn.Module):
    """What DeepSpeed wraps: ``engine(x, ...)`` returns the mean loss."""

    def __init__(self, diffusion: VDiffusion):
        super().__init__()
        self.diffusion = diffusion

    def forward(self, x: Tensor, cond: dict | None, mask: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return self.diffusion.loss(x, cond, t=t, eps=eps, mask=mask).mean()


def _seed(*parts: int) -> int:
    h = 0
    for p in parts:
        h = (h * 1_000_003 + int(p)) % (2**63 - 1)
    return h


@torch.no_grad()
def validation_loss(
    diffusion: VDiffusion,
    clips: list[dict[str, Tensor]],
    seed: int,
    device: torch.device,
    dtype: torch.dtype,
    use_doy: bool,
) -> float:
    """Mean loss over fixed clips x fixed times ``VAL_LEVELS`` x fixed noise: comparable across steps."""
    total, n = 0.0, 0
    for i, c in enumerate(clips):
        x = c["x"][None].to(device, dtype)
        g = torch.Generator().manual_seed(_seed(seed, 7, i))
        eps = torch.randn(x.shape, generator=g).to(device, dtype)
        cond = {"doy": c["doy"][None].to(device)} if use_doy else None
        for tl in VAL_LEVELS:
            t = torch.full((1,), tl, device=device)
            total += float(diffusion.loss(x, cond, t=t, eps=eps, mask=c["mask"][None].to(device)).mean())
            n += 1
    return total / max(n, 1)


def run_training(cfg: Config) -> dict[str, Any]:
    """Train in this process (one rank of the job). Returns a summary (rank 0: final losses)."""
    import deepspeed
    import torch.distributed as dist

    cuda = torch.cuda.is_available() and cfg.launch.gpus_per_node > 0
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and cuda)
    dtype = torch.bfloat16 if bf16 else torch.float32
    t = cfg.train

    train_ds = ClipDataset(cfg.normalised_path, "train", t.clip_frames, t.clip_stride)
    val_ds = ClipDataset(cfg.normalised_path, "val", t.clip_frames, t.clip_stride, variables=train_ds.variables)
    val_clips = [val_ds[i] for i in range(min(t.val_clips, len(val_ds)))]
    periodic = cfg.model.periodic_lon if cfg.model.periodic_lon is not None else cfg.data.grid.is_global_lon
    model_cfg = {
        "channels": len(train_ds.variables),
        "base_channels": cfg.model.base_channels,
        "channel_mults": list(cfg.model.channel_mults),
        "num_res_blocks": cfg.model.num_res_blocks,
        "attention_levels": list(cfg.model.attention_levels),
        "heads": cfg.model.heads,
        "dropout": cfg.model.dropout,
        "periodic_lon": periodic,
        "lat_padding": cfg.model.lat_padding,
        "day_of_year": cfg.model.day_of_year,
        "max_frames": max(64, t.clip_frames),
        "gradient_checkpointing": cfg.model.gradient_checkpointing,
    }
    diffusion_cfg = cfg.diffusion.model_dump()
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    diffusion = build_diffusion(model_cfg, diffusion_cfg)
    ema = EMA(diffusion.net, t.ema_decay)
    optimizer = torch.optim.AdamW(diffusion.parameters(), lr=t.lr, weight_decay=t.weight_decay, betas=(0.9, 0.99))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, t.warmup_steps, t.steps, t.min_lr_ratio)
    )
    ds_config = deepspeed_config(cfg, world, bf16)
    engine, _, _, _ = deepspeed.initialize(
        model=LossModule(diffusion), optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    ema.net.to(device)

    ckpt_dir = cfg.checkpoint_dir.resolve()
    step, run_id = 0, None
    if (ckpt_dir / "latest").exists():
        _, client = engine.load_checkpoint(str(ckpt_dir))
        step = int(client["step"])
        ema.net.load_state_dict(client["ema"])
        run_id = client.get("mlflow_run_id")
        if rank == 0:
            log.info("resumed from %s at step %d", ckpt_dir / (ckpt_dir / "latest").read_text().strip(), step)

    sampler = ClipSampler(len(train_ds), cfg.seed, rank, world, start=step * t.grad_accum * t.micro_batch)
    loader = DataLoader(
        train_ds,
        batch_size=t.micro_batch,
        sampler=sampler,
        num_workers=t.num_workers,
        persistent_workers=t.num_workers > 0,
        prefetch_factor=4 if t.num_workers > 0 else None,
        pin_memory=cuda,
    )
    history: list[dict[str, float]] = []
    log_file = cfg.exp_dir / "train_log.jsonl"
    with stage_run(
        cfg.tracking_uri,
        cfg.experiment,
        cfg.exp_dir,
        "train",
        enabled=cfg.tracking.enabled,
        mode=cfg.tracking.mode,
        system_metrics=cfg.tracking.system_metrics,
        rank=rank,
        run_id=run_id,
    ) as run:
        run_id = run.run_id
        if rank == 0 and step == 0:
            n_params = sum(p.numel() for p in diffusion.parameters())
            run.log_params(
                {
                    "model": model_cfg,
                    "diffusion": diffusion_cfg,
                    "train": t.model_dump(),
                    "launch": cfg.launch.model_dump(),
                    "world_size": world,
                    "global_batch": ds_config["train_batch_size"],
                    "precision": "bf16" if bf16 else "fp32",
                    "parameters": n_params,
                    "device": str(device),
                }
            )
            run.log_dict(ds_config, "deepspeed_config.json")
            run.set_tags({"input": str(cfg.normalised_path), "variables": ",".join(train_ds.variables)})
            log.info(
                "training %s parameters on %d process(es), global batch %d (= %d micro x %d accum x %d ranks), %s",
                f"{n_params:,}",
                world,
                ds_config["train_batch_size"],
                t.micro_batch,
                t.grad_accum,
                world,
                "bf16" if bf16 else "fp32",
            )
        it = iter(loader)
        window_t0, wait, seen, losses = time.perf_counter(), 0.0, 0, []
        progress = None
        if rank == 0:
            from tqdm import tqdm

            progress = tqdm(total=t.steps, initial=step, desc="train", disable=None, dynamic_ncols=True)
        while step < t.steps:
            engine.train()
            step_loss = 0.0
            for micro in range(t.grad_accum):
                w0 = time.perf_counter()
                batch = next(it)
                wait += time.perf_counter() - w0
                g = torch.Generator().manual_seed(_seed(cfg.seed, rank, step, micro))
                x = batch["x"].to(device, dtype)
                tt = diffusion.sample_t(x.shape[0], generator=g, low_discrepancy=t.low_discrepancy)
                eps = torch.randn(x.shape, generator=g).to(device, dtype)
                cond = {"doy": batch["doy"].to(device)} if cfg.model.day_of_year else None
                torch.manual_seed(_seed(cfg.seed, rank, step, micro, 1))  # dropout
                loss = engine(x, cond, batch["mask"].to(device), tt.to(device), eps)
                engine.backward(loss)
                engine.step()
                step_loss += float(loss) / t.grad_accum
                seen += x.shape[0]
            step += 1
            ema.update(engine.module.diffusion.net, step)
            losses.append(step_loss)
            if progress is not None:
                progress.update(1)
            if step % t.log_every == 0 or step == t.steps:
                mean_loss = torch.tensor(sum(losses) / len(losses))
                dist.all_reduce(mean_loss)
                elapsed = time.perf_counter() - window_t0
                metrics = {
                    "loss": float(mean_loss) / world,
                    "lr": engine.get_lr()[0],
                    "grad_norm": float(engine.get_global_grad_norm() or 0.0),
                    "samples_per_s": seen * world / elapsed,
                    "step_time_s": elapsed / len(losses),
                    "data_wait_fraction": wait / elapsed,
                }
                if cuda:
                    metrics["gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
                if rank == 0:
                    run.log_metrics(metrics, step=step)
                    with log_file.open("a") as f:
                        f.write(json.dumps({"step": step, "losses": losses, **metrics}) + "\n")
                    if progress is not None:
                        progress.set_postfix(loss=f"{metrics['loss']:.4f}")
                history.append({"step": step, **metrics})
                window_t0, wait, seen, losses = time.perf_counter(), 0.0, 0, []
            if rank == 0 and (step % t.val_every == 0 or step == t.steps):
                raw = validation_loss(
                    engine.module.diffusion, val_clips, cfg.seed, device, dtype, cfg.model.day_of_year
                )
                ema_diff = VDiffusion(ema.net, diffusion.schedule, diffusion.weighting)
                ema_loss = validation_loss(ema_diff, val_clips, cfg.seed, device, torch.float32, cfg.model.day_of_year)
                run.log_metrics({"val_loss": raw, "val_loss_ema": ema_loss}, step=step)
                history.append({"step": step, "val_loss": raw, "val_loss_ema": ema_loss})
            if step % t.checkpoint_every == 0 or step == t.steps:
                tag = checkpoints.tag(step)
                engine.save_checkpoint(
                    str(ckpt_dir),
                    tag=tag,
                    client_state={"step": step, "ema": ema.net.state_dict(), "mlflow_run_id": run_id},
                )
                if rank == 0:
                    checkpoints.inference_path(ckpt_dir, tag).parent.mkdir(parents=True, exist_ok=True)
                    blob = {
                        "ema": {k: v.detach().cpu() for k, v in ema.net.state_dict().items()},
                        "model_config": model_cfg,
                        "diffusion": diffusion_cfg,
                        "variables": train_ds.variables,
                        "stats_path": str(cfg.stats_path.resolve()),
                        "step": step,
                        "clip_frames": t.clip_frames,
                        "config": json.dumps(cfg.model_dump(mode="json")),
                    }
                    checkpoints.save_atomic(blob, checkpoints.inference_path(ckpt_dir, tag))
                    checkpoints.prune(ckpt_dir, t.keep_last, t.keep_every)
                dist.barrier()
        if progress is not None:
            progress.close()
        if rank == 0:
            final = checkpoints.inference_path(ckpt_dir, checkpoints.tag(step))
            tmp = cfg.final_checkpoint.with_name(".final.pt.tmp")
            shutil.copyfile(final, tmp)
            tmp.replace(cfg.final_checkpoint.resolve())
            run.log_metrics({"final_step": step})
    dist.barrier()
    return {"rank": rank, "world": world, "step": step, "history": history}
