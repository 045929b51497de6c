"""benchmarks/gpu_check.py --dry-run: the GPU check runs every step on the CPU at toy size (issue 28 item 5)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_config_validates_and_is_the_size_it_says() -> None:
    cfg = load_config([str(ROOT / "config" / "config.yaml"), str(ROOT / "config" / "experiments" / "gpu-era5.yaml")])
    assert cfg.model.base_channels == 128 and cfg.train.clip_frames == 16 and cfg.data.grid.resolution == 1.5
    assert cfg.train.compile and cfg.model.gradient_checkpointing and len(cfg.data.variables) == 6


@pytest.mark.slow
def test_dry_run_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--no-compile", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert rep["dry_run"] and rep["clip"] == [6, 16, 120, 240]
    s = rep["size"]
    # the full network's size, counted on the meta device: tens of millions of parameters, TFLOPs per clip
    assert 5e7 < s["parameters"] < 2e8 and 5e12 < s["flops_per_clip"] < 1e14
    assert s["activation_bytes_per_clip_bf16"] > 1e8 and s["state_bytes"] == 18 * s["parameters"]
    a = rep["agreement"]
    # bf16 changes the numbers (the fresh network's zero layers were given values) but not by much
    assert 0 < a["loss_rel_diff"] < 0.05 and 0 < a["sample_rel_rms_diff"] < 0.1
    assert [t["micro_batch"] for t in rep["train"]] == [1, 2]
    assert all(t["clips_per_s"] > 0 and t["tflops_per_s"] > 0 and "mfu" not in t for t in rep["train"])  # CPU: no MFU
    assert rep["sample_clips_per_s"] > 0 and rep["loader"]["clips_per_s"] > 0 and rep["loader"]["workers"] == 2
    assert "gpu_check done" in r.stdout


def test_without_a_gpu_and_without_dry_run_it_stops() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the check would run")  # only on GPU machines; CI has none
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], capture_output=True, text=True, timeout=120
    )
    assert r.returncode != 0 and "--dry-run" in r.stderr
