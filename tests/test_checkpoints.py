"""The checkpoint contract (pipeline.checkpoints): the retention rule that predicts the sweep's checkpoints is the
one that prunes them on disk, and names and paths come from one place."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import checkpoints
from pipeline.config import load_config
from tests.conftest import REPO


@pytest.mark.parametrize(
    ("steps", "every", "keep_last", "keep_every"), [(300, 100, 2, 0), (1000, 100, 2, 300), (95, 20, 1, 40)]
)
def test_pruning_leaves_exactly_the_checkpoints_the_config_predicts(
    tmp_path: Path, steps: int, every: int, keep_last: int, keep_every: int
) -> None:
    train = {"steps": steps, "checkpoint_every": every, "keep_last": keep_last, "keep_every": keep_every}
    cfg = load_config([str(REPO / "config" / "config.yaml"), {"results_dir": str(tmp_path), "train": train}])
    ckpt = cfg.checkpoint_dir
    for step in [*range(every, steps + 1, every), steps] if steps % every else range(every, steps + 1, every):
        name = checkpoints.tag(step)
        (ckpt / name).mkdir(parents=True, exist_ok=True)
        cfg.inference_file(name).parent.mkdir(parents=True, exist_ok=True)
        cfg.inference_file(name).write_bytes(b"x")
        (ckpt / "latest").write_text(name)
        checkpoints.prune(ckpt, keep_last, keep_every)  # as training does after each save
    left = sorted(p.name for p in ckpt.glob("step-*"))
    assert left == cfg.kept_checkpoints()
    assert sorted(p.stem for p in (ckpt / "inference").glob("*.pt")) == left
    assert checkpoints.step_of(left[-1]) == steps


def test_names_and_paths() -> None:
    assert checkpoints.tag(300) == "step-00000300" and checkpoints.step_of("step-00000300") == 300
    assert checkpoints.inference_path(Path("c"), "step-00000300") == Path("c/inference/step-00000300.pt")
    assert checkpoints.kept_steps([10, 20, 30, 40], keep_last=1, keep_every=20) == [20, 40]
