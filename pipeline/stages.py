"""Running a stage: what ``python -m pipeline <stage>`` does once the command line is parsed, with each stage's way
of running it: in this process inside an MLflow run (prepare, normalise, select-points, collect-eval, sample), or
launched by submitit as jobs that open their own runs (train, distill, the sweep's points; sample with
``sample.processes`` > 1), or one step of a build in parts (no run). The command line lives in :mod:`pipeline.cli`;
``run_stage`` takes plain options, so a script or a notebook runs a stage as the CLI does."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Config, ConfigError

__all__ = ["IN_PARTS", "StageOptions", "run_stage"]

log = logging.getLogger("pipeline")

# stages built in data.parts parts: --init, --part N, --finalise (pipeline.data.parts)
IN_PARTS = ("prepare", "normalise")


@dataclass(frozen=True)
class StageOptions:
    """The command line's options of a stage (each is the flag of the same name; None / False: not given)."""

    init: bool = False  # prepare, normalise: only start the build
    part: int | None = None  # ... only part N
    finalise: bool = False  # ... only finish the build
    with_students: bool = False  # select-points, collect-eval: with the distilled students
    checkpoint: str | None = None  # evaluate: one point (all three, or none: the sweep)
    sampler: str | None = None
    steps: int | None = None
    split: str = "val"
    force: bool = False  # evaluate: rerun points that have a result


def _stage_fn(name: str, opts: StageOptions) -> Callable[[Config, object], Path]:
    if name == "prepare":
        from pipeline.prepare import finalise_prepare, run_prepare

        return finalise_prepare if opts.finalise else run_prepare
    if name == "normalise":
        from pipeline.normalise import finalise_normalise, run_normalise

        return finalise_normalise if opts.finalise else run_normalise
    if name in ("select-points", "collect-eval"):
        from pipeline.collect import collect, select

        fn = select if name == "select-points" else collect
        # with the distilled students: the sweep and the students, under eval/distilled/
        return lambda cfg, run: fn(cfg, run, students=opts.with_students)
    if name == "sample":
        from pipeline.sample import run_sample

        return run_sample
    if name == "response":
        from pipeline.scenarios import run_response

        return run_response
    msg = f"unknown stage {name!r}"
    raise ValueError(msg)


def _evaluate(cfg: Config, config_paths: Sequence[str], opts: StageOptions) -> None:
    from pipeline.evaluate import evaluate_point, missing_points, references_path

    point = (opts.checkpoint, opts.sampler, opts.steps)
    if all(v is not None for v in point):
        evaluate_point(cfg, *point, split=opts.split)
        return
    if any(v is not None for v in point):
        msg = "evaluate: give all of --checkpoint, --sampler and --steps (one point) or none of them (the sweep)"
        raise ConfigError(msg)
    from pipeline.launch import launch_array

    cfg.eval_checkpoints()  # an unknown checkpoint step is a config error before anything is submitted
    todo = missing_points(cfg, force=opts.force, students=cfg.distill.enabled)
    todo = [p for p in todo if p[1] != "distilled" or cfg.inference_file(p[0]).exists()]  # students distilled so far
    if not cfg.final_checkpoint.exists():
        msg = f"evaluate: {cfg.final_checkpoint} does not exist: train first (python -m pipeline train)"
        raise ConfigError(msg)
    if not all(references_path(cfg, s).exists() for s in ("val", "test")):  # every point is measured against them
        from pipeline.references import run_references

        log.info("evaluate: scoring the reference forecasts first -> %s", run_references(cfg))
    log.info("evaluate: %d sweep point(s) to run on validation: %s", len(todo), [f"{c}/{s}-{n}" for c, s, n in todo])
    launch_array(cfg, config_paths, "pipeline.evaluate:evaluate_point", todo, "evaluate")
    _choose_and_test(cfg, config_paths, opts.force)


