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

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where a file is read or written: the config imports the names above
    import torch

    from pipeline.diffusion import VDiffusion

__all__ = [
    "build_diffusion",
    "inference_path",
    "kept_steps",
    "load_inference",
    "prune",
    "save_atomic",
    "step_of",
    "tag",
]


def tag(step: int) -> str:
    """The name of a step's checkpoint: ``step-00000300``."""
    return f"step-{step:08d}"


def step_of(name: str) -> int:
    """The step of a checkpoint name (``step-00000300`` -> 300)."""
    return int(name.split("-", 1)[1])


def inference_path(checkpoint_dir: Path, name: str) -> Path:
    """The inference file of checkpoint ``name`` (a tag such as ``step-00000300``)."""
    return Path(checkpoint_dir) / "inference" / f"{name}.pt"


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

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    tmp.replace(path)


def build_diffusion(model_cfg: dict[str, Any], diffusion_cfg: dict[str, Any]) -> VDiffusion:
    """The network and schedule from their settings (as stored in an inference file)."""
    from pipeline.diffusion import CosineSchedule, UNet, UNetConfig, VDiffusion

    net = UNet(UNetConfig(**model_cfg))
    sched = CosineSchedule(diffusion_cfg["logsnr_min"], diffusion_cfg["logsnr_max"], diffusion_cfg.get("shift", 0.0))
    return VDiffusion(net, sched, weighting=diffusion_cfg.get("weighting", "v"))


def load_inference(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[VDiffusion, dict[str, Any]]:
    """Load an inference file (no DeepSpeed): the EMA network in eval mode and the metadata."""
    import torch

    blob = torch.load(path, map_location=device, weights_only=True)
    model = build_diffusion(blob["model_config"], blob["diffusion"])
    model.net.load_state_dict(blob["ema"])
    return model.to(device).eval(), blob
