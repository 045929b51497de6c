# Progressive distillation (distill.enabled): students of distill.checkpoint, each round halving the DDIM steps,
# then each student is a sweep point of its own (sampler `distilled`, DDIM with the student on its step count),
# chosen among the teachers' points on validation and reported on test under eval/distilled/. Like training, the
# GPU job is submitted by submitit (pipeline/launch.py), so distill_model is a local rule. It is a Snakemake checkpoint: a student's point waits for
# it, then depends on that student's own file, so adding a round (distill.final_steps) scores only the new student.
from pipeline import checkpoints as ckpt

# the teacher's file: eval/best.json names it for 'best' (after collect_evaluation), else training made it
DISTILL_TEACHER = (
    f"{EXP}/eval/best.json"
    if CFG.distill.checkpoint == "best"
    else str(CFG.final_checkpoint)
)
STUDENTS_INDEX = str(ckpt.students_index(CFG.distill_dir))
STUDENT_POINTS = [
    str(CFG.eval_point("val", c, s, n)) for c, s, n in CFG.student_points()
]
DISTILL_TARGETS = [f"{EXP}/eval/distilled/summary.csv"] if CFG.distill.enabled else []


localrules:
    distill_model,


checkpoint distill_model:
    input:
        teacher=DISTILL_TEACHER,
        store=f"{EXP}/data/normalised.zarr",
        stats=f"{EXP}/data/stats.json",
    output:
        STUDENTS_INDEX,
    log:
        f"{EXP}/logs/distill_model.log",
    benchmark:
        f"{EXP}/benchmarks/distill_model.tsv"
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
        stats=f"{EXP}/data/stats.json",
    output:
        f"{EXP}/eval/{{split}}/{{student}}/distilled-{{steps}}.json",
    log:
        f"{EXP}/logs/evaluate/{{split}}/{{student}}/distilled-{{steps}}.log",
    benchmark:
        f"{EXP}/benchmarks/evaluate/{{split}}/{{student}}/distilled-{{steps}}.tsv"
    wildcard_constraints:
        split=r"val|test",
        student=r"student-\d+",
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
        " --checkpoint {wildcards.student:q} --sampler distilled --steps {wildcards.steps:q} > {log:q} 2>&1"


checkpoint select_distilled:
    input:
        points=EVAL_POINTS + STUDENT_POINTS,
        references=REFERENCES["val"],
    output:
        f"{EXP}/eval/distilled/selection.json",
    log:
        f"{EXP}/logs/select_distilled.log",
    conda:
        "../../envs/pipeline.yaml"
    params:
        config=CONFIG_FILE,
        settings=settings(*COLLECT_SETTINGS),
    shell:
        "python -m pipeline select-points --config {params.config:q} --with-students > {log:q} 2>&1"


rule collect_distilled:
    input:
        selection=f"{EXP}/eval/distilled/selection.json",
        test_points=lambda wildcards: test_points(checkpoints.select_distilled),
        val_points=EVAL_POINTS + STUDENT_POINTS,
        references=list(REFERENCES.values()),
    output:
        csv=f"{EXP}/eval/distilled/summary.csv",
        parquet=f"{EXP}/eval/distilled/summary.parquet",
        best=f"{EXP}/eval/distilled/best.json",
        plot=f"{EXP}/eval/distilled/summary.png",
        scorecard=f"{EXP}/eval/distilled/scorecard.png",
    log:
        f"{EXP}/logs/collect_distilled.log",
    conda:
        "../../envs/pipeline.yaml"
    params:
        config=CONFIG_FILE,
        settings=settings(*COLLECT_SETTINGS),
    shell:
        "python -m pipeline collect-eval --config {params.config:q} --with-students > {log:q} 2>&1"