def _choose_and_test(cfg: Config, config_paths: Sequence[str], force: bool) -> None:
    """After the validation points: the choice (and, with every distilled student made, the students' choice),
    then the chosen points missing on the test clips as one array."""
    from pipeline.collect import select
    from pipeline.evaluate import missing_points
    from pipeline.launch import launch_array
    from pipeline.tracking import RunTarget, stage_run

    students = cfg.distill.enabled and all(cfg.inference_file(p[0]).exists() for p in cfg.student_points())
    todo: list[tuple[str, str, int]] = []
    for with_students in [False, True][: 1 + students]:
        with stage_run(RunTarget.of(cfg), "select-points") as run:
            log.info("evaluate: chosen on validation -> %s", select(cfg, run, students=with_students))
        todo += [p for p in missing_points(cfg, force, with_students, "test") if p not in todo]
    log.info("evaluate: %d point(s) to run on test: %s", len(todo), [f"{c}/{s}-{n}" for c, s, n in todo])
    launch_array(cfg, config_paths, "pipeline.evaluate:evaluate_point", [(*p, "test") for p in todo], "evaluate")


def _distill(cfg: Config, config_paths: Sequence[str], t0: float) -> None:
    from pipeline.distill import prepare_distill_dir, write_students_index
    from pipeline.launch import launch

    todo = prepare_distill_dir(cfg)  # a missing teacher is a config error before anything is submitted
    if todo:
        launch(cfg, config_paths, "pipeline.distill:run_distillation", "distill")
    log.info("distill finished in %.1f s -> %s", time.perf_counter() - t0, write_students_index(cfg))


def _build_step(name: str, cfg: Config, opts: StageOptions) -> None:
    if name == "prepare":
        from pipeline.prepare import init_prepare as init
        from pipeline.prepare import prepare_part as part
    else:
        from pipeline.normalise import init_normalise as init
        from pipeline.normalise import normalise_part as part
    log.info("%s -> %s", name, init(cfg) if opts.init else part(cfg, opts.part))


def run_stage(name: str, cfg: Config, config_paths: Sequence[str], opts: StageOptions) -> None:
    from pipeline.tracking import RunTarget, check_login, stage_run

    t0 = time.perf_counter()
    config_paths = [str(Path(p).resolve()) for p in config_paths]  # the jobs run in other processes
    if not (name in IN_PARTS and (opts.init or opts.part is not None)):  # a build step opens no MLflow run
        check_login(RunTarget.of(cfg))  # a server refusing the login fails the stage here, before work or jobs
    if name == "train":
        from pipeline.launch import launch, prepare_checkpoint_dir

        resuming = prepare_checkpoint_dir(cfg)
        log.info("train: %s", "resuming from the last checkpoint" if resuming else "starting afresh")
        results = launch(cfg, config_paths, "pipeline.train:run_training", "train")
        log.info(
            "train finished in %.1f s at step %d -> %s",
            time.perf_counter() - t0,
            results[0]["step"],
            cfg.final_checkpoint,
        )
        return
    if name == "distill":  # one MLflow run for every round, opened by the stage in the job
        _distill(cfg, config_paths, t0)
        return
    if name == "references":  # one MLflow run per reference, opened by the stage
        from pipeline.references import run_references

        log.info("references finished in %.1f s -> %s", time.perf_counter() - t0, run_references(cfg))
        return
    if name == "evaluate":
        _evaluate(cfg, config_paths, opts)
        log.info("evaluate finished in %.1f s", time.perf_counter() - t0)
        return
    if name in IN_PARTS and (opts.init or opts.part is not None):  # one step of a build in parts: no MLflow run
        _build_step(name, cfg, opts)
        log.info("%s finished in %.1f s", name, time.perf_counter() - t0)
        return
    if name == "sample" and cfg.sample.processes > 1:
        from pipeline.launch import launch

        out = launch(cfg, config_paths, "pipeline.sample:sample_task", "sample", processes=cfg.sample.processes)[0]
        log.info("sample finished in %.1f s -> %s", time.perf_counter() - t0, out)
        return
    with stage_run(RunTarget.of(cfg, system_metrics=name == "sample"), name) as run:
        out = _stage_fn(name, opts)(cfg, run)
    log.info("%s finished in %.1f s -> %s", name, time.perf_counter() - t0, out)
