# Parse-time validation and path lookups. Anything longer than a lookup lives in pipeline/.
import json
import re

from pipeline.config import (
    SAMPLER_PATTERN,
    load_config,
    resolved_config_path,
    section_json,
)
from pipeline.checkpoints import STUDENT_PATTERN, STUDENT_SAMPLER, TAG_PATTERN
from pipeline.data.io import resolve_paths
from pipeline.data.parts import Build
from pipeline.prepare import check_data

# A bad key, type or value, a missing variable or a split outside the data fails here,
# before any job is submitted, naming the config key.
CFG = load_config(config)
# Where Snakemake plans, every source file's metadata is opened once; inside a job (a SLURM job re-reads this
# file) the plan is made and the file list is enough.
if workflow.is_main_process:
    _, SOURCE_FILES, _ = check_data(CFG)
else:
    SOURCE_FILES = resolve_paths(CFG.data.source.paths)
# the files the conditions come from: a changed static field reruns prepare, a changed forcing table normalise
STATIC_FILES = [
    str(p)
    for s in CFG.data.static
    if s.source == "file"
    for p in resolve_paths([s.path])
]
FORCING_TABLES = [str(p) for f in CFG.data.forcings for p in resolve_paths([f.table])]
CONFIG_FILE = str(resolved_config_path(CFG, write=not workflow.dryrun))
# The results layout (pipeline.config.layout: the paths every stage agrees on), bound once for the rules
REGRIDDED, NORMALISED, STATS = map(
    str, (CFG.regridded_path, CFG.normalised_path, CFG.stats_path)
)
FINAL, SAMPLES, RESPONSE = map(
    str, (CFG.final_checkpoint, CFG.samples_dir, CFG.response_dir)
)
BEST, BEST_DISTILLED = str(CFG.eval_best()), str(CFG.eval_best(students=True))
SELECTION = str(CFG.eval_selection())
SELECTION_DISTILLED = str(CFG.eval_selection(students=True))
REPORTS = {k: str(v) for k, v in CFG.eval_reports().items()}
REPORTS_DISTILLED = {k: str(v) for k, v in CFG.eval_reports(students=True).items()}
# a sweep point's file, with wildcards (a distilled student's: wildcard student, its sampler STUDENT_SAMPLER)
POINT = str(CFG.eval_point("{split}", "{checkpoint}", "{sampler}", "{steps}"))
STUDENT_POINT = str(CFG.eval_point("{split}", "{student}", "{sampler}", "{steps}"))


def _build(final):
    """A store built in data.parts parts (pipeline.data.parts): its plan, a part's completion marker (wildcard
    {part}) and every part's marker."""
    b = Build(final)
    return {
        "plan": str(b.plan_path),
        "marker": str(b.marker_pattern),
        "markers": [str(b.marker(i)) for i in range(CFG.data.parts)],
    }


REGRIDDED_BUILD, NORMALISED_BUILD = _build(CFG.regridded_path), _build(
    CFG.normalised_path
)


def LOG(job):
    return str(CFG.log_file(job))


def BENCHMARK(job):
    return str(CFG.benchmark_file(job))


# every sweep point on the validation clips, where the best is chosen (select_points)
EVAL_POINTS = [
    str(CFG.eval_point("val", ckpt, sampler, steps))
    for ckpt in CFG.eval_checkpoints()
    for sampler in CFG.evaluate.samplers
    for steps in CFG.evaluate.steps
]
REFERENCES = {split: str(CFG.eval_references(split)) for split in ("val", "test")}
# what scores a point on either split (a change reruns the points)
POINT_SETTINGS = (
    "evaluate.guidance_weights",
    "evaluate.cfg_scales",
    "evaluate.langevin_snr",
    "evaluate.langevin_steps",
    "evaluate.context_frames",
    "evaluate.ensemble",
    "evaluate.test_clips",
    "evaluate.test_stride",
    "evaluate.val_clips",
    "evaluate.val_stride",
    "seed",
)
# what the choice on validation and the report on test depend on
COLLECT_SETTINGS = (
    "evaluate.primary_metric",
    "evaluate.bootstrap",
    "evaluate.bootstrap_block",
    "evaluate.confidence",
    "evaluate.test_points",
    "seed",
)


def settings(*keys):
    return section_json(CFG, *keys)


def student_file(wildcards):
    """A distilled student's inference file, once the checkpoint distill_model (distill.smk) has run. A round
    already done is not remade, so its file keeps its time and its point is not rerun; a distillation remade
    (other settings) reruns every point."""
    checkpoints.distill_model.get()
    return str(CFG.inference_file(wildcards.student))


def test_points(selection):
    """The test-clip point files of the points a choice on validation sends there (``selection`` is the Snakemake
    checkpoint select_points or select_distilled); known once that checkpoint has run.
    """
    path = selection.get().output[0]
    with open(path) as f:
        chosen = json.load(f)["test_points"]
    return [str(CFG.eval_point("test", c, s, n)) for c, s, n in chosen]
