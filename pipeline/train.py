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

import contextlib
import copy
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from pipeline import checkpoints, distributed, flops, seeding
from pipeline.atomic import copy_atomic
from pipeline.checkpoints import Inference, build_diffusion
from pipeline.config import Config
from pipeline.data.clips import ClipDataset, ClipSampler
from pipeline.data.io import open_store
from pipeline.diffusion import VDiffusion, clip_condition
from pipeline.diffusion.guidance import context_condition, drop_condition
from pipeline.distributed import Runtime
from pipeline.tracking import RunTarget, StageRun, stage_run

__all__ = [
    "EMA",
    "Clips",
    "Loop",
    "LossModule",
    "Runtime",
    "TrainState",
    "build_engine",
    "clip_loader",
    "deepspeed_config",
    "example_inputs",
    "inference_blob",
    "init_runtime",
    "load_clips",
    "lr_factor",
    "model_config",
    "run_training",
    "save_checkpoint",
    "training_loop",
    "validation_metrics",
]

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
        "zero_optimization": {"stage": t.zero_stage}
        | (
            {"stage3_param_persistence_threshold": t.zero3_persist_below}
            if t.zero_stage == 3 and t.zero3_persist_below is not None
            else {}
        ),
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class EMA:
    """Exponential moving average of a network's weights, kept in fp32 (on every rank).

    ZeRO stages 0-2 keep full parameters on every rank, so each rank updates an identical copy; under ZeRO-3 each
    rank holds a shard of the live weights, and every rank gathers them for the update (as for a forward pass), so
    the copies stay identical. Decay warms up as ``min(decay, (1 + step) / (10 + step))``.
    """

    def __init__(self, net: nn.Module, decay: float):
        self.decay = decay
        self.net = copy.deepcopy(net).float().eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        params = list(net.parameters())
        with gathered(params):
            for pe, p in zip(self.net.parameters(), params, strict=True):
                pe.mul_(d).add_(p.detach().float(), alpha=1 - d)
        for be, b in zip(self.net.buffers(), net.buffers(), strict=True):
            be.copy_(b)


def sharded(params: Iterable[nn.Parameter]) -> bool:
    """Whether any of ``params`` is a ZeRO-3 shard (DeepSpeed marks them with ``ds_id``)."""
    return any(hasattr(p, "ds_id") for p in params)


def gathered(params: list[nn.Parameter]) -> contextlib.AbstractContextManager:
    """The whole ``params`` inside the context (ZeRO-3: gathered from every rank, which must all enter it; read-only),
    a no-op for whole parameters."""
    if not sharded(params):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params)


