"""``python -m pipeline <stage> --config FILE [--config OVERRIDE ...]``: one entry per stage."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pipeline.config import SAMPLER_NAMES, Config, ConfigError, load_config
from pipeline.data.coords import DataError
from pipeline.stages import IN_PARTS, StageOptions, run_stage
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
    "response": "experiments with forcings: each run's held-out periods generated under its forcing and scored "
    "against the real run and pattern scaling (map, area mean, trend; with intervals) -> response/",
    "distill": "progressive distillation of distill.checkpoint, halving the DDIM steps each round (DeepSpeed, "
    "launched like train) -> distill/round-NNNN/student.pt; finished rounds are kept, an interrupted one resumes",
}


def _check_config(cfg: Config) -> None:
    from pipeline.prepare import check_data

    ds, paths, target = check_data(cfg)
    print(
        f"config OK: experiment {cfg.experiment!r}, {len(paths)} input file(s), variables "
        f"{list(ds.data_vars)}, {ds.sizes.get('time', 0)} time steps -> target grid "
        f"{target.sizes['latitude']} x {target.sizes['longitude']} at {cfg.data.grid.resolution} deg"
    )


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


def _options(args: argparse.Namespace) -> StageOptions:
    """The stage's options from its parsed command line (the flags its parser has; the others keep their defaults)."""
    names = StageOptions.__dataclass_fields__
    return StageOptions(**{k: v for k, v in vars(args).items() if k in names and v is not None})


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
            run_stage(args.command, cfg, args.config, _options(args))
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrackingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
