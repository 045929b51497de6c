"""The checkpoint contract: what training writes and evaluation and sampling read, in one place.

Under ``<experiment>/checkpoints/``:

- ``step-XXXXXXXX/``: the DeepSpeed checkpoint of a step (exact resume; written by every rank), and ``latest``
  naming the last one (DeepSpeed's own pointer);
- ``inference/step-XXXXXXXX.pt``: the EMA network weights with the network and schedule settings, the variables,
  the clip length and the statistics reference, loadable without DeepSpeed (``torch.load(weights_only=True)``);
- ``final.pt``: a copy of the last inference file (the workflow's training output).

Retention: the last ``keep_last`` checkpoints and every one whose step is a multiple of ``keep_every`` are kept;
:func:`kept_steps` is that rule, used both to predict the checkpoints a run will leave (the evaluation sweep's
points are known before training ends) and to prune the ones on disk.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.atomic import temporary

if TYPE_CHECKING:  # torch is imported where a file is read or written: the config imports the names above
    import torch

    from pipeline.diffusion import VDiffusion
    from pipeline.distributed import Precision

__all__ = [
    "STUDENT_PATTERN",
    "STUDENT_SAMPLER",
    "TAG_PATTERN",
    "Inference",
    "build_diffusion",
    "distill_rounds",
    "inference_path",
    "is_student",
    "kept_steps",
    "load_inference",
    "prune",
    "save_atomic",
    "step_of",
    "student_name",
    "student_path",
    "student_round_dir",
    "student_steps",
    "students_index",
    "tag",
]


TAG_PATTERN = r"step-\d{8}\d*"  # what tag() makes, as a regular expression (the workflow's wildcards, config checks)
STUDENT_PATTERN = r"student-\d{4}\d*"  # what student_name() makes


def tag(step: int) -> str:
    """The name of a step's checkpoint: ``step-00000300``."""
    return f"step-{step:08d}"


def step_of(name: str) -> int:
    """The step of a checkpoint name (``step-00000300`` -> 300)."""
    return int(name.split("-", 1)[1])


def inference_path(checkpoint_dir: Path, name: str) -> Path:
    """The inference file of checkpoint ``name`` (a tag such as ``step-00000300``)."""
    return Path(checkpoint_dir) / "inference" / f"{name}.pt"


# Progressive distillation (stage ``distill``), under ``<experiment>/distill/``: one folder per round, named by the
# student's sampling steps, ``round-0032/`` (the round's DeepSpeed checkpoints, ``latest`` and their ``inference/``
# files, as under ``checkpoints/``) and ``round-0032/student.pt``, the round's student as an inference file, written
# last: a round with it is finished and never redone. In the evaluation sweep a student is the checkpoint
# ``student-0032`` with the sampler ``distilled`` (DDIM with the student) at its own step count.
STUDENT_SAMPLER = "distilled"


def distill_rounds(start_steps: int, final_steps: int) -> list[int]:
    """The students' step counts, one per round, each half the last: 64 -> 4 gives ``[32, 16, 8, 4]``."""
    out, n = [], start_steps
    while n > final_steps:
        n //= 2
        out.append(n)
    return out


def student_name(steps: int) -> str:
    """The checkpoint name of the ``steps``-step student: ``student-0004``."""
    return f"student-{steps:04d}"


def is_student(name: str) -> bool:
    return name.startswith("student-")


def student_steps(name: str) -> int:
    """The sampling steps of a student's checkpoint name (``student-0004`` -> 4)."""
    return int(name.split("-", 1)[1])


def student_round_dir(distill_dir: Path, steps: int) -> Path:
    """The folder of the round that trains the ``steps``-step student (its DeepSpeed checkpoints)."""
    return Path(distill_dir) / f"round-{steps:04d}"


def student_path(distill_dir: Path, steps: int) -> Path:
    """The ``steps``-step student's inference file (same format as a checkpoint's)."""
    return student_round_dir(distill_dir, steps) / "student.pt"


def students_index(distill_dir: Path) -> Path:
    """``students.json``: every round's student file, written when all rounds are done (the workflow's output)."""
    return Path(distill_dir) / "students.json"


def kept_steps(saved: Iterable[int], keep_last: int, keep_every: int) -> list[int]:
    """The steps of ``saved`` that retention keeps: the last ``keep_last`` and every multiple of ``keep_every``
    (0 = none), sorted."""
    saved = sorted(set(saved))
    kept = set(saved[-keep_last:])
    if keep_every:
        kept |= {s for s in saved if s % keep_every == 0}
    return sorted(kept)