def parameter_count(net: nn.Module) -> int:
    """Elements of ``net``'s parameters, whole (a ZeRO-3 shard counts its whole parameter)."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in net.parameters())


class LossModule(nn.Module):
    """What DeepSpeed wraps: ``engine(x, ...)`` returns the mean loss."""

    def __init__(self, diffusion: VDiffusion):
        super().__init__()
        self.diffusion = diffusion

    def forward(self, x: Tensor, cond: dict | None, mask: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return self.diffusion.loss(x, cond, t=t, eps=eps, mask=mask).mean()


@torch.no_grad()
def validation_loss(
    diffusion: VDiffusion,
    clips: list[dict[str, Tensor]],
    seed: int,
    device: torch.device,
    dtype: torch.dtype,
    model_cfg: dict[str, Any],
) -> float:
    """Mean loss over fixed clips x fixed times ``VAL_LEVELS`` x fixed noise: comparable across steps."""
    total, n = 0.0, 0
    for i, c in enumerate(clips):
        x = c["x"][None].to(device, dtype)
        g = torch.Generator().manual_seed(seeding.derive(seed, 7, i))
        eps = torch.randn(x.shape, generator=g).to(device, dtype)
        cond = clip_condition(c, model_cfg, device, batched=False)
        for tl in VAL_LEVELS:
            t = torch.full((1,), tl, device=device)
            total += float(diffusion.loss(x, cond, t=t, eps=eps, mask=c["mask"][None].to(device)).mean())
            n += 1
    return total / max(n, 1)


def init_runtime(cfg: Config) -> Runtime:
    """This rank's runtime for DeepSpeed training (:func:`pipeline.distributed.init_runtime`): the job's process group
    (one process too: DeepSpeed's engine needs one), the GPU when ``launch.gpus_per_node`` > 0, ``train.precision``."""
    return distributed.init_runtime(gpus=cfg.launch.gpus_per_node > 0, precision=cfg.train.precision, group="always")


@dataclass
class Clips:
    """The training clips and the fixed validation clips."""

    train: ClipDataset
    val: list[dict[str, Tensor]]

    @property
    def variables(self) -> list[str]:
        return self.train.variables


def load_clips(cfg: Config) -> Clips:
    t = cfg.train
    train_ds = ClipDataset(cfg.normalised_path, "train", t.clip_frames, t.clip_stride)
    val_ds = ClipDataset(cfg.normalised_path, "val", t.clip_frames, t.clip_stride, variables=train_ds.variables)
    return Clips(train_ds, [val_ds[i] for i in range(min(t.val_clips, len(val_ds)))])


def model_config(cfg: Config, channels: int, data: ClipDataset | None = None) -> dict[str, Any]:
    """The network settings stored in every inference file (``UNetConfig`` fields); the static fields, forcings and
    boundary fields the network reads are those of the training store (``data``; none without)."""
    m = cfg.model
    return {
        "channels": channels,
        "base_channels": m.base_channels,
        "channel_mults": list(m.channel_mults),
        "num_res_blocks": m.num_res_blocks,
        "attention_levels": list(m.attention_levels),
        "heads": m.heads,
        "dropout": m.dropout,
        "periodic_lon": m.periodic_lon if m.periodic_lon is not None else cfg.data.grid.is_global_lon,
        "lat_padding": m.lat_padding,
        "day_of_year": m.day_of_year,
        "static_channels": len(data.static_names) if data is not None else 0,
        "forcings": len(data.forcing_names) if data is not None else 0,
        "boundary_channels": len(data.boundary_names) if data is not None else 0,
        "context_frames": cfg.train.context_probability > 0,  # the given frames are an input (trained-in)
        "max_frames": max(64, cfg.train.clip_frames),
        "gradient_checkpointing": m.gradient_checkpointing,
    }


@dataclass
class TrainState:
    """The DeepSpeed engine around a loss module (whose ``.diffusion`` is trained), its EMA and the step."""

    engine: Any
    ema: EMA
    ds_config: dict[str, Any]
    step: int = 0
    run_id: str | None = None

    @property
    def diffusion(self) -> VDiffusion:
        return self.engine.module.diffusion

    def ema_diffusion(self) -> VDiffusion:
        """The averaged model, as its inference file rebuilds it: a learned schedule travels in the network
        (``net.noise_schedule``, see :func:`checkpoints.build_diffusion`), so the EMA's copy is the averaged one."""
        d = self.diffusion
        return VDiffusion(
            self.ema.net,
            getattr(self.ema.net, "noise_schedule", d.schedule),
            d.weighting,
            min_snr_gamma=d.min_snr_gamma,
            sigmoid_bias=d.sigmoid_bias,
        )


def build_engine(cfg: Config, rt: Runtime, module: nn.Module, ema: EMA, ckpt_dir: Path) -> TrainState:
    """AdamW + warm-up/cosine schedule of ``cfg.train`` on ``module.diffusion``'s parameters, wrapped by DeepSpeed;
    resumed from ``ckpt_dir``'s latest checkpoint (engine, EMA, step, MLflow run) when there is one."""
    import deepspeed

    t = cfg.train
    params = [p for p in module.diffusion.parameters() if p.requires_grad]  # distillation freezes a learned schedule
    optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, betas=(0.9, 0.99))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, t.warmup_steps, t.steps, t.min_lr_ratio)
    )
    ds_config = deepspeed_config(cfg, rt.world, rt.bf16)
    if t.compile:
        # In place (nn.Module.compile): parameter names, checkpoints and the EMA (an eager copy made before) unchanged.
        module.diffusion.net.compile()
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    ema.net.to(rt.device)
    state = TrainState(engine, ema, ds_config)
    if (ckpt_dir / "latest").exists():
        _, client = engine.load_checkpoint(str(ckpt_dir))
        state.step = int(client["step"])
        ema.net.load_state_dict(client["ema"])
        state.run_id = client.get("mlflow_run_id")
        if rt.rank == 0:
            log.info("resumed from %s at step %d", ckpt_dir / (ckpt_dir / "latest").read_text().strip(), state.step)
    return state


