"""Pure-torch diffusion core: schedule, objective, network, samplers, guidance.

Knows nothing of files, xarray, MLflow, DeepSpeed or SLURM (enforced by import-linter).
"""

from pipeline.diffusion.guidance import ClassifierFreeGuidance, ReconstructionGuidance, Replacement, extend
from pipeline.diffusion.objective import Prediction, VDiffusion
from pipeline.diffusion.samplers import SAMPLERS, sample_ancestral, sample_ddim, sample_dpmpp_2m, time_grid
from pipeline.diffusion.schedule import CosineSchedule, LearnedSchedule, alpha_sigma
from pipeline.diffusion.unet import UNet, UNetConfig, clip_condition

__all__ = [
    "SAMPLERS",
    "ClassifierFreeGuidance",
    "CosineSchedule",
    "LearnedSchedule",
    "Prediction",
    "ReconstructionGuidance",
    "Replacement",
    "UNet",
    "UNetConfig",
    "VDiffusion",
    "alpha_sigma",
    "clip_condition",
    "extend",
    "sample_ancestral",
    "sample_ddim",
    "sample_dpmpp_2m",
    "time_grid",
]
