"""Stage ``distill``: progressive distillation (Salimans & Ho 2022) of a trained checkpoint.

Each round trains a student that samples in half the DDIM steps of its teacher (``distill.start_steps`` ->
... -> ``distill.final_steps``): the student starts from the teacher's (EMA) weights and learns, at the times
of its own grid, the target of two teacher DDIM steps (:mod:`pipeline.diffusion.distillation`); the next round's
teacher is this round's student. A round runs on the training machinery of :mod:`pipeline.train` (DeepSpeed
engine, per-rank seeds, EMA, validation, checkpoints, exact resume) with ``distill``'s step count and learning
rate; its folder and its student's inference file are named in :mod:`pipeline.checkpoints`. A round whose
student file exists is finished and never redone; an interrupted round resumes from its last checkpoint. All
rounds log into one MLflow child run (``distill``), the metric steps following one another round after round.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pipeline import checkpoints, seeding
from pipeline.atomic import copy_atomic, write_text_atomic
from pipeline.checkpoints import load_inference
from pipeline.config import Config, ConfigError, config_hash
from pipeline.diffusion import VDiffusion, clip_condition
from pipeline.diffusion.distillation import DistillWeighting, distillation_loss, student_times
from pipeline.tracking import RunTarget, StageRun, stage_run
from pipeline.train import (
    EMA,
    Clips,
    Loop,
    Runtime,
    TrainState,
    build_engine,
    inference_blob,
    init_runtime,
    load_clips,
    training_loop,
)

__all__ = [
    "DistillLossModule",
    "distill_round",
    "prepare_distill_dir",
    "round_config",
    "run_distillation",
    "teacher_file",
    "write_students_index",
]

log = logging.getLogger(__name__)

MAX_VAL_LEVELS = 8  # the validation loss uses at most this many times of the student's grid


class DistillLossModule(nn.Module):
    """What DeepSpeed wraps in a round: ``engine(x, cond, mask, t, eps)`` returns the mean distillation loss of
    the student (``.diffusion``, trained) against the frozen teacher."""

    def __init__(self, student: VDiffusion, teacher: VDiffusion, steps: int, weighting: DistillWeighting):
        super().__init__()
        self.diffusion = student
        # not a submodule: the engine must neither train, cast (bf16) nor checkpoint the teacher
        object.__setattr__(self, "teacher", teacher.requires_grad_(False).eval())
        self.steps = steps
        self.weighting = weighting

    def forward(self, x: Tensor, cond: dict | None, mask: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        loss = distillation_loss(
            self.diffusion, self.teacher, x, cond, t=t, eps=eps, steps=self.steps, weighting=self.weighting, mask=mask
        )
        return loss.mean()


def teacher_file(cfg: Config) -> Path:
    """The first teacher's inference file: ``distill.checkpoint`` = best (``eval/best.json``), last or a tag."""
    name = cfg.distill.checkpoint
    if name == "last":
        return cfg.final_checkpoint
    if name == "best":
        name = cfg.read_best("checkpoint", "distill.checkpoint")
    return cfg.inference_file(name)


def round_config(cfg: Config) -> Config:
    """The config a round trains with: ``train`` with distill's steps, learning rate, warm-up and checkpointing
    (the last checkpoint of a round is kept: its student file is a copy of it)."""
    d = cfg.distill
    train = cfg.train.model_copy(
        update={
            "steps": d.steps_per_round,
            "lr": d.lr,
            "warmup_steps": d.warmup_steps,
            "checkpoint_every": d.checkpoint_every,
            "keep_last": 1,
            "keep_every": 0,
        }
    )
    return cfg.model_copy(update={"train": train})


def _settings_hash(cfg: Config, teacher: Path) -> str:
    """What a round's checkpoints must agree with to be resumed or kept (not: enabled, final_steps)."""
    stat = teacher.stat()
    skip = {"log_every", "val_every", "num_workers", "val_clips", "checkpoint_every"}
    t = round_config(cfg).train.model_dump(exclude=skip)
    return config_hash(
        {
            "distill": cfg.distill.model_dump(exclude={"enabled", "final_steps", "checkpoint_every"}),
            "train": t,
            "teacher": [str(teacher.resolve()), stat.st_size, stat.st_mtime_ns],
            "data": config_hash(cfg.data),
            "seed": cfg.seed,
            "world": cfg.launch.nodes * cfg.launch.tasks_per_node,
        }
    )