def clip_loader(cfg: Config, rt: Runtime, clips: Clips, step: int) -> DataLoader:
    """This rank's deterministic clip order, from the first clip of ``step`` on."""
    t = cfg.train
    start = step * t.grad_accum * t.micro_batch
    sampler = ClipSampler(len(clips.train), cfg.seed, rt.rank, rt.world, start=start, block=t.shuffle_block)
    return DataLoader(
        clips.train,
        batch_size=t.micro_batch,
        sampler=sampler,
        num_workers=t.num_workers,
        persistent_workers=t.num_workers > 0,
        prefetch_factor=4 if t.num_workers > 0 else None,
        pin_memory=rt.cuda,
    )


@dataclass
class Loop:
    """What differs between the stages that share :func:`training_loop` (``train``, ``distill``).

    ``sample_t(batch, generator)`` draws the diffusion times of a micro batch; ``validate(state)`` returns the
    validation metrics (called on every rank); ``inference(state)`` the inference file's content; ``step_offset`` is
    added to the step of every MLflow metric (distillation rounds follow one another in one run).
    """

    desc: str
    ckpt_dir: Path
    log_file: Path
    sample_t: Callable[[int, torch.Generator], Tensor]
    validate: Callable[[TrainState], dict[str, float]]
    inference: Callable[[TrainState], dict[str, Any]]
    model_cfg: dict[str, Any]  # the network's settings: which conditions (clip_condition) it reads
    step_offset: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    flops_per_clip: float = 0.0  # model FLOPs of one training clip (forward + backward), 0 = not counted
    peak_tflops: float | None = None  # the device's peak, for the MFU (None: unknown device, or the CPU)


def _micro_steps(cfg: Config, rt: Runtime, state: TrainState, it: Iterator, loop: Loop) -> tuple[float, int, float]:
    """One optimizer step (``grad_accum`` micro batches): its mean loss, the clips seen and the data wait."""
    t, step = cfg.train, state.step
    step_loss, seen, wait = 0.0, 0, 0.0
    for micro in range(t.grad_accum):
        w0 = time.perf_counter()
        batch = next(it)
        wait += time.perf_counter() - w0
        # Every random draw of a micro batch comes from (seed, rank, step, micro) and not from a running generator:
        # a run resumed at step k draws what the uninterrupted run drew there (test_kill_and_resume_equals_...).
        g = torch.Generator().manual_seed(seeding.derive(cfg.seed, rt.rank, step, micro))
        x = batch["x"].to(rt.device, rt.dtype)
        tt = loop.sample_t(x.shape[0], g)
        eps = torch.randn(x.shape, generator=g).to(rt.device, rt.dtype)
        cond = drop_condition(clip_condition(batch, loop.model_cfg, rt.device), t.cond_drop, g)
        mask = batch["mask"].to(rt.device)  # 0 where the data are missing (land in ocean fields): no loss there
        if t.context_probability > 0:  # some clips' first frames given clean, left out of the loss
            kmax = t.context_max_frames or cfg.evaluate.context_frames
            cond, keep = context_condition(cond, x, t.context_probability, kmax, g)
            mask = mask * keep
        torch.manual_seed(seeding.derive(cfg.seed, rt.rank, step, micro, 1))  # dropout
        loss = state.engine(x, cond, mask, tt.to(rt.device), eps)
        state.engine.backward(loss)
        # DeepSpeed counts micro batches: step() only applies the update (clipping, lr schedule) at the last one of
        # grad_accum, and scales each micro batch's gradient by 1/grad_accum itself, so the loss is not divided here.
        state.engine.step()
        step_loss += float(loss.detach()) / t.grad_accum
        seen += x.shape[0]
    return step_loss, seen, wait


@dataclass
class _Window:
    """Losses and timings since the last metric log."""

    t0: float = field(default_factory=time.perf_counter)
    wait: float = 0.0
    seen: int = 0
    losses: list[float] = field(default_factory=list)


