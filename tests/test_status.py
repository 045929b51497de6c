"""`python -m pipeline status`: each stage's state read from the experiment's files (and the process or SLURM
job recorded for training), on a results folder built up step by step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.atomic import temporary
from tests.conftest import REPO, pipeline_cli


def _states(out: str) -> dict[str, str]:
    """The stage table (the lines after the header, up to the SLURM section: a cluster that answers lists this
    user's jobs below it, e.g. the cluster tests' jobs)."""
    table = out.split("\nSLURM", 1)[0]
    rows = [ln.split() for ln in table.splitlines() if ln.startswith("  ") and len(ln.split()) >= 2]
    return {r[0]: r[1] for r in rows}


@pytest.mark.slow
def test_status_follows_the_experiment_files(tmp_path: Path) -> None:
    c = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    c["results_dir"] = str(tmp_path / "results")
    c["tracking"]["enabled"] = False
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(c))
    exp = tmp_path / "results" / c["experiment"]

    def status() -> tuple[dict[str, str], str]:
        r = pipeline_cli("status", "-c", "c.yaml", cwd=tmp_path, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        return _states(r.stdout), r.stdout

    states, _ = status()
    stages = {"prepare", "normalise", "train", "references", "evaluate-val", "select-points", "evaluate-test"}
    assert set(states) == stages | {"collect-eval", "sample"}
    assert set(states.values()) == {"missing"}
    (exp / "data" / "regridded.zarr").mkdir(parents=True)
    temporary(exp / "data" / "stats.json").write_text("{}")  # normalise writing its output, by the real writer
    (exp / "train_log.jsonl").write_text(json.dumps({"step": 120, "loss": 0.25}) + "\n")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (exp / "train_job.json").write_text(json.dumps({"job_id": str(sleeper.pid), "executor": "local"}))
        states, out = status()
        assert states["prepare"] == "done" and states["normalise"] == "running", out
        assert states["train"] == "running" and "step 120 of 300, loss 0.25" in out, out
    finally:
        sleeper.kill()
        sleeper.wait()
    states, out = status()
    assert states["train"] == "stopped" and "rerun the stage to resume" in out, out
    points = [(ck, s, n) for ck in ("step-00000200", "step-00000300") for s in ("ddim", "dpmpp_2m") for n in (10, 25)]
    for ck, s, n in points[:3]:
        (exp / "eval" / "val" / ck).mkdir(parents=True, exist_ok=True)
        (exp / "eval" / "val" / ck / f"{s}-{n}.json").write_text("{}")
    states, out = status()
    assert states["evaluate-val"] == "partial" and "3 of 8 sweep points scored" in out, out
    assert states["evaluate-test"] == "missing" and "no point chosen on validation yet" in out, out
    chosen = {"checkpoint": "step-00000300", "sampler": "ddim", "steps": 10, "guidance_weight": 2.0, "cfg_scale": 1.0}
    test_points = [["step-00000300", "ddim", 10], ["step-00000300", "dpmpp_2m", 10]]
    (exp / "eval" / "selection.json").write_text(json.dumps({"chosen": chosen, "test_points": test_points}))
    (exp / "eval" / "test" / "step-00000300").mkdir(parents=True)
    (exp / "eval" / "test" / "step-00000300" / "ddim-10.json").write_text("{}")
    states, out = status()
    assert states["select-points"] == "done" and "chosen on validation: step-00000300 ddim-10 w=2" in out, out
    assert states["evaluate-test"] == "partial" and "1 of 2 chosen points scored" in out, out
    (exp / "eval" / "best.json").write_text(json.dumps({"statement": "X does not beat climatology (CRPSS 0.01)"}))
    states, out = status()
    assert states["collect-eval"] == "done" and "does not beat climatology" in out, out


def test_status_lists_distill_and_response_where_the_experiment_has_them(tmp_path: Path) -> None:
    from pipeline.config import load_config
    from pipeline.status import experiment_status

    table = tmp_path / "co2.csv"
    table.write_text("year,hist\n1900,300\n2100,400\n")
    base = str(REPO / "config" / "config.yaml")
    plain = load_config([base, {"results_dir": str(tmp_path / "r")}])
    assert not {"distill", "response"} & {s.stage for s in experiment_status(plain)}
    forcings = [{"name": "co2", "table": str(table), "scenario": "hist"}]
    cfg = load_config([base, {"results_dir": str(tmp_path / "r"), "distill": {"enabled": True},
                              "data": {"forcings": forcings}}])  # fmt: skip
    states = {s.stage: s.state for s in experiment_status(cfg)}
    assert states["distill"] == "missing" and states["response"] == "missing"
    cfg.response_dir.mkdir(parents=True)
    (cfg.response_dir / "response.json").write_text("{}")
    assert {s.stage: s.state for s in experiment_status(cfg)}["response"] == "done"
