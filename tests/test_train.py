"""DeepSpeed training on the CPU: 2 processes (gloo) through submitit's local executor.

ZeRO stages 0, 2 and 3 (every weight sharded); kill the job after a checkpoint, resume, and compare the losses of the
following steps with an uninterrupted run; the inference file reloads without DeepSpeed and
equals the engine's EMA weights.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.checkpoints import load_inference
from pipeline.config import load_config
from pipeline.train import deepspeed_config, lr_factor
from tests.conftest import REPO, pipeline_cli

TINY = {
    "model": {"base_channels": 8, "channel_mults": [1, 2], "attention_levels": [1], "heads": 2},
    "train": {
        "clip_frames": 4,
        "micro_batch": 2,
        "steps": 8,
        "lr": 1e-3,
        "warmup_steps": 2,
        "log_every": 1,
        "val_every": 4,
        "checkpoint_every": 4,
        "val_clips": 2,
        "num_workers": 0,
        "zero_stage": 2,
    },
    "launch": {"executor": "local", "tasks_per_node": 2, "cpus_per_task": 1},
}


def _config(tmp: Path, name: str, **over) -> Path:
    c = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    c["results_dir"] = str(tmp / "results")
    c["experiment"] = name
    for section, values in TINY.items():
        c[section].update(values)
    for section, values in over.items():
        c[section].update(values)
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(c))
    return p


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """prepare + normalise once; each test copies the data folder into its own experiment."""
    tmp = tmp_path_factory.mktemp("train")
    cfg = _config(tmp, "base")
    for stage in ("prepare", "normalise"):
        r = pipeline_cli(stage, "--config", str(cfg), cwd=tmp)
        assert r.returncode == 0, r.stderr[-3000:]
    return tmp


def _experiment(data_root: Path, name: str, **over) -> tuple[Path, Path]:
    import shutil

    cfg = _config(data_root, name, **over)
    dst = data_root / "results" / name / "data"
    if not dst.exists():
        shutil.copytree(data_root / "results" / "base" / "data", dst)
    return cfg, data_root / "results" / name


def _trained(data_root: Path, name: str, **over) -> Path:
    """Experiment ``name`` trained to its end, once per module by whichever test needs it first: a test run alone
    or in another order finds it, instead of skipping or failing on a missing file."""
    cfg, exp = _experiment(data_root, name, **over)
    if not (exp / "checkpoints" / "final.pt").exists():
        r = pipeline_cli("train", "--config", str(cfg), cwd=data_root)
        assert r.returncode == 0, r.stderr[-3000:]
    return exp


def _zero(data_root: Path, stage: int) -> Path:
    """Two processes, 12 steps, ZeRO ``stage`` (3: every parameter sharded, however small)."""
    train = {"zero_stage": stage, "steps": 12, "checkpoint_every": 12} | (
        {"zero3_persist_below": 0} if stage == 3 else {}
    )
    return _trained(data_root, f"zero{stage}", train=train)


def _losses(exp: Path) -> dict[int, float]:
    """Per-step training loss from the log (a step logged twice, before and after a resume: the last)."""
    out = {}
    for line in (exp / "train_log.jsonl").read_text().splitlines():
        row = json.loads(line)
        out[row["step"]] = row["losses"][-1]
    return out


def test_lr_factor_and_deepspeed_config(tmp_path: Path) -> None:
    assert lr_factor(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(55, 10, 100, 0.1) == pytest.approx(0.55)
    cfg = load_config([_config(tmp_path, "x", train={"micro_batch": 3, "grad_accum": 2, "zero_stage": 1})])
    ds = deepspeed_config(cfg, world_size=4, bf16=True)
    assert ds["train_batch_size"] == 24 and ds["gradient_accumulation_steps"] == 2
    assert ds["zero_optimization"]["stage"] == 1 and ds["bf16"]["enabled"] is True


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 2, 3])
def test_two_processes_train_and_loss_goes_down(data_root: Path, stage: int) -> None:
    exp = _zero(data_root, stage)
    losses = _losses(exp)
    assert sorted(losses) == list(range(1, 13))
    assert sum(losses[s] for s in (10, 11, 12)) < sum(losses[s] for s in (1, 2, 3))
    assert (exp / "checkpoints" / "final.pt").exists()
    states = sorted(p.name for p in (exp / "checkpoints" / "step-00000012").iterdir())
    if stage > 0:  # one optimizer shard per rank
        assert [s for s in states if "optim_states" in s] == [
            "zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "zero_pp_rank_1_mp_rank_00_optim_states.pt",
        ]
    logs = " ".join(p.read_text() for p in (exp / "submitit").glob("*_log.err"))
    assert "task rank 0/2" in logs and "task rank 1/2" in logs  # two data-parallel processes
    # the two share the cores instead of each taking all of them (tests/conftest.py may have set the share)
    share = os.environ.get("OMP_NUM_THREADS") or str(max(1, len(os.sched_getaffinity(0)) // 2))
    assert f"{share} CPU thread(s) per task" in logs
    # the model's FLOPs are counted and the throughput in TFLOP/s logged (no MFU on the CPU: no known peak)
    row = json.loads((exp / "train_log.jsonl").read_text().splitlines()[-1])
    assert row["tflops_per_s"] > 0 and row["tflops_per_s_per_device"] == pytest.approx(row["tflops_per_s"] / 2)
    assert "mfu" not in row


@pytest.mark.slow
def test_zero_stages_agree(data_root: Path) -> None:
    """Same seeds, same data order: ZeRO 0, 2 and 3 give the same losses (the optimizer state, then the weights
    are sharded, the mathematics unchanged), and ZeRO-3's EMA (updated from gathered shards) and validation (the
    sharded network's forward pass on every rank) equal ZeRO-2's."""
    a, b, c = (_losses(_zero(data_root, s)) for s in (0, 2, 3))
    assert sorted(a) == sorted(b) == sorted(c) == list(range(1, 13))
    for s in a:
        assert a[s] == pytest.approx(b[s], rel=1e-4, abs=1e-6), s
        assert c[s] == pytest.approx(b[s], rel=1e-4, abs=1e-6), s
    # The weights after 12 Adam steps differ between any two stages by the order of the gradient reductions
    # (Adam's update divides by the root of a small second moment); ZeRO-3 must sit within the ZeRO-0/ZeRO-2 floor.
    w = {s: load_inference(data_root / "results" / f"zero{s}" / "checkpoints" / "final.pt")[0].net.state_dict()
         for s in (0, 2, 3)}  # fmt: skip
    assert w[2].keys() == w[3].keys() and all(w[3][k].numel() == w[2][k].numel() > 0 for k in w[2])

    def gap(a: int, b: int) -> float:
        return max(float((w[a][k] - w[b][k]).abs().max()) for k in w[a])

    assert gap(2, 3) <= 2 * gap(0, 2) + 1e-7, (gap(2, 3), gap(0, 2))
    assert gap(2, 3) < 1e-3  # lr 1e-3: far below one step's update
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{data_root / 'results' / 'mlflow.db'}")
    val = {}
    for stage in (2, 3):
        runs = client.search_runs([client.get_experiment_by_name(f"zero{stage}").experiment_id])
        (run,) = [r for r in runs if r.data.tags.get("pipeline.stage") == "train"]
        val[stage] = {m: [(h.step, h.value) for h in client.get_metric_history(run.info.run_id, m)] for m in
                      ("val_loss", "val_loss_ema")}  # fmt: skip
    for m in ("val_loss", "val_loss_ema"):
        assert [s for s, _ in val[3][m]] == [s for s, _ in val[2][m]] == [4, 8, 12], m
        assert [v for _, v in val[3][m]] == pytest.approx([v for _, v in val[2][m]], rel=1e-4), m


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted(data_root: Path) -> None:
    ref = _trained(data_root, "uninterrupted")

    cfg, exp = _experiment(data_root, "interrupted")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "train", "--config", str(cfg)],
        cwd=data_root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    latest = exp / "checkpoints" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and latest.read_text().strip() == "step-00000004":
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its task processes: a hard kill
    proc.wait()
    subprocess.run(["pkill", "-9", "-f", f"{exp}/submitit"], check=False)
    assert not (exp / "checkpoints" / "final.pt").exists()

    r = pipeline_cli("train", "--config", str(cfg), cwd=data_root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from the last checkpoint" in r.stderr
    a, b = _losses(ref), _losses(exp)
    assert sorted(b) == list(range(1, 9))
    for s in range(5, 9):
        # fp32 on the CPU, same seeds and data order: equal to float round-off
        assert b[s] == pytest.approx(a[s], rel=1e-5, abs=1e-7), (s, a[s], b[s])

    # the resumed job continued the same MLflow run
    from mlflow.tracking import MlflowClient

    c = load_config([cfg])
    client = MlflowClient(tracking_uri=c.tracking_uri)
    exp_id = client.get_experiment_by_name(c.experiment).experiment_id
    train_runs = [r for r in client.search_runs([exp_id]) if r.data.tags.get("pipeline.stage") == "train"]
    assert len(train_runs) == 1
    steps = [m.step for m in client.get_metric_history(train_runs[0].info.run_id, "loss")]
    assert max(steps) == 8 and train_runs[0].info.status == "FINISHED"


@pytest.mark.slow
def test_inference_file_equals_engine_ema(data_root: Path) -> None:
    exp = _trained(data_root, "uninterrupted")
    model, meta = load_inference(exp / "checkpoints" / "final.pt")
    assert meta.step == 8 and meta.variables == ["z500"]
    states = torch.load(exp / "checkpoints" / "step-00000008" / "mp_rank_00_model_states.pt", weights_only=False)
    engine_ema = states["ema"]
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, engine_ema[k]), k
    # and the EMA differs from the raw weights the engine trained (it is an average, not a copy)
    raw = {k.removeprefix("diffusion.net."): v for k, v in states["module"].items() if k.startswith("diffusion.net.")}
    assert any(not torch.equal(raw[k].float(), engine_ema[k]) for k in engine_ema if k in raw)
    x = torch.randn(1, 1, 4, 14, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        v1 = model.net(x, torch.zeros(1), {"doy": torch.full((1, 4), 15.0)})
    assert torch.isfinite(v1).all() and v1.abs().sum() > 0


def test_checkpoints_survive_an_upgrade_that_adds_a_setting(tmp_path: Path) -> None:
    """prepare_checkpoint_dir resumes checkpoints made with the same settings and archives others; a setting added
    by an upgrade, at its default, is not "other settings" (a month of checkpoints must not be archived and trained
    afresh because the code learned a new key), neither in a stamp that holds the settings nor in an old stamp that
    holds only the hash of the settings of its day."""
    from pipeline.config import config_hash
    from pipeline.launch import _settings_tree, prepare_checkpoint_dir, training_settings

    cfg = load_config([_config(tmp_path, "stamp")])
    d = cfg.checkpoint_dir
    assert prepare_checkpoint_dir(cfg) is False  # nothing yet: a fresh directory, stamped
    (d / "latest").write_text("step-00000004")
    assert prepare_checkpoint_dir(cfg) is True  # same settings: resume
    stamp = json.loads((d / "settings.json").read_text())
    # a stamp written before train.zero3_persist_below existed (the key absent, today's default null)
    del stamp["settings"]["train.zero3_persist_below"]
    (d / "settings.json").write_text(json.dumps(stamp))
    assert prepare_checkpoint_dir(cfg) is True
    # an old stamp: only the hash, of the settings before diffusion.sigmoid_bias, train.zero3_persist_below and
    # train.shuffle_block
    added = frozenset({"diffusion.sigmoid_bias", "train.zero3_persist_below", "train.shuffle_block"})
    old = config_hash(_settings_tree(cfg, added))
    (d / "settings.json").write_text(json.dumps({"hash": old}))
    assert prepare_checkpoint_dir(cfg) is True
    assert json.loads((d / "settings.json").read_text())["settings"] == training_settings(cfg)  # stamp upgraded
    # a setting that changes training: archived, training starts afresh
    changed = load_config([_config(tmp_path, "stamp", train={"lr": 5e-4})])
    assert prepare_checkpoint_dir(changed) is False
    assert not (d / "latest").exists() and len(list(d.parent.glob("checkpoints.old-*"))) == 1
    # an old hash-only stamp whose added setting is not at its default any more: other settings too
    (d / "latest").write_text("step-00000004")
    moved = load_config([_config(tmp_path, "stamp", train={"lr": 5e-4, "shuffle_block": 4})])
    (d / "settings.json").write_text(
        json.dumps({"hash": config_hash(_settings_tree(moved, frozenset({"train.shuffle_block"})))})
    )
    time.sleep(1.1)  # the archive's name has seconds
    assert prepare_checkpoint_dir(moved) is False
