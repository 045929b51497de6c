"""Progressive distillation: the two-step DDIM target against a Gaussian oracle, a one-step student trained on it
against its teacher's two-step sampler, the config's checks, and (slow) the stage on the bundled data: round
inference files, resume after a kill without redoing finished rounds, the MLflow run, the students' sweep points."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch import Tensor, nn

from pipeline import checkpoints
from pipeline.config import ConfigError, load_config, merge, read_yaml
from pipeline.diffusion.distillation import distillation_loss, student_times, two_step_target
from pipeline.diffusion.objective import Prediction, VDiffusion
from pipeline.diffusion.samplers import ddim_step, sample_ddim
from pipeline.diffusion.schedule import CosineSchedule
from tests.conftest import REPO, pipeline_cli
from tests.toys import GaussianDenoiser

MEAN, STD = 0.7, 0.4


def _ab(logsnr: float) -> tuple[float, float]:
    return math.sqrt(1 / (1 + math.exp(-logsnr))), math.sqrt(1 / (1 + math.exp(logsnr)))


def _ddim_by_hand(z: float, lt: float, ls: float) -> float:
    """One deterministic DDIM step of the exact Gaussian denoiser, written out in plain floats."""
    at, st = _ab(lt)
    as_, ss = _ab(ls)
    x = MEAN + at * STD**2 / (at**2 * STD**2 + st**2) * (z - at * MEAN)
    return as_ * x + ss * (z - at * x) / st


@pytest.mark.parametrize(("t", "steps"), [(1.0, 1), (0.75, 4), (0.25, 4), (0.5, 8), (0.125, 8)])
def test_two_step_target_lands_where_two_teacher_ddim_steps_do(t: float, steps: int) -> None:
    sched = CosineSchedule(-20.0, 20.0)
    teacher = GaussianDenoiser(MEAN, STD, sched)
    z = torch.tensor([-1.3, 0.2, 2.1], dtype=torch.float64)
    tt = torch.full((3,), t, dtype=torch.float64)
    x_t, v_t = two_step_target(teacher, z, tt, steps)
    lt, lm, ls = (float(sched(torch.tensor(s, dtype=torch.float64))) for s in (t, t - 0.5 / steps, t - 1 / steps))
    for k in range(3):
        two = _ddim_by_hand(_ddim_by_hand(float(z[k]), lt, lm), lm, ls)  # the teacher's two steps, by hand
        at, st = _ab(lt)
        as_, ss = _ab(ls)
        one = as_ * float(x_t[k]) + ss * (float(z[k]) - at * float(x_t[k])) / st  # one DDIM step with x = x~
        assert one == pytest.approx(two, rel=1e-9, abs=1e-9)
        assert float(x_t[k]) == pytest.approx(at * float(z[k]) - st * float(v_t[k]), rel=1e-9, abs=1e-9)
    # and the library's own DDIM step with the student's v~ reaches the same point
    a, s = (torch.tensor(c, dtype=torch.float64).expand(3) for c in _ab(lt))
    pred = Prediction(v=v_t, x=a * z - s * v_t, eps=s * z + a * v_t)
    lt_, ls_ = torch.full((3,), lt, dtype=torch.float64), torch.full((3,), ls, dtype=torch.float64)
    reached = ddim_step(z, pred, lt_, ls_, 0.0, None)
    by_hand = torch.tensor([_ddim_by_hand(_ddim_by_hand(float(v), lt, lm), lm, ls) for v in z], dtype=torch.float64)
    assert torch.allclose(reached, by_hand, rtol=1e-9, atol=1e-9)


def test_student_times_are_the_students_grid() -> None:
    u = torch.linspace(0, 0.999, 1000)
    t = student_times(u, 4)
    assert sorted(set(t.tolist())) == [0.25, 0.5, 0.75, 1.0]
    assert all((t == v).sum() == 250 for v in (0.25, 0.5, 0.75, 1.0))  # uniform over i = 1..N


class _Affine(nn.Module):
    """``v = a z + b`` (per noise level the student is asked about: one level for a one-step student)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.b = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, z: Tensor, logsnr: Tensor, cond: object = None) -> Tensor:
        return self.a * z + self.b