def _log_window(rt: Runtime, state: TrainState, win: _Window, loop: Loop, run: StageRun) -> dict[str, float]:
    """The window's metrics (loss averaged over ranks), logged by rank 0 to MLflow and the JSON-lines log."""
    import torch.distributed as dist

    mean_loss = torch.tensor(sum(win.losses) / len(win.losses))
    dist.all_reduce(mean_loss)
    elapsed = time.perf_counter() - win.t0
    metrics = {
        "loss": float(mean_loss) / rt.world,
        "lr": state.engine.get_lr()[0],
        "grad_norm": float(state.engine.get_global_grad_norm() or 0.0),
        "samples_per_s": win.seen * rt.world / elapsed,
        "step_time_s": elapsed / len(win.losses),
        "data_wait_fraction": win.wait / elapsed,
    }
    if rt.cuda:
        metrics["gpu_mem_gb"] = torch.cuda.max_memory_allocated(rt.device) / 1e9
    if loop.flops_per_clip:
        metrics |= flops.mfu(loop.flops_per_clip, metrics["samples_per_s"], rt.world, loop.peak_tflops)
    if rt.rank == 0:
        run.log_metrics(metrics, step=loop.step_offset + state.step)
        with loop.log_file.open("a") as f:
            f.write(json.dumps({"step": state.step, "losses": win.losses, **metrics}) + "\n")
    return metrics


def save_checkpoint(rt: Runtime, state: TrainState, loop: Loop, keep_last: int, keep_every: int) -> None:
    """The DeepSpeed checkpoint of the step (every rank) and its inference file (rank 0), then retention."""
    import torch.distributed as dist

    tag = checkpoints.tag(state.step)
    client = {"step": state.step, "ema": state.ema.net.state_dict(), "mlflow_run_id": state.run_id}
    state.engine.save_checkpoint(str(loop.ckpt_dir), tag=tag, client_state=client)
    if rt.rank == 0:
        path = checkpoints.inference_path(loop.ckpt_dir, tag)
        path.parent.mkdir(parents=True, exist_ok=True)
        checkpoints.save_atomic(loop.inference(state), path)
        checkpoints.prune(loop.ckpt_dir, keep_last, keep_every)
    dist.barrier()


def training_loop(cfg: Config, rt: Runtime, state: TrainState, clips: Clips, loop: Loop, run: StageRun) -> None:
    """Train ``state`` from its step to ``cfg.train.steps``: log, validate and checkpoint on the way."""
    t = cfg.train
    it = iter(clip_loader(cfg, rt, clips, state.step))
    win = _Window()
    progress = None
    if rt.rank == 0:
        from tqdm import tqdm

        progress = tqdm(total=t.steps, initial=state.step, desc=loop.desc, disable=None, dynamic_ncols=True)
    while state.step < t.steps:
        state.engine.train()
        loss, seen, wait = _micro_steps(cfg, rt, state, it, loop)
        state.step += 1
        # The EMA follows every optimizer step on every rank (ZeRO <= 2 keeps whole parameters everywhere), so any
        # rank could write the inference file; rank 0 does. Its warm-up keeps early averages from the random init.
        state.ema.update(state.diffusion.net, state.step)
        win.losses.append(loss)
        win.seen += seen
        win.wait += wait
        if progress is not None:
            progress.update(1)
        if state.step % t.log_every == 0 or state.step == t.steps:
            metrics = _log_window(rt, state, win, loop, run)
            if progress is not None:
                progress.set_postfix(loss=f"{metrics['loss']:.4f}")
            loop.history.append({"step": state.step, **metrics})
            win = _Window()
        if state.step % t.val_every == 0 or state.step == t.steps:
            # Every rank validates (the same clips, the same result): under ZeRO-3 the live network's forward pass
            # gathers its weights from all ranks; otherwise the other ranks would wait at the next collective anyway.
            val = loop.validate(state)
            if rt.rank == 0:
                run.log_metrics(val, step=loop.step_offset + state.step)
                loop.history.append({"step": state.step, **val})
        # Checkpoints last in the step, after the logs and validation of the same step: a run killed while writing
        # resumes from the previous checkpoint and repeats those logs under the same steps (MLflow keeps both).
        if state.step % t.checkpoint_every == 0 or state.step == t.steps:
            save_checkpoint(rt, state, loop, t.keep_last, t.keep_every)
    if progress is not None:
        progress.close()


