"""One process's place in a job: the single way a stage joins the job's process group and picks its device.

The launcher (:func:`pipeline.launch.distributed_env`: submitit on SLURM, torchrun, or one process) exports RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; :func:`init_runtime` joins the group they describe with
``env://`` (NCCL on GPUs, gloo on the CPU), binds the process to its GPU and decides the precision. Training and
distillation start here too: DeepSpeed's ``deepspeed.initialize`` finds the group initialised and builds its
communication backend on it (its own ``init_distributed`` skips a group that exists), so this module stays pure
torch and only :mod:`pipeline.train` imports DeepSpeed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import torch
import torch.distributed as dist

__all__ = ["GROUP_TIMEOUT", "Precision", "Runtime", "init_runtime", "leave_group", "use_bf16"]

# How long a collective waits for a peer before the job fails: DeepSpeed's default (its DEEPSPEED_TIMEOUT, 30 min),
# which training used before this module existed. A checkpoint save or a validation pass on rank 0 must fit in it.
GROUP_TIMEOUT = timedelta(minutes=30)
Precision = Literal["auto", "fp32", "bf16"]


def use_bf16(precision: Precision, cuda: bool) -> bool:
    """The precision rule of every stage: ``bf16``, or ``auto`` on a GPU (fp32 on the CPU, where bf16 is slow)."""
    return precision == "bf16" or (precision == "auto" and cuda)


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: its rank in the job, its device and its precision."""

    rank: int
    world: int
    device: torch.device
    cuda: bool
    bf16: bool

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.bf16 else torch.float32


def init_runtime(*, gpus: bool, precision: Precision = "fp32", group: Literal["always", "multi"] = "multi") -> Runtime:
    """Join the job's process group once per process (a second call reuses it) and pick device and precision.

    ``gpus``: use this node's GPU ``LOCAL_RANK`` (modulo the visible count) when CUDA is available; the CPU otherwise.
    ``precision``: ``auto`` is bf16 on a GPU and fp32 on the CPU. ``group``: ``always`` makes a group even for one
    process (DeepSpeed's engine needs one), ``multi`` only when WORLD_SIZE > 1 (sampling).
    """
    cuda = gpus and torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not dist.is_initialized() and (group == "always" or world > 1):
        dist.init_process_group("nccl" if cuda else "gloo", timeout=GROUP_TIMEOUT)
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank = int(os.environ.get("RANK", "0"))
    return Runtime(rank, world, device, cuda, use_bf16(precision, cuda))


def leave_group() -> None:
    """Destroy this process's group, if it has one (the end of a stage that runs in a launched process)."""
    if dist.is_initialized():
        dist.destroy_process_group()