@pytest.mark.slow
def test_one_step_student_matches_the_teachers_two_step_sampler() -> None:
    sched = CosineSchedule(-20.0, 20.0)
    teacher = GaussianDenoiser(MEAN, STD, sched)
    student = VDiffusion(_Affine(), sched)
    opt = torch.optim.Adam(student.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    for _ in range(600):
        x = MEAN + STD * torch.randn(256, 1, dtype=torch.float64, generator=g)
        eps = torch.randn(256, 1, dtype=torch.float64, generator=g)
        t = student_times(torch.rand(256, generator=g), 1)
        loss = distillation_loss(student, teacher, x, None, t=t, eps=eps, steps=1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    z = torch.randn(2000, 1, dtype=torch.float64, generator=g)
    with torch.no_grad():
        one = sample_ddim(student, z, 1)
    two = sample_ddim(teacher, z, 2)
    assert float(loss.detach()) < 1e-8
    assert torch.allclose(one, two, rtol=1e-4, atol=1e-4)
    # the task is not trivial: the teacher's own one-step sampler is far from its two-step one
    assert (sample_ddim(teacher, z, 1) - two).abs().max() > 0.05


# -- config ---------------------------------------------------------------------------------------------------------

BASE = str(REPO / "config" / "config.yaml")


def _errors(distill: dict) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config([BASE, {"distill": distill}])
    return [ln.strip() for ln in str(e.value).splitlines()[1:]]


def test_config_reports_every_bad_value_with_its_key() -> None:
    lines = _errors({"start_steps": 48, "final_steps": 3, "checkpoint": "step-3", "steps_per_round": 0, "lr": 0})
    assert lines == [
        "- distill.checkpoint = 'step-3': must be 'best', 'last' or a checkpoint tag like 'step-00000300'",
        "- distill.start_steps = 48: must be a power of two (1, 2, 4, 8, ...)",
        "- distill.final_steps = 3: must be a power of two (1, 2, 4, 8, ...)",
        "- distill.steps_per_round = 0: must be >= 1",
        "- distill.lr = 0: must be > 0",
    ]
    (line,) = _errors({"start_steps": 8, "final_steps": 8})
    assert (
        line == "- distill.final_steps = 8: must be smaller than distill.start_steps (8): each round halves the steps"
    )


def test_rounds_and_student_points() -> None:
    cfg = load_config([BASE, {"distill": {"start_steps": 64, "final_steps": 4}}])
    assert cfg.distill.rounds == [32, 16, 8, 4]
    assert cfg.student_points() == []  # distill.enabled is false by default: the sweep is unchanged
    on = load_config([BASE, {"distill": {"enabled": True, "start_steps": 8, "final_steps": 2}}])
    assert on.student_points() == [("student-0004", "distilled", 4), ("student-0002", "distilled", 2)]
    assert on.inference_file("student-0004") == checkpoints.student_path(on.distill_dir, 4)
    assert on.inference_file("student-0004") == on.exp_dir / "distill" / "round-0004" / "student.pt"
    assert on.inference_file("step-00000300") == checkpoints.inference_path(on.checkpoint_dir, "step-00000300")


# -- the stage on the bundled data (config/experiments/ci.yaml with a tiny network) ---------------------------------

TINY = {
    "model": {"base_channels": 8, "channel_mults": [1, 2], "attention_levels": [1], "heads": 2},
    "train": {
        "clip_frames": 4,
        "micro_batch": 2,
        "steps": 4,
        "warmup_steps": 1,
        "log_every": 1,
        "val_every": 4,
        "checkpoint_every": 4,
        "val_clips": 1,
        "num_workers": 0,
        "zero_stage": 2,
    },
    "launch": {"tasks_per_node": 1, "cpus_per_task": 1},
    "tracking": {"system_metrics": None},
    "evaluate": {
        "test_clips": 2,
        "ensemble": 2,
        "guidance_weights": [0.0],
        "climate": {"members": 2, "frames": 4, "unconditional": 2},
    },
    "distill": {
        "enabled": True,
        "checkpoint": "last",
        "start_steps": 4,
        "final_steps": 1,
        "steps_per_round": 6,
        "checkpoint_every": 2,
        "warmup_steps": 1,
        "lr": 1e-3,
    },
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The CI experiment, tiny, prepared, normalised and trained once (4 steps, one process)."""
    tmp = tmp_path_factory.mktemp("distill")
    c = merge(read_yaml(REPO / "config" / "config.yaml"), read_yaml(REPO / "config" / "experiments" / "ci.yaml"))
    c = merge(c, {"results_dir": str(tmp / "results"), **TINY})
    (tmp / "ci.yaml").write_text(yaml.safe_dump(c))
    for stage in ("prepare", "normalise", "train"):
        r = pipeline_cli(stage, "--config", "ci.yaml", cwd=tmp)
        assert r.returncode == 0, r.stderr[-3000:]
    return tmp


@pytest.fixture
def students(trained: Path) -> Path:
    """``trained`` with both rounds' students: those the kill-and-resume test (first in this module) made, or, when
    it did not run, an uninterrupted ``pipeline distill``."""
    cfg = load_config([trained / "ci.yaml"])
    if not checkpoints.students_index(cfg.distill_dir).exists():
        r = pipeline_cli("distill", "--config", "ci.yaml", cwd=trained)
        assert r.returncode == 0, r.stderr[-3000:]
    return trained


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_distill_rounds_resume_after_a_kill_and_log_to_mlflow(trained: Path) -> None:
    cfg = load_config([trained / "ci.yaml"])
    d = cfg.distill_dir
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "distill", "--config", "ci.yaml"],
        cwd=trained,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    latest = checkpoints.student_round_dir(d, 1) / "latest"  # the second round's first checkpoint
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None and not latest.exists():
        time.sleep(0.05)
    assert proc.poll() is None, "distillation finished (or failed) before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    subprocess.run(["pkill", "-9", "-f", f"{cfg.exp_dir.resolve()}/submitit"], check=False)
    first = checkpoints.student_path(d, 2)
    assert first.exists() and not checkpoints.student_path(d, 1).exists()
    first_digest = _digest(first)
    first_log = (checkpoints.student_round_dir(d, 2) / "log.jsonl").read_text()
    killed_at = checkpoints.step_of(latest.read_text().strip())

    r = pipeline_cli("distill", "--config", "ci.yaml", cwd=trained)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rounds done [2], to run [1]" in r.stderr
    # the finished round was not redone; the interrupted one resumed from its checkpoint
    assert _digest(first) == first_digest
    assert (checkpoints.student_round_dir(d, 2) / "log.jsonl").read_text() == first_log
    steps = [
        json.loads(ln)["step"] for ln in (checkpoints.student_round_dir(d, 1) / "log.jsonl").read_text().splitlines()
    ]
    resumed = steps[steps.index(killed_at) + 1 :] if killed_at in steps else steps
    assert resumed[0] == killed_at + 1 and steps[-1] == cfg.distill.steps_per_round

    # each round's student is an inference file: the teacher's network with other weights, loadable as any checkpoint
    teacher, teacher_meta = checkpoints.load_inference(cfg.final_checkpoint)
    for n in (2, 1):
        model, meta = checkpoints.load_inference(checkpoints.student_path(d, n))
        assert meta.distilled_steps == n and meta.step == cfg.distill.steps_per_round
        assert meta.model_config == teacher_meta.model_config
        pairs = zip(model.net.state_dict().values(), teacher.net.state_dict().values(), strict=True)
        assert any(not torch.equal(a, b) for a, b in pairs)
    # a third call finds everything done and launches nothing
    r = pipeline_cli("distill", "--config", "ci.yaml", cwd=trained)
    assert r.returncode == 0 and "to run []" in r.stderr

    # one MLflow run for all rounds, with train's metric names, steps following one another
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=cfg.tracking_uri)
    exp_id = client.get_experiment_by_name(cfg.experiment).experiment_id
    runs = [r for r in client.search_runs([exp_id]) if r.data.tags.get("pipeline.stage") == "distill"]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    loss_steps = sorted({m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")})
    assert loss_steps == list(range(1, 2 * cfg.distill.steps_per_round + 1))
    assert {"val_loss", "val_loss_ema", "lr"} <= set(runs[0].data.metrics)


@pytest.mark.slow
def test_a_student_is_a_sweep_point(students: Path) -> None:
    trained = students
    cfg = load_config([trained / "ci.yaml"])
    r = pipeline_cli(
        "evaluate",
        "-c",
        "ci.yaml",
        "--checkpoint",
        "student-0001",
        "--sampler",
        "distilled",
        "--steps",
        "1",
        cwd=trained,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    point = json.loads((cfg.eval_dir / "val" / "student-0001" / "distilled-1.json").read_text())
    assert point["sampler"] == "distilled" and point["steps"] == 1 and point["split"] == "val"
    assert point["checkpoint_step"] == cfg.distill.steps_per_round
    crps = point["results"][0]["variables"]["z500"]["crps"]
    assert math.isfinite(crps) and crps > 0


@pytest.mark.slow
def test_students_join_the_sweep_and_a_collection_of_their_own(students: Path) -> None:
    import pandas as pd
    from mlflow.tracking import MlflowClient

    trained = students
    cfg = load_config([trained / "ci.yaml"])
    c = yaml.safe_load((trained / "ci.yaml").read_text())
    c["evaluate"].update({"checkpoints": "last", "samplers": ["ddim"], "steps": [2]})
    (trained / "sweep.yaml").write_text(yaml.safe_dump(c))
    # the sweep by hand: references, every point on validation, the choices (the teachers', with the students),
    # their points on test
    r = pipeline_cli("evaluate", "-c", "sweep.yaml", cwd=trained)
    assert r.returncode == 0, r.stderr[-3000:]
    for point in ("step-00000004/ddim-2", "student-0002/distilled-2", "student-0001/distilled-1"):
        assert (cfg.eval_dir / "val" / f"{point}.json").exists(), point
    for selection in (cfg.eval_selection(), cfg.eval_selection(students=True)):
        chosen = json.loads(selection.read_text())["test_points"]
        assert all((cfg.eval_dir / "test" / c / f"{s}-{n}.json").exists() for c, s, n in chosen), chosen
    for extra in ([], ["--with-students"]):
        r = pipeline_cli("collect-eval", "-c", "sweep.yaml", *extra, cwd=trained)
        assert r.returncode == 0, r.stderr[-3000:]
    teachers = pd.read_csv(cfg.eval_dir / "summary.csv")
    both = pd.read_csv(cfg.eval_dir / "distilled" / "summary.csv")
    assert set(teachers["sampler"]) == {"ddim", "reference"}  # eval/best.json and its table stay the teachers'
    assert set(both["sampler"]) == {"ddim", "distilled", "reference"}
    assert list(both.columns) == list(teachers.columns)  # the same metrics, scored by the same code
    students = both[(both["sampler"] == "distilled") & (both["split"] == "val")]
    assert sorted(students["steps"]) == [1, 2] and set(students["checkpoint"]) == {"student-0001", "student-0002"}
    assert ((students["crps_lo"] <= students["crps"]) & (students["crps"] <= students["crps_hi"])).all()
    best = json.loads((cfg.eval_dir / "distilled" / "best.json").read_text())
    assert Path(best["file"]).exists() and (cfg.eval_dir / "distilled" / "scorecard.png").exists()

    # the students' MLflow runs carry the teachers' metric names
    client = MlflowClient(tracking_uri=cfg.tracking_uri)
    exp_id = client.get_experiment_by_name(cfg.experiment).experiment_id
    runs = [r for r in client.search_runs([exp_id]) if r.data.tags.get("pipeline.stage") == "evaluate"]
    by_point = {r.data.tags["sweep_point"]: set(r.data.metrics) for r in runs}
    assert by_point["student-0001/distilled-1"] == by_point["step-00000004/ddim-2"]