def prepare_distill_dir(cfg: Config) -> list[int]:
    """Check the teacher; keep the rounds made with the same settings (finished ones are not redone, an
    interrupted one resumes); move others aside. Returns the step counts of the rounds still to run."""
    teacher = teacher_file(cfg)
    if not teacher.exists():
        msg = f"distill: the teacher {teacher} (distill.checkpoint = {cfg.distill.checkpoint!r}) does not exist"
        raise ConfigError(msg)
    d = cfg.distill_dir
    stamp = d / "settings.json"
    want = _settings_hash(cfg, teacher)
    if d.exists() and any(d.iterdir()):
        have = json.loads(stamp.read_text()).get("hash") if stamp.exists() else None
        if have != want:
            archive = d.with_name(f"distill.old-{time.strftime('%Y%m%d-%H%M%S')}")
            log.warning("distillation in %s was made with other settings; moved to %s", d, archive)
            d.rename(archive)
    d.mkdir(parents=True, exist_ok=True)
    write_text_atomic(stamp, json.dumps({"hash": want, "teacher": str(teacher)}))
    todo = [n for n in cfg.distill.rounds if not checkpoints.student_path(d, n).exists()]
    done = [n for n in cfg.distill.rounds if n not in todo]
    log.info("distill: teacher %s; rounds done %s, to run %s (student steps)", teacher, done, todo)
    return todo


def write_students_index(cfg: Config) -> Path:
    """``distill/students.json`` (the workflow's output of the stage): each round's student, its sweep point and
    file; an error if a round has no student."""
    missing = [n for n in cfg.distill.rounds if not checkpoints.student_path(cfg.distill_dir, n).exists()]
    if missing:
        msg = f"distill: no student for the {missing}-step round(s) in {cfg.distill_dir}"
        raise RuntimeError(msg)
    students = [
        {
            "checkpoint": checkpoints.student_name(n),
            "steps": n,
            "file": str(checkpoints.student_path(cfg.distill_dir, n)),
        }
        for n in cfg.distill.rounds
    ]
    out = checkpoints.students_index(cfg.distill_dir)
    teacher = json.loads((cfg.distill_dir / "settings.json").read_text())["teacher"]
    write_text_atomic(out, json.dumps({"teacher": teacher, "students": students}, indent=2))
    return out


