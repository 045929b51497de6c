# Progressive distillation (distill.enabled): students of distill.checkpoint, each round halving the DDIM steps,
# then each student is a sweep point of its own (sampler `distilled`, DDIM with the student on its step count),
# chosen among the teachers' points on validation and reported on test under eval/distilled/. Like training, the
# GPU job is submitted by submitit (pipeline/launch.py), so distill_model is a local rule. It is a Snakemake checkpoint: a student's point waits for
# it, then depends on that student's own file, so adding a round (distill.final_steps) scores only the new student.
from pipeline import checkpoints as ckpt

# the teacher's file: eval/best.json names it for 'best' (after collect_evaluation), else training made it
DISTILL_TEACHER = (
    BEST if CFG.distill.checkpoint == "best" else str(CFG.final_checkpoint)
)
STUDENTS_INDEX = str(ckpt.students_index(CFG.distill_dir))
STUDENT_POINTS = [
    str(CFG.eval_point("val", c, s, n)) for c, s, n in CFG.student_points()
]
DISTILL_TARGETS = [REPORTS_DISTILLED["csv"]] if CFG.distill.enabled else []


localrules:
    distill_model,


checkpoint distill_model:
    input:
        teacher=DISTILL_TEACHER,
        store=NORMALISED,
        stats=STATS,
    output:
        STUDENTS_INDEX,
    log:
        LOG("distill_model"),
    benchmark:
        BENCHMARK("distill_model")
    conda:
        "../../envs/pipeline.yaml"
    params:
        config=CONFIG_FILE,
        settings=settings("distill", "model", "diffusion", "train", "launch", "seed"),
    shell:
        "env -u OMP_NUM_THREADS python -m pipeline distill --config {params.config:q} > {log:q} 2>&1"


rule evaluate_student:
    input:
        student=student_file,
        stats=STATS,
    output:
        STUDENT_POINT,
    log:
        LOG("evaluate/{split}/{student}/{sampler}-{steps}"),
    benchmark:
        BENCHMARK("evaluate/{split}/{student}/{sampler}-{steps}")
    wildcard_constraints:
        split=r"val|test",
        student=STUDENT_PATTERN,
        sampler=re.escape(STUDENT_SAMPLER),
        steps=r"\d+",
    conda:
        "../../envs/pipeline.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        config=CONFIG_FILE,
        settings=settings(*POINT_SETTINGS),
    shell:
        "python -m pipeline evaluate --config {params.config:q} --split {wildcards.split:q}"
        " --checkpoint {wildcards.student:q} --sampler {wildcards.sampler:q} --steps {wildcards.steps:q}"
        " > {log:q} 2>&1"


checkpoint select_distilled:
    input:
        points=EVAL_POINTS + STUDENT_POINTS,
        references=REFERENCES["val"],
    output:
        SELECTION_DISTILLED,
    log:
        LOG("select_distilled"),
    conda:
        "../../envs/pipeline.yaml"
    params:
        config=CONFIG_FILE,
        settings=settings(*COLLECT_SETTINGS),
    shell:
        "python -m pipeline select-points --config {params.config:q} --with-students > {log:q} 2>&1"


rule collect_distilled:
    input:
        selection=SELECTION_DISTILLED,
        test_points=lambda wildcards: test_points(checkpoints.select_distilled),
        val_points=EVAL_POINTS + STUDENT_POINTS,
        references=list(REFERENCES.values()),
    output:
        csv=REPORTS_DISTILLED["csv"],
        parquet=REPORTS_DISTILLED["parquet"],
        best=BEST_DISTILLED,
        plot=REPORTS_DISTILLED["plot"],
        scorecard=REPORTS_DISTILLED["scorecard"],
    log:
        LOG("collect_distilled"),
    conda:
        "../../envs/pipeline.yaml"
    params:
        config=CONFIG_FILE,
        settings=settings(*COLLECT_SETTINGS),
    shell:
        "python -m pipeline collect-eval --config {params.config:q} --with-students > {log:q} 2>&1"
