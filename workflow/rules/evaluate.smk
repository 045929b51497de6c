# Evaluation sweep: reference forecasts once, one job per (checkpoint, sampler, steps) point, then one
# collecting job.


rule score_references:
    input:
        store=f"{EXP}/data/normalised.zarr",
        stats=f"{EXP}/data/stats.json",
    output:
        f"{EXP}/eval/references.json",
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
            "evaluate.reference_members",
            "evaluate.climatology_window_days",
            "seed",
        ),
    shell:
        "python -m pipeline references --config {params.config} > {log} 2>&1"


rule evaluate_checkpoint:
    input:
        final=f"{EXP}/checkpoints/final.pt",
        stats=f"{EXP}/data/stats.json",
    output:
        f"{EXP}/eval/{{checkpoint}}/{{sampler}}-{{steps}}.json",
    log:
        f"{EXP}/logs/evaluate/{{checkpoint}}/{{sampler}}-{{steps}}.log",
    benchmark:
        f"{EXP}/benchmarks/evaluate/{{checkpoint}}/{{sampler}}-{{steps}}.tsv"
    wildcard_constraints:
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
        settings=settings(
            "evaluate.guidance_weights",
            "evaluate.cfg_scales",
            "evaluate.langevin_snr",
            "evaluate.langevin_steps",
            "evaluate.context_frames",
            "evaluate.ensemble",
            "evaluate.test_clips",
            "evaluate.test_stride",
            "seed",
        ),
    shell:
        "python -m pipeline evaluate --config {params.config} --checkpoint {wildcards.checkpoint}"
        " --sampler {wildcards.sampler} --steps {wildcards.steps} > {log} 2>&1"


rule collect_evaluation:
    input:
        points=EVAL_POINTS,
        references=f"{EXP}/eval/references.json",
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
        settings=settings(
            "evaluate.primary_metric",
            "evaluate.bootstrap",
            "evaluate.bootstrap_block",
            "evaluate.confidence",
            "seed",
        ),
    shell:
        "python -m pipeline collect-eval --config {params.config} > {log} 2>&1"
