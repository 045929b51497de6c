"""The command line hands each stage its flags as plain options (pipeline.stages.StageOptions)."""

from __future__ import annotations

import dataclasses

from pipeline.cli import _options, build_parser
from pipeline.stages import StageOptions


def _opts(*argv: str) -> StageOptions:
    return _options(build_parser().parse_args(list(argv)))


def test_each_stage_gets_its_flags_and_the_defaults_for_the_rest() -> None:
    assert _opts("evaluate", "-c", "x.yaml") == StageOptions()
    point = _opts("evaluate", "-c", "x.yaml", "--checkpoint", "step-00000300", "--sampler", "ddim", "--steps", "5",
                  "--split", "test", "--force")  # fmt: skip
    assert point == StageOptions(checkpoint="step-00000300", sampler="ddim", steps=5, split="test", force=True)
    assert _opts("prepare", "-c", "x.yaml", "--part", "2") == StageOptions(part=2)
    assert _opts("normalise", "-c", "x.yaml", "--finalise") == StageOptions(finalise=True)
    assert _opts("collect-eval", "-c", "x.yaml", "--with-students") == StageOptions(with_students=True)


def test_every_stage_option_is_a_flag_of_some_stage() -> None:
    """No option the command line could never set: each field of StageOptions is a flag of a stage's parser."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")  # argparse keeps the sub-parsers here
    flags = {a.dest for p in sub.choices.values() for a in p._actions}
    assert {f.name for f in dataclasses.fields(StageOptions)} <= flags
