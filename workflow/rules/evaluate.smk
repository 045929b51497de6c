# Evaluation sweep: reference forecasts once (validation and test clips), every (checkpoint, sampler, steps) point
# on the validation clips, the choice of the best point there (a Snakemake checkpoint: which points go on is known
# only then), the chosen points on the test clips, and one collecting job that reports them on test.


rule score_references:
    input:
        store=f"{EXP}/data/normalised.zarr",
        stats=f"{EXP}/data/stats.json",
    output:
        val=REFERENCES["val"],
        test=REFERENCES["test"],
    log:
        f"{EXP}/logs/score_references.log",
    benchmark:
        f"{EXP}/benchmarks/score_references.tsv"
    conda:
        "../../envs/pipeline.yaml"
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        config=CONFIG_FILE,
        settings=settings(
            "train.clip_frames",
            "evaluate.context_frames",
            "evaluate.test_clips",
            "evaluate.test_stride",
            "evaluate.val_clips",
            "evaluate.val_stride",
            "evaluate.reference_members",
            "evaluate.climatology_window_days",
            "seed",
        ),
    shell:
        "python -m pipeline references --config {params.config:q} > {log:q} 2>&1"


rule evaluate_checkpoint:
    input:
        final=f"{EXP}/checkpoints/final.pt",
        stats=f"{EXP}/data/stats.json",
    output:
        f"{EXP}/eval/{{split}}/{{checkpoint}}/{{sampler}}-{{steps}}.json",
    log:
        f"{EXP}/logs/evaluate/{{split}}/{{checkpoint}}/{{sampler}}-{{steps}}.log",
    benchmark:
        f"{EXP}/benchmarks/evaluate/{{split}}/{{checkpoint}}/{{sampler}}-{{steps}}.tsv"
    wildcard_constraints:
        split=r"val|test",
        checkpoint=r"step-\d+",
        sampler=SAMPLER_PATTERN,
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
        " --checkpoint {wildcards.checkpoint:q} --sampler {wildcards.sampler:q} --steps {wildcards.steps:q}"
        " > {log:q} 2>&1"


checkpoint select_points:
    input:
        points=EVAL_POINTS,
        references=REFERENCES["val"],
    output:
        f"{EXP}/eval/selection.json",
    log:
        f"{EXP}/logs/select_points.log",
    conda:
        "../../envs/pipeline.yaml"
    params:
        config=CONFIG_FILE,
        settings=settings(*COLLECT_SETTINGS),
    shell:
        "python -m pipeline select-points --config {params.config:q} > {log:q} 2>&1"


rule collect_evaluation:
    input:
        selection=f"{EXP}/eval/selection.json",
        test_points=lambda wildcards: test_points(checkpoints.select_points),
        val_points=EVAL_POINTS,
        references=list(REFERENCES.values()),
    output:
        csv=f"{EXP}/eval/summary.csv",
        parquet=f"{EXP}/eval/summary.parquet",
        best=f"{EXP}/eval/best.json",
        plot=report(
            f"{EXP}/eval/summary.png",
            caption="../report/summary.rst",
            category="Evaluation",
        ),
        scorecard=report(
            f"{EXP}/eval/scorecard.png",
            caption="../report/scorecard.rst",
            category="Evaluation",
        ),
    log:
        f"{EXP}/logs/collect_evaluation.log",
    conda:
        "../../envs/pipeline.yaml"
    params:
        config=CONFIG_FILE,
        settings=settings(*COLLECT_SETTINGS),
    shell:
        "python -m pipeline collect-eval --config {params.config:q} > {log:q} 2>&1"
