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


def test_the_name_patterns_match_the_names_and_read_as_snakemake_wildcard_constraints() -> None:
    """The workflow's wildcards take TAG_PATTERN and STUDENT_PATTERN: they match what tag() and student_name() make
    (longer numbers too) and nothing else, and hold no ``{m,n}`` quantifier, which Snakemake reads as a wildcard."""
    import re

    from snakemake.io import regex_from_filepattern

    for pattern, good, bad in (
        (checkpoints.TAG_PATTERN, [checkpoints.tag(300), checkpoints.tag(123456789)], ["step-300", "student-0004"]),
        (checkpoints.STUDENT_PATTERN, [checkpoints.student_name(4), checkpoints.student_name(32768)], ["student-4"]),
    ):
        assert all(re.fullmatch(pattern, g) for g in good) and not any(re.fullmatch(pattern, b) for b in bad)
        rx = re.compile(regex_from_filepattern(f"eval/{{c,{pattern}}}/x.json"))
        assert all(rx.fullmatch(f"eval/{g}/x.json") for g in good), pattern


def test_the_inference_file_is_written_and_read_as_one_typed_object(tmp_path) -> None:
    import torch

    from pipeline.checkpoints import Inference, build_diffusion, load_inference

    model_cfg = {
        "channels": 1,
        "base_channels": 4,
        "channel_mults": [1],
        "attention_levels": [],
        "heads": 1,
        "day_of_year": True,
    }
    diffusion = {"logsnr_min": -20.0, "logsnr_max": 20.0, "weighting": "v"}
    net = build_diffusion(model_cfg, diffusion).net
    meta = Inference(
        model_cfg,
        diffusion,
        ["z500"],
        "/x/stats.json",
        40,
        4,
        config='{"train": {"cond_drop": 0.2}}',
        extra={"distilled_steps": 4, "teacher": "/x/final.pt"},
    )
    blob = meta.blob(net.state_dict())
    assert blob["distilled_steps"] == 4 and "extra" not in blob  # the file's keys stay flat (older readers, torch)
    path = tmp_path / "m.pt"
    torch.save(blob, path)
    model, back = load_inference(path)
    assert back == meta and back.day_of_year and back.distilled_steps == 4
    assert back.training_setting("train", "cond_drop", 0.0) == 0.2
    assert back.training_setting("train", "context_probability", 0.0) == 0.0
    assert all(
        torch.equal(a, b) for a, b in zip(model.net.state_dict().values(), net.state_dict().values(), strict=True)
    )
    del blob["clip_frames"]
    torch.save(blob, path)
    with pytest.raises(ValueError, match=r"m\.pt: not an inference file of this pipeline: no \['clip_frames'\]"):
        load_inference(path)


def test_the_weighting_settings_reach_the_objective() -> None:
    """diffusion.sigmoid_bias and diffusion.min_snr_gamma of the config are the objective's, not its defaults."""
    import torch

    from pipeline.checkpoints import build_diffusion
    from pipeline.config import load_config
    from pipeline.diffusion.objective import loss_weight

    cfg = load_config(
        ["config/config.yaml", {"diffusion": {"weighting": "sigmoid", "sigmoid_bias": -2.0, "min_snr_gamma": 3.0}}]
    )
    model_cfg = {"channels": 1, "base_channels": 4, "channel_mults": [1], "attention_levels": [], "heads": 1}
    d = build_diffusion(model_cfg, cfg.diffusion.model_dump())
    assert (d.sigmoid_bias, d.min_snr_gamma) == (-2.0, 3.0)
    logsnr, slope = torch.tensor([-2.0, 0.0, 4.0]), torch.tensor([-1.0, -1.0, -1.0])
    w = loss_weight(logsnr, slope, "sigmoid", d.sigmoid_bias)
    assert not torch.allclose(w, loss_weight(logsnr, slope, "sigmoid", 0.0))
