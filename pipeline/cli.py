"""``python -m pipeline <stage> --config FILE [--config OVERRIDE ...]``: one entry per stage."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.config import SAMPLER_NAMES, Config, ConfigError, load_config
from pipeline.data.coords import DataError
from pipeline.tracking import TrackingError

__all__ = ["main"]

log = logging.getLogger("pipeline")

STAGES: dict[str, str] = {
    "prepare": "open the raw files, select variables and levels, regrid, write regridded.zarr (in data.parts parts: "
    "with --init, --part N or --finalise one step of them, else all in this process)",
    "normalise": "area-weighted training statistics, write normalised.zarr and stats.json (in data.parts parts, "
    "like prepare)",
    "train": "DeepSpeed training launched by submitit (SLURM or local processes); resumes from checkpoints",
    "references": "climatological ensemble, climatological mean and persistence scored on the evaluation's validation "
    "and test clips, one MLflow run each -> eval/val/references.json, eval/test/references.json",
    "evaluate": "the sweep's missing points as submitit job arrays (SLURM or local processes): every point on the "
    "validation clips, the choice (select-points), the chosen points on the test clips; or with "
    "--checkpoint/--sampler/--steps [--split] one point in this process -> "
    "eval/<split>/<checkpoint>/<sampler>-<steps>.json",
    "select-points": "choose the best point on the validation clips (never reading a test score) -> "
    "eval/selection.json: the choice, its runners-up and the points to score on the test clips",
    "collect-eval": "the chosen point reported on the test clips: the table (validation and test rows, reference "
    "rows, skill and bootstrap intervals; CSV, parquet), summary plot, scorecard and best.json (chosen on "
    "validation; test scores, and whether it beats climatology and persistence)",
    "sample": "unconditional clips and long rollouts from the best checkpoint: CF zarr, GIFs, maps, spectra "
    "(split across sample.processes processes launched by submitit when > 1)",
    "distill": "progressive distillation of distill.checkpoint, halving the DDIM steps each round (DeepSpeed, "
    "launched like train) -> distill/round-NNNN/student.pt; finished rounds are kept, an interrupted one resumes",
}


def _stage_fn(name: str, args: argparse.Namespace) -> Callable[[Config, object], Path]:
    if name == "prepare":
        from pipeline.prepare import finalise_prepare, run_prepare

        return finalise_prepare if args.finalise else run_prepare
    if name == "normalise":
        from pipeline.normalise import finalise_normalise, run_normalise

        return finalise_normalise if args.finalise else run_normalise
    if name in ("select-points", "collect-eval"):
        from pipeline.collect import collect, select

        fn = select if name == "select-points" else collect
        # with the distilled students: the sweep and the students, under eval/distilled/
        return lambda cfg, run: fn(cfg, run, students=args.with_students)
    if name == "sample":
        from pipeline.sample import run_sample

        return run_sample
    msg = f"unknown stage {name!r}"
    raise ValueError(msg)


def _check_config(cfg: Config) -> None:
    from pipeline.prepare import check_data

    ds, paths, target = check_data(cfg)
    print(
        f"config OK: experiment {cfg.experiment!r}, {len(paths)} input file(s), variables "
        f"{list(ds.data_vars)}, {ds.sizes.get('time', 0)} time steps -> target grid "
        f"{target.sizes['latitude']} x {target.sizes['longitude']} at {cfg.data.grid.resolution} deg"
    )


def _evaluate(cfg: Config, config_paths: Sequence[str], args: argparse.Namespace) -> None:
    from pipeline.evaluate import evaluate_point, missing_points, references_path

    point = (args.checkpoint, args.sampler, args.steps)
    if all(v is not None for v in point):
        evaluate_point(cfg, *point, split=args.split)
        return
    if any(v is not None for v in point):
        msg = "evaluate: give all of --checkpoint, --sampler and --steps (one point) or none of them (the sweep)"
        raise ConfigError(msg)
    from pipeline.launch import launch_array

    cfg.eval_checkpoints()  # an unknown checkpoint step is a config error before anything is submitted
    todo = missing_points(cfg, force=args.force, students=cfg.distill.enabled)
    todo = [p for p in todo if p[1] != "distilled" or cfg.inference_file(p[0]).exists()]  # students distilled so far
    if not cfg.final_checkpoint.exists():
        msg = f"evaluate: {cfg.final_checkpoint} does not exist: train first (python -m pipeline train)"
        raise ConfigError(msg)
    if not all(references_path(cfg, s).exists() for s in ("val", "test")):  # every point is measured against them
        from pipeline.references import run_references

        log.info("evaluate: scoring the reference forecasts first -> %s", run_references(cfg))
    log.info("evaluate: %d sweep point(s) to run on validation: %s", len(todo), [f"{c}/{s}-{n}" for c, s, n in todo])
    launch_array(cfg, config_paths, "pipeline.evaluate:evaluate_point", todo, "evaluate")
    _choose_and_test(cfg, config_paths, args.force)


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


# stages built in data.parts parts: --init, --part N, --finalise (pipeline.data.parts)
IN_PARTS = ("prepare", "normalise")


def _build_step(name: str, cfg: Config, args: argparse.Namespace) -> None:
    if name == "prepare":
        from pipeline.prepare import init_prepare as init
        from pipeline.prepare import prepare_part as part
    else:
        from pipeline.normalise import init_normalise as init
        from pipeline.normalise import normalise_part as part
    log.info("%s -> %s", name, init(cfg) if args.init else part(cfg, args.part))


def _run_stage(name: str, cfg: Config, config_paths: Sequence[str], args: argparse.Namespace) -> None:
    from pipeline.tracking import RunTarget, check_login, stage_run

    t0 = time.perf_counter()
    config_paths = [str(Path(p).resolve()) for p in config_paths]  # the jobs run in other processes
    if not (name in IN_PARTS and (args.init or args.part is not None)):  # a build step opens no MLflow run
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
        _evaluate(cfg, config_paths, args)
        log.info("evaluate finished in %.1f s", time.perf_counter() - t0)
        return
    if name in IN_PARTS and (args.init or args.part is not None):  # one step of a build in parts: no MLflow run
        _build_step(name, cfg, args)
        log.info("%s finished in %.1f s", name, time.perf_counter() - t0)
        return
    if name == "sample" and cfg.sample.processes > 1:
        from pipeline.launch import launch

        out = launch(cfg, config_paths, "pipeline.sample:sample_task", "sample", processes=cfg.sample.processes)[0]
        log.info("sample finished in %.1f s -> %s", time.perf_counter() - t0, out)
        return
    with stage_run(RunTarget.of(cfg, system_metrics=name == "sample"), name) as run:
        out = _stage_fn(name, args)(cfg, run)
    log.info("%s finished in %.1f s -> %s", name, time.perf_counter() - t0, out)


def _mlflow_sync(cfg: Config) -> None:
    from pipeline.tracking import redact_uri, sync

    if not cfg.tracking.enabled:
        msg = "mlflow-sync: tracking.enabled is false; set it true to push the offline runs"
        raise ConfigError(msg)
    report = sync(cfg.tracking_uri, cfg.experiment, cfg.exp_dir)
    print(f"mlflow-sync {cfg.exp_dir} -> {redact_uri(cfg.tracking_uri)}: {report}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline", description="Video diffusion for climate data: pipeline stages."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    helps = {
        "check-config": "validate a config (keys, types, values, and against the data's metadata)",
        **STAGES,
        "status": "where the experiment stands: each stage done / running / stopped / missing, the training job, "
        "the last step and loss, the sweep's points, the best point against climatology, SLURM jobs in flight",
        "mlflow-sync": "push the runs logged offline (results/<experiment>/mlflow-offline/, tracking.mode offline, "
        "or auto without the server) to tracking.uri; a second call sends nothing new, an interrupted one resumes",
    }
    for name, text in helps.items():
        sp = sub.add_parser(name, help=text, description=text)
        sp.add_argument(
            "--config",
            "-c",
            action="append",
            required=True,
            metavar="FILE",
            help="YAML config; repeat to apply override files in order (later wins)",
        )
        sp.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
        if name in IN_PARTS:
            steps = sp.add_mutually_exclusive_group()
            steps.add_argument(
                "--init",
                action="store_true",
                help="only start the build: the store's metadata and the plan of its parts",
            )
            steps.add_argument(
                "--part",
                type=int,
                metavar="N",
                help="only part N (0 to data.parts - 1): its chunks of the store and its completion marker",
            )
            steps.add_argument(
                "--finalise",
                action="store_true",
                help="only finish the build: check every part completed, consolidate, move the store into place",
            )
        if name in ("select-points", "collect-eval"):
            sp.add_argument(
                "--with-students",
                action="store_true",
                help="the sweep with the distilled students' points (distill.enabled) -> eval/distilled/",
            )
        if name == "evaluate":
            sp.add_argument("--checkpoint", help="one point: checkpoint tag, e.g. step-00000300")
            sp.add_argument("--sampler", choices=SAMPLER_NAMES, help="one point: sampler")
            sp.add_argument("--steps", type=int, help="one point: sampling steps")
            sp.add_argument(
                "--split",
                choices=("val", "test"),
                default="val",
                help="one point: the clips it is scored on (val: for choosing; test: for reporting the chosen points)",
            )
            sp.add_argument("--force", action="store_true", help="the sweep: rerun points that have a result too")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        cfg = load_config(args.config)
        if args.command == "check-config":
            _check_config(cfg)
        elif args.command == "status":
            from pipeline.status import experiment_status, format_status, slurm_jobs

            print(format_status(cfg, experiment_status(cfg), slurm_jobs()))
        elif args.command == "mlflow-sync":
            _mlflow_sync(cfg)
        else:
            _run_stage(args.command, cfg, args.config, args)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrackingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
