# Video diffusion for climate data: the workflow. This file only wires; the rules live in
# workflow/rules/ and every action is a `python -m pipeline <stage>` command.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/distill.smk"
include: "workflow/rules/tracking.smk"


rule all:
    default_target: True
    input:
        NORMALISED,
        STATS,
        FINAL,
        REPORTS["csv"],
        SAMPLES,
        [RESPONSE] if CFG.data.forcings else [],
        DISTILL_TARGETS,
