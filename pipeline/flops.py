"""The network's FLOPs per clip and the fraction of a GPU's peak a run achieves (model FLOPs utilisation, MFU).

The forward pass of one clip is counted once by torch's own FLOP counter (``torch.utils.flop_counter``: every
matmul, convolution and attention, 2 FLOPs per multiply-add); a training step costs three forward passes per clip
(the backward pass of matmuls and convolutions is twice the forward), the convention of model FLOPs utilisation
(PaLM, appendix B): recomputation by gradient checkpointing is not counted, so the MFU of a checkpointed run is what
the model needs, not what the GPU did. The peak is the dense (no sparsity) bf16 tensor-core figure of the vendor's
datasheet for the GPU's name, or ``train.peak_tflops``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["PEAK_TFLOPS", "TRAIN_FACTOR", "forward_flops", "mfu", "peak_tflops"]

# Dense bf16 tensor-core peaks per device in TFLOP/s (vendor datasheets, without sparsity), matched against
# torch.cuda.get_device_name in this order (the first name it contains).
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("MI300X", 1307.0),
    ("MI250X", 383.0),
)
TRAIN_FACTOR = 3  # forward + backward (twice the forward) per clip


def peak_tflops(device_name: str, override: float | None = None) -> float | None:
    """The device's peak in TFLOP/s: ``override`` where given, else the table's entry for the first name that
    ``device_name`` contains, else None (unknown devices and the CPU get no MFU)."""
    if override is not None:
        return float(override)
    name = device_name.upper()
    return next((peak for key, peak in PEAK_TFLOPS if key.upper() in name), None)


def forward_flops(net: torch.nn.Module, z: torch.Tensor, logsnr: torch.Tensor, cond: dict[str, Any] | None) -> int:
    """FLOPs of one forward pass of ``net(z, logsnr, cond)`` (torch's FLOP counter, nothing kept for backward)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(z, logsnr, cond)
    return int(counter.get_total_flops())


def mfu(flops_per_clip: float, clips_per_s: float, devices: int, peak: float | None) -> dict[str, float]:
    """Achieved TFLOP/s of the job and per device, and their fraction of ``peak`` (per device) where it is known."""
    total = flops_per_clip * clips_per_s / 1e12
    out = {"tflops_per_s": total, "tflops_per_s_per_device": total / devices}
    if peak:
        out["mfu"] = total / devices / peak
    return out
