"""``python -m pipeline <stage> --config FILE [--config OVERRIDE ...]``: one entry per stage."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.config import Config, ConfigError, load_config
from pipeline.data.coords import DataError

__all__ = ["main"]

log = logging.getLogger("pipeline")

STAGES: dict[str, str] = {
    "prepare": "open the raw files, select variables and levels, regrid, write regridded.zarr",
    "normalise": "area-weighted training statistics, write normalised.zarr and stats.json",
    "train": "DeepSpeed training launched by submitit (SLURM or local processes); resumes from checkpoints",
    "evaluate": "one sweep point: checkpoint x sampler x steps -> eval/<checkpoint>/<sampler>-<steps>.json",
    "collect-eval": "the sweep's table (CSV, parquet), summary plot and best checkpoint",
    "sample": "unconditional clips and long rollouts from the best checkpoint: CF zarr, GIFs, maps, spectra",
}


def _stage_fn(name: str, args: argparse.Namespace) -> Callable[[Config, object], Path]:
    if name == "prepare":
        from pipeline.prepare import run_prepare

        return run_prepare
    if name == "normalise":
        from pipeline.normalise import run_normalise

        return run_normalise
    if name == "evaluate":
        from pipeline.evaluate import evaluate_point

        return lambda cfg, run: evaluate_point(cfg, run, args.checkpoint, args.sampler, args.steps)
    if name == "collect-eval":
        from pipeline.evaluate import collect

        return collect
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


def _run_stage(name: str, cfg: Config, config_paths: Sequence[str], args: argparse.Namespace) -> None:
    from pipeline.tracking import stage_run

    t0 = time.perf_counter()
    if name == "train":
        from pipeline.launch import launch, prepare_checkpoint_dir

        resuming = prepare_checkpoint_dir(cfg)
        log.info("train: %s", "resuming from the last checkpoint" if resuming else "starting afresh")
        results = launch(cfg, [str(Path(p).resolve()) for p in config_paths], "pipeline.train:run_training", "train")
        log.info(
            "train finished in %.1f s at step %d -> %s",
            time.perf_counter() - t0,
            results[0]["step"],
            cfg.final_checkpoint,
        )
        return
    tags, run_name = None, None
    if name == "evaluate":
        tags = {"sweep_point": f"{args.checkpoint}/{args.sampler}-{args.steps}"}
        run_name = f"evaluate {args.checkpoint} {args.sampler}-{args.steps}"
    with stage_run(
        cfg.tracking_uri, cfg.experiment, cfg.exp_dir, name, enabled=cfg.tracking.enabled, tags=tags, run_name=run_name
    ) as run:
        out = _stage_fn(name, args)(cfg, run)
    log.info("%s finished in %.1f s -> %s", name, time.perf_counter() - t0, out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline", description="Video diffusion for climate data: pipeline stages."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    helps = {"check-config": "validate a config (keys, types, values, and against the data's metadata)", **STAGES}
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
        if name == "evaluate":
            sp.add_argument("--checkpoint", required=True, help="checkpoint tag, e.g. step-00000300")
            sp.add_argument("--sampler", required=True, choices=["ancestral", "ddim", "dpmpp_2m"])
            sp.add_argument("--steps", required=True, type=int, help="sampling steps")
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
        else:
            _run_stage(args.command, cfg, args.config, args)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