def _log_start(cfg: Config, rt: Runtime, state: TrainState, model_cfg: dict, clips: Clips, run: StageRun) -> None:
    """The run's parameters, DeepSpeed config and tags, once at step 0 (rank 0)."""
    t = cfg.train
    n_params = parameter_count(state.diffusion)
    ds = state.ds_config
    precision = "bf16" if rt.bf16 else "fp32"
    run.log_params(
        {
            "model": model_cfg,
            "diffusion": cfg.diffusion.model_dump(),
            "train": t.model_dump(),
            "launch": cfg.launch.model_dump(),
            "world_size": rt.world,
            "global_batch": ds["train_batch_size"],
            "precision": precision,
            "parameters": n_params,
            "device": str(rt.device),
        }
    )
    run.log_dict(ds, "deepspeed_config.json")
    run.set_tags({"input": str(cfg.normalised_path), "variables": ",".join(clips.variables)})
    log.info(
        "training %s parameters on %d process(es), global batch %d (= %d micro x %d accum x %d ranks), %s",
        f"{n_params:,}",
        rt.world,
        ds["train_batch_size"],
        t.micro_batch,
        t.grad_accum,
        rt.world,
        precision,
    )


SCHEDULE_PROBES = (0.0, 0.25, 0.5, 0.75, 1.0)  # where a learned schedule's log-SNR is logged: its curve in MLflow


def validation_metrics(
    cfg: Config, rt: Runtime, clips: Clips, model_cfg: dict[str, Any]
) -> Callable[[TrainState], dict[str, float]]:
    """``val_loss`` and ``val_loss_ema``: the loss of the raw and the EMA weights at fixed times and noise; with
    a learned schedule (``diffusion.schedule: learned``) also the EMA schedule's log-SNR at ``SCHEDULE_PROBES``
    (``logsnr_t050`` at t = 0.5)."""

    def validate(state: TrainState) -> dict[str, float]:
        raw = validation_loss(state.diffusion, clips.val, cfg.seed, rt.device, rt.dtype, model_cfg)
        averaged = state.ema_diffusion()
        ema = validation_loss(averaged, clips.val, cfg.seed, rt.device, torch.float32, model_cfg)
        out = {"val_loss": raw, "val_loss_ema": ema}
        schedule = averaged.schedule  # the EMA's: what the inference file holds and the samplers use
        if getattr(schedule, "trainable", False):
            with torch.no_grad():
                logsnr = schedule(torch.tensor(SCHEDULE_PROBES, dtype=torch.float64, device=rt.device))
            out |= {f"logsnr_t{round(p * 100):03d}": float(v) for p, v in zip(SCHEDULE_PROBES, logsnr, strict=True)}
        return out

    return validate


