# Evaluation sweep: reference forecasts once (validation and test clips), every (checkpoint, sampler, steps) point
# on the validation clips, the choice of the best point there (a Snakemake checkpoint: which points go on is known
# only then), the chosen points on the test clips, and one collecting job that reports them on test.


rule score_references:
    input:
        store=NORMALISED,
        stats=STATS,
    output:
        val=REFERENCES["val"],
        test=REFERENCES["test"],
    log:
        LOG("score_references"),
    benchmark:
        BENCHMARK("score_references")
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
        final=FINAL,
        stats=STATS,
    output:
        POINT,
    log:
        LOG("evaluate/{split}/{checkpoint}/{sampler}-{steps}"),
    benchmark:
        BENCHMARK("evaluate/{split}/{checkpoint}/{sampler}-{steps}")
    wildcard_constraints:
        split=r"val|test",
        checkpoint=TAG_PATTERN,
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
        SELECTION,
    log:
        LOG("select_points"),
    conda:
        "../../envs/pipeline.yaml"
    params:
        config=CONFIG_FILE,
        settings=settings(*COLLECT_SETTINGS),
    shell:
        "python -m pipeline select-points --config {params.config:q} > {log:q} 2>&1"


rule collect_evaluation:
    input:
        selection=SELECTION,
        test_points=lambda wildcards: test_points(checkpoints.select_points),
        val_points=EVAL_POINTS,
        references=list(REFERENCES.values()),
    output:
        csv=REPORTS["csv"],
        parquet=REPORTS["parquet"],
        best=BEST,
        plot=report(
            REPORTS["plot"],
            caption="../report/summary.rst",
            category="Evaluation",
        ),
        scorecard=report(
            REPORTS["scorecard"],
            caption="../report/scorecard.rst",
            category="Evaluation",
        ),
    log:
        LOG("collect_evaluation"),
    conda:
        "../../envs/pipeline.yaml"
    params:
        config=CONFIG_FILE,
        settings=settings(*COLLECT_SETTINGS),
    shell:
        "python -m pipeline collect-eval --config {params.config:q} > {log:q} 2>&1"
