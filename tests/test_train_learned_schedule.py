"""The learned schedule through the unchanged DeepSpeed training path: 2 processes (gloo), ZeRO 2.

The schedule rides in the network (``net.noise_schedule``), so the optimizer, the EMA, the DeepSpeed
checkpoint and the inference file carry it; this checks each of those on a real run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from pipeline.checkpoints import build_diffusion, load_inference
from pipeline.config import load_config
from pipeline.diffusion import LearnedSchedule
from tests.conftest import REPO, pipeline_cli

T = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)


@pytest.mark.slow
def test_learned_schedule_trains_under_deepspeed_and_reaches_the_inference_file(tmp_path: Path) -> None:
    c = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    c["results_dir"] = str(tmp_path / "results")
    c["experiment"] = "learned"
    c["model"].update({"base_channels": 8, "channel_mults": [1, 2], "attention_levels": [1], "heads": 2})
    c["diffusion"].update({"schedule": "learned", "learn_endpoints": True, "weighting": "elbo"})
    c["train"].update(
        {
            "clip_frames": 4,
            "micro_batch": 2,
            "steps": 6,
            "lr": 1e-2,
            "warmup_steps": 1,
            "log_every": 1,
            "val_every": 3,
            "checkpoint_every": 3,
            "val_clips": 2,
            "num_workers": 0,
            "zero_stage": 2,
        }
    )
    c["launch"].update({"executor": "local", "tasks_per_node": 2, "cpus_per_task": 1})
    cfg_path = tmp_path / "learned.yaml"
    cfg_path.write_text(yaml.safe_dump(c))
    for stage in ("prepare", "normalise", "train"):
        r = pipeline_cli(stage, "--config", str(cfg_path), cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]

    exp = tmp_path / "results" / "learned"
    model, meta = load_inference(exp / "checkpoints" / "final.pt")
    sched = model.schedule
    assert isinstance(sched, LearnedSchedule) and meta.diffusion["schedule"] == "learned"
    lam = sched(T)
    assert bool((lam[1:] < lam[:-1]).all())
    assert lam[0].item() == pytest.approx(sched.logsnr_max, abs=1e-5)
    assert lam[-1].item() == pytest.approx(sched.logsnr_min, abs=1e-5)

    # the initial schedule, as training built it
    cfg = load_config([cfg_path])
    torch.manual_seed(cfg.seed)
    init = build_diffusion(meta.model_config, meta.diffusion).schedule
    assert (init.logsnr_min, init.logsnr_max) == (-20.0, 20.0)
    assert (sched.logsnr_min, sched.logsnr_max) != (-20.0, 20.0)  # the endpoints were trained
    assert not torch.allclose(sched(T), init(T).detach(), atol=1e-6)  # and the interior

    # the inference file holds the engine's EMA of the schedule; the raw trained schedule is in the module
    states = torch.load(exp / "checkpoints" / "step-00000006" / "mp_rank_00_model_states.pt", weights_only=False)
    for k, v in model.net.noise_schedule.state_dict().items():
        assert torch.equal(v, states["ema"][f"noise_schedule.{k}"]), k
    raw = {k: v for k, v in states["module"].items() if k.startswith("diffusion.schedule.")}
    assert raw and any(
        not torch.equal(v.float(), states["ema"][k.replace("diffusion.schedule.", "noise_schedule.")])
        for k, v in raw.items()
    )