def inference_blob(
    cfg: Config,
    state: TrainState,
    model_cfg: dict[str, Any],
    variables: list[str],
    diffusion: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The inference file's content (:class:`pipeline.checkpoints.Inference`): EMA weights and what rebuilds the
    model; ``diffusion`` (a distilled student: its teacher's) defaults to the config's, ``extra`` (distillation:
    ``distilled_steps``, ``teacher``) is kept beside."""
    meta = Inference(
        model_config=model_cfg,
        diffusion=diffusion if diffusion is not None else cfg.diffusion.model_dump(),
        variables=list(variables),
        stats_path=str(cfg.stats_path.resolve()),
        step=state.step,
        clip_frames=cfg.train.clip_frames,
        config=json.dumps(cfg.model_dump(mode="json")),
        extra=extra,
    )
    return meta.blob({k: v.detach().cpu() for k, v in state.ema.net.state_dict().items()})


def example_inputs(
    model_cfg: dict[str, Any], shape: tuple[int, ...], device: torch.device | str, dtype: torch.dtype
) -> tuple[Tensor, Tensor, dict[str, Any] | None]:
    """``(z, logsnr, cond)`` of one clip of ``shape`` (1, C, T, H, W) with the conditions the network is trained
    with (day of year, static and boundary fields, forcings, trained-in context frames): what the FLOP count and
    the GPU check pass the network."""
    t = shape[2]
    z = torch.zeros(shape, device=device, dtype=dtype)
    cond: dict[str, Any] = {}
    if model_cfg.get("day_of_year"):
        cond["doy"] = torch.ones(1, t, device=device)
    if model_cfg.get("static_channels"):
        cond["static"] = torch.zeros(1, model_cfg["static_channels"], *shape[3:], device=device, dtype=dtype)
    if model_cfg.get("forcings"):
        cond["forcing"] = torch.zeros(1, t, model_cfg["forcings"], device=device)
    if model_cfg.get("boundary_channels"):
        cond["boundary"] = torch.zeros(1, model_cfg["boundary_channels"], *shape[2:], device=device, dtype=dtype)
    if model_cfg.get("context_frames"):
        cond |= {"context": z, "context_mask": torch.ones(1, 1, t, 1, 1, device=device, dtype=dtype)}
    return z, torch.zeros(1, device=device, dtype=dtype), cond or None


def count_flops(cfg: Config, rt: Runtime, diffusion: VDiffusion, model_cfg: dict[str, Any]) -> float:
    """Model FLOPs of one training clip: the network's forward pass on one clip of the training shape (with the
    conditions it is trained with), times :data:`pipeline.flops.TRAIN_FACTOR`."""
    store = open_store(cfg.normalised_path)
    shape = (1, model_cfg["channels"], cfg.train.clip_frames, store.sizes["latitude"], store.sizes["longitude"])
    z, logsnr, cond = example_inputs(model_cfg, shape, rt.device, rt.dtype)
    return float(flops.forward_flops(diffusion.net, z, logsnr, cond) * flops.TRAIN_FACTOR)


def run_training(cfg: Config) -> dict[str, Any]:
    """Train in this process (one rank of the job). Returns a summary (rank 0: final losses)."""
    import torch.distributed as dist

    rt = init_runtime(cfg)
    t = cfg.train
    clips = load_clips(cfg)
    model_cfg = model_config(cfg, len(clips.variables), clips.train)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    diffusion = build_diffusion(model_cfg, cfg.diffusion.model_dump())
    ema = EMA(diffusion.net, t.ema_decay)
    ckpt_dir = cfg.checkpoint_dir.resolve()
    flops_per_clip = count_flops(cfg, rt, diffusion, model_cfg)  # before ZeRO-3 could shard the weights
    state = build_engine(cfg, rt, LossModule(diffusion), ema, ckpt_dir)
    loop = Loop(
        desc="train",
        ckpt_dir=ckpt_dir,
        log_file=cfg.exp_dir / "train_log.jsonl",
        sample_t=lambda n, g: diffusion.sample_t(n, generator=g, low_discrepancy=t.low_discrepancy),
        validate=validation_metrics(cfg, rt, clips, model_cfg),
        inference=lambda s: inference_blob(cfg, s, model_cfg, clips.variables),
        model_cfg=model_cfg,
        flops_per_clip=flops_per_clip,
        peak_tflops=flops.peak_tflops(torch.cuda.get_device_name(rt.device), t.peak_tflops) if rt.cuda else None,
    )
    with stage_run(RunTarget.of(cfg), "train", rank=rt.rank, run_id=state.run_id) as run:
        state.run_id = run.run_id
        if rt.rank == 0 and state.step == 0:
            _log_start(cfg, rt, state, model_cfg, clips, run)
            run.log_params({"flops_per_clip": loop.flops_per_clip, "peak_tflops": loop.peak_tflops})
            log.info("model FLOPs per training clip: %.3g (forward x %d)", loop.flops_per_clip, flops.TRAIN_FACTOR)
        training_loop(cfg, rt, state, clips, loop, run)
        if rt.rank == 0:
            final = checkpoints.inference_path(ckpt_dir, checkpoints.tag(state.step))
            copy_atomic(final, cfg.final_checkpoint.resolve())
            run.log_metrics({"final_step": state.step})
    dist.barrier()
    return {"rank": rt.rank, "world": rt.world, "step": state.step, "history": loop.history}