def _validation(
    cfg: Config, rt: Runtime, clips: Clips, steps: int, model_cfg: dict[str, Any]
) -> Callable[[TrainState], dict[str, float]]:
    """``val_loss`` and ``val_loss_ema``: the distillation loss of the raw and EMA students on the fixed validation
    clips, at fixed times of the student's grid and fixed noise (comparable across a round's steps)."""
    levels = [k / steps for k in range(1, steps + 1)]
    levels = levels[:: max(1, len(levels) // MAX_VAL_LEVELS)][:MAX_VAL_LEVELS]
    d = cfg.distill

    @torch.no_grad()
    def loss(student: VDiffusion, teacher: VDiffusion, dtype: torch.dtype) -> float:
        total, n = 0.0, 0
        for i, c in enumerate(clips.val):
            x = c["x"][None].to(rt.device, dtype)
            g = torch.Generator().manual_seed(seeding.derive(cfg.seed, i))
            eps = torch.randn(x.shape, generator=g).to(rt.device, dtype)
            cond = clip_condition(c, model_cfg, rt.device, batched=False)
            mask = c["mask"][None].to(rt.device)
            for tl in levels:
                t = torch.full((1,), tl, device=rt.device, dtype=torch.float64)
                per = distillation_loss(
                    student, teacher, x, cond, t=t, eps=eps, steps=steps, weighting=d.weighting, mask=mask
                )
                total += float(per.mean())
                n += 1
        return total / max(n, 1)

    def validate(state: TrainState) -> dict[str, float]:
        teacher = state.engine.module.teacher
        raw = loss(state.diffusion, teacher, rt.dtype)
        return {"val_loss": raw, "val_loss_ema": loss(state.ema_diffusion(), teacher, torch.float32)}

    return validate


def distill_round(
    cfg: Config, rt: Runtime, clips: Clips, teacher_path: Path, steps: int, run: StageRun, offset: int
) -> dict[str, Any]:
    """Train the ``steps``-step student of ``teacher_path`` (resuming the round's checkpoint if any); write its
    inference file. ``cfg`` is the :func:`round_config`."""
    import torch.distributed as dist

    teacher, meta = load_inference(teacher_path, rt.device)
    if meta.variables != list(clips.variables):
        msg = f"distill: the teacher {teacher_path} was trained on {meta.variables}, the data has {clips.variables}"
        raise ValueError(msg)
    student, _ = load_inference(teacher_path, "cpu")  # the student starts from the teacher's weights
    student.train()
    student.schedule.requires_grad_(False)  # a learned schedule stays the teacher's
    ema = EMA(student.net, cfg.train.ema_decay)
    ckpt_dir = checkpoints.student_round_dir(cfg.distill_dir, steps).resolve()
    if rt.rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    module = DistillLossModule(student, teacher, steps, cfg.distill.weighting)
    state = build_engine(cfg, rt, module, ema, ckpt_dir)
    state.run_id = run.run_id
    low = cfg.train.low_discrepancy
    extra = {"diffusion": meta.diffusion, "distilled_steps": steps, "teacher": str(teacher_path)}
    loop = Loop(
        desc=f"distill {2 * steps}->{steps}",
        ckpt_dir=ckpt_dir,
        log_file=ckpt_dir / "log.jsonl",
        sample_t=lambda n, g: student_times(student.sample_t(n, generator=g, low_discrepancy=low), steps),
        validate=_validation(cfg, rt, clips, steps, meta.model_config),
        inference=lambda s: inference_blob(cfg, s, meta.model_config, clips.variables, **extra),
        model_cfg=meta.model_config,
        step_offset=offset,
    )
    training_loop(cfg, rt, state, clips, loop, run)
    if rt.rank == 0:
        out = checkpoints.student_path(cfg.distill_dir, steps)
        copy_atomic(checkpoints.inference_path(ckpt_dir, checkpoints.tag(state.step)), out)
        run.log_metrics({"round_steps": steps, "round_final_loss": loop.history[-1].get("val_loss_ema", float("nan"))})
        log.info("distill: %d-step student -> %s", steps, out)
    dist.barrier()
    return {"steps": steps, "history": loop.history}


def _run_id(cfg: Config) -> str | None:
    path = cfg.distill_dir / "mlflow_run.json"
    return json.loads(path.read_text()).get("run_id") if path.exists() else None


def run_distillation(cfg: Config) -> dict[str, Any]:
    """Every round not finished yet, in this process (one rank of the job). Returns a summary per round."""
    import torch.distributed as dist

    rt = init_runtime(cfg)
    rcfg = round_config(cfg)
    clips = load_clips(rcfg)
    teacher = teacher_file(cfg)
    d = cfg.distill
    rounds = []
    with stage_run(RunTarget.of(cfg), "distill", rank=rt.rank, run_id=_run_id(cfg) if rt.rank == 0 else None) as run:
        if rt.rank == 0 and run.run_id and _run_id(cfg) is None:
            write_text_atomic(cfg.distill_dir / "mlflow_run.json", json.dumps({"run_id": run.run_id}))
            run.log_params(
                {"distill": d.model_dump(), "teacher": str(teacher), "rounds": d.rounds, "world_size": rt.world}
            )
        for k, steps in enumerate(d.rounds):
            student = checkpoints.student_path(cfg.distill_dir, steps)
            if not student.exists():
                rounds.append(distill_round(rcfg, rt, clips, teacher, steps, run, k * d.steps_per_round))
            teacher = student
    dist.barrier()
    return {"rank": rt.rank, "world": rt.world, "rounds": rounds}