def prune(checkpoint_dir: Path, keep_last: int, keep_every: int) -> None:
    """Delete the checkpoints (DeepSpeed folder and inference file) that retention does not keep; the one
    ``latest`` names is always kept."""
    checkpoint_dir = Path(checkpoint_dir)
    on_disk = {step_of(p.name): p.name for p in checkpoint_dir.glob("step-*") if p.is_dir()}
    latest = checkpoint_dir / "latest"
    keep = set(kept_steps(on_disk, keep_last, keep_every))
    if latest.exists():
        keep.add(step_of(latest.read_text().strip()))
    for step, name in on_disk.items():
        if step not in keep:
            shutil.rmtree(checkpoint_dir / name, ignore_errors=True)
            inference_path(checkpoint_dir, name).unlink(missing_ok=True)


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary name beside ``path``, then rename: a reader never sees half a file."""
    import torch

    tmp = temporary(path)
    torch.save(obj, tmp)
    tmp.replace(path)


def build_diffusion(model_cfg: dict[str, Any], diffusion_cfg: dict[str, Any]) -> VDiffusion:
    """The network and schedule from their settings (as stored in an inference file).

    Settings without a ``schedule`` key (inference files written before it existed) mean the cosine
    schedule. A learned schedule (``schedule: learned``) is also registered in the network as
    ``net.noise_schedule`` (the same module as ``diffusion.schedule``): its parameters then travel
    wherever the network's do, with no change to the training loop: into the optimizer (once:
    ``parameters()`` skips the shared copy), the EMA (so the inference file's ``ema`` weights hold the
    averaged schedule, as VDM evaluates with averaged parameters), the DeepSpeed checkpoint and
    ``load_inference``; the network never calls it.
    """
    from pipeline.diffusion import CosineSchedule, LearnedSchedule, UNet, UNetConfig, VDiffusion
    from pipeline.diffusion.objective import MIN_SNR_GAMMA

    net = UNet(UNetConfig(**model_cfg))
    lo, hi, shift = diffusion_cfg["logsnr_min"], diffusion_cfg["logsnr_max"], diffusion_cfg.get("shift", 0.0)
    sched: CosineSchedule | LearnedSchedule
    if diffusion_cfg.get("schedule", "cosine") == "learned":
        sched = LearnedSchedule(lo, hi, learn_endpoints=diffusion_cfg.get("learn_endpoints", False), shift=shift)
        net.add_module("noise_schedule", sched)
    else:
        sched = CosineSchedule(lo, hi, shift)
    return VDiffusion(
        net,
        sched,
        weighting=diffusion_cfg.get("weighting", "v"),
        min_snr_gamma=diffusion_cfg.get("min_snr_gamma", MIN_SNR_GAMMA),
        sigmoid_bias=diffusion_cfg.get("sigmoid_bias", 0.0),
    )


@dataclass(frozen=True)
class Inference:
    """What an inference file holds besides the EMA weights: written by training and distillation
    (:meth:`blob`), read by evaluation, sampling, distillation and the benchmarks (:func:`load_inference`)."""

    model_config: dict[str, Any]  # UNetConfig fields (pipeline.train.model_config)
    diffusion: dict[str, Any]  # the diffusion section of the training config (schedule, weighting)
    variables: list[str]  # channel order
    stats_path: str  # the normalisation statistics the model was trained on
    step: int  # optimizer steps (of the round, for a distilled student)
    clip_frames: int
    config: str = ""  # the whole training config as JSON ("" where a file has none)
    extra: dict[str, Any] = field(default_factory=dict)  # distillation: distilled_steps, teacher

    @property
    def day_of_year(self) -> bool:
        """The network is conditioned on each frame's day of year."""
        return bool(self.model_config.get("day_of_year"))

    @property
    def distilled_steps(self) -> int | None:
        return self.extra.get("distilled_steps")

    def training_setting(self, section: str, key: str, default: Any) -> Any:
        """A setting of the config the model was trained under (``default`` where the file has no config)."""
        return json.loads(self.config).get(section, {}).get(key, default) if self.config else default

    def blob(self, ema: dict[str, Any]) -> dict[str, Any]:
        """The file's content: the EMA state dict and these fields (plain types: ``weights_only`` loads it)."""
        fields = asdict(self)
        return {"ema": ema, **{k: v for k, v in fields.items() if k != "extra"}, **fields["extra"]}

    @classmethod
    def from_blob(cls, blob: dict[str, Any]) -> Inference:
        known = {"model_config", "diffusion", "variables", "stats_path", "step", "clip_frames", "config"}
        missing = sorted(known - {"config"} - set(blob))
        if missing:
            msg = f"not an inference file of this pipeline: no {missing} (expected what pipeline.train writes)"
            raise ValueError(msg)
        extra = {k: v for k, v in blob.items() if k not in known and k != "ema"}
        return cls(
            model_config=dict(blob["model_config"]),
            diffusion=dict(blob["diffusion"]),
            variables=list(blob["variables"]),
            stats_path=str(blob["stats_path"]),
            step=int(blob["step"]),
            clip_frames=int(blob["clip_frames"]),
            config=str(blob.get("config", "")),
            extra=extra,
        )


def load_inference(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", precision: Precision = "fp32"
) -> tuple[VDiffusion, Inference]:
    """Load an inference file (no DeepSpeed): the EMA network in eval mode and what it was trained as; its forward
    passes in bf16 autocast where ``precision`` says so (:func:`pipeline.distributed.use_bf16`), the weights and the
    samplers' arithmetic in fp32."""
    import torch

    from pipeline.distributed import use_bf16

    blob = torch.load(path, map_location=device, weights_only=True)
    try:
        meta = Inference.from_blob(blob)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    model = build_diffusion(meta.model_config, meta.diffusion)
    model.net.load_state_dict(blob["ema"])
    if use_bf16(precision, torch.device(device).type == "cuda"):
        model.inference_dtype = torch.bfloat16
    return model.to(device).eval(), meta
